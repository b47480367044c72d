package health

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"handover/health/watch"
)

// TestStateMachineAndElection drives a Monitor through scripted check
// results. Each step scripts results, acts, and checks the targets, the up
// backends and, for ticks, how long the monitor waited before that round.
func TestStateMachineAndElection(t *testing.T) {
	type step struct {
		set   string        // fakeChecker script applied before acting
		do    string        // "start", "tick" or "recheck"
		wait  time.Duration // for "tick": the expected wait before the round; 0 = don't check
		want  string        // targets, comma-separated
		up    string        // up backends in list order, comma-separated
		usage string        // what the step shows
	}
	prio := func(bs []Backend, p ...int) []Backend {
		for i := range bs {
			bs[i].Priority = p[i]
		}
		return bs
	}
	const fast, slow = DefaultNoMasterInterval, time.Second
	tests := []struct {
		name     string
		cfg      Config
		backends []Backend
		steps    []step
	}{
		{
			name: "start-up: a first pass is up at once", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=fail", do: "start", want: "a", up: "a"},
				{do: "tick", wait: fast, want: "a", up: "a", usage: "the first round was with no master, so it was fast"},
				{do: "tick", wait: slow, want: "a", up: "a", usage: "with a master, the normal interval"},
			},
		},
		{
			name: "no master: poll fast, one pass elects", backends: backends("a", "b"),
			steps: []step{
				{set: "a=fail b=fail", do: "start", want: "", up: ""},
				{do: "tick", wait: fast, want: "", up: ""},
				{do: "tick", wait: fast, want: "", up: ""},
				{set: "b=ok", do: "tick", wait: fast, want: "b", up: "b", usage: "no rise wait when nothing serves"},
				{do: "tick", wait: fast, want: "b", up: "b"},
				{do: "tick", wait: slow, want: "b", up: "b"},
			},
		},
		{
			name: "rise: a down backend needs rise passes while a master serves", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=fail", do: "start", want: "a", up: "a"},
				{set: "b=ok", do: "tick", want: "a", up: "a"},
				{do: "tick", want: "a", up: "a,b", usage: "second pass in a row"},
			},
		},
		{
			name: "definitive failure of the master: down at once, no fall wait", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=refused", do: "start", want: "a", up: "a"},
				{set: "a=refused b=ok", do: "tick", want: "b", up: "b", usage: "a refused: down on the first failure, b elected"},
			},
		},
		{
			name: "inconclusive failure of the master still waits for fall", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=refused", do: "start", want: "a", up: "a"},
				{set: "a=fail b=ok", do: "tick", want: "a", up: "a"},
				{do: "tick", want: "a", up: "a,b"},
				{do: "tick", want: "b", up: "b", usage: "third failure in a row"},
			},
		},
		{
			name: "rise counts consecutive passes only", cfg: Config{Rise: 3}, backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=fail", do: "start", want: "a", up: "a"},
				{set: "b=ok", do: "tick", up: "a", want: "a"},
				{do: "tick", up: "a", want: "a"},
				{set: "b=fail", do: "tick", up: "a", want: "a"},
				{set: "b=ok", do: "tick", up: "a", want: "a"},
				{do: "tick", up: "a", want: "a"},
				{do: "tick", up: "a,b", want: "a"},
			},
		},
		{
			name: "fall: the master goes after fall failures, the other takes over", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=ok", do: "start", want: "a", up: "a,b", usage: "equal: list order"},
				{set: "a=fail", do: "tick", want: "a", up: "a,b"},
				{do: "tick", want: "a", up: "a,b"},
				{do: "tick", want: "b", up: "b"},
				{set: "b=fail", do: "tick", want: "b", up: "b"},
				{do: "tick", want: "b", up: "b"},
				{do: "tick", wait: slow, want: "", up: ""},
				{do: "tick", wait: fast, want: "", up: "", usage: "no master: fast polling"},
			},
		},
		{
			name: "a pass resets the failure count", backends: backends("a"),
			steps: []step{
				{set: "a=ok", do: "start", want: "a", up: "a"},
				{set: "a=fail", do: "tick", want: "a", up: "a"},
				{do: "tick", want: "a", up: "a"},
				{set: "a=ok", do: "tick", want: "a", up: "a"},
				{set: "a=fail", do: "tick", want: "a", up: "a"},
				{do: "tick", want: "a", up: "a"},
				{do: "tick", want: "", up: ""},
			},
		},
		{
			name: "epoch: the highest wins at start", backends: backends("a", "b", "c"),
			steps: []step{{set: "a=ok:3 b=ok:5 c=ok:4", do: "start", want: "b", up: "a,b,c"}},
		},
		{
			name: "priority breaks epoch ties at start", backends: prio(backends("a", "b", "c"), 2, 1, 1),
			steps: []step{{set: "a=ok:3 b=ok:3 c=ok:3", do: "start", want: "b", up: "a,b,c"}},
		},
		{
			name: "epoch beats priority", backends: prio(backends("a", "b"), 0, 9),
			steps: []step{{set: "a=ok:3 b=ok:4", do: "start", want: "b", up: "a,b"}},
		},
		{
			name: "sticky: an equal backend does not take over, a strictly newer epoch does", backends: prio(backends("a", "b"), 5, 0),
			steps: []step{
				{set: "a=ok:3 b=fail", do: "start", want: "a", up: "a"},
				{set: "b=ok:3", do: "tick", want: "a", up: "a"},
				{do: "tick", want: "a", up: "a,b", usage: "b is up, better priority, same epoch: a stays"},
				{set: "b=ok:4", do: "tick", want: "b", up: "a,b", usage: "b is a newer master"},
				{set: "a=ok:4", do: "tick", want: "b", up: "a,b", usage: "equal again: b stays"},
			},
		},
		{
			name: "recheck: a failing master goes down at once", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=ok", do: "start", want: "a", up: "a,b"},
				{set: "a=fail", do: "recheck", want: "b", up: "b"},
			},
		},
		{
			name: "recheck: a failing non-master still needs fall", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=ok", do: "start", want: "a", up: "a,b"},
				{set: "b=fail", do: "recheck", want: "a", up: "a,b"},
				{do: "recheck", want: "a", up: "a,b"},
				{do: "recheck", want: "a", up: "a"},
			},
		},
		{
			name: "recheck: a passing master stays", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=fail", do: "start", want: "a", up: "a"},
				{do: "recheck", want: "a", up: "a"},
			},
		},
		{
			name: "failover: recheck drops the master, fast polling finds the slave", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok:1 b=fail", do: "start", want: "a", up: "a"},
				{do: "tick", wait: fast, want: "a", up: "a"},
				{do: "tick", wait: slow, want: "a", up: "a"},
				{set: "a=fail", do: "recheck", want: "", up: ""},
				{do: "tick", wait: fast, want: "", up: "", usage: "the slave has not opened its port yet"},
				{set: "b=ok:2", do: "tick", wait: fast, want: "b", up: "b", usage: "one pass, no rise wait"},
				{set: "a=ok:1", do: "tick", wait: fast, want: "b", up: "b"},
				{do: "tick", wait: slow, want: "b", up: "a,b", usage: "a back, older epoch: b stays"},
			},
		},
		{
			name: "failover in one recheck round: the slave is up whichever result comes first", backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok:1 b=fail", do: "start", want: "a", up: "a"},
				{set: "a=fail b=ok:2", do: "recheck", want: "b", up: "b"},
			},
		},
		{
			name: "mode any: every up backend in list order", cfg: Config{Mode: ModeAny}, backends: backends("a", "b", "c"),
			steps: []step{
				{set: "a=ok b=fail c=ok", do: "start", want: "a,c", up: "a,c"},
				{set: "b=ok", do: "tick", want: "a,c", up: "a,c"},
				{do: "tick", want: "a,b,c", up: "a,b,c"},
				{set: "a=fail", do: "tick", want: "a,b,c", up: "a,b,c"},
				{do: "tick", want: "a,b,c", up: "a,b,c"},
				{do: "tick", want: "b,c", up: "b,c"},
			},
		},
		{
			name: "mode any: recheck fast path applies to every target", cfg: Config{Mode: ModeAny}, backends: backends("a", "b"),
			steps: []step{
				{set: "a=ok b=ok", do: "start", want: "a,b", up: "a,b"},
				{set: "b=fail", do: "recheck", want: "a", up: "a"},
				{set: "a=fail", do: "recheck", want: "", up: ""},
				{set: "b=ok", do: "tick", wait: fast, want: "b", up: "b"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg, tt.backends, nil)
			for i, s := range tt.steps {
				if s.set != "" {
					h.chk.set(t, s.set)
				}
				switch s.do {
				case "start":
					h.start()
				case "tick":
					if d := h.tick(); s.wait != 0 && d != s.wait {
						t.Errorf("step %d: waited %v before the round, want %v", i, d, s.wait)
					}
				case "recheck":
					h.recheck()
				default:
					t.Fatalf("step %d: unknown action %q", i, s.do)
				}
				if got := h.targets(); got != s.want {
					t.Errorf("step %d (%s %s): targets %q, want %q %s", i, s.do, s.set, got, s.want, s.usage)
				}
				if got := h.upSet(); got != s.up {
					t.Errorf("step %d (%s %s): up %q, want %q %s", i, s.do, s.set, got, s.up, s.usage)
				}
			}
		})
	}
}

