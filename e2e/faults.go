package e2e

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"
)

// FaultKind names a fault the harness can inject.
type FaultKind string

// The faults. Every killed broker is restarted, as a new slave, before the
// fault counts as recovered, so the cluster stays at N.
const (
	// Kill9Master: SIGKILL the master. A slave takes the lock and the
	// sidecar moves every client to it.
	Kill9Master FaultKind = "kill9-master"
	// SigtermMaster: SIGTERM the master, which drains, releases the lock
	// and must exit 0.
	SigtermMaster FaultKind = "sigterm-master"
	// Kill9Slave: SIGKILL a slave. Clients must not notice.
	Kill9Slave FaultKind = "kill9-slave"
	// SidecarRestart: SIGKILL the sidecar and start it again, as a
	// supervisor would after a crash. Every client connection is reset and
	// clients reconnect to the same address.
	SidecarRestart FaultKind = "sidecar-restart"
	// SigstopMaster: freeze the master with SIGSTOP until a slave took
	// over by lease (and at least Freeze), then SIGCONT. See
	// Chaos.sigstopMaster for what must happen.
	SigstopMaster FaultKind = "sigstop-master"
	// SidecarSigterm: restart the sidecar gracefully, as a supervisor
	// would: SIGTERM, wait for it to drain and exit, start it again.
	SidecarSigterm FaultKind = "sidecar-sigterm"
	// DBRestart: stop PostgreSQL (fast shutdown) and start it again; only
	// on a StorePostgres cluster. See Chaos.dbRestart.
	DBRestart FaultKind = "db-restart"
)

// AllFaults is every kind that applies to any store, in the order reports
// list them.
var AllFaults = []FaultKind{Kill9Master, SigtermMaster, Kill9Slave, SidecarRestart, SigstopMaster, SidecarSigterm}

// PostgresFaults are the kinds that apply only to a StorePostgres cluster;
// reports list them after AllFaults.
var PostgresFaults = []FaultKind{DBRestart}

// reportOrder is every kind, in the order reports list them.
var reportOrder = slices.Concat(AllFaults, PostgresFaults)

// ParseFaults parses a comma-separated list of fault kinds.
func ParseFaults(s string) ([]FaultKind, error) {
	var out []FaultKind
	for _, f := range strings.Split(s, ",") {
		k := FaultKind(strings.TrimSpace(f))
		if k == "" {
			continue
		}
		if !slices.Contains(reportOrder, k) {
			return nil, fmt.Errorf("unknown fault %q (want some of %v)", k, reportOrder)
		}
		out = append(out, k)
	}
	if len(out) == 0 {
		return nil, errors.New("no faults named")
	}
	return out, nil
}

// Fault is one injected fault and what the harness saw of it.
type Fault struct {
	N      int
	Kind   FaultKind
	Target string    // the broker's name, or "handover"
	At     time.Time // when the signal was sent
	// Takeover is from At until another broker reported itself serving
	// master (master faults other than SIGSTOP).
	Takeover time.Duration
	// Rerouted is from At (SIGSTOP: from SIGCONT) until the sidecar's
	// /status named the master clients must now reach.
	Rerouted time.Duration
	// NoMaster is, for SIGSTOP, from At until the sidecar's /status said
	// it had no master.
	NoMaster time.Duration
	// Recovered is when the cluster was whole again from the clients'
	// point of view: the sidecar (a new one, after a sidecar fault)
	// routing to the serving master; for kill9-slave, the slave back.
	Recovered time.Time
	// Restarted is how long the killed process took to be back in its
	// role after it was started again (0: nothing restarted).
	Restarted time.Duration
	// Gap is the longest stretch without any RECEIPT, across all
	// producers, from the last RECEIPT before At to the first after
	// Recovered: the outage clients saw. Computed after the run.
	Gap time.Duration
	// Pause is the longest wait for a RECEIPT of any SEND outstanding
	// between At and Recovered: the pause one client saw (with protocol
	// = "stomp", the resume of its session). Computed after the run.
	Pause time.Duration
}

// Timeouts for the recovery steps; generous, because -race binaries on two
// cores are slow, and every one of them is a verdict when exceeded.
const (
	takeoverTimeout = 10 * time.Second
	rerouteTimeout  = 10 * time.Second
	exitTimeout     = 20 * time.Second
	restartTimeout  = 30 * time.Second
	clientsBack     = 40 * time.Second
	steadyTimeout   = 5 * time.Second
)

