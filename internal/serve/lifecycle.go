package serve

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
)

// Lifecycle is the life of one listener, the part both data paths share
// (proxy's Service and stompproxy's): it owns the bound listener, the
// accept loop with the connection caps, the connections it admitted and
// their goroutines, and StopAccepting/Shutdown with their drain and grace.
// What a connection is and how it is served is the owner's, given in a
// LifecycleConfig: T is what the owner makes of an accepted connection
// (the bare *net.TCPConn for the TCP data path, a session for STOMP).
//
// Its lock is its own: an owner sees the live connections through Live
// and runs code under the lock only as LifecycleConfig's callbacks, so
// that the one decision whether a connection still gets in (made under
// the lock, against shutdown) cannot be bypassed.
type Lifecycle[T comparable] struct {
	// mu guards the fields below it, and serializes the callbacks Admit,
	// Forget and Draining with the start of shutdown.
	mu sync.Mutex

	cfg   LifecycleConfig[T]
	grace time.Duration
	log   *logrus.Entry
	ln    Acceptor
	// adm applies the connection caps; nil when the Listener does.
	adm *Admission
	// ctx is cancelled when shutdown begins: it wakes connections waiting
	// for a backend and aborts dials in flight.
	ctx    context.Context
	cancel context.CancelFunc
	// stopping is closed when shutdown begins; drained once, after that,
	// no connection goroutine is left.
	stopping chan struct{}
	drained  chan struct{}
	// loops tracks the accept loop and the watcher.
	loops    sync.WaitGroup
	accepted atomic.Uint64
	// acceptedTotal is cfg.Accepted's child for this service, looked up
	// once rather than per connection.
	acceptedTotal prometheus.Counter
	// stopped is set, under mu, when shutdown begins; Stopped reads it
	// without the lock.
	stopped atomic.Bool

	serving bool
	// why is the reason given to StopAcceptingBecause, "" for a shutdown.
	why   string
	conns int // connection goroutines
	// live holds what Admit made of each connection the accept loop
	// admitted, until its Serve has returned (Live).
	live map[T]struct{}
}

// LifecycleConfig is what a Lifecycle needs from its owner.
type LifecycleConfig[T comparable] struct {
	// Pkg prefixes Serve's errors ("proxy", "stompproxy"); Listening is
	// logged when Serve starts; Noun names the connections in shutdown logs
	// ("connections", "sessions").
	Pkg, Listening, Noun string
	// Accepted counts accepted connections (label service); Rejected
	// those refused at accept for a connection cap (labels service,
	// reason).
	Accepted, Rejected *prometheus.CounterVec
	// Reject, when set, closes a connection refused for a cap, why being
	// RejectMax or RejectPerSource, after telling the client in its
	// protocol; unset, the connection is just closed. It runs on the
	// accept loop, so it must not wait for the client.
	Reject func(c *net.TCPConn, why string)
	// Admit makes an accepted connection into a T, with the lifecycle's
	// lock held and shutdown not begun, so it must not block. Each T it
	// returns must be new (Live keeps them in a set).
	Admit func(*net.TCPConn) T
	// Serve runs in the connection's own goroutine until it is done.
	Serve func(T)
	// Forget, when set, runs with the lifecycle's lock held after Serve
	// returned.
	Forget func(T)
	// CloseAll closes every live connection, when the shutdown grace is
	// over, and returns how many there were.
	CloseAll func() int
	// Draining returns, with the lifecycle's lock held, the log fields
	// describing what is left when shutdown begins; conns counts the
	// connections (Enter's included).
	Draining func(conns int) logrus.Fields
	// Listener, when set, is accepted from instead of a listener bound
	// to the Settings' Listen; the connection caps are then the
	// Listener's to enforce. proxy's event loops accept on sockets of
	// their own and pass on here only the connections they hand to a
	// goroutine.
	Listener Acceptor
}

// Acceptor is what a Lifecycle accepts from: a *net.TCPListener, or the
// event loops' hand-offs.
type Acceptor interface {
	AcceptTCP() (*net.TCPConn, error)
	Close() error
	Addr() net.Addr
}

