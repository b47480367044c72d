package health

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus/hooks/test"
)

// admin sets an operator's state and waits for the monitor to settle.
func (h *harness) admin(addr, state string) {
	h.t.Helper()
	if err := h.mon.SetAdminState(addr, state, "test"); err != nil {
		h.t.Fatal(err)
	}
	h.waitIdle()
}

// TestAdminStateMaster: in mode master, disabling the master takes it out
// of the election and its connections are not kept (an outage if no other
// backend can serve, logged as one, with the operator as the reason);
// draining keeps its connections while it passes and no other master is
// elected; the setting shows in Status and the metrics, survives a reload
// of the list and of the checks, and enabling makes it electable at once.
func TestAdminStateMaster(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, Config{}, backends("a", "b", "c"), NewMetrics(reg))
	hook := test.NewLocal(h.mon.log.Logger)
	h.chk.set(t, "a=ok:1 b=standby c=fail")
	h.start()
	if got := h.states(); got != "a=master b=standby c=down" {
		t.Fatalf("states %q", got)
	}

	_, ch := h.mon.Targets()
	h.admin("a", StateDisabled)
	if got, ts := h.states(), h.targets(); got != "a=disabled b=standby c=down" || ts != "" || h.mon.Keep("a") {
		t.Fatalf("a disabled: states %q targets %q keep(a) %v; want a disabled, no target, nothing kept", got, ts, h.mon.Keep("a"))
	}
	if !closed(ch) {
		t.Error("Targets' channel not closed: the data paths would not close a's connections")
	}
	st := h.mon.Status()
	if a := st.Backends[0]; a.Health != StateUp || st.Ready || st.Admin["a"] != StateDisabled {
		t.Errorf("status of a disabled master: %+v ready %v admin %v; want health up, not ready", a, st.Ready, st.Admin)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"handover_health_backend_state", map[string]string{"service": "svc", "backend": "a", "state": "disabled"}, 1},
		{"handover_health_backend_state", map[string]string{"service": "svc", "backend": "a", "state": "master"}, 0},
		{"handover_health_backend_up", map[string]string{"service": "svc", "backend": "a"}, 1},
		{"handover_health_has_master", map[string]string{"service": "svc"}, 0},
	} {
		if got := metricValue(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	var disabled, outage int
	for _, e := range hook.AllEntries() {
		switch e.Message {
		case "backend disabled by an operator: out of the election; its connections close as on a failover":
			disabled++
			if e.Data["backend"] != "a" || e.Data["was"] != StateMaster || e.Data["reason"] != "test" {
				t.Errorf("disable logged as %v", e.Data)
			}
		case "service has no master: no client can be served until one is elected":
			outage++
			if r, _ := e.Data["reason"].(string); !strings.Contains(r, "disabled by an operator") {
				t.Errorf("outage line's reason %q, want the operator", r)
			}
		}
	}
	if disabled != 1 || outage != 1 {
		t.Errorf("%d disable lines, %d outage lines; want 1 each", disabled, outage)
	}
	// A disabled backend's checks go on: its death shows in Health and
	// backend_up, not in State.
	h.chk.set(t, "a=refused")
	for range 3 {
		h.tick()
	}
	if a := h.mon.Status().Backends[0]; a.State != StateDisabled || a.Health != StateDown ||
		metricValue(t, reg, "handover_health_backend_up", map[string]string{"service": "svc", "backend": "a"}) != 0 {
		t.Errorf("a disabled and dead: %+v", a)
	}
	// Setting it again changes nothing and logs nothing.
	n := len(hook.AllEntries())
	h.admin("a", StateDisabled)
	if len(hook.AllEntries()) != n {
		t.Errorf("disabling twice logged %v", hook.AllEntries()[n:])
	}

	// The slave takes over; enabled, a comes back as standby.
	h.chk.set(t, "a=ok:1 b=ok:2")
	h.tick()
	h.admin("a", "")
	if got, ts := h.states(), h.targets(); got != "a=standby b=master c=down" || ts != "b" {
		t.Fatalf("a enabled: states %q targets %q", got, ts)
	}

	// Draining the master: no target, its connections kept while it
	// passes; Targets' channel closes when that ends.
	h.admin("b", StateDraining)
	// a passes too (a plain TCP pool would): in mode master it is
	// elected, and b's connections are no longer kept.
	if ts := h.targets(); ts != "a" || h.mon.Keep("b") {
		t.Fatalf("b draining, a passing: targets %q keep(b) %v; want a, b not kept", ts, h.mon.Keep("b"))
	}
	h.chk.set(t, "a=standby")
	h.tick()
	if got, ts := h.states(), h.targets(); got != "a=standby b=draining c=down" || ts != "" || !h.mon.Keep("b") {
		t.Fatalf("b draining alone: states %q targets %q keep(b) %v; want no target, b kept", got, ts, h.mon.Keep("b"))
	}
	// A reload keeps the setting, even for a backend dropped from the
	// list and listed again.
	h.mon.SetConfig(Config{Rise: 3}, nil)
	h.waitIdle()
	h.mon.SetBackends(backends("a", "c"))
	h.waitIdle()
	h.mon.SetBackends(backends("a", "b", "c"))
	h.waitIdle()
	h.tick()
	if got := h.states(); got != "a=standby b=draining c=down" {
		t.Fatalf("after reloads: states %q, want b still draining", got)
	}
	_, ch = h.mon.Targets()
	h.chk.set(t, "b=refused")
	h.tick()
	if h.mon.Keep("b") || !closed(ch) {
		t.Fatalf("b draining and dead: keep(b) %v, channel closed %v; want not kept, closed", h.mon.Keep("b"), closed(ch))
	}

	if err := h.mon.SetAdminState("x", StateDisabled, "test"); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("disabling an unknown backend: %v", err)
	}
	if err := h.mon.SetAdminState("a", "maint", "test"); err == nil {
		t.Error("an unknown state was accepted")
	}
	// A setting outlives the backend's listing, and can be lifted then.
	h.mon.SetBackends(backends("a"))
	h.waitIdle()
	if st := h.mon.Status(); st.Admin["b"] != StateDraining {
		t.Errorf("admin of an unlisted backend: %v", st.Admin)
	}
	h.admin("b", "")
	if st := h.mon.Status(); st.Admin != nil {
		t.Errorf("admin after enabling: %v", st.Admin)
	}
}

// TestAdminStateAny: in mode any, a draining backend leaves the targets
// and its connections are kept; disabled, they are not.
func TestAdminStateAny(t *testing.T) {
	h := newHarness(t, Config{Mode: ModeAny}, backends("a", "b"), nil)
	h.chk.set(t, "a=ok b=ok")
	h.start()
	h.tick()
	if ts := h.targets(); ts != "a,b" {
		t.Fatalf("targets %q", ts)
	}
	h.admin("a", StateDraining)
	if got, ts := h.states(), h.targets(); got != "a=draining b=up" || ts != "b" || !h.mon.Keep("a") {
		t.Fatalf("a draining: states %q targets %q keep(a) %v", got, ts, h.mon.Keep("a"))
	}
	h.admin("a", StateDisabled)
	if got, ts := h.states(), h.targets(); got != "a=disabled b=up" || ts != "b" || h.mon.Keep("a") {
		t.Fatalf("a disabled: states %q targets %q keep(a) %v", got, ts, h.mon.Keep("a"))
	}
	h.admin("a", "")
	if got, ts := h.states(), h.targets(); got != "a=up b=up" || ts != "a,b" {
		t.Fatalf("a enabled: states %q targets %q", got, ts)
	}
}
