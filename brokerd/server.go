// Package brokerd is a small, durable STOMP 1.0/1.1/1.2 broker with
// master/slave locking.
//
// A Server first takes the master lock (lockstore). While it waits it is a
// slave: its STOMP port stays closed and only its admin port answers, and
// it follows the store (a warm standby), keeping an index of the backlog
// current. Once master it reads only what was written since its last look,
// opens the STOMP port and serves until it is told to stop or loses the
// lock; a lost lock stops it at once, because two brokers writing one
// store would corrupt it.
//
// Reading order for one client connection: server.go (accept), conn.go (the
// frame pipeline), destination.go (queues and topics), memory.go (the
// memory budget), store.go and backlog.go (the store, the standby).
package brokerd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"handover/brokerd/auth"
	"handover/brokerd/store"
	"handover/frame"
	"handover/internal/adminmux"
	"handover/lockstore"
)

// Version is brokerd's version, sent in CONNECTED's server header.
var Version = "0.1.0"

// ErrLeaseLost is returned by Run when the master lock was lost while
// serving. The process must exit: it can no longer be trusted to write.
var ErrLeaseLost = errors.New("master lock lost")

// Roles reported by /status.
const (
	RoleSlave   = "slave"
	RoleMaster  = "master"
	RoleStopped = "stopped"
)

// Server is one brokerd instance.
type Server struct {
	opts    Options
	log     *logrus.Entry
	locker  lockstore.Locker
	metrics *metrics

	adminLn  net.Listener
	admin    *http.Server
	stopping chan struct{} // closed when shutdown begins

	mu      sync.Mutex
	role    string
	since   time.Time
	epoch   uint64
	ready   chan struct{} // closed once serving as master
	isReady bool
	ln      net.Listener
	tln     net.Listener // the TLS listener, if any
	// abdicated is why a write gave the lease up (see abdicate).
	abdicated error
	conns     map[*conn]struct{}
	sources   map[string]int // open connections per client IP address
	connWG    sync.WaitGroup
	// fetches are the queues' background reads of bodies (queue.fetch),
	// waited for once the store is closed.
	fetches sync.WaitGroup

	destMu  sync.Mutex
	queues  map[string]*queue
	topics  map[string]*topic
	st      store.Store // set once master
	dedup   *dedup
	mem     *budget
	seq     atomic.Uint64
	connSeq atomic.Uint64

	refusedLog atomic.Int64 // unix ns of the last "refusing connection" line

	// backlog is the slave's index of the store, owned by the follow
	// goroutine and then by promote; sbMu guards standby, its status.
	backlog *backlog
	sbMu    sync.Mutex
	standby standbyStatus
	bindErr string // why the listen address cannot be bound, "" if it can

	dmgMu  sync.Mutex
	damage []damageReport

	identity Identity // the storage's, checked at New
	watch    watchHub
	// adminDone is closed when the admin server stops: watch streams end.
	adminDone chan struct{}
	users     UsersSource // nil: no authentication
	usersSt   usersState
	tls       *tls.Config // for TLSListen
	failures  failures
	// lease is the master's, once it has one: nothing is written to a
	// client while it is not valid (see leaseValid).
	lease atomic.Pointer[lockstore.Lease]
	rates pageRates
}