// NewLifecycle binds c.Listen, c having its defaults applied. The
// listener turns keepalive on for every accepted socket (ListenConfig).
// log is the service's entry.
func NewLifecycle[T comparable](c Settings, log *logrus.Entry, cfg LifecycleConfig[T]) (*Lifecycle[T], error) {
	ln := cfg.Listener
	if ln == nil {
		// SO_REUSEPORT (ListenConfig) would let the bind below succeed
		// beside another process's listener: make sure there is none.
		if err := ProbeFree(c.Listen); err != nil {
			return nil, err
		}
		lc := ListenConfig(c.KeepAlive)
		bound, err := lc.Listen(context.Background(), "tcp", c.Listen)
		if err != nil {
			return nil, err
		}
		ln = bound.(*net.TCPListener)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lifecycle[T]{
		cfg:      cfg,
		grace:    c.ShutdownGrace,
		log:      log,
		ln:       ln,
		ctx:      ctx,
		cancel:   cancel,
		stopping: make(chan struct{}),
		drained:  make(chan struct{}),
		live:     map[T]struct{}{},

		acceptedTotal: cfg.Accepted.WithLabelValues(c.Name),
	}
	if cfg.Listener == nil {
		l.adm = NewAdmission(c, log, cfg.Rejected)
	}
	return l, nil
}

// OrDiscard returns log, or when it is nil an entry whose events are
// discarded.
func OrDiscard(log *logrus.Entry) *logrus.Entry {
	if log != nil {
		return log
	}
	l := logrus.New()
	l.Out = io.Discard
	return logrus.NewEntry(l)
}

// Addr is the bound listen address.
func (l *Lifecycle[T]) Addr() net.Addr { return l.ln.Addr() }

// Context is cancelled when shutdown begins.
func (l *Lifecycle[T]) Context() context.Context { return l.ctx }

// Stopping is closed when shutdown begins.
func (l *Lifecycle[T]) Stopping() <-chan struct{} { return l.stopping }

// Stopped reports whether shutdown has begun. It takes no lock, so an
// owner may ask under a lock of its own: one that registers a connection
// (say, once it has reached a backend) only while Stopped is false, and
// whose CloseAll collects the connections under that same lock, misses
// none, because shutdown begins before CloseAll runs.
func (l *Lifecycle[T]) Stopped() bool { return l.stopped.Load() }

// Live returns what Admit made of each connection the accept loop
// admitted and whose Serve has not returned yet (not those counted by
// Enter), in no order.
func (l *Lifecycle[T]) Live() []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	live := make([]T, 0, len(l.live))
	for t := range l.live {
		live = append(live, t)
	}
	return live
}

// Accepted counts the connections accepted so far.
func (l *Lifecycle[T]) Accepted() uint64 { return l.accepted.Load() }

// Serve accepts connections until ctx is done or Shutdown is called.
// Unless sweep is nil, a watcher beside the accept loop calls it each time
// changed is closed (the Picker's answer changed: changed was taken before
// Serve), until shutdown; sweep returns the channel announcing the next
// change. When ctx ends, Serve shuts down itself,
// with ShutdownGrace for live connections to finish. Either way it returns
// once every goroutine it started has ended: nil on a clean stop. Serve may
// be called once.
func (l *Lifecycle[T]) Serve(ctx context.Context, changed <-chan struct{}, sweep func() <-chan struct{}) error {
	l.mu.Lock()
	if l.serving {
		l.mu.Unlock()
		return errors.New(l.cfg.Pkg + ": Serve called more than once")
	}
	l.serving = true
	if l.stopped.Load() {
		l.mu.Unlock()
		return nil
	}
	if sweep != nil {
		l.loops.Add(1)
		go l.watch(changed, sweep)
	}
	l.loops.Add(1)
	go l.acceptLoop()
	l.mu.Unlock()
	l.log.WithField("listen", l.Addr().String()).Info(l.cfg.Listening)

	select {
	case <-ctx.Done():
		l.Shutdown(context.Background())
	case <-l.stopping:
	}
	l.loops.Wait()
	<-l.drained
	return nil
}

// Shutdown stops accepting, wakes connections still waiting for a backend,
// and lets live connections finish until ctx is done or ShutdownGrace has
// passed, whichever comes first; then it closes them (CloseAll). It returns
// once every connection is gone: nil if they all finished or the grace ran
// out, ctx's error if ctx ended first. It may be called any number of
// times, from any goroutine; each call waits.
func (l *Lifecycle[T]) Shutdown(ctx context.Context) error {
	l.StopAccepting()
	grace := time.NewTimer(l.grace)
	defer grace.Stop()
	select {
	case <-l.drained:
		return nil
	case <-grace.C:
	case <-ctx.Done():
	}
	if n := l.cfg.CloseAll(); n > 0 {
		l.mu.Lock()
		what := "shutdown grace over"
		if l.why != "" {
			what = "drain grace over (" + l.why + ")"
		}
		l.mu.Unlock()
		l.log.WithField("closed", n).Warn(what + ": closing live " + l.cfg.Noun)
	}
	<-l.drained
	return ctx.Err()
}

