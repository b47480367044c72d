package stompproxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"handover/frame"
	"handover/internal/serve"
	"handover/proxy"
)

// Service serves one listener in STOMP mode. Create it with New, run it
// with Serve, stop it with Shutdown (or by cancelling Serve's context).
type Service struct {
	opts    Options
	picker  proxy.Picker
	log     *logrus.Entry
	metrics *Metrics
	// lc owns the listener, the sessions (Live) and their goroutines.
	lc   *serve.Lifecycle[*session]
	conn serve.Connector
	// prefix makes producer ids unique across sidecars and restarts:
	// brokerd remembers producers in its store, so a reused id with its
	// sequence starting again at 1 would have new SENDs dropped.
	prefix string
	seq    atomic.Uint64

	resumed     atomic.Uint64
	replayed    atomic.Uint64
	duplicates  atomic.Uint64
	suppressed  atomic.Uint64
	unresumable atomic.Uint64
	// held counts sessions that lost their upstream and wait for a master
	// (FailoverCounts).
	held atomic.Int64
}

// Status is a snapshot of a Service, for /status pages.
type Status struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	// Active counts sessions open now; Paused those of them without a
	// broker connection (waiting for a master, at their start or after
	// losing theirs); Backends splits the others by backend.
	Active   int            `json:"active"`
	Paused   int            `json:"paused"`
	Backends map[string]int `json:"backends"`
	// Accepted counts client connections accepted so far.
	Accepted uint64 `json:"accepted"`
	// Resumed counts upstream losses survived without closing the client.
	Resumed uint64 `json:"resumed"`
	// FramesReplayed counts frames re-sent to new masters.
	FramesReplayed uint64 `json:"frames_replayed"`
	// DuplicatesDropped counts replayed SENDs the new master confirmed:
	// against brokerd each of them was stored at most once, so it bounds
	// the duplicates brokerd dropped from above.
	DuplicatesDropped uint64 `json:"duplicates_dropped"`
	// RedeliveriesSuppressed counts redeliveries of messages the client
	// already had, not passed on again.
	RedeliveriesSuppressed uint64 `json:"redeliveries_suppressed"`
	// Unresumable counts sessions closed because an upstream loss could not
	// be resumed (over MaxReplayBytes, a COMMIT in flight, no master in
	// time, another protocol version).
	Unresumable uint64 `json:"unresumable"`
}

// New validates opts, applies the defaults and binds the listener, so that
// the caller (and a test) learns the real address before Serve. picker is
// required; log may be nil (events are discarded) and so may m (series are
// kept but not registered).
func New(opts Options, picker proxy.Picker, log *logrus.Entry, m *Metrics) (*Service, error) {
	if m == nil {
		m = NewMetrics(nil)
	}
	d := opts.withDefaults()
	conn, err := serve.NewConnector("stompproxy", opts.Validate(), picker, d.Settings, m.dialErrors)
	if err != nil {
		return nil, err
	}
	var id [9]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	s := &Service{
		opts:    d,
		picker:  picker,
		log:     serve.OrDiscard(log).WithField("service", d.Name),
		metrics: m,
		conn:    conn,
		prefix:  hex.EncodeToString(id[:]),
	}
	lc, err := serve.NewLifecycle(conn.Settings, s.log, serve.LifecycleConfig[*session]{
		Pkg: "stompproxy", Listening: "listening (STOMP mode)", Noun: "sessions",
		Accepted: m.accepted, Rejected: m.rejected,
		Reject:   reject,
		Admit:    s.newSession,
		Serve:    s.serveSession,
		CloseAll: func() int { return s.closeAll(reasonShutdown) },
		// Every session is one the accept loop admitted, so conns
		// counts the live sessions.
		Draining: func(conns int) logrus.Fields { return logrus.Fields{"live": conns} },
	})
	if err != nil {
		return nil, err
	}
	s.lc = lc
	return s, nil
}

// Addr is the bound listen address.
func (s *Service) Addr() net.Addr { return s.lc.Addr() }

// Shutdown stops accepting, wakes sessions waiting for a master, and lets
// live sessions finish until ctx is done or ShutdownGrace has passed; then
// it closes them. It is serve.Lifecycle.Shutdown: idempotent, and each
// call waits until every session is gone.
func (s *Service) Shutdown(ctx context.Context) error { return s.lc.Shutdown(ctx) }

// StopAccepting closes the listener at once, the first step of Shutdown,
// and leaves live sessions to finish; a reload uses it to free the address
// for a replacement listener first.
func (s *Service) StopAccepting() { s.lc.StopAccepting() }

// StopAcceptingBecause is StopAccepting for a reason other than shutting
// down, which the log lines give ("listener replaced by a reload").
func (s *Service) StopAcceptingBecause(why string) { s.lc.StopAcceptingBecause(why) }