// inject runs one fault to recovery: the fault, the checks of what must
// follow, the restart of what was killed, and every client working again
// (a RECEIPT or MESSAGE after the recovery). It returns an error for
// anything that did not happen.
func (ch *Chaos) inject(kind FaultKind) (*Fault, error) {
	if err := ch.c.Check(steadyTimeout); err != nil {
		return nil, fmt.Errorf("before the fault: %w", err)
	}
	f := &Fault{N: len(ch.faults) + 1, Kind: kind}
	var err error
	switch kind {
	case Kill9Master:
		err = ch.masterDies(f, syscall.SIGKILL)
	case SigtermMaster:
		err = ch.masterDies(f, syscall.SIGTERM)
	case Kill9Slave:
		err = ch.kill9Slave(f)
	case SidecarRestart:
		err = ch.sidecarRestart(f)
	case SigstopMaster:
		err = ch.sigstopMaster(f)
	case SidecarSigterm:
		err = ch.sidecarSigterm(f)
	case DBRestart:
		err = ch.dbRestart(f)
	default:
		err = fmt.Errorf("unknown fault %q", kind)
	}
	if err != nil {
		return f, fmt.Errorf("fault %d %s on %s: %w", f.N, kind, f.Target, err)
	}
	// The clients, not only the processes, must be back: every producer
	// has a RECEIPT and every consumer a MESSAGE from after the recovery.
	if err := poll(clientsBack, func() error {
		if idle := ch.w.rec.idleSince(ch.w.clients, f.Recovered.UnixNano()); len(idle) > 0 {
			return fmt.Errorf("no RECEIPT or MESSAGE since the recovery for %v", idle)
		}
		return nil
	}); err != nil {
		return f, fmt.Errorf("fault %d %s on %s: %w", f.N, kind, f.Target, err)
	}
	if err := ch.c.Check(steadyTimeout); err != nil {
		return f, fmt.Errorf("fault %d %s on %s: after recovery: %w", f.N, kind, f.Target, err)
	}
	return f, nil
}

// masterDies kills the master with sig (SIGKILL or SIGTERM): another broker
// must take over with a higher epoch, the sidecar must route to it, a
// SIGTERMed master must exit 0, and the dead one comes back as a slave.
func (ch *Chaos) masterDies(f *Fault, sig syscall.Signal) error {
	c := ch.c
	m, st, err := c.Master()
	if err != nil {
		return err
	}
	f.Target = m.Name
	m.proc.expected.Store(true)
	f.At = time.Now()
	if err := m.proc.signal(sig); err != nil {
		return err
	}
	nm, nst, err := c.waitMaster(m, takeoverTimeout)
	if err != nil {
		return fmt.Errorf("no takeover: %w", err)
	}
	f.Takeover = time.Since(f.At)
	if nst.Epoch <= st.Epoch {
		return fmt.Errorf("%s took over with epoch %d, not above the old master's %d", nm.Name, nst.Epoch, st.Epoch)
	}
	if err := c.waitSidecarMaster(nm.Listen, rerouteTimeout); err != nil {
		return fmt.Errorf("sidecar did not follow the takeover by %s: %w", nm.Name, err)
	}
	f.Rerouted = time.Since(f.At)
	f.Recovered = time.Now()
	ps, err := m.proc.wait(exitTimeout)
	if err != nil {
		return err
	}
	if sig == syscall.SIGTERM && !ps.Success() {
		return fmt.Errorf("SIGTERM: %s exited %v, want status 0", m.Name, ps)
	}
	return ch.restartBroker(f, m)
}

// restartBroker starts a dead broker again on its own ports and waits for
// it to be a slave.
func (ch *Chaos) restartBroker(f *Fault, b *Broker) error {
	start := time.Now()
	if err := ch.c.startBroker(b); err != nil {
		return err
	}
	if err := ch.c.waitRole(b, "slave", restartTimeout); err != nil {
		return fmt.Errorf("restarted %s: %w", b.Name, err)
	}
	f.Restarted = time.Since(start)
	return nil
}

