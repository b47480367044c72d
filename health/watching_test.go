package health

import (
	"context"
	"testing"
	"time"

	"github.com/sirupsen/logrus/hooks/test"

	"handover/health/watch"
)

// push hands the monitor a watch update for backend addr, as a watch
// goroutine would, and returns once Run has taken it. With no check
// running, Run then waits to report itself idle: call waitIdle before the
// next push.
func (h *harness) push(addr string, u watch.Update) { h.pushCtx(context.Background(), addr, u) }

// pushCtx is push from a watch whose context is ctx.
func (h *harness) pushCtx(ctx context.Context, addr string, u watch.Update) {
	h.t.Helper()
	h.mon.mu.Lock()
	var b *backend
	for _, x := range h.mon.backends {
		if x.Addr == addr {
			b = x
		}
	}
	h.mon.mu.Unlock()
	if b == nil {
		h.t.Fatalf("no backend %s", addr)
	}
	select {
	case h.mon.pushes <- push{b: b, u: u, ctx: ctx}:
	case <-time.After(10 * time.Second):
		h.t.Fatal("Run did not take the push in 10s")
	}
}

func event(role string, epoch uint64, serving, stopping bool) watch.Update {
	return watch.Update{Event: watch.Event{Role: role, Epoch: epoch, Serving: serving, Stopping: stopping}}
}

// TestPushes: what a watch says goes through the election's rules: a
// pushed promotion is elected at once (no Rise), a pushed stop takes the
// master out at once, a lost watch takes it out and checks every backend
// at once, and a watched backend is not checked on the interval.
func TestPushes(t *testing.T) {
	h := newHarness(t, Config{}, backends("a", "b"), nil)
	h.chk.set(t, "a=ok:1 b=standby")
	h.start()
	if got := h.states(); got != "a=master b=standby" {
		t.Fatalf("states %q", got)
	}
	h.push("a", event("master", 1, true, false))
	h.waitIdle()
	h.push("b", event("slave", 0, false, false))
	h.waitIdle()
	calls := h.chk.callCount("a") + h.chk.callCount("b")
	h.tick()
	if n := h.chk.callCount("a") + h.chk.callCount("b"); n != calls {
		t.Errorf("%d checks on the interval of watched backends, want none", n-calls)
	}
	if st := h.mon.Status().Backends; st[0].Watch != WatchWatched || st[1].Watch != WatchWatched {
		t.Errorf("watch states %q %q, want both watched", st[0].Watch, st[1].Watch)
	}
	// A heartbeat is the backend speaking: Status says when it last did.
	h.tick()
	h.push("a", watch.Update{Beat: true})
	h.waitIdle()
	if got := h.mon.Status().Backends[0].LastSpoke; !got.Equal(h.clock.Now()) {
		t.Errorf("a last spoke at %v, want the heartbeat's %v", got, h.clock.Now())
	}

	// a says it is stopping: out at once, before its port closes.
	h.push("a", event("master", 1, true, true))
	h.waitIdle()
	if got := h.targets(); got != "" {
		t.Fatalf("targets %q after a pushed stop, want none", got)
	}
	// b's promotion is pushed: elected at once, though Rise is 2.
	h.push("b", event("master", 2, true, false))
	h.waitIdle()
	if got := h.states(); got != "a=down b=master" {
		t.Fatalf("after a pushed promotion: %q", got)
	}

	// b's watch is lost (killed): out at once, and every backend checked.
	h.chk.set(t, "a=fail b=fail")
	before := h.chk.callCount("a")
	h.push("b", watch.Update{Err: watch.ErrClosed})
	h.waitIdle()
	if got := h.targets(); got != "" {
		t.Errorf("targets %q after the master's watch was lost, want none", got)
	}
	if h.chk.callCount("a") == before {
		t.Error("a lost watch did not check the other backends at once")
	}
	if st := h.mon.Status().Backends[1]; st.Watch != WatchPolled || st.WatchError == "" {
		t.Errorf("b after its watch was lost: %+v", st)
	}
}

// TestPushBeatsStaleCheck: a check that was on its way when the backend
// pushed its promotion (a slave's 503, read just before) does not undo it.
func TestPushBeatsStaleCheck(t *testing.T) {
	h := newHarness(t, Config{}, backends("a", "b"), nil)
	h.chk.set(t, "a=ok:1 b=standby")
	h.start()
	h.push("b", event("slave", 0, false, false))
	h.waitIdle()

	release := h.recheckHeld(2)
	h.clock.Advance(time.Millisecond)
	h.push("b", event("master", 2, true, false)) // promoted while its check runs
	// b's check answers what it read before: standby.
	release()
	h.waitIdle()
	if got := h.states(); got != "a=standby b=master" {
		t.Errorf("states %q: the stale check undid the pushed promotion", got)
	}
}

// TestLossBeatsStaleCheck: a master's check that passed just before its
// watch was lost (killed) does not bring it back when its answer arrives
// after the loss.
func TestLossBeatsStaleCheck(t *testing.T) {
	h := newHarness(t, Config{}, backends("a", "b"), nil)
	hook := test.NewLocal(h.mon.log.Logger)
	h.chk.set(t, "a=ok:1 b=standby")
	h.start()
	h.push("a", event("master", 1, true, false))
	h.waitIdle()

	// a's check has read "ok": what a was before the kill.
	release := h.recheckHeld(2)
	h.chk.set(t, "a=refused b=standby")
	h.clock.Advance(time.Millisecond)
	hook.Reset()
	h.push("a", watch.Update{Err: watch.ErrClosed})
	release()
	h.waitIdle()
	for _, e := range hook.AllEntries() {
		if e.Message == "backend master" || e.Data["reason"] == "check passed while nothing else serves" {
			t.Errorf("a killed master came back on a check from before its watch was lost: %s %v", e.Message, e.Data)
		}
	}
	if got := h.targets(); got != "" {
		t.Errorf("targets %q, want none", got)
	}
}

// TestPushAfterStopIgnored: a push from a watch already stopped (its
// context cancelled: watches turned off, a URL changed) does not mark the
// backend watched again, which would stop its interval checks for good.
func TestPushAfterStopIgnored(t *testing.T) {
	h := newHarness(t, Config{}, backends("a"), nil)
	h.chk.set(t, "a=ok:1")
	h.start()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.pushCtx(ctx, "a", event("master", 1, true, false))
	h.waitIdle()
	if st := h.mon.Status().Backends[0]; st.Watch != WatchPolled {
		t.Errorf("a push from a stopped watch made a %q", st.Watch)
	}
}
