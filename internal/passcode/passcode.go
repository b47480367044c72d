// Package passcode reads the passcodes the sidecar presents to brokers (its
// [service.credentials] and its stomp check's login) from where an
// operator keeps secrets: a file or the environment, never the config file.
// A source is read again at each use, so a rotated secret needs no reload.
package passcode

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Source returns a passcode. It may be called from many goroutines at once.
type Source func() (string, error)

// File is a Source that reads the file at path at each call, without its
// trailing line break: a file written with echo works, and a file replaced
// on disk (a rotated secret, a Kubernetes secret volume) is read again at
// the next use. Replace it atomically (write another file, then rename it
// over this one), as those tools do: a file caught half written is empty
// or wrong, and a connection made at that instant is refused.
func File(path string) Source {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err // names the file
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
}

// Env is a Source that reads the environment variable name at each call;
// unset is an error.
func Env(name string) Source {
	return func() (string, error) {
		p, ok := os.LookupEnv(name)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		return p, nil
	}
}

// Read calls src and checks its answer: not empty, and fit for a CONNECT
// header as it is (HeaderSafe).
func Read(src Source) (string, error) {
	p, err := src()
	switch {
	case err != nil:
		return "", err
	case p == "":
		return "", errors.New("the passcode is empty")
	case !HeaderSafe(p):
		return "", errors.New("the passcode contains a line break or NUL, which a CONNECT header cannot carry")
	}
	return p, nil
}

// HeaderSafe reports whether v can be a CONNECT header value as it is:
// CONNECT headers are never escaped (STOMP 1.2, "Value Encoding"), so a
// line break or a NUL cannot be sent.
func HeaderSafe(v string) bool { return !strings.ContainsAny(v, "\r\n\x00") }