func TestTargetsChannelClosesOnChangeOnly(t *testing.T) {
	h := newHarness(t, Config{}, backends("a", "b"), nil)
	_, before := h.mon.Targets()
	h.chk.set(t, "a=ok b=fail")
	h.start()
	ts, ch := h.mon.Targets()
	if !closed(before) {
		t.Error("the channel from before the first election did not close")
	}
	if !slices.Equal(ts, []string{"a"}) {
		t.Fatalf("targets %v, want [a]", ts)
	}
	h.tick()
	h.chk.set(t, "b=ok")
	h.tick()
	h.tick() // b rises; a stays master
	if closed(ch) {
		t.Fatal("closed without a change of targets")
	}
	h.chk.set(t, "a=fail")
	h.recheck()
	if !closed(ch) {
		t.Fatal("not closed after the master changed")
	}
	ts, ch2 := h.mon.Targets()
	if !slices.Equal(ts, []string{"b"}) || closed(ch2) {
		t.Fatalf("after the change: targets %v, channel closed %v; want [b] and open", ts, closed(ch2))
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestRecheckCoalesces checks that any number of Recheck calls made before
// the checks they ask for start cost one check per backend, and that calls
// made while a check runs get one more check after it, not one each.
func TestRecheckCoalesces(t *testing.T) {
	h := newHarness(t, Config{}, backends("a", "b"), nil)
	h.chk.set(t, "a=ok b=ok")
	h.start() // one check each

	// Requests made while the monitor is idle but before it reacts:
	// however they interleave with it, one round answers them all.
	for range 20 {
		h.mon.Recheck()
	}
	h.waitIdle()
	for _, a := range []string{"a", "b"} {
		if n := h.chk.callCount(a); n != 2 {
			t.Fatalf("%s checked %d times after a burst, want 2", a, n)
		}
	}

	// Now with the checks held in flight: the requests made meanwhile are
	// owed one more check per backend once these finish.
	release := h.recheckHeld(2)
	for range 20 {
		h.mon.Recheck()
	}
	release()
	h.waitIdle()
	for _, a := range []string{"a", "b"} {
		if n := h.chk.callCount(a); n != 4 {
			t.Errorf("%s checked %d times, want 4 (start, burst, held, one owed)", a, n)
		}
	}
}

// TestHungBackendDelaysNobody runs real timeouts: a backend whose check
// hangs must not hold up the election of another, and Run must still stop
// promptly, with the hung check, when cancelled.
func TestHungBackendDelaysNobody(t *testing.T) {
	chk := newFakeChecker()
	chk.set(t, "b=ok")
	gate := make(chan struct{}) // never opened: a's check hangs until its ctx ends
	hung := &hangChecker{fake: chk, addr: "a", gate: gate}
	mon := NewMonitor("svc", Config{Interval: time.Minute}, backends("a", "b"), hung, nil, testLog(t), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		mon.Run(ctx)
	}()
	deadline := time.After(5 * time.Second)
	for {
		ts, ch := mon.Targets()
		if slices.Equal(ts, []string{"b"}) {
			break
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatal("b not elected while a's check hangs")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if n := hung.running(); n != 0 {
		t.Errorf("%d checks still running after Run returned", n)
	}
}

type hangChecker struct {
	fake *fakeChecker
	addr string
	gate chan struct{}
	mu   chan struct{}
	n    int
}

func (h *hangChecker) Check(ctx context.Context, b Backend) Result {
	if b.Addr != h.addr {
		return h.fake.Check(ctx, b)
	}
	h.fake.mu.Lock()
	h.n++
	h.fake.mu.Unlock()
	defer func() {
		h.fake.mu.Lock()
		h.n--
		h.fake.mu.Unlock()
	}()
	select {
	case <-h.gate:
	case <-ctx.Done():
	}
	return Result{Err: ctx.Err()}
}

func (h *hangChecker) running() int {
	h.fake.mu.Lock()
	defer h.fake.mu.Unlock()
	return h.n
}

func TestSetBackends(t *testing.T) {
	h := newHarness(t, Config{}, backends("a", "b"), nil)
	h.chk.set(t, "a=ok:2 b=ok:1 c=ok:1")
	h.start()
	if got := h.targets(); got != "a" {
		t.Fatalf("targets %q, want a", got)
	}
	calls := h.chk.callCount("b")

	// b is kept with its state (up, no new check needed), c is new and
	// checked at once, a (the master) is dropped.
	h.mon.SetBackends([]Backend{{Addr: "b", Priority: 3}, {Addr: "c"}, {Addr: "c"}})
	h.waitIdle()
	st := h.mon.Status()
	if len(st.Backends) != 2 || st.Backends[0].Addr != "b" || st.Backends[1].Addr != "c" {
		t.Fatalf("backends %+v, want b then c", st.Backends)
	}
	if st.Backends[0].State != StateMaster || st.Backends[0].Priority != 3 || st.Backends[0].Checks != 1 {
		t.Errorf("b lost its state or missed its update: %+v", st.Backends[0])
	}
	if n := h.chk.callCount("b"); n != calls {
		t.Errorf("b checked again (%d → %d); only new backends are checked at once", calls, n)
	}
	if st.Backends[1].Checks != 1 || st.Backends[1].State != StateStandby {
		t.Errorf("c not checked at once: %+v", st.Backends[1])
	}
	// b was elected when a went (c was not yet checked); c's first pass
	// made it up but, equal in epoch, it does not take over.
	if st.Master != "b" {
		t.Errorf("master %q, want b", st.Master)
	}

	// Dropping every up backend leaves no master: polling turns fast.
	h.chk.set(t, "d=fail")
	h.mon.SetBackends(backends("d"))
	h.waitIdle()
	if got := h.targets(); got != "" {
		t.Errorf("targets %q after dropping b and c, want none", got)
	}
	if d := h.tick(); d != DefaultNoMasterInterval {
		t.Errorf("next round after %v without a master, want %v", d, DefaultNoMasterInterval)
	}
}

func TestStatus(t *testing.T) {
	h := newHarness(t, Config{}, []Backend{{Addr: "a", CheckURL: "http://a/readyz"}, {Addr: "b"}}, nil)
	start := h.clock.Now()
	st := h.mon.Status()
	if st.Master != "" || !st.NoMasterSince.Equal(start) || len(st.Targets) != 0 {
		t.Errorf("before Run: %+v", st)
	}
	h.chk.set(t, "a=ok:7 b=fail")
	h.start()
	h.tick()
	st = h.mon.Status()
	want := ServiceStatus{Name: "svc", Mode: ModeMaster, Targets: []string{"a"}, Master: "a", MasterSince: start}
	if st.Name != want.Name || st.Mode != want.Mode || st.Master != want.Master ||
		!st.MasterSince.Equal(want.MasterSince) || !st.NoMasterSince.IsZero() || !slices.Equal(st.Targets, want.Targets) {
		t.Errorf("status %+v, want %+v", st, want)
	}
	a, b := st.Backends[0], st.Backends[1]
	now := h.clock.Now()
	if a.State != StateMaster || a.Epoch != 7 || a.Successes != 2 || a.Failures != 0 || a.LastError != "" ||
		!a.LastCheck.Equal(now) || a.CheckURL != "http://a/readyz" || !a.Since.Equal(start) {
		t.Errorf("a: %+v", a)
	}
	if b.State != StateDown || b.Failures != 2 || b.LastError != errScripted.Error() || b.Checks != 2 {
		t.Errorf("b: %+v", b)
	}
}

func TestMasterChangeLogAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	// The figures below are in steps of a 50ms no-master poll.
	h := newHarness(t, Config{NoMasterInterval: 50 * time.Millisecond}, backends("a", "b"), NewMetrics(reg))
	hook := test.NewLocal(h.mon.log.Logger)
	NewMetrics(reg) // registering again reuses the series
	closed, held := 0, 0
	h.mon.SetConnReporter(func(old string) ConnReport {
		if old != "a" {
			t.Errorf("ConnReporter asked about %q, want the old master a", old)
		}
		return ConnReport{Closed: closed, Held: held}
	})

	h.chk.set(t, "a=fail b=fail")
	h.start()
	h.tick() // 50ms without a master
	h.chk.set(t, "a=ok:4")
	h.tick() // 100ms without: a elected
	h.tick()
	h.chk.set(t, "a=fail")
	h.recheck() // a down at once
	closed, held = 3, 2
	h.chk.set(t, "b=ok:5")
	h.tick() // 50ms later b is seen and up at once: a failover

	byMsg := map[string][]*logrus.Entry{}
	for _, e := range hook.AllEntries() {
		byMsg[e.Message] = append(byMsg[e.Message], e)
		for _, k := range []string{"old", "new"} {
			if v, ok := e.Data[k]; ok && v == "" {
				t.Errorf("%q logged with an empty %s: %v", e.Message, k, e.Data)
			}
		}
	}
	first := byMsg["master elected"]
	if len(first) != 1 || first[0].Level != logrus.InfoLevel || first[0].Data["new"] != "a" ||
		first[0].Data["epoch"] != uint64(4) || first[0].Data["without_master"] != 100*time.Millisecond {
		t.Errorf("first election logged as %v", first)
	}
	lost := byMsg["service has no master: no client can be served until one is elected"]
	if len(lost) != 2 || lost[0].Level != logrus.ErrorLevel || lost[0].Data["old"] != nil ||
		lost[1].Data["old"] != "a" || !strings.Contains(lost[1].Data["reason"].(string), errScripted.Error()) ||
		lost[1].Data["backends"] != "a=down b=down" {
		t.Errorf("no master logged as %v", lost)
	}
	changed := byMsg["master changed"]
	if len(changed) != 1 {
		t.Fatalf("%d master changed lines, want one for the failover", len(changed))
	}
	if c := changed[0]; c.Level != logrus.InfoLevel || c.Data["old"] != "a" || c.Data["new"] != "b" ||
		c.Data["without_master"] != 50*time.Millisecond || c.Data["closed"] != 3 || c.Data["held"] != 2 {
		t.Errorf("failover logged as %v %v", c.Level, c.Data)
	}
	var infos []string
	for _, e := range hook.AllEntries()[slices.Index(hook.AllEntries(), lost[1]):] {
		if e.Level == logrus.InfoLevel {
			infos = append(infos, e.Message)
		}
	}
	if !slices.Equal(infos, []string{"master changed"}) {
		t.Errorf("info lines from the loss to the new master: %q, want one, master changed", infos)
	}
	if downs := byMsg["backend down"]; len(downs) != 1 || downs[0].Level != logrus.WarnLevel || downs[0].Data["from"] != StateMaster {
		t.Errorf("backend down logged as %v", downs)
	}

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"handover_health_master_changes_total", map[string]string{"service": "svc"}, 3},
		{"handover_health_failovers_total", map[string]string{"service": "svc"}, 1},
		{"handover_health_without_master_seconds_total", map[string]string{"service": "svc"}, 0.15},
		{"handover_health_has_master", map[string]string{"service": "svc"}, 1},
		{"handover_health_backend_up", map[string]string{"service": "svc", "backend": "a"}, 0},
		{"handover_health_backend_up", map[string]string{"service": "svc", "backend": "b"}, 1},
		{"handover_health_backend_state", map[string]string{"service": "svc", "backend": "a", "state": "down"}, 1},
		{"handover_health_backend_state", map[string]string{"service": "svc", "backend": "a", "state": "master"}, 0},
		{"handover_health_backend_state", map[string]string{"service": "svc", "backend": "b", "state": "master"}, 1},
		{"handover_health_backend_state", map[string]string{"service": "svc", "backend": "b", "state": "standby"}, 0},
		{"handover_health_check_duration_seconds", map[string]string{"service": "svc", "backend": "a", "result": "ok"}, 2},
		{"handover_health_check_duration_seconds", map[string]string{"service": "svc", "backend": "a", "result": "fail"}, 4},
	} {
		if got := metricValue(t, reg, c.name, c.labels); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if hasMetric(t, reg, "handover_health_seconds_without_master_total") {
		t.Error("the old name seconds_without_master_total is still exported")
	}
}

// TestStandbyIsNotDown: a slave that answers "alive, not serving" is
// standby everywhere (status, metrics, logs), never down, and collects no
// failures however long it waits; when it takes over it is elected, and the
// old master stepping down to standby is standby too.
func TestStandbyIsNotDown(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, Config{}, backends("a", "b"), NewMetrics(reg))
	hook := test.NewLocal(h.mon.log.Logger)
	h.chk.set(t, "a=ok:1 b=standby")
	h.start()
	for range 20 {
		h.tick()
	}
	if got := h.states(); got != "a=master b=standby" {
		t.Fatalf("states %q, want a master and b standby", got)
	}
	b := h.mon.Status().Backends[1]
	if b.Failures != 0 || b.Successes != 0 || b.LastError != "" || b.Checks != 21 {
		t.Errorf("a healthy standby after 21 checks: %+v; want no failures and no error", b)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"handover_health_backend_state", map[string]string{"service": "svc", "backend": "b", "state": "standby"}, 1},
		{"handover_health_backend_state", map[string]string{"service": "svc", "backend": "b", "state": "down"}, 0},
		{"handover_health_backend_up", map[string]string{"service": "svc", "backend": "b"}, 1},
		{"handover_health_check_duration_seconds", map[string]string{"service": "svc", "backend": "b", "result": "standby"}, 21},
	} {
		if got := metricValue(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// The master steps down (it answers as a slave now) and b takes over.
	h.chk.set(t, "a=standby b=ok:2")
	h.tick()
	if got, ts := h.states(), h.targets(); got != "a=standby b=master" || ts != "b" {
		t.Fatalf("after the switch: states %q targets %q, want a standby, b master", got, ts)
	}
	var stepped, downs int
	for _, e := range hook.AllEntries() {
		switch e.Message {
		case "backend stopped serving: standby":
			stepped++
			if e.Data["backend"] != "a" || e.Data["from"] != StateMaster {
				t.Errorf("step-down logged as %v", e.Data)
			}
		case "backend down":
			downs++
		}
	}
	if stepped != 1 || downs != 0 {
		t.Errorf("%d step-down lines and %d backend down lines, want 1 and 0", stepped, downs)
	}

	// A standby that dies is down after fall failures, or at once when
	// the failure is definitive.
	h.chk.set(t, "a=fail")
	h.tick()
	h.tick()
	if got := h.states(); got != "a=standby b=master" {
		t.Fatalf("standby down after 2 failures: %q", got)
	}
	h.tick()
	if got := h.states(); got != "a=down b=master" {
		t.Fatalf("after fall failures: %q, want a down", got)
	}
	h.chk.set(t, "a=standby")
	h.tick()
	h.chk.set(t, "a=refused")
	h.tick()
	if got := h.states(); got != "a=down b=master" {
		t.Fatalf("standby refusing connections: %q, want a down at once", got)
	}
}

// TestOutageIsLoud: losing the last master is an error line; the outage is
// recalled every OutageLogInterval with how long it has lasted, and never
// goes quiet.
func TestOutageIsLoud(t *testing.T) {
	h := newHarness(t, Config{Interval: 5 * time.Second, NoMasterInterval: 5 * time.Second}, backends("a", "b"), nil)
	hook := test.NewLocal(h.mon.log.Logger)
	h.chk.set(t, "a=ok b=standby")
	h.start()
	h.chk.set(t, "a=refused")
	h.tick() // a lost at t=5s
	for range 8 {
		h.tick() // to t=45s
	}
	var errs, warns []*logrus.Entry
	for _, e := range hook.AllEntries() {
		switch e.Level {
		case logrus.ErrorLevel:
			errs = append(errs, e)
		case logrus.WarnLevel:
			if e.Message == "still no master" {
				warns = append(warns, e)
			}
		}
	}
	if len(errs) != 1 || errs[0].Data["old"] != "a" || errs[0].Data["backends"] != "a=down b=standby" {
		t.Fatalf("error lines %v, want one naming a and every backend's state", errs)
	}
	if len(warns) != 4 {
		t.Fatalf("%d reminders over 40s, want 4 (every 10s)", len(warns))
	}
	for i, w := range warns {
		if want := time.Duration(i+1) * 10 * time.Second; w.Data["without_master"] != want {
			t.Errorf("reminder %d says without_master %v, want %v", i, w.Data["without_master"], want)
		}
	}
	if !h.mon.Status().NoMasterSince.Equal(h.clock.Now().Add(-40 * time.Second)) {
		t.Errorf("NoMasterSince %v", h.mon.Status().NoMasterSince)
	}
	if h.mon.Status().Ready {
		t.Error("Ready without a master")
	}
}

// TestNoMasterAtStart: a service none of whose backends serves once all
// have been checked logs the outage as loudly as a lost master.
func TestNoMasterAtStart(t *testing.T) {
	h := newHarness(t, Config{}, backends("a", "b"), nil)
	hook := test.NewLocal(h.mon.log.Logger)
	h.chk.set(t, "a=standby b=refused")
	h.start()
	var errs int
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.ErrorLevel {
			errs++
			if _, ok := e.Data["old"]; ok || e.Data["backends"] != "a=standby b=down" {
				t.Errorf("error line %v", e.Data)
			}
		}
	}
	if errs != 1 {
		t.Fatalf("%d error lines at a start without a master, want 1", errs)
	}
}

func hasMetric(t *testing.T, reg *prometheus.Registry, name string) bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return true
		}
	}
	return false
}

