package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// State names used in logs and Status.
const (
	StateUp   = "up"
	StateDown = "down"
)

// Monitor checks one service's backends and elects its targets. Create it
// with NewMonitor and start it with Run; Targets, Recheck, SetBackends and
// Status may be called from any goroutine, before, during and after Run.
type Monitor struct {
	name    string
	cfg     Config
	checker Checker
	clock   Clock
	log     *logrus.Entry
	metrics *Metrics

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

	mu          sync.Mutex
	backends    []*backend // list order
	settled     bool       // every backend has been checked once since start
	master      *backend   // ModeMaster's elected backend, nil if none
	lastMaster  string     // the last non-empty master, to count failovers
	targets     []string
	changed     chan struct{} // closed when targets change, then replaced
	masterSince time.Time     // when the current master was elected
	noneSince   time.Time     // when the targets became empty; zero while not
	accounted   time.Time     // seconds_without_master is counted up to here; zero before Run
}

// backend is a Backend and what the monitor knows of it. Fields other than
// the embedded Backend are guarded by Monitor.mu.
type backend struct {
	Backend
	up          bool
	since       time.Time // last change of up
	checks      int       // completed checks; 0 = never checked
	successes   int       // consecutive
	failures    int       // consecutive
	epoch       uint64
	lastCheck   time.Time
	lastLatency time.Duration
	lastErr     error
	running     bool      // a check is in flight
	passiveGen  uint64    // the recheckGen the latest passive check answers
	lastPassive time.Time // when the latest passive check started
	removed     bool      // dropped by SetBackends; results are ignored
}

// outcome is a finished check on its way to Run.
type outcome struct {
	b       *backend
	r       Result
	passive bool
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
		name:      name,
		cfg:       cfg.withDefaults(),
		checker:   checker,
		clock:     clock,
		log:       log,
		metrics:   metrics,
		wake:      make(chan struct{}, 1),
		changed:   make(chan struct{}),
		noneSince: clock.Now(),
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
			results <- outcome{b: b, r: r, passive: passive}
		}()
	}

	m.mu.Lock()
	now := m.clock.Now()
	m.accounted = now
	m.startChecks(launch, true)
	fast := len(m.targets) == 0
	m.mu.Unlock()
	m.mu.Lock()
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
			m.log.Info("health checks stopped")
			return
		case <-timer.C():
			m.mu.Lock()
			m.account(m.clock.Now())
			m.startChecks(launch, true)
			fast = len(m.targets) == 0
			m.mu.Unlock()
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
			m.startChecks(launch, false)
			none = len(m.targets) == 0
			m.mu.Unlock()
		case o := <-results:
			running--
			m.mu.Lock()
			m.apply(o)
			m.startChecks(launch, false)
			none = len(m.targets) == 0
			m.mu.Unlock()
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
	b.running = false
	if b.removed {
		return
	}
	now := m.clock.Now()
	m.account(now)
	m.metrics.observe(m.name, b.Addr, r)
	first := b.checks == 0
	b.checks++
	b.lastCheck, b.lastLatency = now, r.Latency
	if r.OK {
		b.successes++
		b.failures = 0
		b.lastErr = nil
		b.epoch = r.Epoch
		if !b.up {
			switch {
			case first:
				m.setState(b, true, "first check passed", now)
			case b.successes >= m.cfg.Rise:
				m.setState(b, true, fmt.Sprintf("%d checks passed in a row", b.successes), now)
			}
		}
	} else {
		b.failures++
		b.successes = 0
		b.lastErr = r.Err
		if b.up {
			switch {
			case o.passive && slices.Contains(m.targets, b.Addr):
				m.setState(b, false, "failed a recheck: "+r.Err.Error(), now)
			case r.Definitive && slices.Contains(m.targets, b.Addr):
				m.setState(b, false, "not serving: "+r.Err.Error(), now)
			case b.failures >= m.cfg.Fall:
				m.setState(b, false, fmt.Sprintf("%d checks failed in a row, last: %v", b.failures, r.Err), now)
			}
		} else {
			m.log.WithFields(logrus.Fields{"backend": b.Addr, "failures": b.failures}).WithError(r.Err).Debug("check failed")
		}
	}
	m.rescue(now)
	// The election that takes the last first result is still made on rank
	// alone; stickiness starts after it.
	m.elect(now)
	if !m.settled {
		m.settled = !slices.ContainsFunc(m.backends, func(b *backend) bool { return b.checks == 0 })
	}
}

// rescue applies the "nothing serving" rule: when no backend is up, every
// backend whose latest check passed comes up. It is a rule about the state,
// not about the result at hand, so the outcome does not depend on whether,
// in one round, the slave's pass arrived before or after the master's
// failure. m.mu is held.
func (m *Monitor) rescue(now time.Time) {
	if slices.ContainsFunc(m.backends, func(b *backend) bool { return b.up }) {
		return
	}
	for _, b := range m.backends {
		if b.successes > 0 {
			m.setState(b, true, "check passed while nothing else serves", now)
		}
	}
}

// setState moves b up or down. m.mu is held.
func (m *Monitor) setState(b *backend, up bool, reason string, now time.Time) {
	b.up, b.since = up, now
	m.metrics.setUp(m.name, b.Addr, up)
	log := m.log.WithFields(logrus.Fields{"backend": b.Addr, "reason": reason, "epoch": b.epoch})
	if up {
		log.Info("backend up")
	} else {
		log.Warn("backend down")
	}
}