// New validates opts and binds the admin port, so that a slave can be
// monitored from the start and tests learn the real address.
func New(opts Options) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.Out = discard{}
		log = logrus.NewEntry(l)
	}
	read := opts.Identity
	if read == nil {
		read = func() (Identity, error) { return ReadData(opts.Data) }
	}
	identity, err := checkIdentity(read, opts.ClusterID)
	if err != nil {
		return nil, err
	}
	var adminToken string
	if opts.AdminTokenFile != "" {
		if adminToken, err = adminmux.LoadToken(opts.AdminTokenFile); err != nil {
			return nil, err
		}
	}
	var tlsCfg *tls.Config
	if opts.TLSListen != "" {
		if tlsCfg, err = tlsConfig(&opts); err != nil {
			return nil, err
		}
	}
	users := opts.Users
	if users != nil && opts.UsersFile != "" {
		return nil, errors.New("users_file and users_table: choose one place for the users")
	}
	if users == nil && opts.UsersFile != "" {
		f, err := auth.OpenUsersFile(opts.UsersFile)
		if err != nil {
			return nil, err
		}
		users = f
	}
	if users != nil {
		log.WithFields(logrus.Fields{"users_from": users.String(), "allow_anonymous": opts.AllowAnonymous, "rules": len(opts.Authorization)}).Info("authentication on")
	} else {
		log.WithField("rules", len(opts.Authorization)).Warn("authentication is off: anyone who can reach the STOMP port may connect (set users_file, or users_table with a PostgreSQL store)")
	}
	locker := opts.Locker
	if locker == nil {
		locker, err = lockstore.NewFile(lockstore.FileOptions{
			Dir:           opts.Data,
			CheckInterval: opts.LeaseRenew.D(),
			LeaseTimeout:  opts.LeaseTimeout.D(),
			Log:           log.WithField("component", "lockstore"),
		})
		if err != nil {
			return nil, fmt.Errorf("master lock: %w", err)
		}
	}
	ln, err := net.Listen("tcp", opts.Admin)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	s := &Server{
		tls:       tlsCfg,
		users:     users,
		identity:  identity,
		opts:      opts,
		log:       log,
		locker:    locker,
		adminLn:   ln,
		stopping:  make(chan struct{}),
		adminDone: make(chan struct{}),
		role:      RoleSlave,
		since:     time.Now(),
		ready:     make(chan struct{}),
		conns:     map[*conn]struct{}{},
		sources:   map[string]int{},
		queues:    map[string]*queue{},
		topics:    map[string]*topic{},
		dedup:     newDedup(),
		mem:       newBudget(opts.MaxMemory),
		backlog:   newBacklog(),
		usersSt:   usersState{turn: make(chan struct{}, 1)},
	}
	s.watch.limit, s.watch.perSource = opts.MaxWatchers, opts.MaxWatchersPerSource
	s.metrics = newMetrics(s)
	s.admin = adminmux.Server(adminmux.RequireToken(s.adminHandler(), adminToken))
	return s, nil
}

// AdminAddr is the bound admin address.
func (s *Server) AdminAddr() string { return s.adminLn.Addr().String() }

// TLSAddr is the bound STOMP TLS address while master, else "".
func (s *Server) TLSAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tln == nil {
		return ""
	}
	return s.tln.Addr().String()
}

// Addr is the bound STOMP address while master, else "".
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Ready is closed once the server is master and accepting clients.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run serves until ctx is cancelled (a clean shutdown: stop accepting, let
// connections finish in-flight work, flush the journal, release the lock,
// return nil) or the lock is lost (stop at once, return ErrLeaseLost).
func (s *Server) Run(ctx context.Context) error {
	adminDone := make(chan struct{})
	s.publish() // the state watchers get first: a slave
	go func() {
		defer close(adminDone)
		if err := s.admin.Serve(s.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.WithError(err).Error("admin server failed")
		}
	}()
	beatDone := make(chan struct{})
	go func() {
		defer close(beatDone)
		s.beatLoop(s.adminDone)
	}()
	defer func() {
		close(s.adminDone) // watch streams end, so that Shutdown need not wait for them
		<-beatDone
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.admin.Shutdown(sctx)
		<-adminDone
	}()
	// Slaves follow the users too: one that takes over after they changed,
	// and then broke (a typo in the file), serves the last good ones.
	uctx, stopUsers := context.WithCancel(ctx)
	usersDone := make(chan struct{})
	go func() {
		defer close(usersDone)
		if s.users != nil {
			s.usersLoop(uctx)
		}
	}()
	defer func() { stopUsers(); <-usersDone }()

	s.log.WithFields(logrus.Fields{"lock": s.locker.String(), "admin": s.AdminAddr()}).Info("slave: waiting for the master lock")
	// The standby follows the store while the lock is awaited.
	var sb store.Standby
	fctx, stopFollow := context.WithCancel(ctx)
	followDone := make(chan struct{})
	go func() {
		defer close(followDone)
		s.follow(fctx, &sb)
	}()
	lease, err := s.locker.Acquire(ctx)
	stopFollow()
	<-followDone
	if err != nil {
		if sb != nil {
			sb.Close()
		}
		s.setRole(RoleStopped, 0)
		if ctx.Err() != nil {
			s.log.Info("stopped while slave")
			return nil
		}
		return fmt.Errorf("acquiring the master lock: %w", err)
	}
	log := s.log.WithField("epoch", lease.Epoch())
	log.Info("master: acquired the lock")
	s.setRole(RoleMaster, lease.Epoch())

	if err := s.startMaster(ctx, lease, sb); err != nil {
		s.closeJournal()
		lease.Release()
		s.setRole(RoleStopped, lease.Epoch())
		return err
	}

	// The master's housekeeping. Memory is given back after bursts by a
	// master only: a slave's collection after it caught up would compete
	// with the takeover it may have to make at any moment.
	rctx, stopHousekeeping := context.WithCancel(ctx)
	reclaimDone, memDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(reclaimDone)
		s.reclaimLoop(rctx)
	}()
	go func() {
		defer close(memDone)
		s.returnMemoryLoop(rctx)
	}()
	defer func() { stopHousekeeping(); <-reclaimDone; <-memDone }()

	select {
	case <-ctx.Done():
		log.Info("shutting down: stop accepting, drain connections, flush, release the lock")
		s.shutdown(false)
		if err := lease.Release(); err != nil {
			log.WithError(err).Warn("releasing the master lock")
		}
		s.setRole(RoleStopped, lease.Epoch())
		log.Info("stopped")
		return nil
	case <-lease.Done():
		why := lease.Err()
		s.mu.Lock()
		if s.abdicated != nil {
			why = s.abdicated
		}
		s.mu.Unlock()
		log.WithError(why).Error("master lock lost: stopping at once")
		s.shutdown(true)
		lease.Release()
		s.setRole(RoleStopped, lease.Epoch())
		return fmt.Errorf("%w: %v", ErrLeaseLost, why)
	}
}

