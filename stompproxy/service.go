package stompproxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"handover/proxy"
)

// Service serves one listener in STOMP mode. Create it with New, run it
// with Serve, stop it with Shutdown (or by cancelling Serve's context).
type Service struct {
	opts    Options
	picker  proxy.Picker
	log     *logrus.Entry
	metrics *Metrics
	ln      *net.TCPListener
	dialer  net.Dialer
	// prefix makes producer ids unique across sidecars and restarts:
	// brokerd remembers producers in its store, so a reused id with its
	// sequence starting again at 1 would have new SENDs dropped.
	prefix string
	seq    atomic.Uint64
	// sem holds one token per client session when MaxConnections caps
	// them; nil when uncapped.
	sem chan struct{}
	// ctx is cancelled when shutdown begins: it wakes sessions waiting for
	// a master and aborts dials in flight.
	ctx      context.Context
	cancel   context.CancelFunc
	stopping chan struct{}
	drained  chan struct{}
	loops    sync.WaitGroup

	accepted    atomic.Uint64
	resumed     atomic.Uint64
	replayed    atomic.Uint64
	duplicates  atomic.Uint64
	suppressed  atomic.Uint64
	unresumable atomic.Uint64

	mu       sync.Mutex
	serving  bool
	stopped  bool
	conns    int // session goroutines
	sessions map[*session]struct{}
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
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if picker == nil {
		return nil, errors.New("stompproxy: a Picker is required")
	}
	opts = opts.withDefaults()
	if log == nil {
		l := logrus.New()
		l.Out = discard{}
		log = logrus.NewEntry(l)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	var id [9]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	lc := proxy.ListenConfig(opts.KeepAlive)
	ln, err := lc.Listen(context.Background(), "tcp", opts.Listen)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		opts:     opts,
		picker:   picker,
		log:      log.WithField("service", opts.Name),
		metrics:  m,
		ln:       ln.(*net.TCPListener),
		dialer:   net.Dialer{KeepAlive: opts.KeepAlive},
		prefix:   hex.EncodeToString(id[:]),
		ctx:      ctx,
		cancel:   cancel,
		stopping: make(chan struct{}),
		drained:  make(chan struct{}),
		sessions: map[*session]struct{}{},
	}
	if opts.MaxConnections > 0 {
		s.sem = make(chan struct{}, opts.MaxConnections)
	}
	return s, nil
}

// Addr is the bound listen address.
func (s *Service) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until ctx is done or Shutdown is called. When
// ctx ends, Serve shuts down itself, with ShutdownGrace for live sessions to
// finish. Either way it returns once every goroutine it started has ended:
// nil on a clean stop. Serve may be called once.
func (s *Service) Serve(ctx context.Context) error {
	// Taken before the first accept: any change from here on wakes the
	// watcher.
	_, changed := s.picker.Targets()
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("stompproxy: Serve called more than once")
	}
	s.serving = true
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.loops.Add(2)
	go s.watchTargets(changed)
	go s.acceptLoop()
	s.mu.Unlock()
	s.log.WithField("listen", s.Addr().String()).Info("listening (STOMP mode)")

	select {
	case <-ctx.Done():
		s.Shutdown(context.Background())
	case <-s.stopping:
	}
	s.loops.Wait()
	<-s.drained
	return nil
}

// Shutdown stops accepting, closes sessions still waiting for a master,
// and lets live sessions finish until ctx is done or ShutdownGrace has
// passed, whichever comes first; then it closes them. It returns once every
// session is gone: nil if they all finished or the grace ran out, ctx's
// error if ctx ended first. It may be called any number of times, from any
// goroutine; each call waits.
func (s *Service) Shutdown(ctx context.Context) error {
	s.beginShutdown()
	grace := time.NewTimer(s.opts.ShutdownGrace)
	defer grace.Stop()
	select {
	case <-s.drained:
		return nil
	case <-grace.C:
	case <-ctx.Done():
	}
	if n := s.closeAll(reasonShutdown); n > 0 {
		s.log.WithField("closed", n).Warn("shutdown grace over: closing live sessions")
	}
	<-s.drained
	return ctx.Err()
}

