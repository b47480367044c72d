package health

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"handover/internal/testutil"
)

func testLog(t testing.TB) *logrus.Entry { return testutil.Logger(t) }

// fakeClock is a Clock whose time moves only when the test says so. Its
// timers fire (a buffered send, as a real timer's) when Advance passes their
// deadline.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1), when: c.now.Add(d), active: true}
	c.timers = append(c.timers, t)
	return t
}

// Advance moves time forward by d and fires the timers now due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		if t.active && !t.when.After(c.now) {
			t.active = false
			select {
			case t.ch <- c.now:
			default:
			}
		}
	}
}

// AdvanceToNext moves time to the earliest pending timer's deadline, fires
// it and returns how far time moved.
func (c *fakeClock) AdvanceToNext(t testing.TB) time.Duration {
	t.Helper()
	c.mu.Lock()
	var next *fakeTimer
	for _, ft := range c.timers {
		if ft.active && (next == nil || ft.when.Before(next.when)) {
			next = ft
		}
	}
	if next == nil {
		c.mu.Unlock()
		t.Fatal("no timer pending")
	}
	d := next.when.Sub(c.now)
	c.mu.Unlock()
	c.Advance(d)
	return d
}

type fakeTimer struct {
	c      *fakeClock
	ch     chan time.Time
	when   time.Time
	active bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	t.drain()
	return was
}

func (t *fakeTimer) Reset(d time.Duration) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	t.drain()
	t.when, t.active = t.c.now.Add(d), true
}

func (t *fakeTimer) drain() {
	select {
	case <-t.ch:
	default:
	}
}

// fakeChecker answers each backend with the result last scripted for it; a
// backend with no script fails. With a gate set, checks block until it is
// closed (or their ctx ends).
type fakeChecker struct {
	mu      sync.Mutex
	results map[string]Result
	calls   map[string]int
	gate    chan struct{}
	entered chan string
}

var errScripted = errors.New("scripted failure")

func newFakeChecker() *fakeChecker {
	return &fakeChecker{results: map[string]Result{}, calls: map[string]int{}}
}

// set scripts results from a spec such as "a=ok b=fail c=ok:5" (ok with
// epoch 5); "refused" is a definitive failure, "standby" a slave's answer,
// "denied" a broker refusing the check's credentials, "silent" a CONNECT
// that got no answer in time.
func (f *fakeChecker) set(t testing.TB, spec string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, item := range strings.Fields(spec) {
		addr, res, ok := strings.Cut(item, "=")
		if !ok {
			t.Fatalf("bad script item %q", item)
		}
		kind, epoch, _ := strings.Cut(res, ":")
		var r Result
		switch kind {
		case "ok":
			r.OK = true
			if epoch != "" {
				e, err := strconv.ParseUint(epoch, 10, 64)
				if err != nil {
					t.Fatalf("bad epoch in %q", item)
				}
				r.Epoch = e
			}
		case "fail":
			r.Err = errScripted
		case "refused":
			r.Err, r.Definitive = errScripted, true
		case "standby":
			r.Err, r.Definitive, r.Standby = errors.New("503: role slave"), true, true
		case "silent":
			r.Err, r.Unanswered = context.DeadlineExceeded, true
		case "denied":
			r.Err, r.CredentialsRefused = fmt.Errorf("%w: authentication failed", ErrCredentialsRefused), true
		default:
			t.Fatalf("bad script item %q", item)
		}
		f.results[addr] = r
	}
}

// recheckHeld asks the monitor for a check of every backend and holds
// the checks of its n backends in flight, once each has read its script;
// release lets them answer, and later checks run unheld.
func (h *harness) recheckHeld(n int) (release func()) {
	h.t.Helper()
	gate, entered := make(chan struct{}), make(chan string, n)
	h.chk.mu.Lock()
	h.chk.gate, h.chk.entered = gate, entered
	h.chk.mu.Unlock()
	h.mon.Recheck()
	for range n {
		<-entered
	}
	return func() {
		h.chk.mu.Lock()
		h.chk.gate, h.chk.entered = nil, nil
		h.chk.mu.Unlock()
		close(gate)
	}
}

func (f *fakeChecker) Check(ctx context.Context, b Backend) Result {
	f.mu.Lock()
	f.calls[b.Addr]++
	r, ok := f.results[b.Addr]
	gate, entered := f.gate, f.entered
	f.mu.Unlock()
	if !ok {
		r = Result{Err: errors.New("no script")}
	}
	if entered != nil {
		entered <- b.Addr
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return Result{Err: ctx.Err()}
		}
	}
	return r
}

func (f *fakeChecker) callCount(addr string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[addr]
}

// harness runs a Monitor on a fake clock and a fake checker and steps it:
// every action is followed by waiting until the monitor is idle again (no
// check running, nothing pending), so assertions see a settled state without
// any sleeping.
type harness struct {
	t     *testing.T
	clock *fakeClock
	chk   *fakeChecker
	mon   *Monitor
	idle  chan struct{}
}

func newHarness(t *testing.T, cfg Config, backends []Backend, m *Metrics) *harness {
	h := &harness{t: t, clock: newFakeClock(), chk: newFakeChecker(), idle: make(chan struct{})}
	h.mon = NewMonitor("svc", cfg, backends, h.chk, h.clock, testLog(t), m)
	h.mon.idle = h.idle
	return h
}

// start runs the monitor until the test ends and waits for the first round.
func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.mon.Run(ctx)
	}()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			h.t.Error("Run did not return after cancel")
		}
	})
	h.waitIdle()
}

func (h *harness) waitIdle() {
	h.t.Helper()
	select {
	case <-h.idle:
	case <-time.After(10 * time.Second):
		h.t.Fatal("monitor did not become idle in 10s")
	}
}

// tick moves time to the monitor's next round, runs it and returns how long
// the monitor waited for it.
func (h *harness) tick() time.Duration {
	h.t.Helper()
	d := h.clock.AdvanceToNext(h.t)
	h.waitIdle()
	return d
}

func (h *harness) recheck() {
	h.t.Helper()
	h.mon.Recheck()
	h.waitIdle()
}

// targets is Targets as a comma-separated string.
func (h *harness) targets() string {
	ts, _ := h.mon.Targets()
	return strings.Join(ts, ",")
}

// upSet lists the electable backends in list order, comma-separated: in
// ModeMaster the master and the standbys that pass their checks, in ModeAny
// the up ones.
func (h *harness) upSet() string {
	h.mon.mu.Lock()
	defer h.mon.mu.Unlock()
	var up []string
	for _, b := range h.mon.backends {
		if b.up {
			up = append(up, b.Addr)
		}
	}
	return strings.Join(up, ",")
}

// states lists every backend's published state, "a=master b=standby".
func (h *harness) states() string {
	var out []string
	for _, b := range h.mon.Status().Backends {
		out = append(out, b.Addr+"="+b.State)
	}
	return strings.Join(out, " ")
}

func backends(addrs ...string) []Backend {
	bs := make([]Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = Backend{Addr: a}
	}
	return bs
}
