package health

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Backend states, as Status, the logs and the backend_state metric show
// them. A service in ModeMaster has backends master, standby or down; one
// in ModeAny up, standby or down.
const (
	// StateMaster is ModeMaster's elected backend: every client goes to it.
	StateMaster = "master"
	// StateUp is, in ModeAny, a healthy backend: one of the targets.
	StateUp = "up"
	// StateStandby is a backend that is alive and answers but does not
	// serve: a slave (its check said so: Result.Standby), or a backend
	// passing its checks while another is elected or before it has passed
	// Rise of them in a row.
	StateStandby = "standby"
	// StateDown is a backend that fails its checks.
	StateDown = "down"
	// StateDraining and StateDisabled are set by an operator
	// (SetAdminState, the sidecar's runtime control): they replace the
	// state the checks give until the backend is enabled again. See
	// admin.go.
	StateDraining = "draining"
	StateDisabled = "disabled"
)

// OutageLogInterval is how often, while a service has no master (ModeAny:
// no healthy backend), a warning says so again with how long it has lasted:
// an outage must not go quiet after its first line, as HAProxy's "backend
// has no server available" repeats.
const OutageLogInterval = 10 * time.Second

// ConnReport is what a change of master did to the service's client
// connections, as the data path counts them, for the "master changed" log
// line (see SetConnReporter).
type ConnReport struct {
	// Closed counts the client connections closed because the master they
	// were on stopped being master (TCP mode with on_failover "close"), or
	// STOMP sessions that could not be resumed, since the previous master
	// was elected.
	Closed int
	// Held counts the clients waiting for a master when the new one was
	// elected (TCP connections held by the failover timeout, STOMP sessions
	// paused): they go to the new master now.
	Held int
}

// Monitor checks one service's backends and elects its targets. Create it
// with NewMonitor and start it with Run; Targets, Recheck, SetBackends,
// SetAdminState and Status may be called from any goroutine, before, during
// and after Run.
type Monitor struct {
	name    string
	cfg     Config
	checker Checker
	clock   Clock
	log     *logrus.Entry
	metrics *Metrics

	// pushes carries watch updates from the watch goroutines to Run
	// (watching.go).
	pushes chan push
	// wake asks Run to look for checks to start (after Recheck or
	// SetBackends). Capacity one: a wake-up already pending covers any
	// number of later requests, because what to do is read from the state.
	wake chan struct{}
	// recheckTimer defers passive checks spaced by MinRecheckInterval;
	// only Run's goroutine touches it.
	recheckTimer Timer
	recheckArmed bool
	// retired is a master removed from the list while serving; see Keep.
	retired string
	// recheckGen counts Recheck calls. A backend owes a passive check while
	// its passiveGen is lower: level-triggered, so bursts coalesce and no
	// request is lost whatever the timing.
	recheckGen atomic.Uint64
	// idle, when set (by tests), receives a value each time Run has no
	// check running and nothing pending and is about to wait.
	idle chan<- struct{}
	// outageLogEvery is OutageLogInterval; tests may shorten it.
	outageLogEvery time.Duration

	// logMu orders flushes: the log lines of events, queued under mu, are
	// written outside it, in the order the events happened.
	logMu sync.Mutex

	mu          sync.Mutex
	backends    []*backend // list order
	settled     bool       // every backend has been checked once since start
	master      *backend   // ModeMaster's elected backend, nil if none
	lastMaster  string     // the last non-empty master, to count failovers
	targets     []string
	changed     chan struct{} // closed when targets or kept change, then replaced
	masterSince time.Time     // when the current master was elected
	noneSince   time.Time     // when the targets became empty; zero while not
	accounted   time.Time     // without_master_seconds is counted up to here; zero before Run
	// outageLogged is when the no-master error or its reminder was last
	// logged; zero while there is a master.
	outageLogged time.Time
	// reporter counts what a change of master did to connections.
	reporter func(old string) ConnReport
	// admin holds the operator's StateDisabled or StateDraining by
	// address (SetAdminState). It outlives the backend list: a backend
	// dropped by a reload or by DNS and listed again is still disabled.
	admin map[string]string
	// kept are the draining backends whose live connections Keep keeps,
	// published with the targets (a change of either closes changed).
	kept []string
	// events are log lines waiting for flush, in order.
	events []func()
}