// kill9Slave kills a slave (chosen by the schedule's random source) and
// restarts it; the master and the sidecar's route must not change.
func (ch *Chaos) kill9Slave(f *Fault) error {
	c := ch.c
	m, _, err := c.Master()
	if err != nil {
		return err
	}
	slaves := c.Slaves(m)
	s := slaves[ch.rng.IntN(len(slaves))]
	f.Target = s.Name
	s.proc.expected.Store(true)
	f.At = time.Now()
	if err := s.proc.signal(syscall.SIGKILL); err != nil {
		return err
	}
	if _, err := s.proc.wait(exitTimeout); err != nil {
		return err
	}
	if err := ch.restartBroker(f, s); err != nil {
		return err
	}
	f.Recovered = time.Now()
	if nm, _, err := c.Master(); err != nil || nm != m {
		return fmt.Errorf("the master changed when a slave died: now %v (%v), was %s", nm, err, m.Name)
	}
	return nil
}

// sidecarRestart kills the sidecar and starts it again on the same
// addresses; it must find the same master.
func (ch *Chaos) sidecarRestart(f *Fault) error {
	c := ch.c
	m, _, err := c.Master()
	if err != nil {
		return err
	}
	f.Target = "handover"
	c.sidecar.expected.Store(true)
	f.At = time.Now()
	if err := c.sidecar.signal(syscall.SIGKILL); err != nil {
		return err
	}
	if _, err := c.sidecar.wait(exitTimeout); err != nil {
		return err
	}
	start := time.Now()
	if err := c.startSidecar(); err != nil {
		return err
	}
	if err := c.waitSidecarMaster(m.Listen, rerouteTimeout); err != nil {
		return fmt.Errorf("restarted sidecar: %w", err)
	}
	f.Rerouted = time.Since(f.At)
	f.Restarted = time.Since(start)
	f.Recovered = time.Now()
	return nil
}

// sidecarSigterm restarts the sidecar gracefully, as a supervisor does:
// SIGTERM, wait for the exit, start it again. The old sidecar stops
// accepting at once but keeps its admin port until it exits, so a
// replacement cannot start earlier. While it drains (shutdown_grace, 10s by
// default) the clients' live connections must keep working; then it closes
// them and must exit 0, and the clients reconnect to the new one.
func (ch *Chaos) sidecarSigterm(f *Fault) error {
	c := ch.c
	m, _, err := c.Master()
	if err != nil {
		return err
	}
	f.Target = "handover"
	old := c.sidecar
	old.expected.Store(true)
	f.At = time.Now()
	if err := old.signal(syscall.SIGTERM); err != nil {
		return err
	}
	ps, err := old.wait(exitTimeout)
	if err != nil {
		return err
	}
	exited := time.Now()
	if !ps.Success() {
		return fmt.Errorf("SIGTERM: the sidecar exited %v, want status 0", ps)
	}
	if n := ch.w.rec.receiptsBetween(f.At.Add(time.Second).UnixNano(), exited.Add(-time.Second).UnixNano()); n == 0 && exited.Sub(f.At) > 3*time.Second {
		return fmt.Errorf("no RECEIPT while the old sidecar drained for %v: its live connections stopped working", exited.Sub(f.At).Round(time.Millisecond))
	}
	if err := c.startSidecar(); err != nil {
		return err
	}
	if err := c.waitSidecarMaster(m.Listen, rerouteTimeout); err != nil {
		return fmt.Errorf("restarted sidecar: %w", err)
	}
	f.Restarted = time.Since(exited)
	f.Rerouted = time.Since(f.At)
	f.Recovered = time.Now()
	return nil
}