// elect recomputes the targets and, when they change, wakes Targets
// watchers, logs and counts. m.mu is held.
func (m *Monitor) elect(now time.Time) {
	m.account(now)
	var next []string
	var master *backend
	if m.cfg.Mode == ModeAny {
		for _, b := range m.backends {
			if b.up {
				next = append(next, b.Addr)
			}
		}
	} else if master = m.pickMaster(); master != nil {
		next = []string{master.Addr}
	}
	if slices.Equal(next, m.targets) {
		m.master = master
		return
	}
	old := m.targets
	m.targets = next
	if master != nil && master.Addr != m.retired {
		m.retired = "" // a new master: the removed one's clients must move
	}
	close(m.changed)
	m.changed = make(chan struct{})

	var noneFor time.Duration
	if len(old) == 0 && !m.noneSince.IsZero() {
		noneFor = now.Sub(m.noneSince)
	}
	if len(next) == 0 {
		m.noneSince = now
	} else {
		m.noneSince = time.Time{}
	}
	m.metrics.setHasMaster(m.name, len(next) > 0)

	if m.cfg.Mode == ModeAny {
		m.log.WithFields(logrus.Fields{"old": old, "new": next, "none_for": noneFor}).Info("targets changed")
		return
	}
	var oldAddr, newAddr string
	var epoch uint64
	if len(old) > 0 {
		oldAddr = old[0]
	}
	if master != nil {
		newAddr, epoch = master.Addr, master.epoch
		m.masterSince = now
	} else {
		m.masterSince = time.Time{}
	}
	m.master = master
	failover := newAddr != "" && m.lastMaster != "" && newAddr != m.lastMaster
	if newAddr != "" {
		m.lastMaster = newAddr
	}
	m.metrics.masterChanged(m.name, failover)
	m.log.WithFields(logrus.Fields{"old": oldAddr, "new": newAddr, "epoch": epoch, "no_master_for": noneFor}).Info("master changed")
}

// pickMaster applies the election rule of the package documentation. m.mu
// is held.
func (m *Monitor) pickMaster() *backend {
	var best *backend
	for _, b := range m.backends {
		if b.up && (best == nil || b.epoch > best.epoch || b.epoch == best.epoch && b.Priority < best.Priority) {
			best = b
		}
	}
	if cur := m.master; m.settled && cur != nil && cur.up && !cur.removed && best.epoch <= cur.epoch {
		return cur
	}
	return best
}

// account adds the time since the last call, if it was spent without
// targets, to seconds_without_master. m.mu is held.
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
// changes. Call it again after the channel closes. In ModeAny with
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
	m.cfg = cfg.withDefaults()
	if checker != nil {
		m.checker = checker
	}
	m.elect(m.clock.Now())
	m.mu.Unlock()
	m.poke()
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
			m.log.WithField("backend", nb.Addr).Warn("backend listed twice; ignoring the repeat")
			continue
		}
		seen[nb.Addr] = true
		b := old[nb.Addr]
		if b == nil {
			b = &backend{}
			m.metrics.setUp(m.name, nb.Addr, false)
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
			log.Info("backend removed while master: no new connections; live ones kept")
		} else {
			log.Info("backend removed")
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
	m.poke()
}

// Keep reports whether live connections to addr should be kept although
// addr is not among the Targets: it is a master that was removed from the
// backend list and no other master has been elected since. The proxy asks
// it before closing connections on a change of targets.
func (m *Monitor) Keep(addr string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return addr != "" && addr == m.retired
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
	// Backends are in list order.
	Backends []BackendStatus `json:"backends"`
}

// BackendStatus is one backend's part of ServiceStatus.
type BackendStatus struct {
	// Addr, CheckURL and Priority are the Backend's.
	Addr     string `json:"addr"`
	CheckURL string `json:"check_url,omitempty"`
	Priority int    `json:"priority"`
	// State is StateUp or StateDown.
	State string `json:"state"`
	// Since is when State was last entered; zero if never changed.
	Since time.Time `json:"since"`
	// LastCheck is when the last check finished; zero before the first.
	LastCheck time.Time `json:"last_check"`
	// LastLatency is how long the last check took (nanoseconds in JSON).
	LastLatency time.Duration `json:"last_latency_ns"`
	// LastError is the last check's error, "" if it passed.
	LastError string `json:"last_error,omitempty"`
	// Epoch is the epoch the last passed check reported; 0 if unknown.
	Epoch uint64 `json:"epoch"`
	// Successes and Failures count consecutive passed and failed checks;
	// at most one of them is non-zero.
	Successes int `json:"successes"`
	Failures  int `json:"failures"`
	// Checks counts completed checks.
	Checks int `json:"checks"`
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
			State: StateDown, Since: b.since, LastCheck: b.lastCheck, LastLatency: b.lastLatency,
			Epoch: b.epoch, Successes: b.successes, Failures: b.failures, Checks: b.checks,
		}
		if b.up {
			bs.State = StateUp
		}
		if b.lastErr != nil {
			bs.LastError = b.lastErr.Error()
		}
		st.Backends = append(st.Backends, bs)
	}
	return st
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
