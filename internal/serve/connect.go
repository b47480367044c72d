package serve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Why a client connection was closed without reaching a backend, as
// Connect returns it. proxy maps each to a reason label of
// handover_proxy_connections_failed_total.
var (
	ErrTimeout     = errors.New("no backend reached within the timeout")
	ErrAttempts    = errors.New("max reconnect attempts used up")
	ErrNoTarget    = errors.New("no target (no master now) and timeout is negative: refused at once")
	ErrUnreachable = errors.New("no target could be dialed and timeout is negative: refused at once")
	ErrShutdown    = errors.New("shutting down")
	// ErrFinal marks an error of Connect's try that ends the search for a
	// backend at once.
	ErrFinal = errors.New("final")
)

// Picker is what a Connector asks where to dial: proxy.Picker, whose
// doc comment is the contract (health.Monitor implements it). It is
// spelled out here because proxy imports this package, not the reverse;
// any proxy.Picker is one.
type Picker interface {
	// Targets returns the addresses to dial, in preference order (empty:
	// no master now), and a channel closed when the answer changes.
	Targets() ([]string, <-chan struct{})
	// Recheck asks for a health re-check, after a round of failed dials.
	Recheck()
}

// Connector finds backends, for both data paths: proxy's for a new
// client, stompproxy's for a session's first connection and every resume.
type Connector struct {
	// Picker says where to dial.
	Picker Picker
	// Dialer dials the backends (backendDialer, from NewConnector).
	Dialer net.Dialer
	// TLS, unless nil, makes each attempt a TLS handshake after the dial
	// (Settings.TLS): one that fails counts as a failed dial.
	TLS *tls.Config
	// Settings are the service's, defaults applied; Connect uses Name and
	// the reconnect fields.
	Settings Settings
	// DialErrors counts failed attempts (labels service, backend).
	DialErrors *prometheus.CounterVec
}

// NewConnector does for both data paths' New what they do first: it
// returns invalid (their Options.Validate's answer) unless nil, an error
// prefixed with pkg if picker is nil, and else the Connector of a service
// with settings o (defaults applied), counting failed attempts in
// dialErrors (labels service, backend). The Dialer turns keepalive on for backend sockets, as the
// listener does for accepted ones, and connects cheaply (backendDialer in
// sockopt_*.go). TCP_NODELAY stays on, as
// Go sets it: STOMP frames are small, and a proxy that batched them would
// add Nagle's delay to every hop.
func NewConnector(pkg string, invalid error, picker Picker, o Settings, dialErrors *prometheus.CounterVec) (Connector, error) {
	switch {
	case invalid != nil:
		return Connector{}, invalid
	case picker == nil:
		return Connector{}, errors.New(pkg + ": a Picker is required")
	}
	return Connector{Picker: picker, Dialer: backendDialer(o.KeepAlive), TLS: o.TLS, Settings: o, DialErrors: dialErrors}, nil
}