// startMaster promotes the standby (reading the store's tail), then opens
// the STOMP port.
func (s *Server) startMaster(ctx context.Context, lease lockstore.Lease, sb store.Standby) error {
	s.lease.Store(&lease)
	start := time.Now()
	st, err := s.promote(lease, sb)
	if err != nil {
		return fmt.Errorf("opening the store: %w", err)
	}
	s.destMu.Lock()
	s.st = st
	s.destMu.Unlock()
	s.log.WithFields(logrus.Fields{"messages": st.Stats().Live, "took": time.Since(start).Round(time.Millisecond).String()}).Info("store opened: backlog recovered")

	if s.users != nil {
		// The users are read afresh before the port opens, so that a
		// new master checks logins against the source as it is now, not
		// as it was up to usersRefreshEvery ago; but with users already
		// read, a slow source holds the takeover up for a second at most
		// (refreshUsers says what is served).
		wait := usersRefreshEvery
		if s.users.Users() == nil {
			wait = 5 * usersRefreshEvery
		}
		rctx, cancel := context.WithTimeout(ctx, wait)
		err := s.refreshUsers(rctx)
		cancel()
		if err != nil && s.users.Users() == nil {
			return fmt.Errorf("reading the users (%s): %w", s.users, err)
		}
	}

	var ln, tln net.Listener
	if s.opts.Listen != "" {
		if ln, err = net.Listen("tcp", s.opts.Listen); err != nil {
			return fmt.Errorf("STOMP listener: %w", err)
		}
	}
	if s.opts.TLSListen != "" {
		if tln, err = net.Listen("tcp", s.opts.TLSListen); err != nil {
			if ln != nil {
				ln.Close()
			}
			return fmt.Errorf("STOMP TLS listener: %w", err)
		}
		tln = tls.NewListener(tln, s.tls)
	}
	s.mu.Lock()
	s.ln, s.tln = ln, tln
	s.isReady = true
	close(s.ready)
	s.mu.Unlock()
	s.publish()
	for _, l := range []net.Listener{ln, tln} {
		if l != nil {
			s.log.WithFields(logrus.Fields{"listen": l.Addr().String(), "tls": l == tln, "epoch": lease.Epoch()}).Info("master: serving STOMP")
			go s.acceptLoop(l)
		}
	}
	return nil
}

func (s *Server) acceptLoop(ln net.Listener) {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			select {
			case <-s.stopping:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off rather than
			// spin, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.WithError(err).WithField("retry_in", delay.String()).Warn("accept failed")
			time.Sleep(delay)
			continue
		}
		delay = 0
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetKeepAlivePeriod(30 * time.Second)
		}
		c := newConn(s, nc, "c"+strconv.FormatUint(s.connSeq.Add(1), 10))
		src := sourceOf(nc)
		s.mu.Lock()
		select {
		case <-s.stopping:
			s.mu.Unlock()
			nc.Close()
			return
		default:
		}
		if limit := s.admit(src); limit != "" {
			s.mu.Unlock()
			s.refuse(nc, src, limit)
			continue
		}
		s.conns[c] = struct{}{}
		s.sources[src]++
		s.connWG.Add(1)
		s.mu.Unlock()
		s.metrics.accepted.Inc()
		go func() {
			defer s.connWG.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			if s.sources[src]--; s.sources[src] <= 0 {
				delete(s.sources, src)
			}
			s.mu.Unlock()
		}()
	}
}