// backend is a Backend and what the monitor knows of it. Fields other than
// the embedded Backend are guarded by Monitor.mu.
type backend struct {
	Backend
	// up: the backend passes its checks and may be elected. standby: its
	// latest check said it is alive but not serving (Result.Standby).
	up, standby bool
	// state is the published state (Status, metrics, logs), brought up
	// to date by syncStates; since is when it was entered, why the reason
	// of the latest change of up or standby (or of the operator's state).
	// alive is the published backend_up: the checks do not say down.
	state       string
	alive       bool
	since       time.Time
	why         string
	checks      int // completed checks; 0 = never checked
	successes   int // consecutive
	failures    int // consecutive
	epoch       uint64
	lastCheck   time.Time
	lastLatency time.Duration
	lastErr     error
	running     bool      // a check is in flight
	passiveGen  uint64    // the recheckGen the latest passive check answers
	lastPassive time.Time // when the latest passive check started
	removed     bool      // dropped by SetBackends; results are ignored
	// refused is the latest check's error while it was CredentialsRefused,
	// "" otherwise; refusalLogged the last refusal logged, "" since the
	// backend last passed (see noteRefusal).
	refused, refusalLogged string
	// watch is WatchWatched or WatchPolled (watching.go); watchErr why
	// the latest watch was lost or could not be opened; watchedSince and
	// lastEvent when the open watch's first and latest events came.
	watch, watchErr         string
	watchedSince, lastEvent time.Time
	lastSpoke               time.Time // the open watch's latest event or heartbeat
	lastPush                time.Time // the latest event or loss of a watch
	noWatchLogged           bool      // "offers no watch" said since last watched
}

// outcome is a finished check on its way to Run, or (pushed) what a
// backend's watch said, in a check's terms (applyPush).
type outcome struct {
	b       *backend
	r       Result
	passive bool
	pushed  bool
	started time.Time // when the check started (not for pushes)
}

// NewMonitor returns a Monitor named name (the service label of logs and
// metrics) for backends, checked by checker. cfg's zero fields take their
// defaults, as do invalid ones (logged; see Config.Validate). A nil clock
// means RealClock, nil metrics records nothing, a nil log discards.
func NewMonitor(name string, cfg Config, backends []Backend, checker Checker, clock Clock, log *logrus.Entry, metrics *Metrics) *Monitor {
	if clock == nil {
		clock = RealClock()
	}
	if log == nil {
		l := logrus.New()
		l.Out = discard{}
		log = logrus.NewEntry(l)
	}
	log = log.WithField("service", name)
	if err := cfg.Validate(); err != nil {
		log.WithError(err).Error("invalid health check config; using defaults for the invalid fields")
	}
	mon := &Monitor{
		name:           name,
		cfg:            cfg.withDefaults(),
		checker:        checker,
		clock:          clock,
		log:            log,
		metrics:        metrics,
		wake:           make(chan struct{}, 1),
		pushes:         make(chan push),
		changed:        make(chan struct{}),
		noneSince:      clock.Now(),
		outageLogEvery: OutageLogInterval,
	}
	metrics.initService(name)
	mon.SetBackends(backends)
	return mon
}

// Run checks the backends until ctx is done. It owns every check goroutine
// and returns only after all of them have ended, which is as soon as the
// Checker honours ctx. Call Run once.
func (m *Monitor) Run(ctx context.Context) {
	results := make(chan outcome)
	running := 0
	// launch starts one check; m.mu is held. The send on results cannot
	// block forever: Run receives until running is back to zero.
	launch := func(b *backend, passive bool) {
		if ctx.Err() != nil {
			return // shutting down: start nothing new
		}
		b.running = true
		if passive {
			b.passiveGen = m.recheckGen.Load()
			b.lastPassive = m.clock.Now()
		}
		running++
		target := b.Backend
		// Read under m.mu: SetConfig may replace both on a reload.
		timeout, checker := m.cfg.Timeout, m.checker
		go func() {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			start := m.clock.Now()
			r := checker.Check(cctx, target)
			if r.Latency <= 0 {
				r.Latency = m.clock.Now().Sub(start)
			}
			if !r.OK && r.Err == nil {
				r.Err = errors.New("check failed")
			}
			results <- outcome{b: b, r: r, passive: passive, started: start}
		}()
	}

	ws := &watchers{ctx: ctx, running: map[*backend]watcher{}}
	defer ws.stop()
	m.mu.Lock()
	now := m.clock.Now()
	m.accounted = now
	m.startChecks(launch, true)
	m.reconcile(ws)
	fast := len(m.targets) == 0
	cfg := m.cfg
	m.mu.Unlock()
	m.log.WithFields(logrus.Fields{"mode": cfg.Mode, "interval": cfg.Interval, "timeout": cfg.Timeout,
		"rise": cfg.Rise, "fall": cfg.Fall}).Info("health checks started")
	timer := m.clock.NewTimer(m.interval(fast))
	defer timer.Stop()
	defer func() {
		if m.recheckTimer != nil {
			m.recheckTimer.Stop()
		}
	}()

	for {
		if running == 0 && m.idle != nil && len(m.wake) == 0 {
			select {
			case m.idle <- struct{}{}:
			case <-ctx.Done():
			}
		}
		var none bool
		select {
		case <-ctx.Done():
			for ; running > 0; running-- {
				<-results
			}
			m.mu.Lock()
			m.account(m.clock.Now())
			m.mu.Unlock()
			m.flush()
			m.log.Info("health checks stopped")
			return
		case <-timer.C():
			m.mu.Lock()
			now := m.clock.Now()
			m.account(now)
			m.remind(now)
			m.startChecks(launch, true)
			fast = len(m.targets) == 0
			m.mu.Unlock()
			m.flush()
			timer.Reset(m.interval(fast))
			continue
		case <-m.recheckC():
			m.recheckArmed = false
			m.mu.Lock()
			m.account(m.clock.Now())
			m.startChecks(launch, false)
			none = len(m.targets) == 0
			m.mu.Unlock()
		case <-m.wake:
			m.mu.Lock()
			m.account(m.clock.Now())
			m.reconcile(ws)
			m.startChecks(launch, false)
			none = len(m.targets) == 0
			m.mu.Unlock()
		case p := <-m.pushes:
			m.mu.Lock()
			m.applyPush(p)
			m.startChecks(launch, false)
			none = len(m.targets) == 0
			m.mu.Unlock()
			m.flush()
		case o := <-results:
			running--
			m.mu.Lock()
			m.apply(o)
			m.startChecks(launch, false)
			none = len(m.targets) == 0
			m.mu.Unlock()
			m.flush()
		}
		if none && !fast {
			// The master just went (a failed check, or SetBackends
			// dropped it): poll fast from now, not from the next slow
			// round.
			fast = true
			timer.Reset(m.interval(fast))
		}
	}
}