// FailoverCounts returns what failovers have done to the service's
// sessions: those closed because they could not be resumed, and those that
// lost their broker and wait for a master now. It takes no lock.
func (s *Service) FailoverCounts() proxy.FailoverCounts {
	return proxy.FailoverCounts{Closed: s.unresumable.Load(), Held: int(s.held.Load())}
}

// Serve accepts clients until ctx is done or Shutdown is called, as
// serve.Lifecycle.Serve does; beside it a watcher moves sessions off
// backends no longer targeted (moveOff) after each change of the Picker's
// answer. It may be called once.
func (s *Service) Serve(ctx context.Context) error {
	// Taken before the first accept: any change from here on wakes the
	// watcher.
	_, changed := s.picker.Targets()
	return s.lc.Serve(ctx, changed, s.moveOff)
}

// Status returns a snapshot of the service.
func (s *Service) Status() Status {
	st := Status{
		Name:                   s.opts.Name,
		Listen:                 s.Addr().String(),
		Backends:               map[string]int{},
		Accepted:               s.lc.Accepted(),
		Resumed:                s.resumed.Load(),
		FramesReplayed:         s.replayed.Load(),
		DuplicatesDropped:      s.duplicates.Load(),
		RedeliveriesSuppressed: s.suppressed.Load(),
		Unresumable:            s.unresumable.Load(),
	}
	sessions := s.lc.Live()
	st.Active = len(sessions)
	for _, ss := range sessions {
		if b := ss.backend(); b != "" {
			st.Backends[b]++
		} else {
			st.Paused++
		}
	}
	return st
}

// rejectWriteTimeout bounds the write of the ERROR that refuses a
// connection. The socket is new and its buffer empty, so the write does not
// wait for the client; the bound is a guard for the accept loop it runs on.
const rejectWriteTimeout = 100 * time.Millisecond

// reject tells a client refused for a connection cap (serve.RejectMax,
// serve.RejectPerSource) so in an ERROR frame, then closes it, as a broker
// closes after an ERROR (STOMP 1.2 "ERROR").
func reject(c *net.TCPConn, why string) {
	msg := "too many connections"
	if why == serve.RejectPerSource {
		msg = "too many connections from this address"
	}
	c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
	w := frame.NewWriter(c)
	if w.Write(errorFrame(msg)) == nil {
		w.Flush()
	}
	c.Close()
}

func (s *Service) serveSession(ss *session) {
	s.metrics.active.WithLabelValues(s.opts.Name).Inc()
	reason := ss.run()
	s.metrics.active.WithLabelValues(s.opts.Name).Dec()
	s.metrics.closed.WithLabelValues(s.opts.Name, reason).Inc()
}

// newSessionID returns a producer id no other session of any sidecar has
// used: the service's random prefix and a counter.
func (s *Service) newSessionID() string {
	return s.prefix + "-" + strconv.FormatUint(s.seq.Add(1), 10)
}

// moveOff runs after every change of the Picker's answer, and returns the
// channel announcing the next: a session whose backend left the answer
// loses its upstream connection at once and resumes on the new master,
// rather than talking to a broker that has stepped down (or is frozen).
// A backend the Picker keeps (proxy.Keeper: a draining backend, a master
// removed from the list) is left alone: its sessions stay until they end,
// as TCP mode leaves its connections, while new ones go elsewhere.
func (s *Service) moveOff() <-chan struct{} {
	targets, changed := s.picker.Targets()
	stale := staleness(s.picker, targets)
	n := 0
	from := map[string]bool{}
	for _, ss := range s.lc.Live() {
		if b := ss.backend(); b != "" && stale(b) {
			ss.dropUpstream("backend is no longer a target")
			n++
			from[b] = true
		}
	}
	if n > 0 {
		s.log.WithFields(logrus.Fields{"targets": targets, "sessions": n, "from": strings.Join(slices.Sorted(maps.Keys(from)), " ")}).
			Warn("targets changed: moving sessions off backends no longer targeted; their clients stay connected")
	}
	return changed
}

// staleness returns whether a session on a backend must move off it,
// given picker's answer targets: the backend is not among them, and picker
// (if a proxy.Keeper) does not keep it. The answer is asked once per
// backend, not once per session.
func staleness(picker proxy.Picker, targets []string) func(backend string) bool {
	keeper, _ := picker.(proxy.Keeper)
	seen := map[string]bool{}
	return func(backend string) bool {
		if slices.Contains(targets, backend) {
			return false
		}
		if keeper == nil {
			return true
		}
		stale, ok := seen[backend]
		if !ok {
			stale = !keeper.Keep(backend)
			seen[backend] = stale
		}
		return stale
	}
}

// closeAll closes every session and returns how many there were.
func (s *Service) closeAll(reason string) int {
	sessions := s.lc.Live()
	for _, ss := range sessions {
		ss.close(reason)
	}
	return len(sessions)
}
