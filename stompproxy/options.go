package stompproxy

import (
	"errors"
	"fmt"
	"time"

	"handover/frame"
	"handover/internal/serve"
)

// DefaultMaxReplayBytes is the default of Options.MaxReplayBytes: 4 MiB of
// tracked frames per session, a few hundred in-flight messages of ordinary
// size.
const DefaultMaxReplayBytes = 4 << 20

// DefaultConnectTimeout is the default of Options.ConnectTimeout, brokerd's
// own connect_timeout.
const DefaultConnectTimeout = 10 * time.Second

// DefaultClientWriteTimeout is the default of Options.ClientWriteTimeout,
// the bound brokerd puts on a write to its own clients.
const DefaultClientWriteTimeout = 30 * time.Second

// Options configure one STOMP-mode service: one listener whose client
// sessions survive the death of the master. The zero value of every field
// but Name and Listen means its default.
//
// The reconnect fields drive both the first connection of a client and
// every resume after a failover: the session is held (its client socket
// open, heart-beats flowing) while there is no master, as ActiveMQ's
// failover transport would hold its application.
type Options struct {
	// Settings are what this package shares with proxy.Options, meaning
	// the same with the same defaults, so that a service switched from
	// protocol "tcp" to "stomp" keeps its tuning: see serve.Settings for
	// each. In STOMP mode, a connection is a client session, and:
	//   - Timeout is how long a session waits for a master, both for its
	//     first connection and after losing one; then the client is closed.
	//     It also bounds how long an acknowledgement of a pre-failover
	//     delivery waits for that message's redelivery (see the package
	//     documentation).
	//   - MaxReconnectAttempts caps the rounds per wait.
	//   - DialTimeout bounds one dial plus the CONNECT→CONNECTED exchange.
	//   - A client refused for a connection cap gets an ERROR frame
	//     ("too many connections"), then is closed.
	//   - TLS is spoken on the session's upstream connections (the first
	//     and every resume); the client's side stays plain.
	serve.Settings

	// Credentials, unless nil, are the login and passcode every session
	// presents to the brokers: the CONNECT sent upstream (the first and
	// every resume) carries them in place of whatever login and passcode
	// the client sent, or as well as its other headers if it sent none.
	// A broker that refuses them answers with an ERROR, which goes to the
	// client as it came ("authentication failed" from brokerd), and the
	// client is closed. A passcode that cannot be read (Passcode fails)
	// closes the session at once with an ERROR of the sidecar's, and an
	// error in the log. nil passes the client's own headers on untouched.
	Credentials *Credentials

	// ConnectTimeout is how long a client has, from accept, to send its
	// whole CONNECT (or STOMP) frame; then it gets an ERROR and is closed.
	// It is a deadline, not an allowance per read, so a client that
	// trickles a byte every few seconds (a slowloris) is closed on time
	// too. Zero means DefaultConnectTimeout (10s).
	ConnectTimeout time.Duration

	// ClientWriteTimeout bounds each write to the client (64 KiB at most;
	// a larger frame goes in pieces). A client that has not taken one in
	// this time has stopped reading its socket: it is closed, and its
	// broker session with it (the broker redelivers what it left
	// unacknowledged), as brokerd drops a consumer that stops reading,
	// rather than holding the session, its broker connection and its
	// memory for ever (issue 14). Zero means DefaultClientWriteTimeout
	// (30s).
	ClientWriteTimeout time.Duration

	// Limits bound every frame read, from the client and from the broker,
	// as brokerd's own limits do; zero fields take frame.DefaultLimits.
	Limits frame.Limits
	// MaxReplayBytes bounds what one session keeps in order to resume:
	// frames awaiting their RECEIPT, open transactions, subscriptions and
	// unacknowledged deliveries, and client frames buffered during a pause.
	// A session that goes over it stops being resumable and is closed on
	// its next upstream loss, as in TCP mode. Zero means
	// DefaultMaxReplayBytes (4 MiB).
	MaxReplayBytes int
}

// Validate reports every problem with o at once. Zero values are valid:
// they mean the defaults. With Credentials, it reads the passcode once, so
// that a missing passcode file fails a start or a reload, not a client.
func (o Options) Validate() error {
	errs := []error{o.Settings.Validate()}
	if o.MaxReplayBytes < 0 {
		errs = append(errs, fmt.Errorf("max_replay_bytes: must be 0 (the default, %d) or positive, got %d", DefaultMaxReplayBytes, o.MaxReplayBytes))
	}
	if o.ConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("connect_timeout: must be 0 (the default, %v) or positive, got %v", DefaultConnectTimeout, o.ConnectTimeout))
	}
	if o.ClientWriteTimeout < 0 {
		errs = append(errs, fmt.Errorf("client_write_timeout: must be 0 (the default, %v) or positive, got %v", DefaultClientWriteTimeout, o.ClientWriteTimeout))
	}
	if o.Credentials != nil {
		errs = append(errs, o.Credentials.validate())
	}
	return errors.Join(errs...)
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	o.Settings = o.Settings.WithDefaults()
	if o.MaxReplayBytes == 0 {
		o.MaxReplayBytes = DefaultMaxReplayBytes
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.ClientWriteTimeout == 0 {
		o.ClientWriteTimeout = DefaultClientWriteTimeout
	}
	return o
}

// holdTimeout is how long an acknowledgement of a pre-failover delivery
// waits for the redelivery it must be forwarded with.
func (o Options) holdTimeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return serve.DefaultTimeout
}