// leaseValid says whether this broker may speak to clients as master:
// a master that was frozen may run for a moment before it learns it was
// replaced, and must not greet a client (CONNECTED) or deliver to one
// meanwhile. Receipts are covered by the store's checks too.
func (s *Server) leaseValid() bool {
	l := s.lease.Load()
	return l == nil || (*l).Valid() == nil
}

// sourceOf is the IP address a connection comes from.
func sourceOf(nc net.Conn) string {
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return nc.RemoteAddr().String()
}

// admit says which connection limit a new connection from src would
// exceed ("" if none). s.mu must be held.
func (s *Server) admit(src string) string {
	switch {
	case s.opts.MaxConnections > 0 && len(s.conns) >= s.opts.MaxConnections:
		return "max_connections"
	case s.opts.MaxConnectionsPerSource > 0 && s.sources[src] >= s.opts.MaxConnectionsPerSource:
		return "max_connections_per_source"
	}
	return ""
}

// refuse tells a connection over a limit why, in an ERROR frame, and
// closes it. The write is bounded and off the accept loop: a refused
// client that does not read must not hold up the others.
func (s *Server) refuse(nc net.Conn, src, limit string) {
	s.metrics.refused.WithLabelValues(limit).Inc()
	if now := time.Now().UnixNano(); now-s.refusedLog.Load() > int64(time.Second) {
		// At most one line a second: a flood of connections must not
		// become a flood of log lines.
		s.refusedLog.Store(now)
		s.log.WithFields(logrus.Fields{"source": src, "limit": limit}).Warn("refusing connection: over a connection limit")
	}
	go func() {
		e := frame.New(frame.ERROR, "message", "too many connections ("+limit+")", "content-type", "text/plain")
		e.Body = []byte("The broker refused this connection: it is over its " + limit + " limit.\n")
		nc.SetWriteDeadline(time.Now().Add(time.Second))
		nc.Write(frame.Append(nil, e, frame.V12))
		nc.Close()
	}()
}

// shutdown stops serving. Gracefully, connections stop reading, finish what
// they started (journal writes and their receipts) and close; abruptly (the
// lock is lost), sockets close at once and the journal refuses further writes.
func (s *Server) shutdown(abrupt bool) {
	s.mu.Lock()
	close(s.stopping)
	s.isReady = false
	s.mu.Unlock()
	// Watchers hear that the broker stops before its port closes.
	s.publish()
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	if s.tln != nil {
		s.tln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		if abrupt {
			c.close("master_lock_lost")
		} else {
			c.nc.SetReadDeadline(time.Now()) // readLoop ends; serve drains
		}
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(s.opts.ShutdownGrace.D() + 2*time.Second):
		s.log.Warn("connections did not drain in time; closing them")
		for _, c := range conns {
			c.close("shutdown")
		}
		<-done
	}
	if !abrupt {
		s.closeJournal()
		return
	}
	// A master that lost its lease must stop at once: a store write stuck
	// on a stalled database connection would hold its exit until the
	// write's own timeout. Nothing written now can be acknowledged (the
	// fence refuses it), so the close is given a moment, not waited for;
	// the process's exit ends whatever is left.
	closed := make(chan struct{})
	go func() { s.closeJournal(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(abruptCloseWait):
		s.log.Warn("the store did not close in time after the lease was lost; stopping without it")
	}
}

// abruptCloseWait bounds the store's close when the lease is lost.
const abruptCloseWait = time.Second

func (s *Server) closeJournal() {
	s.destMu.Lock()
	j := s.st
	s.destMu.Unlock()
	if j != nil {
		if err := j.Close(); err != nil {
			s.log.WithError(err).Error("closing the journal")
		}
	}
	// After Close, which ends reads still waiting for the database: a
	// stalled one would otherwise hold the shutdown for each read's
	// timeout. No subscriber is left to start another.
	s.fetches.Wait()
}

func (s *Server) setRole(role string, epoch uint64) {
	s.mu.Lock()
	s.role, s.epoch, s.since = role, epoch, time.Now()
	s.mu.Unlock()
	s.publish()
}

func (s *Server) queue(name string) *queue {
	s.destMu.Lock()
	defer s.destMu.Unlock()
	q := s.queues[name]
	if q == nil {
		q = &queue{name: name, s: s}
		s.queues[name] = q
	}
	return q
}

// lockedQueue returns the queue called name with its mu held.
func (s *Server) lockedQueue(name string) *queue {
	for {
		q := s.queue(name)
		q.mu.Lock()
		if !q.removed {
			return q
		}
		q.mu.Unlock()
	}
}

// reclaimLoop removes destinations that stayed empty and without
// subscribers for InactiveDestinationTimeout, as ActiveMQ's
// gcInactiveDestinations does: a client that touches a hundred thousand
// names must not leave a hundred thousand destinations in memory, /status
// and /metrics. It runs until ctx ends.
func (s *Server) reclaimLoop(ctx context.Context) {
	every := max(s.opts.InactiveDestinationTimeout.D()/2, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if n := s.reclaim(now); n > 0 {
				s.log.WithField("destinations", n).Debug("reclaimed inactive destinations")
			}
		}
	}
}