// interval is the time to the next periodic round. m.mu must not be held.
func (m *Monitor) interval(noTargets bool) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if noTargets {
		return m.cfg.NoMasterInterval
	}
	return m.cfg.Interval
}

// startChecks starts the checks that are due: on a periodic round every
// backend's, otherwise those owed to Recheck and the first check of a
// backend never checked. A backend with a check in flight is skipped; if it
// owes a passive check, the next call after its result starts it. m.mu is
// held.
func (m *Monitor) startChecks(launch func(*backend, bool), periodic bool) {
	gen := m.recheckGen.Load()
	now := m.clock.Now()
	for _, b := range m.backends {
		if b.running {
			continue
		}
		passive := b.passiveGen < gen
		if passive && !periodic && m.cfg.MinRecheckInterval > 0 && !b.lastPassive.IsZero() {
			if wait := b.lastPassive.Add(m.cfg.MinRecheckInterval).Sub(now); wait > 0 {
				m.armRecheck(wait) // still owed: started when the timer fires
				continue
			}
		}
		if periodic && !passive && b.checks > 0 && b.watch == WatchWatched {
			continue // its watch speaks for it (watching.go)
		}
		if periodic || passive || b.checks == 0 {
			launch(b, passive)
		}
	}
}

// armRecheck makes Run look for owed passive checks again after d. Only
// Run's goroutine calls it (through startChecks).
func (m *Monitor) armRecheck(d time.Duration) {
	if m.recheckArmed {
		return
	}
	m.recheckArmed = true
	if m.recheckTimer == nil {
		m.recheckTimer = m.clock.NewTimer(d)
		return
	}
	m.recheckTimer.Reset(d)
}

// recheckC is the deferred-recheck timer's channel, nil (never ready) when
// none is armed.
func (m *Monitor) recheckC() <-chan time.Time {
	if !m.recheckArmed {
		return nil
	}
	return m.recheckTimer.C()
}

