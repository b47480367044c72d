package stompproxy

import (
	"errors"
	"fmt"
	"time"

	"handover/frame"
	"handover/proxy"
)

// DefaultMaxReplayBytes is the default of Options.MaxReplayBytes: 4 MiB of
// tracked frames per session, a few hundred in-flight messages of ordinary
// size.
const DefaultMaxReplayBytes = 4 << 20

// Options configure one STOMP-mode service: one listener whose client
// sessions survive the death of the master. The fields shared with
// proxy.Options mean the same, with the same defaults (proxy.Default*), so
// that a service switched from protocol "tcp" to "stomp" keeps its tuning;
// the zero value of every field but Name and Listen means its default.
//
// The reconnect fields drive both the first connection of a client and
// every resume after a failover: the session is held (its client socket
// open, heart-beats flowing) while there is no master, as ActiveMQ's
// failover transport would hold its application.
type Options struct {
	// Name names the service in logs and metrics (label service).
	Name string
	// Listen is the address to bind, already resolved.
	Listen string

	// Timeout is how long a session waits for a master, both for its first
	// connection and after losing one; then the client is closed. It also
	// bounds how long an acknowledgement of a pre-failover delivery waits for
	// that message's redelivery (see the package documentation). Zero means
	// proxy.DefaultTimeout (30s). Negative means never wait: with no target
	// the client is closed at once.
	Timeout time.Duration
	// InitialReconnectDelay is the first pause between rounds of failed
	// dials (default 10ms).
	InitialReconnectDelay time.Duration
	// MaxReconnectDelay caps the pause between rounds (default 1s).
	MaxReconnectDelay time.Duration
	// BackoffMultiplier grows the pause after each failed round (default 2).
	BackoffMultiplier float64
	// MaxReconnectAttempts caps the rounds of dials per wait; zero means as
	// many as fit in Timeout.
	MaxReconnectAttempts int
	// DialTimeout bounds one dial plus the CONNECT→CONNECTED exchange
	// (default 2s).
	DialTimeout time.Duration
	// KeepAlive is the TCP keepalive period on both sockets (default 15s;
	// negative disables keepalives).
	KeepAlive time.Duration
	// MaxConnections caps concurrent client sessions; beyond it new clients
	// wait in the listen backlog. Zero means no cap.
	MaxConnections int
	// ShutdownGrace is how long Shutdown lets live sessions finish before
	// closing them (default 10s).
	ShutdownGrace time.Duration

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
// they mean the defaults.
func (o Options) Validate() error {
	var errs []error
	if o.Name == "" {
		errs = append(errs, errors.New("name: must not be empty"))
	}
	if o.Listen == "" {
		errs = append(errs, errors.New("listen: must not be empty"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"initial_reconnect_delay", o.InitialReconnectDelay},
		{"max_reconnect_delay", o.MaxReconnectDelay},
		{"dial_timeout", o.DialTimeout},
		{"shutdown_grace", o.ShutdownGrace},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %v", d.name, d.v))
		}
	}
	if o.BackoffMultiplier != 0 && o.BackoffMultiplier < 1 {
		errs = append(errs, fmt.Errorf("backoff_multiplier: must be at least 1, got %v", o.BackoffMultiplier))
	}
	if o.MaxReconnectAttempts < 0 {
		errs = append(errs, fmt.Errorf("max_reconnect_attempts: must be 0 (no cap) or positive, got %d", o.MaxReconnectAttempts))
	}
	if o.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("max_connections: must be 0 (no cap) or positive, got %d", o.MaxConnections))
	}
	if o.MaxReplayBytes < 0 {
		errs = append(errs, fmt.Errorf("max_replay_bytes: must be 0 (the default, %d) or positive, got %d", DefaultMaxReplayBytes, o.MaxReplayBytes))
	}
	d := o.withDefaults()
	if d.MaxReconnectDelay < d.InitialReconnectDelay {
		errs = append(errs, fmt.Errorf("max_reconnect_delay (%v) must not be below initial_reconnect_delay (%v)", d.MaxReconnectDelay, d.InitialReconnectDelay))
	}
	return errors.Join(errs...)
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.Timeout, proxy.DefaultTimeout)
	def(&o.InitialReconnectDelay, proxy.DefaultInitialReconnectDelay)
	def(&o.MaxReconnectDelay, proxy.DefaultMaxReconnectDelay)
	def(&o.DialTimeout, proxy.DefaultDialTimeout)
	def(&o.KeepAlive, proxy.DefaultKeepAlive)
	def(&o.ShutdownGrace, proxy.DefaultShutdownGrace)
	if o.BackoffMultiplier == 0 {
		o.BackoffMultiplier = proxy.DefaultBackoffMultiplier
	}
	if o.MaxReplayBytes == 0 {
		o.MaxReplayBytes = DefaultMaxReplayBytes
	}
	return o
}

// holdTimeout is how long an acknowledgement of a pre-failover delivery
// waits for the redelivery it must be forwarded with.
func (o Options) holdTimeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return proxy.DefaultTimeout
}
