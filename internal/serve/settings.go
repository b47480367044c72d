package serve

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"
)

// Defaults for the zero values of Settings.
const (
	DefaultTimeout               = 30 * time.Second
	DefaultInitialReconnectDelay = 10 * time.Millisecond
	DefaultMaxReconnectDelay     = time.Second
	DefaultBackoffMultiplier     = 2.0
	DefaultDialTimeout           = 2 * time.Second
	DefaultKeepAlive             = 15 * time.Second
	DefaultShutdownGrace         = 10 * time.Second
	// DefaultMaxConnections is the default of MaxConnections: far above
	// what one host's applications open, far below the file descriptors
	// (two per connection) a process may hold.
	DefaultMaxConnections = 10000
)

// NoLimit, as Settings.MaxConnections, means no cap.
const NoLimit = -1

// Settings are what the two data paths' options share, embedded in
// proxy.Options and stompproxy.Options: the listener, its connection caps
// and shutdown grace, and how a backend is found (held, dialed, retried,
// spoken TLS to). They mean the same in both, with the same defaults, so
// that a service switched from protocol "tcp" to "stomp" keeps its tuning,
// and the sidecar fills them once for either. The zero value of every
// field but Name and Listen means the default given on the field;
// WithDefaults applies them. Errors name the fields by the sidecar's
// configuration keys.
//
// The reconnect fields are named after the options of ActiveMQ's failover
// transport (timeout, initialReconnectDelay, maxReconnectDelay,
// backOffMultiplier, maxReconnectAttempts) because they do the same job for
// clients that cannot do it themselves: the sidecar holds the client's
// connection while it looks for a master, as failover: would.
type Settings struct {
	// Name names the service in logs and metrics (label service).
	Name string
	// Listen is the address to bind, already resolved. The caller picks the
	// default (loopback: the sidecar serves the application beside it).
	Listen string

	// Timeout is how long a new client connection is held while there is no
	// target or no target can be dialed; then the client is closed. Zero
	// means DefaultTimeout (30s). Negative means never hold: with no target
	// the client is closed at once, and each target is dialed once.
	Timeout time.Duration
	// InitialReconnectDelay is the first pause between rounds of failed
	// dials (default 10ms). Each round dials every target once.
	InitialReconnectDelay time.Duration
	// MaxReconnectDelay caps the pause between rounds (default 1s).
	MaxReconnectDelay time.Duration
	// BackoffMultiplier grows the pause after each failed round (default 2;
	// 1 keeps it constant).
	BackoffMultiplier float64
	// MaxReconnectAttempts caps the rounds of dials per client connection;
	// zero means as many as fit in Timeout.
	MaxReconnectAttempts int
	// DialTimeout bounds one dial (default 2s); a dial never outlives
	// Timeout either.
	DialTimeout time.Duration

	// KeepAlive is the TCP keepalive period on both the client and the
	// backend socket (default 15s; negative disables keepalives), so a
	// vanished peer is noticed even on a connection that is quiet for hours.
	KeepAlive time.Duration
	// MaxConnections caps concurrent client connections, held ones
	// included. Zero means DefaultMaxConnections (10,000); NoLimit (-1)
	// means no cap. A client beyond it is accepted and closed at once (in
	// STOMP mode after an ERROR frame saying so), logged and counted
	// (handover_proxy_connections_rejected_total,
	// handover_stomp_sessions_rejected_total): it learns now, rather than
	// waiting in the listen backlog behind connections that may never end.
	MaxConnections int
	// MaxConnectionsPerSource caps the concurrent client connections from
	// one IP address, as MaxConnections caps them all. Zero (the default)
	// means no such cap: a sidecar's clients usually share its host's
	// loopback address, where this cap would be MaxConnections again. It is
	// for a sidecar listening beyond loopback, so that one host cannot take
	// every connection.
	MaxConnectionsPerSource int
	// ShutdownGrace is how long Shutdown lets live connections finish before
	// closing them (default 10s).
	ShutdownGrace time.Duration

	// TLS, unless nil, is the client side of the TLS this service speaks
	// to its backends (the clients' side stays plain TCP): RootCAs to
	// verify the broker's certificate with (always verified), ServerName
	// ("" means each backend's own host), Certificates if the broker asks
	// for a client certificate.
	TLS *tls.Config
}

// Validate reports every problem with s at once. Zero values are valid:
// they mean the defaults. Each data path joins it with the problems of its
// own fields.
func (s Settings) Validate() error {
	var errs []error
	if s.Name == "" {
		errs = append(errs, errors.New("name: must not be empty"))
	}
	if s.Listen == "" {
		errs = append(errs, errors.New("listen: must not be empty"))
	}
	nonNegative := []struct {
		name string
		v    time.Duration
	}{
		{"initial_reconnect_delay", s.InitialReconnectDelay},
		{"max_reconnect_delay", s.MaxReconnectDelay},
		{"dial_timeout", s.DialTimeout},
		{"shutdown_grace", s.ShutdownGrace},
	}
	for _, d := range nonNegative {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %v", d.name, d.v))
		}
	}
	if s.BackoffMultiplier != 0 && s.BackoffMultiplier < 1 {
		errs = append(errs, fmt.Errorf("backoff_multiplier: must be at least 1, got %v", s.BackoffMultiplier))
	}
	if s.MaxReconnectAttempts < 0 {
		errs = append(errs, fmt.Errorf("max_reconnect_attempts: must be 0 (no cap) or positive, got %d", s.MaxReconnectAttempts))
	}
	if s.MaxConnections < NoLimit {
		errs = append(errs, fmt.Errorf("max_connections: must be %d (no cap), 0 (the default, %d) or positive, got %d",
			NoLimit, DefaultMaxConnections, s.MaxConnections))
	}
	if s.MaxConnectionsPerSource < 0 {
		errs = append(errs, fmt.Errorf("max_connections_per_source: must be 0 (no cap, the default) or positive, got %d", s.MaxConnectionsPerSource))
	}
	if s.TLS != nil && s.TLS.InsecureSkipVerify {
		errs = append(errs, errors.New("tls: the broker's certificate is always verified (InsecureSkipVerify is refused)"))
	}
	// Checked with the defaults, which a set field may fall foul of: a
	// max_reconnect_delay of 5ms is below the default initial delay.
	d := s.WithDefaults()
	if d.MaxReconnectDelay < d.InitialReconnectDelay {
		errs = append(errs, fmt.Errorf("max_reconnect_delay (%v) must not be below initial_reconnect_delay (%v)", d.MaxReconnectDelay, d.InitialReconnectDelay))
	}
	return errors.Join(errs...)
}

// WithDefaults returns s with every zero field that has a default set to
// it. MaxConnections stays as it is: 0 and NoLimit are both read where the
// cap is applied (NewAdmission).
func (s Settings) WithDefaults() Settings {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&s.Timeout, DefaultTimeout)
	def(&s.InitialReconnectDelay, DefaultInitialReconnectDelay)
	def(&s.MaxReconnectDelay, DefaultMaxReconnectDelay)
	def(&s.DialTimeout, DefaultDialTimeout)
	def(&s.KeepAlive, DefaultKeepAlive)
	def(&s.ShutdownGrace, DefaultShutdownGrace)
	if s.BackoffMultiplier == 0 {
		s.BackoffMultiplier = DefaultBackoffMultiplier
	}
	return s
}