// apply runs one result through the backend's state machine (see the
// package documentation) and re-elects. m.mu is held.
func (m *Monitor) apply(o outcome) {
	b, r := o.b, o.r
	if !o.pushed {
		b.running = false
	}
	if b.removed {
		return
	}
	if !o.pushed && o.started.Before(b.lastPush) {
		// The backend's watch spoke (an event, or its loss) while this
		// check was on its way: the check's answer is older news (a
		// slave's 503 read just before it was promoted, a master's 200
		// read just before it was killed) and must not undo the push.
		return
	}
	now := m.clock.Now()
	m.account(now)
	first := b.checks == 0
	b.checks++
	if !o.pushed {
		m.metrics.observe(m.name, b.Addr, r)
		b.lastCheck, b.lastLatency = now, r.Latency
		m.noteRefusal(b, r)
	}
	switch {
	case r.OK:
		b.successes++
		b.failures = 0
		b.lastErr = nil
		b.epoch = r.Epoch
		b.standby = false
		if !b.up {
			switch {
			case o.pushed:
				m.setUp(b, true, "pushed: master, serving")
			case first:
				m.setUp(b, true, "first check passed")
			case b.successes >= m.cfg.Rise:
				m.setUp(b, true, fmt.Sprintf("%d checks passed in a row", b.successes))
			}
		}
	case r.Standby:
		// Alive and saying it does not serve: neither a pass towards
		// Rise nor a failure towards anything. A backend that was up
		// says it stopped serving, which is as definitive as it gets.
		b.successes, b.failures = 0, 0
		b.lastErr = nil
		b.standby = true
		why := "answers that it is not serving: " + r.Err.Error()
		if b.up {
			m.setUp(b, false, why)
		} else {
			b.why = why
		}
	default:
		b.failures++
		b.successes = 0
		b.lastErr = r.Err
		switch {
		case b.up:
			switch {
			case o.pushed:
				m.setUp(b, false, r.Err.Error())
			case o.passive && m.serving(b):
				m.setUp(b, false, "failed a recheck: "+r.Err.Error())
			case r.Definitive && m.serving(b):
				m.setUp(b, false, "not serving: "+r.Err.Error())
			case b.failures >= m.cfg.Fall:
				m.setUp(b, false, fmt.Sprintf("%d checks failed in a row, last: %v", b.failures, r.Err))
			}
		case b.standby:
			// A standby, like a master, is not declared dead on one
			// timeout; a refused connection is enough.
			if r.Definitive || b.failures >= m.cfg.Fall {
				b.standby = false
				b.why = fmt.Sprintf("was standby; %d checks failed in a row, last: %v", b.failures, r.Err)
			}
		default:
			b.why = r.Err.Error()
			if first && !r.CredentialsRefused { // noteRefusal's line says it
				// Down from the start: no change of state will log
				// it, and an operator must learn why (a broker whose
				// certificate the sidecar does not trust, say).
				log := m.log.WithFields(logrus.Fields{"backend": b.Addr, "reason": b.why})
				m.queue(func() { log.Warn("first check failed: backend down") })
				break
			}
			m.log.WithFields(logrus.Fields{"backend": b.Addr, "failures": b.failures}).WithError(r.Err).Debug("check failed")
		}
	}
	m.rescue(now)
	// The election that takes the last first result is still made on rank
	// alone; stickiness starts after it.
	m.elect(now)
	if !m.settled {
		m.settled = !slices.ContainsFunc(m.backends, func(b *backend) bool { return b.checks == 0 })
		if m.settled && len(m.targets) == 0 {
			// Every backend checked once and none serves: an outage
			// from the start, said as loudly as a lost master.
			m.noMaster(now, "", "")
		}
	}
	m.remind(now)
}

// noteRefusal keeps b's refusal (Result.CredentialsRefused) for Status and
// logs it at error level: no check of b can pass until an operator fixes
// the check's login, passcode or host. It is logged once, not at every
// Interval: again only with another message, or after b passed a check in
// between (then "check credentials accepted" was logged at info). A
// refused check is otherwise an ordinary failed one: apply's state machine
// takes it like any other. m.mu is held.
func (m *Monitor) noteRefusal(b *backend, r Result) {
	switch {
	case r.CredentialsRefused:
		b.refused = r.Err.Error()
	case r.Unanswered && b.refused != "":
		// The refusal again, answered too slowly for the check (see
		// Result.Unanswered): still refused, not dead.
	default:
		b.refused = ""
	}
	log := m.log.WithField("backend", b.Addr)
	switch {
	case b.refused != "" && b.refused != b.refusalLogged:
		b.refusalLogged = b.refused
		log = log.WithField("reason", b.refused)
		m.queue(func() {
			log.Error("check credentials refused: the backend answers the health check's CONNECT with an ERROR; " +
				"it fails its checks until the check's login, passcode or host are accepted")
		})
	case r.OK && b.refusalLogged != "":
		b.refusalLogged = ""
		m.queue(func() { log.Info("check credentials accepted") })
	}
}

// rescue applies the "nothing serving" rule: when no backend is up, every
// backend whose latest check passed comes up. It is a rule about the state,
// not about the result at hand, so the outcome does not depend on whether,
// in one round, the slave's pass arrived before or after the master's
// failure. m.mu is held.
func (m *Monitor) rescue(now time.Time) {
	if slices.ContainsFunc(m.backends, m.electable) {
		return
	}
	for _, b := range m.backends {
		if !b.up && b.successes > 0 {
			m.setUp(b, true, "check passed while nothing else serves")
		}
	}
}

// setUp makes b electable or not; syncStates publishes what that changes.
// m.mu is held.
func (m *Monitor) setUp(b *backend, up bool, reason string) {
	b.up, b.why = up, reason
}