// metricValue returns a gauge's or counter's value, or a histogram's sample
// count, from reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			return value(m)
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

func TestRandomize(t *testing.T) {
	h := newHarness(t, Config{Mode: ModeAny, Randomize: true}, backends("a", "b", "c"), nil)
	h.chk.set(t, "a=ok b=ok c=ok")
	h.start()
	orders := map[string]bool{}
	for range 100 {
		ts, _ := h.mon.Targets()
		sorted := slices.Sorted(slices.Values(ts))
		if !slices.Equal(sorted, []string{"a", "b", "c"}) {
			t.Fatalf("targets %v, want a permutation of a, b, c", ts)
		}
		orders[strings.Join(ts, ",")] = true
	}
	if len(orders) < 2 {
		t.Errorf("100 calls gave one order %v; want shuffling", orders)
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      Config
		want    Config
		invalid bool
	}{
		{name: "zero", in: Config{},
			want: Config{Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3, Mode: ModeMaster, NoMasterInterval: 20 * time.Millisecond, Watch: WatchAuto, WatchTimeout: watch.DefaultHeartbeatTimeout}},
		{name: "timeout and no-master interval capped at interval", in: Config{Interval: 20 * time.Millisecond, Timeout: time.Second, Mode: ModeAny},
			want: Config{Interval: 20 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 2, Fall: 3, Mode: ModeAny, NoMasterInterval: 20 * time.Millisecond, Watch: WatchAuto, WatchTimeout: watch.DefaultHeartbeatTimeout}},
		{name: "explicit", in: Config{Interval: 2 * time.Second, Timeout: time.Second, Rise: 1, Fall: 1, NoMasterInterval: 10 * time.Millisecond},
			want: Config{Interval: 2 * time.Second, Timeout: time.Second, Rise: 1, Fall: 1, Mode: ModeMaster, NoMasterInterval: 10 * time.Millisecond, Watch: WatchAuto, WatchTimeout: watch.DefaultHeartbeatTimeout}},
		{name: "negative", in: Config{Interval: -1, Rise: -1}, invalid: true,
			want: Config{Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3, Mode: ModeMaster, NoMasterInterval: 20 * time.Millisecond, Watch: WatchAuto, WatchTimeout: watch.DefaultHeartbeatTimeout}},
		{name: "watches off", in: Config{Watch: WatchOff, WatchTimeout: 4 * time.Second},
			want: Config{Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3, Mode: ModeMaster, NoMasterInterval: 20 * time.Millisecond, Watch: WatchOff, WatchTimeout: 4 * time.Second}},
		{name: "unknown watch", in: Config{Watch: "sometimes"}, invalid: true,
			want: Config{Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3, Mode: ModeMaster, NoMasterInterval: 20 * time.Millisecond, Watch: WatchAuto, WatchTimeout: watch.DefaultHeartbeatTimeout}},
		{name: "unknown mode", in: Config{Mode: "round-robin"}, invalid: true,
			want: Config{Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3, Mode: ModeMaster, NoMasterInterval: 20 * time.Millisecond, Watch: WatchAuto, WatchTimeout: watch.DefaultHeartbeatTimeout}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.in.Validate(); (err != nil) != tt.invalid {
				t.Errorf("Validate() = %v, want invalid %v", err, tt.invalid)
			}
			if got := tt.in.withDefaults(); got != tt.want {
				t.Errorf("withDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestSetConfigKeepsState: a reload that changes the check settings keeps
// the elected master and the backends' states.
func TestSetConfigKeepsState(t *testing.T) {
	chk := newFakeChecker()
	chk.set(t, "a=ok b=fail")
	m := NewMonitor("svc", Config{Interval: time.Hour, NoMasterInterval: time.Hour}, backends("a", "b"), chk, nil, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, func() bool { ts, _ := m.Targets(); return len(ts) == 1 && ts[0] == "a" })
	_, changed := m.Targets()
	other := newFakeChecker()
	other.set(t, "a=ok b=ok")
	m.SetConfig(Config{Interval: time.Hour, NoMasterInterval: time.Hour, Rise: 5, Fall: 5, Mode: ModeMaster}, other)
	select {
	case <-changed:
		t.Fatal("targets changed on a reload that keeps the master")
	default:
	}
	if st := m.Status(); st.Master != "a" || st.Backends[0].State != StateMaster {
		t.Fatalf("after SetConfig: %+v", st)
	}
	m.SetConfig(Config{Interval: time.Hour, NoMasterInterval: time.Hour, Mode: ModeAny}, nil)
	waitFor(t, func() bool { ts, _ := m.Targets(); return len(ts) == 1 }) // mode any: still only a is up
	m.Recheck()
	waitFor(t, func() bool { return other.callCount("b") > 0 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRecheckSpacing: passive re-checks of one backend are spaced by
// MinRecheckInterval; one asked for too soon is deferred, not dropped.
func TestRecheckSpacing(t *testing.T) {
	h := newHarness(t, Config{MinRecheckInterval: 100 * time.Millisecond}, backends("a"), nil)
	h.chk.set(t, "a=ok")
	h.start() // first check
	h.recheck()
	if n := h.chk.callCount("a"); n != 2 {
		t.Fatalf("first recheck: %d checks, want 2 (immediate)", n)
	}
	for range 10 {
		h.recheck() // a storm of resets, at the same instant
	}
	if n := h.chk.callCount("a"); n != 2 {
		t.Fatalf("rechecks within the spacing started %d checks, want none yet", n-2)
	}
	// The owed check runs by the end of the spacing (or earlier, with a
	// periodic round that comes first), once for the whole storm.
	var waited time.Duration
	for h.chk.callCount("a") < 3 {
		waited += h.tick()
	}
	if waited > 100*time.Millisecond {
		t.Fatalf("deferred recheck ran after %v, want at most 100ms", waited)
	}
	for waited < 100*time.Millisecond {
		waited += h.tick() // the deferred-recheck timer fires: nothing owed now
	}
	if n := h.chk.callCount("a"); n != 3 {
		t.Fatalf("%d checks by the end of the spacing, want 3: the storm costs one", n)
	}
}

// TestRemovedMasterIsKept: a master removed from the list gets no new
// connections (not a target) but its live ones are kept (Keep) until
// another master is elected.
func TestRemovedMasterIsKept(t *testing.T) {
	h := newHarness(t, Config{}, backends("a", "b"), nil)
	h.chk.set(t, "a=ok b=refused")
	h.start()
	if h.targets() != "a" {
		t.Fatalf("targets %q", h.targets())
	}
	h.mon.SetBackends(backends("b"))
	h.waitIdle()
	if h.targets() != "" || !h.mon.Keep("a") || h.mon.Keep("b") {
		t.Fatalf("after removing the master: targets %q keep(a) %v", h.targets(), h.mon.Keep("a"))
	}
	h.chk.set(t, "b=ok")
	h.tick()
	if h.targets() != "b" || h.mon.Keep("a") {
		t.Fatalf("after b became master: targets %q keep(a) %v", h.targets(), h.mon.Keep("a"))
	}
	// A removed non-master is never kept.
	h.mon.SetBackends(backends("b", "c"))
	h.waitIdle()
	h.mon.SetBackends(backends("b"))
	h.waitIdle()
	if h.mon.Keep("c") {
		t.Fatal("a removed non-master is kept")
	}
}
