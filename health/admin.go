package health

import (
	"errors"
	"fmt"
	"slices"

	"github.com/sirupsen/logrus"
)

// Runtime control: an operator takes a backend out of service, or lets it
// wind down, without editing the configuration, as HAProxy's "set server
// ... state maint|drain|ready" and ActiveMQ's console do. The sidecar
// exposes it as POST /backends/disable, /drain and /enable.

// ErrUnknownBackend is returned by SetAdminState for an address that is
// not in the backend list (nor, to enable, one an operator set).
var ErrUnknownBackend = errors.New("no such backend")

// SetAdminState sets an operator's state for the backend addr:
//
//   - StateDisabled: it is never elected nor a target, so no new connection
//     goes to it, and its live ones are closed as on a failover (the data
//     paths see it leave the targets: TCP with on_failover "close" closes
//     them and the clients reconnect to the master; STOMP moves each session
//     to the master, the client staying connected). If it was the master,
//     another is elected, or the service has none, and logs it as an outage,
//     until one is.
//   - StateDraining: it is not a target, so no new connection goes to it,
//     but Keep keeps its live connections while it passes its checks and, in
//     ModeMaster, no other master is elected: they end when their clients
//     close them, or as on a failover once it fails or is replaced. Draining
//     the master of a master/slave pair leaves new clients without a master
//     (held, /readyz 503) until it is enabled or another takes over, since a
//     slave serves nobody. Both data paths consult Keep: TCP mode leaves
//     the connections, STOMP mode the sessions, and neither sends a new
//     one (nor, in STOMP mode, a resumed session) there.
//   - "": enabled again. Its state is what the checks make of it, and it
//     may be elected at once.
//
// Health checks go on meanwhile, so Status says whether it could serve
// (BackendStatus.Health). The setting stays until changed: across
// SetBackends and SetConfig (a reload), even for an address that leaves the
// list and comes back; a new Monitor (a restart) starts without any. reason
// (who asked) goes into the log line and, if the service loses its master
// by it, into the outage line. Setting the state a backend has already is
// not an error and logs nothing.
func (m *Monitor) SetAdminState(addr, state, reason string) error {
	switch state {
	case "", StateDisabled, StateDraining:
	default:
		return fmt.Errorf("health: admin state %q: want %q, %q or \"\" (enabled)", state, StateDisabled, StateDraining)
	}
	m.mu.Lock()
	i := slices.IndexFunc(m.backends, func(b *backend) bool { return b.Addr == addr })
	prev := m.admin[addr]
	if i < 0 && (state != "" || prev == "") {
		m.mu.Unlock()
		return fmt.Errorf("health: service %q: %w %q", m.name, ErrUnknownBackend, addr)
	}
	if prev == state {
		m.mu.Unlock()
		m.poke() // nothing to do; Run looks anyway, as after any call
		return nil
	}
	if state == "" {
		delete(m.admin, addr)
	} else {
		if m.admin == nil {
			m.admin = map[string]string{}
		}
		m.admin[addr] = state
	}
	fields := logrus.Fields{"backend": addr, "reason": reason}
	if i >= 0 {
		b := m.backends[i]
		fields["was"] = b.state
		switch state {
		case StateDisabled:
			b.why = "disabled by an operator (" + reason + ")"
		case StateDraining:
			b.why = "drained by an operator (" + reason + ")"
		default:
			b.why = "enabled by an operator (" + reason + ")"
		}
	}
	log := m.log.WithFields(fields)
	m.queue(func() {
		switch state {
		case StateDisabled:
			log.Warn("backend disabled by an operator: out of the election; its connections close as on a failover")
		case StateDraining:
			log.Warn("backend draining by an operator: no new connections; live ones stay while it passes its checks")
		default:
			log.Info("backend enabled by an operator")
		}
	})
	m.rescue(m.clock.Now())
	m.elect(m.clock.Now())
	m.mu.Unlock()
	m.flush()
	m.poke() // no master now: Run polls fast from the next wake-up
	return nil
}

// electable reports whether b may be elected (ModeAny: be a target): it
// passes its checks and no operator took it out. m.mu is held.
func (m *Monitor) electable(b *backend) bool {
	return b.up && m.admin[b.Addr] == ""
}

// keptWith lists the draining backends whose live connections Keep keeps
// when master is (or would be) the elected one: those that pass their
// checks, in ModeMaster only while no other backend is master, since a
// new master means the drained one no longer serves (brokerd fences it).
// m.mu is held.
func (m *Monitor) keptWith(master *backend) []string {
	var kept []string
	for _, b := range m.backends {
		if m.admin[b.Addr] == StateDraining && b.up && (m.cfg.Mode == ModeAny || master == nil) {
			kept = append(kept, b.Addr)
		}
	}
	return kept
}

// serving reports whether clients are on b now by the monitor's word: a
// target, or a draining backend whose connections are kept. A recheck it
// fails takes it down at once. m.mu is held.
func (m *Monitor) serving(b *backend) bool {
	return slices.Contains(m.targets, b.Addr) || slices.Contains(m.kept, b.Addr)
}

// announce wakes the Targets watchers: close changed and replace it. m.mu
// is held.
func (m *Monitor) announce() {
	close(m.changed)
	m.changed = make(chan struct{})
}