// stateOf is b's state as published: the operator's, if set, else what the
// checks and the election make of it. m.mu is held.
func (m *Monitor) stateOf(b *backend) string {
	if a := m.admin[b.Addr]; a != "" {
		return a
	}
	switch {
	case b.up && m.cfg.Mode == ModeAny:
		return StateUp
	case b.up && b == m.master:
		return StateMaster
	case checkState(b) != StateDown:
		// Passing checks while another is master, or passing but not
		// yet Rise times in a row: alive and answering, not serving.
		return StateStandby
	}
	return StateDown
}

// checkState is what b's checks alone say, whatever the election and the
// operator made of it: StateUp (it passes: it could be elected),
// StateStandby or StateDown. m.mu is held.
func checkState(b *backend) string {
	switch {
	case b.up:
		return StateUp
	case b.standby || b.successes > 0:
		return StateStandby
	}
	return StateDown
}

// syncStates publishes every backend's state that changed since the last
// call: since, the backend_state metric, and a log line. Becoming master is
// logged at debug level only: the service's own line ("master changed")
// says it. m.mu is held.
func (m *Monitor) syncStates(now time.Time) {
	for _, b := range m.backends {
		st, alive := m.stateOf(b), checkState(b) != StateDown
		if st == b.state && alive == b.alive {
			continue
		}
		m.metrics.setState(m.name, b.Addr, m.cfg.Mode, st, alive)
		b.alive = alive
		if st == b.state {
			continue // disabled or draining, and its checks changed
		}
		from := b.state
		b.state, b.since = st, now
		log := m.log.WithFields(logrus.Fields{"backend": b.Addr, "from": from, "epoch": b.epoch})
		if b.why != "" && st != StateMaster && st != StateUp {
			log = log.WithField("reason", b.why)
		}
		m.queue(func() {
			switch {
			case st == StateDisabled || st == StateDraining:
				// SetAdminState's own line says it.
			case st == StateDown:
				log.Warn("backend down")
			case st == StateStandby && (from == StateMaster || from == StateUp):
				log.Warn("backend stopped serving: standby")
			case st == StateStandby:
				log.Info("backend standby")
			case st == StateUp:
				log.Info("backend up")
			default:
				log.Debug("backend master")
			}
		})
	}
}

// queue adds a log line for flush to write. m.mu is held.
func (m *Monitor) queue(f func()) { m.events = append(m.events, f) }

// flush writes the queued log lines, in order. Whoever queues under m.mu
// calls it after unlocking, so that no log write (to a slow terminal, a
// full pipe) holds up Targets, which every new client connection calls.
func (m *Monitor) flush() {
	m.logMu.Lock()
	defer m.logMu.Unlock()
	m.mu.Lock()
	evs := m.events
	m.events = nil
	m.mu.Unlock()
	for _, f := range evs {
		f()
	}
}

// summary lists every backend with its state, for the outage lines:
// "127.0.0.1:61613=down 127.0.0.1:61614=standby". m.mu is held.
func (m *Monitor) summary() string {
	parts := make([]string, len(m.backends))
	for i, b := range m.backends {
		parts[i] = b.Addr + "=" + b.state
	}
	return strings.Join(parts, " ")
}

// noMaster logs, at error level, that the service has no master (ModeAny:
// no healthy backend) since now: old is the master it lost, "" if it had
// none, reason why. The outage is then recalled every outageLogEvery
// (remind). m.mu is held.
func (m *Monitor) noMaster(now time.Time, old, reason string) {
	m.outageLogged = now
	fields := logrus.Fields{"backends": m.summary()}
	if old != "" {
		fields["old"] = old
	}
	if reason != "" {
		fields["reason"] = reason
	}
	msg := "service has no master: no client can be served until one is elected"
	if m.cfg.Mode == ModeAny {
		msg = "service has no healthy backend: no client can be served until one is"
	}
	log := m.log.WithFields(fields)
	m.queue(func() { log.Error(msg) })
}

// remind repeats, at warning level and at most every outageLogEvery, that
// the outage noMaster logged goes on, and for how long. m.mu is held.
func (m *Monitor) remind(now time.Time) {
	if len(m.targets) != 0 || m.outageLogged.IsZero() || now.Sub(m.outageLogged) < m.outageLogEvery {
		return
	}
	m.outageLogged = now
	msg := "still no master"
	if m.cfg.Mode == ModeAny {
		msg = "still no healthy backend"
	}
	log := m.log.WithFields(logrus.Fields{"without_master": now.Sub(m.noneSince), "backends": m.summary()})
	m.queue(func() { log.Warn(msg) })
}