// reclaim removes the destinations inactive since before now minus
// InactiveDestinationTimeout and returns how many it removed.
func (s *Server) reclaim(now time.Time) int {
	timeout := s.opts.InactiveDestinationTimeout.D()
	idle := func(since *time.Time, empty bool) bool {
		switch {
		case !empty:
			*since = time.Time{}
		case since.IsZero():
			*since = now
		case now.Sub(*since) >= timeout:
			return true
		}
		return false
	}
	n := 0
	s.destMu.Lock()
	defer s.destMu.Unlock()
	for name, q := range s.queues {
		q.mu.Lock()
		if idle(&q.idleSince, q.head == len(q.pending) && q.inflight == 0 && len(q.subs) == 0) {
			q.removed = true
			delete(s.queues, name)
			n++
		}
		q.mu.Unlock()
	}
	for name, t := range s.topics {
		t.mu.Lock()
		if idle(&t.idleSince, len(t.subs) == 0) {
			t.removed = true
			delete(s.topics, name)
			n++
		}
		t.mu.Unlock()
	}
	return n
}

func (s *Server) topic(name string) *topic {
	s.destMu.Lock()
	defer s.destMu.Unlock()
	t := s.topics[name]
	if t == nil {
		t = &topic{name: name}
		s.topics[name] = t
	}
	return t
}

// newMessage turns a SEND into a message with a fresh id, and returns its
// destination. Message ids embed the lock epoch, which no other master has
// had or will have, so they stay unique across restarts and failovers
// without any shared counter.
func (s *Server) newMessage(f *frame.Frame) (*message, string, error) {
	dest := f.Value("destination")
	isQueue, err := splitDestination(dest)
	if err != nil {
		return nil, "", fmt.Errorf("SEND: %w", err)
	}
	s.mu.Lock()
	epoch := s.epoch
	s.mu.Unlock()
	id := "ID:" + strconv.FormatUint(epoch, 10) + "-" + strconv.FormatUint(s.seq.Add(1), 10)
	mf := &frame.Frame{Command: frame.MESSAGE, Body: f.Body}
	mf.Headers = make([]frame.Header, 0, len(f.Headers)+2)
	mf.Headers = append(mf.Headers, frame.Header{Key: "destination", Value: dest}, frame.Header{Key: "message-id", Value: id})
	for _, h := range f.Headers {
		switch h.Key {
		case "destination", "message-id", "receipt", "transaction", "content-length", "subscription", "ack", "redelivered",
			HeaderProducer, HeaderSeq:
			continue
		}
		mf.Headers = append(mf.Headers, h)
	}
	return &message{
		id:    id,
		frame: mf,
		size:  frameSize(mf),
		// Topic messages are never journaled: a topic keeps nothing for
		// absent subscribers, so there is nothing to recover.
		persistent: isQueue && f.Value("persistent") == "true",
	}, dest, nil
}

// route hands a message to its destination dest.
func (s *Server) route(m *message, dest string) {
	s.metrics.received.Inc()
	if isQueue, _ := splitDestination(dest); isQueue {
		for !s.queue(dest).enqueue(m) {
			// Reclaimed between the lookup and the enqueue: look again.
		}
	} else {
		for !s.topic(dest).publish(m) {
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// frameSize is about what f takes encoded, what its body costs the budget.
func frameSize(f *frame.Frame) int32 {
	n := len(f.Command) + 2 + len(f.Body)
	for _, h := range f.Headers {
		n += len(h.Key) + len(h.Value) + 2
	}
	return int32(min(n, 1<<31-1))
}
