// Package proxy is handover's data path: it listens where unchanged legacy
// clients (STOMP or any TCP protocol) expect their broker, and sends each
// connection to whichever broker is master now, as a Picker says.
//
// A Service is one listener. For each client it accepts, it holds the
// connection until there is a target, dials it (retrying with backoff, like
// ActiveMQ's failover transport), then copies bytes both ways until either
// side is done. When the Picker's answer changes, connections to a backend
// that is no longer a target are closed (Options.OnFailover), so clients
// reconnect, through the proxy, to the new master.
//
// On Linux most connections never get a goroutine: event loops, one per
// P but one, accept them, dial the master and move their bytes with raw
// system calls, as HAProxy's threads do (evloop_linux.go: the loops, their
// waiting, timers and commands; evconn_linux.go: one connection's dial,
// bytes and close). A client they can't serve at once (no master now, a
// failed dial) is handed to the goroutine path, which every platform has.
//
// Reading order for one client connection on the goroutine path: proxy.go
// (accept, failover, shutdown), pair.go (the two copiers), relay.go (how a
// copier moves bytes: small messages through a buffer, bulk data spliced),
// meter.go (counting bytes and idleness without touching the bytes). The
// listener's life, the connection caps and finding a backend (hold, dial,
// back off) are internal/serve's, shared with stompproxy.
package proxy

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"handover/internal/serve"
)

// Picker says where new connections go. health.Monitor implements it.
type Picker interface {
	// Targets returns the addresses to dial, in preference order (empty:
	// no master now), and a channel closed the next time the answer
	// changes. Callers must not modify the slice. It must not block: it is
	// called for every new connection.
	Targets() ([]string, <-chan struct{})
	// Recheck asks for an immediate health re-check of every backend
	// (passive health: a failed dial or an upstream reset on a live
	// connection). It must not block, and should coalesce bursts: a broker
	// dying under a thousand clients brings a thousand calls at once.
	Recheck()
}

// Keeper is implemented by a Picker that wants live connections to some
// addresses kept although new connections no longer go there: a master
// removed from the backend list (health.Monitor.Keep). Without it, a change
// of targets closes every connection to an address no longer targeted.
type Keeper interface {
	Keep(addr string) bool
}

// Service proxies one listener's connections. Create it with New, run it
// with Serve, stop it with Shutdown (or by cancelling Serve's context).
type Service struct {
	opts    Options
	picker  Picker
	log     *logrus.Entry
	metrics *Metrics
	series  serviceSeries
	// lc owns the listener and the connection goroutines.
	lc   *serve.Lifecycle[*net.TCPConn]
	conn serve.Connector

	held atomic.Int64
	// failoverClosed counts connections closed for a change of targets
	// (FailoverCounts); tally gathers one change's into one log line.
	failoverClosed atomic.Uint64
	tally          sweepTally
	// forceCounting makes every pair count bytes itself, as on systems
	// without TCP_INFO; tests and benchmarks use it to cover and measure
	// that path on Linux.
	forceCounting bool

	// mu guards pairs: the goroutine path's connections that reached a
	// backend. register adds one only while lc has not stopped, and
	// closeAll collects them under mu too, so none outlives a shutdown
	// (see serve.Lifecycle.Stopped). lc's Draining callback takes mu
	// under lc's lock, so nothing holding mu may wait for lc's lock.
	mu    sync.Mutex
	pairs map[*pair]struct{}
	// loops serve connections on Linux (evloop_linux.go); nil where
	// every connection gets goroutines.
	loops eventLoops
}

// eventLoops is the event-loop data path as the Service drives it. It is
// the Lifecycle's Acceptor: the connections it hands to goroutines come
// out of AcceptTCP.
type eventLoops interface {
	serve.Acceptor
	// start runs the loops, and reports whether this was its first
	// call, whose caller must call stop: that ends them once their
	// connections are gone (or closes their sockets if they never ran).
	start() bool
	stop()
	// loopCount is how many loops there are.
	loopCount() int
	// sweep asks every loop to close its connections to backends no
	// longer targeted, and returns how many loops will report it to
	// endSweep, which the caller has counted in beforehand (beginSweep);
	// closeAll closes all, and returns how many were proxied.
	sweep() int
	closeAll() int
	// status adds the loops' proxied connections to st.
	status(st *ServiceStatus)
	// release frees the place under the connection caps of a
	// connection handed off.
	release(c *net.TCPConn)
	// heldSince returns when a loop accepted c, a connection it handed
	// off, the first time it is asked.
	heldSince(c *net.TCPConn) (time.Time, bool)
}