// elect recomputes the targets and, when they change, wakes Targets
// watchers, logs and counts; either way it publishes the backends' states.
// m.mu is held.
func (m *Monitor) elect(now time.Time) {
	m.account(now)
	var next []string
	var master *backend
	if m.cfg.Mode == ModeAny {
		for _, b := range m.backends {
			if m.electable(b) {
				next = append(next, b.Addr)
			}
		}
	} else if master = m.pickMaster(); master != nil {
		next = []string{master.Addr}
	}
	kept := m.keptWith(master)
	if slices.Equal(next, m.targets) {
		m.master = master
		if !slices.Equal(kept, m.kept) {
			// Only Keep's answer changed (a draining backend died,
			// or another master was elected): the data paths look
			// again at their live connections.
			m.kept = kept
			m.announce()
		}
		m.syncStates(now)
		return
	}
	old := m.targets
	m.targets, m.kept = next, kept
	if master != nil && master.Addr != m.retired {
		m.retired = "" // a new master: the removed one's clients must move
	}
	// What the change of master did to connections is read now, before
	// the change is announced: a client held for a master is still held,
	// not yet on its way to the new one.
	var conns *ConnReport
	if prev := m.lastMaster; master != nil && prev != "" && m.reporter != nil {
		r := m.reporter(prev)
		conns = &r
	}
	m.announce()

	var noneFor time.Duration
	if len(old) == 0 && !m.noneSince.IsZero() {
		noneFor = now.Sub(m.noneSince)
	}
	if len(next) == 0 {
		m.noneSince = now
	} else {
		m.noneSince = time.Time{}
		m.outageLogged = time.Time{}
	}
	m.metrics.setHasMaster(m.name, len(next) > 0)

	var oldAddr, lostWhy string
	if len(old) > 0 {
		oldAddr = old[0]
		for _, b := range m.backends {
			if b.Addr == oldAddr {
				lostWhy = b.why
			}
		}
		if lostWhy == "" {
			lostWhy = "removed from the backend list"
		}
	}
	if m.cfg.Mode == ModeAny {
		m.syncStates(now)
		switch {
		case len(next) == 0:
			m.noMaster(now, "", "")
		case len(old) == 0:
			log := m.log.WithFields(logrus.Fields{"targets": next, "without_master": noneFor})
			m.queue(func() { log.Info("healthy backends available") })
		}
		return
	}
	var newAddr string
	var epoch uint64
	if master != nil {
		newAddr, epoch = master.Addr, master.epoch
		m.masterSince = now
	} else {
		m.masterSince = time.Time{}
	}
	m.master = master
	m.syncStates(now)
	prev := m.lastMaster
	failover := newAddr != "" && prev != "" && newAddr != prev
	if newAddr != "" {
		m.lastMaster = newAddr
	}
	m.metrics.masterChanged(m.name, failover)
	if newAddr == "" {
		m.noMaster(now, oldAddr, lostWhy)
		return
	}
	fields := logrus.Fields{"new": newAddr, "epoch": epoch, "without_master": noneFor}
	msg := "master changed"
	switch {
	case prev == "":
		msg = "master elected"
	case prev == newAddr:
		msg = "master back"
	default:
		fields["old"] = prev
		if oldAddr != "" {
			fields["reason"] = lostWhy // replaced without an outage: why
		}
	}
	if conns != nil {
		fields["closed"], fields["held"] = conns.Closed, conns.Held
	}
	log := m.log.WithFields(fields)
	m.queue(func() { log.Info(msg) })
}

// pickMaster applies the election rule of the package documentation. m.mu
// is held.
func (m *Monitor) pickMaster() *backend {
	var best *backend
	for _, b := range m.backends {
		if m.electable(b) && (best == nil || b.epoch > best.epoch || b.epoch == best.epoch && b.Priority < best.Priority) {
			best = b
		}
	}
	if cur := m.master; m.settled && cur != nil && m.electable(cur) && !cur.removed && best.epoch <= cur.epoch {
		return cur
	}
	return best
}

// account adds the time since the last call, if it was spent without
// targets, to without_master_seconds. m.mu is held.
func (m *Monitor) account(now time.Time) {
	if m.accounted.IsZero() {
		return
	}
	if len(m.targets) == 0 {
		m.metrics.addWithoutMaster(m.name, now.Sub(m.accounted))
	}
	m.accounted = now
}

// Targets returns the elected addresses in preference order (ModeMaster: at
// most one, the master) and a channel closed the next time the answer
// changes, or Keep's answer for a draining backend does. Call it again after
// the channel closes. In ModeAny with
// Randomize the order is shuffled on every call; a new order alone is not a
// change.
func (m *Monitor) Targets() ([]string, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := slices.Clone(m.targets)
	if m.cfg.Mode == ModeAny && m.cfg.Randomize {
		rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	}
	return out, m.changed
}

// Recheck checks every backend now instead of at the next round. The proxy
// calls it when a client could not reach a target or lost its connection;
// a target failing that check goes down at once (see the package
// documentation). Calls made before the checks start share them, so a burst
// of failing clients costs one check per backend. It never blocks.
func (m *Monitor) Recheck() {
	m.recheckGen.Add(1)
	m.poke()
}