// Connect finds a backend, the way ActiveMQ's failover transport finds a
// broker for its application: while there is no target it holds the client
// and waits for the Picker's answer to change; it dials the targets in
// preference order; after a round of failed attempts it asks for a health
// re-check and pauses, the pause growing from InitialReconnectDelay by
// BackoffMultiplier up to MaxReconnectDelay. It gives up at end (zero:
// negative Timeout, so no waiting and a single round), after
// MaxReconnectAttempts rounds, or when ctx ends (ErrShutdown).
//
// try, unless nil, completes the attempt on a dialed connection (for a
// STOMP session, the CONNECT handshake), so a broker that accepts and then
// fails counts as a failed attempt like a refused dial; Connect closes the
// connection when try fails. A try error wrapping ErrFinal ends the search
// at once (a broker's ERROR reply to CONNECT is an answer, not an outage),
// returned with the address. note, unless nil, is told when Connect starts
// holding for lack of a target (addr "", err nil) and of each failed
// attempt, for debug logs.
//
// The client's socket is not read meanwhile: whatever it sends waits in the
// kernel and is proxied once a backend is reached, so a STOMP client's
// CONNECT frame survives the wait. The flip side: a client that gives up
// and closes while held is not noticed (its FIN looks like a half-close)
// until a backend is reached, when its pair ends at once, or Timeout.
// Keep Timeout near the clients' own connect timeout.
//
// With TLS set, the connection returned (and given to try) is a *tls.Conn
// whose handshake is done; otherwise it is a *net.TCPConn.
func (c *Connector) Connect(ctx context.Context, end time.Time, try func(nc Conn, addr string) error,
	note func(addr string, err error)) (Conn, string, error) {
	// The timer for end is made the first time there is something to wait
	// for: most connections dial their first target at once.
	var deadline <-chan time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	armDeadline := func() {
		if timer == nil && !end.IsZero() {
			timer = time.NewTimer(time.Until(end))
			deadline = timer.C
		}
	}
	o := &c.Settings
	delay := o.InitialReconnectDelay
	var lastErr error
	// giveUp wraps why with the last dial error, which is what an operator
	// needs to see ("connection refused" or "i/o timeout"); with try, it
	// may be the handshake's.
	giveUp := func(why error) error {
		if lastErr != nil && !errors.Is(why, ErrShutdown) {
			if try != nil {
				return fmt.Errorf("%w (last error: %v)", why, lastErr)
			}
			return fmt.Errorf("%w (last dial error: %v)", why, lastErr)
		}
		return why
	}
	for round := 1; ; round++ {
		targets, changed := c.Picker.Targets()
		if len(targets) == 0 {
			if end.IsZero() {
				return nil, "", giveUp(ErrNoTarget)
			}
			if note != nil {
				note("", nil)
			}
			armDeadline()
		}
		for len(targets) == 0 {
			select {
			case <-changed:
			case <-deadline:
				return nil, "", giveUp(ErrTimeout)
			case <-ctx.Done():
				return nil, "", ErrShutdown
			}
			targets, changed = c.Picker.Targets()
		}

		for _, addr := range targets {
			nc, err := c.dial(ctx, addr, end)
			if err == nil {
				if try == nil {
					return nc, addr, nil
				}
				if err = try(nc, addr); err == nil {
					return nc, addr, nil
				}
				nc.Close()
				if errors.Is(err, ErrFinal) {
					return nil, addr, err
				}
			}
			if ctx.Err() != nil {
				return nil, "", ErrShutdown
			}
			lastErr = err
			c.DialErrors.WithLabelValues(o.Name, addr).Inc()
			if note != nil {
				note(addr, err)
			}
		}
		// Passive health: a refused or timed-out dial may be news the
		// periodic checks have not caught yet. The re-check changes the
		// answer (and closes changed) sooner than the next check would.
		c.Picker.Recheck()

		if end.IsZero() {
			return nil, "", giveUp(ErrUnreachable)
		}
		if n := o.MaxReconnectAttempts; n > 0 && round >= n {
			return nil, "", giveUp(ErrAttempts)
		}
		armDeadline()
		pause := time.NewTimer(delay)
		select {
		case <-pause.C:
		case <-changed:
			// A new answer (often the re-check's): try it now rather
			// than sleeping out a backoff meant for the old one.
			pause.Stop()
		case <-deadline:
			pause.Stop()
			return nil, "", giveUp(ErrTimeout)
		case <-ctx.Done():
			pause.Stop()
			return nil, "", ErrShutdown
		}
		delay = min(time.Duration(float64(delay)*o.BackoffMultiplier), o.MaxReconnectDelay)
	}
}

// dial makes one attempt at addr, the dial and with TLS the handshake,
// bounded together by DialTimeout, by end (unless zero) and by ctx.
func (c *Connector) dial(ctx context.Context, addr string, end time.Time) (Conn, error) {
	limit := time.Now().Add(c.Settings.DialTimeout)
	if !end.IsZero() && end.Before(limit) {
		limit = end
	}
	ctx, cancel := context.WithDeadline(ctx, limit)
	defer cancel()
	nc, err := c.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if c.TLS == nil {
		return nc.(*net.TCPConn), nil
	}
	tc, err := startTLS(ctx, nc.(*net.TCPConn), addr, c.TLS)
	if err != nil {
		return nil, err // not a nil *tls.Conn in a non-nil Conn
	}
	return tc, nil
}
