package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"
)

// OnFailover modes: what happens to live connections when the Picker's
// answer changes.
const (
	// OnFailoverClose closes, at once, every connection whose backend is no
	// longer among the targets, so its client reconnects (through us) to the
	// new master instead of talking to a broker that has stepped down.
	OnFailoverClose = "close"
	// OnFailoverKeep leaves live connections alone; only new connections
	// follow the new targets.
	OnFailoverKeep = "keep"
)

// Defaults for the zero values of Options.
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

// NoLimit, as Options.MaxConnections, means no cap.
const NoLimit = -1

// Options configure one proxied service: one listener and where its
// connections go. The zero value of every field but Name and Listen means
// the default given on the field; New applies them.
//
// The reconnect fields are named after the options of ActiveMQ's failover
// transport (timeout, initialReconnectDelay, maxReconnectDelay,
// backOffMultiplier, maxReconnectAttempts) because they do the same job for
// clients that cannot do it themselves: the sidecar holds the client's
// connection while it looks for a master, as failover: would.
type Options struct {
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

	// IdleTimeout closes a proxied connection after this long with no bytes
	// in either direction; zero means never. Checking it costs nothing on
	// the data path (see meter.go).
	IdleTimeout time.Duration
	// KeepAlive is the TCP keepalive period on both the client and the
	// backend socket (default 15s; negative disables keepalives), so a
	// vanished peer is noticed even on a connection that is quiet for hours.
	KeepAlive time.Duration
	// MaxConnections caps concurrent client connections, held ones
	// included. Zero means DefaultMaxConnections (10,000); NoLimit (-1)
	// means no cap. A client beyond it is accepted and closed at once (in
	// STOMP mode after an ERROR frame saying so), logged and counted
	// (handover_proxy_connections_rejected_total): it learns now, rather
	// than waiting in the listen backlog behind connections that may never
	// end.
	MaxConnections int
	// MaxConnectionsPerSource caps the concurrent client connections from
	// one IP address, as MaxConnections caps them all. Zero (the default)
	// means no such cap: a sidecar's clients usually share its host's
	// loopback address, where this cap would be MaxConnections again. It is
	// for a sidecar listening beyond loopback, so that one host cannot take
	// every connection.
	MaxConnectionsPerSource int
	// OnFailover is OnFailoverClose (the default) or OnFailoverKeep.
	OnFailover string
	// ShutdownGrace is how long Shutdown lets live connections finish before
	// closing them (default 10s).
	ShutdownGrace time.Duration

	// TLS, unless nil, is the client side of the TLS this service speaks
	// to its backends (the clients' side stays plain TCP): RootCAs to
	// verify the broker's certificate with (always verified), ServerName
	// ("" means each backend's own host), Certificates if the broker asks
	// for a client certificate. Such a service serves every connection on
	// goroutines: the event loops move bytes with raw system calls and
	// splice(2), which cannot encrypt.
	TLS *tls.Config

	// goroutines serves every connection on goroutines (pair.go), even
	// where the event loops could (evloop_linux.go): tests cover that
	// path with it.
	goroutines bool
}

// Validate reports every problem with o at once. Zero values are valid:
// they mean the defaults.
func (o Options) Validate() error { return o.ValidateWith() }

// ValidateWith is Validate, with more problems (nil ones ignored) reported
// among o's, after those of the connection caps and OnFailover:
// stompproxy.Options checks its fields shared with Options so.
func (o Options) ValidateWith(more ...error) error {
	var errs []error
	if o.Name == "" {
		errs = append(errs, errors.New("name: must not be empty"))
	}
	if o.Listen == "" {
		errs = append(errs, errors.New("listen: must not be empty"))
	}
	nonNegative := []struct {
		name string
		v    time.Duration
	}{
		{"initial_reconnect_delay", o.InitialReconnectDelay},
		{"max_reconnect_delay", o.MaxReconnectDelay},
		{"dial_timeout", o.DialTimeout},
		{"idle_timeout", o.IdleTimeout},
		{"shutdown_grace", o.ShutdownGrace},
	}
	for _, d := range nonNegative {
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
	if o.MaxConnections < NoLimit {
		errs = append(errs, fmt.Errorf("max_connections: must be %d (no cap), 0 (the default, %d) or positive, got %d",
			NoLimit, DefaultMaxConnections, o.MaxConnections))
	}
	if o.MaxConnectionsPerSource < 0 {
		errs = append(errs, fmt.Errorf("max_connections_per_source: must be 0 (no cap, the default) or positive, got %d", o.MaxConnectionsPerSource))
	}
	switch o.OnFailover {
	case "", OnFailoverClose, OnFailoverKeep:
	default:
		errs = append(errs, fmt.Errorf("on_failover: want %q or %q, got %q", OnFailoverClose, OnFailoverKeep, o.OnFailover))
	}
	if o.TLS != nil && o.TLS.InsecureSkipVerify {
		errs = append(errs, errors.New("tls: the broker's certificate is always verified (InsecureSkipVerify is refused)"))
	}
	errs = append(errs, more...)
	d := o.withDefaults()
	if d.MaxReconnectDelay < d.InitialReconnectDelay {
		errs = append(errs, fmt.Errorf("max_reconnect_delay (%v) must not be below initial_reconnect_delay (%v)", d.MaxReconnectDelay, d.InitialReconnectDelay))
	}
	return errors.Join(errs...)
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	SetDefaults(&o.Timeout, &o.InitialReconnectDelay, &o.MaxReconnectDelay, &o.BackoffMultiplier,
		&o.DialTimeout, &o.KeepAlive, &o.ShutdownGrace)
	if o.OnFailover == "" {
		o.OnFailover = OnFailoverClose
	}
	return o
}

// SetDefaults sets each of the settings both data paths have (Options and
// stompproxy.Options) that has its zero value to its default.
func SetDefaults(timeout, initialReconnectDelay, maxReconnectDelay *time.Duration, backoffMultiplier *float64,
	dialTimeout, keepAlive, shutdownGrace *time.Duration) {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(timeout, DefaultTimeout)
	def(initialReconnectDelay, DefaultInitialReconnectDelay)
	def(maxReconnectDelay, DefaultMaxReconnectDelay)
	def(dialTimeout, DefaultDialTimeout)
	def(keepAlive, DefaultKeepAlive)
	def(shutdownGrace, DefaultShutdownGrace)
	if *backoffMultiplier == 0 {
		*backoffMultiplier = DefaultBackoffMultiplier
	}
}