func (m *Monitor) poke() {
	select {
	case m.wake <- struct{}{}:
	default: // a wake-up is already pending, and it will see our request
	}
}

// SetConfig replaces the check settings and, if checker is not nil, the
// checker: a configuration reload. Backend states (up or down, counts,
// epochs) are kept, so a master that still passes stays master and its
// clients' connections live on. The new timeout applies to the next checks
// started, the new interval from the next round; a new mode re-elects now.
func (m *Monitor) SetConfig(cfg Config, checker Checker) {
	if err := cfg.Validate(); err != nil {
		m.log.WithError(err).Error("invalid health check config; using defaults for the invalid fields")
	}
	m.mu.Lock()
	prevMode := m.cfg.Mode
	m.cfg = cfg.withDefaults()
	if checker != nil {
		m.checker = checker
	}
	if m.cfg.Mode != prevMode {
		// The states of the other mode's series go; the unchanged
		// states (down, standby) are published again under the new one.
		for _, b := range m.backends {
			m.metrics.setState(m.name, b.Addr, m.cfg.Mode, b.state, b.alive)
		}
	}
	m.elect(m.clock.Now())
	m.mu.Unlock()
	m.flush()
	m.poke()
}

// SetConnReporter gives the monitor a way to ask the data path what a
// change of master did to client connections (ConnReport), for the "master
// changed" log line; old is the previous master. report is called with the
// monitor's lock held, at the change, before Targets announces it (so a
// held client is still held): it must only read counters, never call the
// monitor or take a lock held while calling it. nil (the default) leaves
// the counts out.
func (m *Monitor) SetConnReporter(report func(old string) ConnReport) {
	m.mu.Lock()
	m.reporter = report
	m.mu.Unlock()
}

// SetBackends replaces the backend list. A backend whose Addr was already
// known keeps its state (up or down, counts, epoch) and takes the new
// CheckURL, Priority and Weight; a new one starts down and is checked at
// once; a dropped one is forgotten, and if it was the master another is
// elected. A repeated Addr is ignored after its first occurrence.
func (m *Monitor) SetBackends(bs []Backend) {
	m.mu.Lock()
	old := make(map[string]*backend, len(m.backends))
	for _, b := range m.backends {
		old[b.Addr] = b
	}
	next := make([]*backend, 0, len(bs))
	seen := make(map[string]bool, len(bs))
	for _, nb := range bs {
		if seen[nb.Addr] {
			log := m.log.WithField("backend", nb.Addr)
			m.queue(func() { log.Warn("backend listed twice; ignoring the repeat") })
			continue
		}
		seen[nb.Addr] = true
		b := old[nb.Addr]
		if b == nil {
			b = &backend{state: StateDown, watch: WatchPolled}
			m.metrics.setState(m.name, nb.Addr, m.cfg.Mode, StateDown, false)
		}
		b.Backend = nb
		next = append(next, b)
		delete(old, nb.Addr)
	}
	for _, b := range old {
		b.removed = true
		m.metrics.forget(m.name, b.Addr)
		log := m.log.WithField("backend", b.Addr)
		if m.cfg.Mode == ModeMaster && m.master == b {
			// New connections stop going to it, but a master dropped from
			// the list (DNS moved on, an operator edited the file) is
			// still the master until it dies: its clients keep their
			// connections (Keep) until another master is elected.
			m.retired = b.Addr
			m.queue(func() { log.Info("backend removed while master: no new connections; live ones kept") })
		} else {
			m.queue(func() { log.Info("backend removed") })
		}
	}
	if seen[m.retired] {
		m.retired = "" // listed again: an ordinary backend
	}
	m.backends = next
	now := m.clock.Now()
	m.rescue(now)
	m.elect(now)
	m.mu.Unlock()
	m.flush()
	m.poke()
}

// Keep reports whether live connections to addr should be kept although
// addr is not among the Targets: it is a master that was removed from the
// backend list and no other master has been elected since, or a backend an
// operator drains (see keptWith). The proxy asks it before closing
// connections on a change of targets.
func (m *Monitor) Keep(addr string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return addr != "" && (addr == m.retired || slices.Contains(m.kept, addr))
}

// ServiceStatus is a Monitor's state, for the sidecar's /status.
type ServiceStatus struct {
	// Name is the service name given to NewMonitor.
	Name string `json:"name"`
	// Mode is ModeMaster or ModeAny.
	Mode string `json:"mode"`
	// Targets are the elected addresses, in list order.
	Targets []string `json:"targets"`
	// Master is the elected master in ModeMaster, "" if none.
	Master string `json:"master"`
	// MasterSince is when Master was elected; zero without one.
	MasterSince time.Time `json:"master_since"`
	// NoMasterSince is when the service last lost its master (ModeAny:
	// its last healthy backend), or when monitoring began if it never had
	// one; zero while there is one.
	NoMasterSince time.Time `json:"no_master_since"`
	// Ready is true while the service has a master (ModeAny: a healthy
	// backend), so that a client connection is served now.
	Ready bool `json:"ready"`
	// Backends are in list order.
	Backends []BackendStatus `json:"backends"`
	// Admin is every operator setting (StateDisabled or StateDraining)
	// by address, including those of addresses no longer listed, which
	// apply again if they come back; nil without any.
	Admin map[string]string `json:"admin,omitempty"`
}