// sigstopMaster freezes the master with SIGSTOP, then resumes it.
//
// A frozen master still holds its OFD lock (the kernel keeps it for the
// stopped process) or its database session, so only its lease can replace
// it: it stops renewing, and once lease_timeout (2 s by default) passes a
// slave takes over with a higher epoch. Thawed, the old master finds its
// lease invalid before it acts and exits 3 by itself. So this fault
// asserts:
//
//   - a slave takes over, with a higher epoch, and the sidecar routes to
//     it, while the old master is still frozen;
//   - after SIGCONT (once the freeze has lasted ch.opts.Freeze, or the
//     takeover, whichever is later), the old master exits with status 3
//     and no other;
//   - it comes back as a slave.
//
// That nothing it receipted is lost, and nothing it acknowledged after the
// takeover counts, is the run's verdict (lost, phantom).
func (ch *Chaos) sigstopMaster(f *Fault) error {
	c := ch.c
	m, st, err := c.Master()
	if err != nil {
		return err
	}
	f.Target = m.Name
	m.proc.expected.Store(true)
	f.At = time.Now()
	if err := m.proc.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	resumed := false
	resume := func() error {
		if resumed {
			return nil
		}
		resumed = true
		return m.proc.signal(syscall.SIGCONT)
	}
	defer resume() // on every error path: the next checks need it running

	// The slaves alone are asked: the frozen broker's admin port would
	// hold each poll up for the client's whole timeout.
	var nm *Broker
	var nst BrokerStatus
	err = poll(takeoverTimeout, func() error {
		for _, s := range c.Slaves(m) {
			if sst, err := c.Status(s); err == nil && sst.Role == "master" && sst.Ready {
				nm, nst = s, sst
				return nil
			}
		}
		return errors.New("no slave serves yet")
	})
	if err != nil {
		return fmt.Errorf("no takeover from the frozen master: %w", err)
	}
	f.Takeover = time.Since(f.At)
	if nst.Epoch <= st.Epoch {
		return fmt.Errorf("%s took over with epoch %d, not above the frozen master's %d", nm.Name, nst.Epoch, st.Epoch)
	}
	if err := c.waitSidecarMaster(nm.Listen, rerouteTimeout); err != nil {
		return fmt.Errorf("sidecar did not follow the takeover by %s: %w", nm.Name, err)
	}
	f.Rerouted = time.Since(f.At)
	f.Recovered = time.Now()
	if d := time.Until(f.At.Add(ch.opts.Freeze)); d > 0 {
		time.Sleep(d) // the freeze's deliberate length
	}
	if err := resume(); err != nil {
		return err
	}
	ps, err := m.proc.wait(exitTimeout)
	if err != nil {
		return fmt.Errorf("the thawed master did not stop: %w", err)
	}
	if ps.ExitCode() != 3 {
		return fmt.Errorf("the thawed master %s exited %v, want status 3 (lease lost)", m.Name, ps)
	}
	return ch.restartBroker(f, m)
}

// dbRestart stops PostgreSQL with a fast shutdown and starts it again.
//
// The master's lock is a database session's: when the session ends the
// master cannot know whether another broker holds the lock by the time it
// reconnects, so it steps down and exits with status 3 by design; the
// slaves keep polling through the outage and stay slaves. Once the database
// is back one of them takes the lock with a higher epoch, the sidecar
// follows, and the harness starts the old master again as a slave. So this
// fault asserts: the master exits 3 (any other end is a failure), no other
// broker ends, and the takeover, the reroute and the restart happen.
// Takeover and Rerouted are from the stop, so they include the outage.
func (ch *Chaos) dbRestart(f *Fault) error {
	c := ch.c
	if c.pg == nil {
		return fmt.Errorf("%s needs a cluster with Store %q", DBRestart, StorePostgres)
	}
	m, st, err := c.Master()
	if err != nil {
		return err
	}
	f.Target = m.Name
	m.proc.expected.Store(true) // its exit is checked here: status 3
	f.At = time.Now()
	c.pg.Stop()
	ps, err := m.proc.wait(exitTimeout)
	if err != nil {
		c.pg.Start()
		return fmt.Errorf("master with its database down: %w", err)
	}
	if ps.ExitCode() != 3 {
		c.pg.Start()
		return fmt.Errorf("master with its database down exited %v, want status 3 (lock session lost)", ps)
	}
	for _, s := range c.Slaves(m) {
		if sst, err := c.Status(s); err != nil || sst.Role != "slave" {
			c.pg.Start()
			return fmt.Errorf("%s with the database down: %+v, %v; want a slave still", s.Name, sst, err)
		}
	}
	c.pg.Start()
	nm, nst, err := c.waitMaster(m, takeoverTimeout)
	if err != nil {
		return fmt.Errorf("no takeover after the database came back: %w", err)
	}
	f.Takeover = time.Since(f.At)
	if nst.Epoch <= st.Epoch {
		return fmt.Errorf("%s took over with epoch %d, not above the old master's %d", nm.Name, nst.Epoch, st.Epoch)
	}
	if err := c.waitSidecarMaster(nm.Listen, rerouteTimeout); err != nil {
		return fmt.Errorf("sidecar did not follow the takeover by %s: %w", nm.Name, err)
	}
	f.Rerouted = time.Since(f.At)
	f.Recovered = time.Now()
	return ch.restartBroker(f, m)
}