// beginShutdown is the idempotent first half of Shutdown. stopped is set
// under mu before the listener closes, so no session starts after it;
// cancelling ctx then wakes every session waiting for a master.
// StopAccepting closes the listener at once, the first step of Shutdown,
// and leaves live sessions to finish; Shutdown then waits for them. A
// reload uses it to free the address for a replacement listener first.
func (s *Service) StopAccepting() { s.beginShutdown() }

func (s *Service) beginShutdown() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	close(s.stopping)
	live := len(s.sessions)
	if s.conns == 0 {
		close(s.drained)
	}
	s.mu.Unlock()
	s.ln.Close()
	s.cancel()
	s.log.WithField("live", live).Info("shutting down: not accepting; draining live sessions")
}

// Status returns a snapshot of the service.
func (s *Service) Status() Status {
	st := Status{
		Name:                   s.opts.Name,
		Listen:                 s.Addr().String(),
		Backends:               map[string]int{},
		Accepted:               s.accepted.Load(),
		Resumed:                s.resumed.Load(),
		FramesReplayed:         s.replayed.Load(),
		DuplicatesDropped:      s.duplicates.Load(),
		RedeliveriesSuppressed: s.suppressed.Load(),
		Unresumable:            s.unresumable.Load(),
	}
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
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

// acceptLoop accepts until shutdown; see proxy's for why a MaxConnections
// slot is taken before accepting.
func (s *Service) acceptLoop() {
	defer s.loops.Done()
	var delay time.Duration
	for {
		if s.sem != nil {
			select {
			case s.sem <- struct{}{}:
			case <-s.stopping:
				return
			}
		}
		c, err := s.ln.AcceptTCP()
		if err != nil {
			s.release()
			select {
			case <-s.stopping:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.WithError(err).WithField("retry_in", delay).Warn("accept failed")
			select {
			case <-time.After(delay):
			case <-s.stopping:
				return
			}
			continue
		}
		delay = 0
		ss := s.newSession(c)
		if !s.track(ss) {
			c.Close()
			s.release()
			return
		}
		s.accepted.Add(1)
		s.metrics.accepted.WithLabelValues(s.opts.Name).Inc()
		go s.serveSession(ss)
	}
}

// track registers a new session, unless shutdown has begun.
func (s *Service) track(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.conns++
	s.sessions[ss] = struct{}{}
	return true
}

func (s *Service) serveSession(ss *session) {
	s.metrics.active.WithLabelValues(s.opts.Name).Inc()
	reason := ss.run()
	s.metrics.active.WithLabelValues(s.opts.Name).Dec()
	s.metrics.closed.WithLabelValues(s.opts.Name, reason).Inc()
	s.release()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, ss)
	s.conns--
	if s.stopped && s.conns == 0 {
		close(s.drained)
	}
}

func (s *Service) release() {
	if s.sem != nil {
		<-s.sem
	}
}

// newSessionID returns a producer id no other session of any sidecar has
// used: the service's random prefix and a counter.
func (s *Service) newSessionID() string {
	return s.prefix + "-" + strconv.FormatUint(s.seq.Add(1), 10)
}

// watchTargets follows the Picker's answer: a session whose backend left
// it loses its upstream connection at once and resumes on the new master,
// rather than talking to a broker that has stepped down (or is frozen).
func (s *Service) watchTargets(changed <-chan struct{}) {
	defer s.loops.Done()
	for {
		select {
		case <-changed:
		case <-s.stopping:
			return
		}
		var targets []string
		targets, changed = s.picker.Targets()
		s.mu.Lock()
		sessions := make([]*session, 0, len(s.sessions))
		for ss := range s.sessions {
			sessions = append(sessions, ss)
		}
		s.mu.Unlock()
		n := 0
		for _, ss := range sessions {
			if b := ss.backend(); b != "" && !slices.Contains(targets, b) {
				ss.dropUpstream("backend is no longer a target")
				n++
			}
		}
		if n > 0 {
			s.log.WithFields(logrus.Fields{"targets": targets, "sessions": n}).
				Warn("targets changed: moving sessions off backends no longer targeted")
		}
	}
}

// closeAll closes every session and returns how many there were.
func (s *Service) closeAll(reason string) int {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		ss.close(reason)
	}
	return len(sessions)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