// ServiceStatus is a snapshot of a Service, for /status pages.
type ServiceStatus struct {
	Name string `json:"name"`
	// Listen is the bound address.
	Listen string `json:"listen"`
	// Active counts connections being proxied now; Backends splits them by
	// backend address.
	Active   int            `json:"active"`
	Backends map[string]int `json:"backends"`
	// Held counts clients accepted and still looking for a backend.
	Held int `json:"held"`
	// Accepted counts every client connection accepted so far.
	Accepted uint64 `json:"accepted"`
}

// New validates opts, applies the defaults and binds the listener, so that
// the caller (and a test) learns the real address before Serve. picker is
// required; log may be nil (events are discarded) and so may m (series are
// kept but not registered).
func New(opts Options, picker Picker, log *logrus.Entry, m *Metrics) (*Service, error) {
	if m == nil {
		m = NewMetrics(nil)
	}
	d := opts.withDefaults()
	conn, err := serve.NewConnector("proxy", opts.Validate(), picker, d.Settings, m.dialErrors)
	if err != nil {
		return nil, err
	}
	opts = d
	s := &Service{
		opts:    opts,
		picker:  picker,
		log:     serve.OrDiscard(log).WithField("service", opts.Name),
		metrics: m,
		series:  m.serviceSeries(opts.Name),
		conn:    conn,
		pairs:   map[*pair]struct{}{},
	}
	cfg := serve.LifecycleConfig[*net.TCPConn]{
		Pkg: "proxy", Listening: "listening", Noun: "connections",
		Accepted: m.accepted, Rejected: m.rejected,
		Admit:    func(c *net.TCPConn) *net.TCPConn { return c },
		Serve:    s.serveConn,
		CloseAll: func() int { return s.closeAll(reasonShutdown) },
		Draining: func(conns int) logrus.Fields {
			st := ServiceStatus{Backends: map[string]int{}}
			if s.loops != nil {
				s.loops.status(&st)
			}
			s.mu.Lock()
			live := len(s.pairs) + st.Active
			s.mu.Unlock()
			return logrus.Fields{"live": live, "waiting": conns - live}
		},
	}
	if !opts.goroutines && opts.TLS == nil {
		if s.loops, err = newEventLoops(s); err != nil {
			return nil, err
		}
	}
	if s.loops != nil {
		cfg.Listener = s.loops
		cfg.Forget = s.loops.release
	}
	s.lc, err = serve.NewLifecycle(conn.Settings, s.log, cfg)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Addr is the bound listen address.
func (s *Service) Addr() net.Addr { return s.lc.Addr() }

// ProbeFree returns an error wrapping serve.ErrAddrInUse if another socket
// holds addr: the check New makes before binding, so that a second process
// cannot share a port through SO_REUSEPORT (serve.ProbeFree says how). The
// sidecar makes it for its admin listener too.
func ProbeFree(addr string) error { return serve.ProbeFree(addr) }

// Serve accepts connections until ctx is done or Shutdown is called. When
// ctx ends, Serve shuts down itself, with ShutdownGrace for live connections
// to finish. Either way it returns once every goroutine it started has
// ended: nil on a clean stop. Serve may be called once.
func (s *Service) Serve(ctx context.Context) error {
	if s.loops != nil && s.loops.start() {
		defer s.loops.stop()
	}
	if s.opts.OnFailover != OnFailoverClose {
		return s.lc.Serve(ctx, nil, nil)
	}
	// Taken before the first accept: any change from here on wakes the
	// watcher, which closes connections to backends that left the answer
	// (closeStale).
	_, changed := s.picker.Targets()
	return s.lc.Serve(ctx, changed, s.closeStale)
}

// Shutdown stops accepting, closes clients still waiting for a backend, and
// lets live connections finish until ctx is done or ShutdownGrace has
// passed, whichever comes first; then it closes them. It returns once every
// connection is gone: nil if they all finished or the grace ran out, ctx's
// error if ctx ended first. It may be called any number of times, from any
// goroutine; each call waits.
func (s *Service) Shutdown(ctx context.Context) error { return s.lc.Shutdown(ctx) }

// StopAccepting closes the listener at once, the first step of Shutdown,
// and leaves live connections to finish; Shutdown then waits for them. A
// reload uses it to free the address for a replacement listener first.
func (s *Service) StopAccepting() { s.lc.StopAccepting() }

// StopAcceptingBecause is StopAccepting for a reason other than shutting
// down, which the log lines give ("listener replaced by a reload").
func (s *Service) StopAcceptingBecause(why string) { s.lc.StopAcceptingBecause(why) }

// Status returns a snapshot of the service.
func (s *Service) Status() ServiceStatus {
	st := ServiceStatus{
		Name:     s.opts.Name,
		Listen:   s.Addr().String(),
		Backends: map[string]int{},
		Held:     int(s.held.Load()),
		Accepted: s.lc.Accepted(),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Active = len(s.pairs)
	for p := range s.pairs {
		st.Backends[p.backend]++
	}
	if s.loops != nil {
		s.loops.status(&st)
	}
	return st
}

// connLog is a client connection's log entry until it has a backend, built
// on first use: at the default level most connections log nothing, and an
// entry's fields cost allocations for every connection. Only the
// connection's goroutine uses it; the pair has its own (pair.logger).
type connLog struct {
	s      *Service
	client *net.TCPConn
	entry  *logrus.Entry
}

// get returns the entry, with the client's address.
func (l *connLog) get() *logrus.Entry {
	if l.entry == nil {
		l.entry = l.s.log.WithField("client", l.client.RemoteAddr().String())
	}
	return l.entry
}

// note logs, at debug level, what Connect tells it: holding for lack of a
// target (addr ""), or a failed dial.
func (l *connLog) note(addr string, err error) {
	if !l.s.debugging() {
		return
	}
	if addr == "" {
		l.get().Debug("no target: holding the connection until there is one")
		return
	}
	l.get().WithField("backend", addr).WithError(err).Debug("dial failed")
}

// debugging reports whether debug events are written at all, so that
// callers build them only then.
func (s *Service) debugging() bool { return s.log.Logger.IsLevelEnabled(logrus.DebugLevel) }

// serveConn owns one client connection from accept to close.
func (s *Service) serveConn(client *net.TCPConn) {
	log := &connLog{s: s, client: client}
	debug := s.debugging()
	if debug {
		log.get().Debug("accepted")
	}

	start := time.Now()
	if s.loops != nil {
		if t, ok := s.loops.heldSince(client); ok {
			start = t // the loop's attempt counts against Timeout
		}
	}
	var end time.Time // zero: negative Timeout, never hold
	if s.opts.Timeout > 0 {
		end = start.Add(s.opts.Timeout)
	}
	s.held.Add(1)
	s.series.held.Inc()
	p, err := s.reach(client, log, end)
	s.held.Add(-1)
	s.series.held.Dec()
	if err != nil {
		client.Close()
		reason := failReason(err)
		s.metrics.failed.WithLabelValues(s.opts.Name, reason).Inc()
		l := log.get().WithError(err).WithFields(logrus.Fields{"reason": reason, "waited": time.Since(start).Round(time.Millisecond)})
		if errors.Is(err, serve.ErrShutdown) {
			l.Debug("closing client: shutting down before a backend was reached")
		} else {
			l.Warn("closing client: gave up looking for a backend")
		}
		return
	}

	s.metrics.started(p, p.series)
	if debug {
		p.logger().WithField("waited", time.Since(start).Round(time.Millisecond)).Debug("proxying")
	}
	reason := p.run()
	s.mu.Lock()
	delete(s.pairs, p)
	s.mu.Unlock()
	s.metrics.ended(p, p.series, reason)
	if debug {
		p.logger().WithFields(logrus.Fields{
			"reason": reason,
			"up":     p.up.final.Load(),
			"down":   p.down.final.Load(),
			"took":   time.Since(p.start).Round(time.Millisecond),
		}).Debug("closed")
	}
}

// errStale means the backend just dialed stopped being a target while it
// was being dialed.
var errStale = errors.New("backend is no longer a target")

// reach connects the client to a backend and registers the pair. A backend
// that stopped being a target while it was dialed is dropped and the search
// goes on: the sweep for that change may have run already, so a pair
// registered now would outlive the failover it should have followed.
// Nothing has been read from the client yet, so starting over loses nothing.
func (s *Service) reach(client *net.TCPConn, log *connLog, end time.Time) (*pair, error) {
	for {
		up, backend, err := s.conn.Connect(s.lc.Context(), end, nil, log.note)
		if err != nil {
			return nil, err
		}
		p := newPair(s, client, up, backend)
		err = s.register(p)
		if err == nil {
			return p, nil
		}
		up.Close()
		if !errors.Is(err, errStale) {
			return nil, err
		}
		if s.debugging() {
			log.get().WithField("backend", backend).Debug("backend stopped being a target while being dialed: looking again")
		}
	}
}

// register adds p to the live pairs, unless shutdown has begun or (with
// OnFailoverClose) p's backend is not among the current targets.
//
// Both register and closeStale read the Picker's answer under mu, so each
// sees the latest: a pair registered after a sweep was checked against an
// answer at least as new as the sweep's, and a later change wakes the
// watcher for another sweep. No pair can slip past a failover. Likewise
// shutdown: lc stops before closeAll runs, and closeAll collects the
// pairs under mu, so a pair registered at all is among them.
func (s *Service) register(p *pair) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lc.Stopped() {
		return serve.ErrShutdown
	}
	if s.opts.OnFailover == OnFailoverClose {
		targets, _ := s.picker.Targets()
		if !slices.Contains(targets, p.backend) {
			return errStale
		}
	}
	s.pairs[p] = struct{}{}
	return nil
}

// closeStale reads the Picker's current answer, closes every pair whose
// backend is not in it, and returns the channel that announces the next
// change. It runs after every change (OnFailoverClose). With mode master,
// that closes every connection to the old master: its clients reconnect,
// are held while there is no master, and reach the new one.
func (s *Service) closeStale() <-chan struct{} {
	s.mu.Lock()
	targets, changed := s.picker.Targets()
	isStale := staleness(s.picker, targets)
	var stale []*pair
	from := map[string]int{}
	for p := range s.pairs {
		if isStale(p.backend) {
			stale = append(stale, p)
			from[p.backend]++
		}
	}
	s.mu.Unlock()
	loops := 0
	if s.loops != nil {
		loops = s.loops.loopCount()
	}
	// Counted before the loops are asked, so that the line is logged
	// once, by the last of them (failover.go).
	s.beginSweep(targets, from, loops)
	if s.loops != nil {
		for range loops - s.loops.sweep() {
			s.endSweep(nil) // coalesced with a sweep already asked for
		}
	}
	debug := s.debugging()
	for _, p := range stale {
		if debug {
			p.logger().Debug("closing: backend is no longer a target")
		}
		p.close(reasonFailover)
	}
	return changed
}

// staleness returns whether a live connection to a backend is stale
// given picker's answer targets: the backend is not among them, and
// picker (a Keeper) does not ask to keep it.
func staleness(picker Picker, targets []string) func(backend string) bool {
	keeper, _ := picker.(Keeper)
	return func(backend string) bool {
		return !slices.Contains(targets, backend) && (keeper == nil || !keeper.Keep(backend))
	}
}

// closeAll closes every live pair and returns how many there were.
func (s *Service) closeAll(reason string) int {
	s.mu.Lock()
	pairs := make([]*pair, 0, len(s.pairs))
	for p := range s.pairs {
		pairs = append(pairs, p)
	}
	s.mu.Unlock()
	for _, p := range pairs {
		p.close(reason)
	}
	n := len(pairs)
	if s.loops != nil {
		n += s.loops.closeAll()
	}
	return n
}
