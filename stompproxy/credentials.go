package stompproxy

import (
	"errors"
	"fmt"

	"handover/frame"
	"handover/internal/passcode"
)

// Credentials are what the sidecar logs in to the brokers with in place of
// its clients (issue 17): a legacy application that cannot be changed
// then holds no broker secret, and one secret, on the sidecar's host, is
// rotated for all of them.
type Credentials struct {
	// Login is the login header of every CONNECT the sidecar sends
	// upstream. It must not be empty.
	Login string
	// Passcode returns the passcode header's value. It is called at each
	// upstream CONNECT (a session's first and every resume), so a passcode
	// file replaced on disk is used from the next connection on, without a
	// restart or a reload (see passcode.File). It is required, and must
	// return a non-empty value without line breaks or NULs, which a
	// CONNECT header cannot carry (STOMP 1.2 "Value Encoding": CONNECT is
	// never escaped). It is called from many sessions at once.
	Passcode func() (string, error)
}

// errCredentials marks a session that could not get the sidecar's
// passcode: it cannot log in anywhere, so it does not wait for a master.
var errCredentials = errors.New("the sidecar's broker credentials are unusable")

// validate reports what is wrong with c, reading the passcode once so that
// a missing file or variable stops a start or a reload (handover -check)
// rather than the first client.
func (c *Credentials) validate() error {
	var errs []error
	switch {
	case c.Login == "":
		errs = append(errs, errors.New("credentials.login: must not be empty (the login the sidecar sends the brokers)"))
	case !passcode.HeaderSafe(c.Login):
		errs = append(errs, errors.New("credentials.login: must not contain a line break or NUL"))
	}
	if c.Passcode == nil {
		errs = append(errs, errors.New("credentials: a passcode is required (from a file or an environment variable)"))
	} else if _, err := c.passcode(); err != nil {
		errs = append(errs, fmt.Errorf("credentials.passcode: %w", err))
	}
	return errors.Join(errs...)
}

// passcode reads Passcode and checks its answer (passcode.Read).
func (c *Credentials) passcode() (string, error) { return passcode.Read(c.Passcode) }

// withCredentials returns connect, the client's CONNECT (or STOMP) frame,
// to be sent upstream: unchanged without c, else a copy whose login and
// passcode are c's, in place of the client's or added if it sent none.
// The passcode is read anew (see Credentials.Passcode). The copy is never
// logged: it holds the secret.
func withCredentials(connect *frame.Frame, c *Credentials) (*frame.Frame, error) {
	if c == nil {
		return connect, nil
	}
	p, err := c.passcode()
	if err != nil {
		return nil, fmt.Errorf("%w: passcode: %w", errCredentials, err)
	}
	f := connect.Clone()
	f.Set("login", c.Login)
	f.Set("passcode", p)
	return f, nil
}