// BackendStatus is one backend's part of ServiceStatus.
type BackendStatus struct {
	// Addr, CheckURL and Priority are the Backend's.
	Addr     string `json:"addr"`
	CheckURL string `json:"check_url,omitempty"`
	Priority int    `json:"priority"`
	// State is StateMaster, StateStandby or StateDown (ModeAny: StateUp,
	// StateStandby or StateDown), or the operator's StateDraining or
	// StateDisabled while set.
	State string `json:"state"`
	// Health is, while State is the operator's, what the checks say:
	// StateUp (it passes and could be elected), StateStandby or
	// StateDown; "" otherwise (State says it).
	Health string `json:"health,omitempty"`
	// Since is when State was last entered; zero if never changed.
	Since time.Time `json:"since"`
	// LastCheck is when the last check finished; zero before the first.
	LastCheck time.Time `json:"last_check"`
	// LastLatency is how long the last check took (nanoseconds in JSON).
	LastLatency time.Duration `json:"last_latency_ns"`
	// LastError is the last check's error, "" if it passed or said the
	// backend is a standby.
	LastError string `json:"last_error,omitempty"`
	// CredentialsRefused is true while the last check was refused by the
	// backend (Result.CredentialsRefused): alive, but not letting the
	// check's login in. LastError, "check credentials refused: …", has
	// the broker's message.
	CredentialsRefused bool `json:"credentials_refused,omitempty"`
	// Epoch is the epoch the last passed check reported; 0 if unknown.
	Epoch uint64 `json:"epoch"`
	// Successes and Failures count consecutive passed and failed checks;
	// at most one of them is non-zero. A standby's answers are neither:
	// a healthy slave has none of either.
	Successes int `json:"successes"`
	Failures  int `json:"failures"`
	// Checks counts completed checks.
	Checks int `json:"checks"`
	// Watch is WatchWatched while the backend's watch stream is open (it
	// pushes its role; checks on the interval are skipped), else
	// WatchPolled. WatchError says why the latest watch was lost or could
	// not be opened ("offers no watch" for a backend without one).
	Watch      string `json:"watch"`
	WatchError string `json:"watch_error,omitempty"`
	// WatchedSince is when the open watch began; LastEvent when it last
	// pushed a state.
	WatchedSince time.Time `json:"watched_since,omitzero"`
	LastEvent    time.Time `json:"last_event,omitzero"`
	// LastSpoke is when the backend was last heard from: a watched one's
	// latest event or heartbeat, a polled one's latest check.
	LastSpoke time.Time `json:"last_spoke,omitzero"`
}

// Status returns a snapshot of the monitor's state.
func (m *Monitor) Status() ServiceStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := ServiceStatus{
		Name:          m.name,
		Mode:          m.cfg.Mode,
		Targets:       slices.Clone(m.targets),
		MasterSince:   m.masterSince,
		NoMasterSince: m.noneSince,
		Ready:         len(m.targets) > 0,
		Backends:      make([]BackendStatus, 0, len(m.backends)),
	}
	if st.Targets == nil {
		st.Targets = []string{}
	}
	if m.master != nil {
		st.Master = m.master.Addr
	}
	for _, b := range m.backends {
		bs := BackendStatus{
			Addr: b.Addr, CheckURL: b.CheckURL, Priority: b.Priority,
			State: b.state, Since: b.since, LastCheck: b.lastCheck, LastLatency: b.lastLatency,
			Epoch: b.epoch, Successes: b.successes, Failures: b.failures, Checks: b.checks,
			CredentialsRefused: b.refused != "",
			Watch:              b.watch, WatchError: b.watchErr,
		}
		bs.LastSpoke = b.lastCheck
		if b.watch == WatchWatched {
			bs.WatchedSince, bs.LastEvent = b.watchedSince, b.lastEvent
			bs.LastSpoke = b.lastSpoke
		}
		if b.lastErr != nil {
			bs.LastError = b.lastErr.Error()
		}
		if m.admin[b.Addr] != "" {
			bs.Health = checkState(b)
		}
		st.Backends = append(st.Backends, bs)
	}
	if len(m.admin) > 0 {
		st.Admin = maps.Clone(m.admin)
	}
	return st
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