// StopAccepting is the idempotent first half of Shutdown: it closes the
// listener at once and leaves live connections to finish; Shutdown then
// waits for them. A reload uses it to free the address for a replacement
// listener first. Order matters: stopped is set under the lock before the
// listener closes, so no connection goroutine starts after it (and an
// owner checking Stopped registers nothing more); cancelling the context
// then wakes every connection waiting for a backend.
func (l *Lifecycle[T]) StopAccepting() { l.StopAcceptingBecause("") }

// StopAcceptingBecause is StopAccepting for a reason other than shutting
// down, such as "listener replaced by a reload": the log lines then say
// that the listener drains and why, not that the process shuts down. The
// first call's reason stays.
func (l *Lifecycle[T]) StopAcceptingBecause(why string) {
	l.mu.Lock()
	if l.stopped.Load() {
		l.mu.Unlock()
		return
	}
	l.stopped.Store(true)
	l.why = why
	close(l.stopping)
	fields := l.cfg.Draining(l.conns)
	if l.conns == 0 {
		close(l.drained)
	}
	l.mu.Unlock()
	l.ln.Close()
	l.cancel()
	what := "shutting down"
	if why != "" {
		what = why
	}
	l.log.WithFields(fields).Info(what + ": not accepting; draining live " + l.cfg.Noun)
}

// Enter counts a connection accepted outside the accept loop (by an event
// loop) as live, unless shutdown has begun: then it reports false and the
// caller closes the connection. Leave ends what Enter began. Shutdown
// waits for entered connections as for its own.
func (l *Lifecycle[T]) Enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped.Load() {
		return false
	}
	l.conns++
	return true
}

// Leave is called once for each connection Enter admitted, when it ends.
func (l *Lifecycle[T]) Leave() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leaveLocked()
}

// leaveLocked is Leave with mu held.
func (l *Lifecycle[T]) leaveLocked() {
	l.conns--
	if l.stopped.Load() && l.conns == 0 {
		close(l.drained)
	}
}

// CountAccepted counts a connection accepted outside the accept loop.
func (l *Lifecycle[T]) CountAccepted() {
	l.accepted.Add(1)
	l.acceptedTotal.Inc()
}

// watch runs sweep after each change until shutdown.
func (l *Lifecycle[T]) watch(changed <-chan struct{}, sweep func() <-chan struct{}) {
	defer l.loops.Done()
	for {
		select {
		case <-changed:
		case <-l.stopping:
			return
		}
		changed = sweep()
	}
}

// acceptLoop accepts until shutdown. A connection over a cap is refused
// (see Admission) before it is admitted, counted as accepted or given a
// goroutine. (We don't use netutil.LimitListener: it wraps each
// *net.TCPConn, and io.Copy can only splice between bare *net.TCPConns.)
func (l *Lifecycle[T]) acceptLoop() {
	defer l.loops.Done()
	var delay time.Duration
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			select {
			case <-l.stopping:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off rather
			// than spin, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.WithError(err).WithField("retry_in", delay).Warn("accept failed")
			select {
			case <-time.After(delay):
			case <-l.stopping:
				return
			}
			continue
		}
		delay = 0
		var src netip.Addr
		if l.adm != nil {
			src = l.adm.SourceOf(c)
			if why := l.adm.Admit(src); why != "" {
				l.reject(c, why)
				continue
			}
		}
		l.mu.Lock()
		if l.stopped.Load() {
			l.mu.Unlock()
			c.Close()
			l.release(src)
			return
		}
		l.conns++
		t := l.cfg.Admit(c)
		l.live[t] = struct{}{}
		l.mu.Unlock()
		if l.cfg.Listener == nil {
			// A Listener's connections were counted by whoever
			// accepted them (CountAccepted).
			l.CountAccepted()
		}
		go l.serve(t, src)
	}
}

// reject refuses c for a connection cap.
func (l *Lifecycle[T]) reject(c *net.TCPConn, why string) {
	l.adm.Refused(why, func() string { return c.RemoteAddr().String() })
	if l.cfg.Reject != nil {
		l.cfg.Reject(c, why)
	} else {
		c.Close()
	}
}

// serve owns one connection's goroutine, src being its source address
// as admitted. When it is done it frees the connection's place under the
// caps and, when it is the last one during shutdown, reports the
// lifecycle drained.
func (l *Lifecycle[T]) serve(t T, src netip.Addr) {
	defer l.done(t, src)
	l.cfg.Serve(t)
}

// done ends what the accept loop began for t, a connection from src.
func (l *Lifecycle[T]) done(t T, src netip.Addr) {
	l.release(src)
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.live, t)
	if l.cfg.Forget != nil {
		l.cfg.Forget(t)
	}
	l.leaveLocked()
}

// release frees the place under the caps of a connection from src.
func (l *Lifecycle[T]) release(src netip.Addr) {
	if l.adm != nil {
		l.adm.Release(src)
	}
}
