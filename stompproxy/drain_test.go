package stompproxy

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"handover/health"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
	"handover/stompclient"
)

// keepSpy is a health.Monitor that tells the test each answer of Keep, so
// that the test knows moveOff has looked at a backend it kept.
type keepSpy struct {
	*health.Monitor
	answers chan keepAnswer
}

type keepAnswer struct {
	addr string
	kept bool
}

func (k *keepSpy) Keep(addr string) bool {
	kept := k.Monitor.Keep(addr)
	select {
	case k.answers <- keepAnswer{addr, kept}:
	default: // nobody listening: the test has what it needed
	}
	return kept
}

// waitKeep waits for Keep to have answered kept for addr.
func (k *keepSpy) waitKeep(t testing.TB, addr string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case a := <-k.answers:
			if a.addr == addr && a.kept {
				return
			}
		case <-timeout:
			t.Fatalf("Keep(%s) never answered true: the data path did not ask", addr)
		}
	}
}

// runMonitor runs mon until test cleanup and waits until its targets are
// want.
func runMonitor(t testing.TB, mon *health.Monitor, want ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { mon.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	deadline := time.After(10 * time.Second)
	for {
		ts, changed := mon.Targets()
		if slices.Equal(ts, want) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("targets %v, want %v; status %+v", ts, want, mon.Status())
		}
	}
}

// TestDrainKeepsSessions (issue 16): in STOMP mode, a backend an operator
// drains keeps the sessions it has, while new sessions go to the other
// backends, as TCP mode keeps its connections; disabling it then moves
// those sessions off, their clients staying connected. Two independent
// brokerd behind a real health.Monitor in mode any.
func TestDrainKeepsSessions(t *testing.T) {
	a := startBroker(t, t.TempDir(), "")
	a.WaitReady(t)
	b := startBroker(t, t.TempDir(), "")
	b.WaitReady(t)
	chk, err := health.NewChecker(health.KindSTOMP)
	if err != nil {
		t.Fatal(err)
	}
	mon := health.NewMonitor("stomp", health.Config{Mode: health.ModeAny, Interval: 200 * time.Millisecond},
		[]health.Backend{{Addr: a.Addr()}, {Addr: b.Addr()}}, chk, nil, proxytest.Log(t).WithField("component", "health"), nil)
	runMonitor(t, mon, a.Addr(), b.Addr())
	spy := &keepSpy{Monitor: mon, answers: make(chan keepAnswer, 64)}
	svc := startService(t, spy, nil)
	addr := svc.Addr().String()
	const q = "/queue/drain"

	old := dialClient(t, addr, stompclient.Options{})
	// The client has its CONNECTED a moment before the session counts
	// its backend.
	testutil.Eventually(t, 10*time.Second, func() error {
		if st := svc.Status(); st.Backends[a.Addr()] != 1 {
			return fmt.Errorf("status %+v, want the session on %s, the first target", st, a.Addr())
		}
		return nil
	})

	if err := mon.SetAdminState(a.Addr(), health.StateDraining, "test"); err != nil {
		t.Fatal(err)
	}
	spy.waitKeep(t, a.Addr())
	fresh := dialClient(t, addr, stompclient.Options{})
	if err := fresh.SendReceipt(ctxT(t, 10*time.Second), q, []byte("fresh"), persistent); err != nil {
		t.Fatal(err)
	}
	if err := old.SendReceipt(ctxT(t, 10*time.Second), q, []byte("old"), persistent); err != nil {
		t.Fatal(err)
	}
	if da, db := a.depth(q), b.depth(q); da != 1 || db != 1 {
		t.Fatalf("queue depths %d on the draining backend and %d on the other, want 1 each: "+
			"the old session stays, the new one goes elsewhere", da, db)
	}
	if st := svc.Status(); st.Resumed != 0 || st.Backends[a.Addr()] != 1 || st.Backends[b.Addr()] != 1 {
		t.Fatalf("status %+v, want one session on each backend and none moved", st)
	}

	// Disabled, it keeps nothing: the old session moves, its client
	// connected throughout.
	if err := mon.SetAdminState(a.Addr(), health.StateDisabled, "test"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if st := svc.Status(); st.Resumed != 1 || st.Backends[b.Addr()] != 2 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if err := old.SendReceipt(ctxT(t, 10*time.Second), q, []byte("moved"), persistent); err != nil {
		t.Fatal(err)
	}
	if db := b.depth(q); db != 2 {
		t.Fatalf("queue depth %d on the remaining backend, want 2", db)
	}
}

// TestNewSessionNotOnDrainingBackend: a session whose backend starts
// draining while the session reaches it (Keep answers true for it, but it
// is no longer a target) does not stay there: it is a new session, and
// resumes on the target.
func TestNewSessionNotOnDrainingBackend(t *testing.T) {
	fa := startFake(t, "1.2", "0,0")
	fb := startFake(t, "1.2", "0,0")
	p := proxytest.NewPicker(fa.addr())
	svc := startService(t, p, nil)
	testutil.Eventually(t, 10*time.Second, func() error {
		if p.Reads.Load() == 0 {
			return fmt.Errorf("Serve has not read the targets")
		}
		return nil
	})
	p.SetKept(fa.addr())
	p.FlipAfterNextRead(fb.addr()) // the session reads fa; then fa drains
	c := dialClient(t, svc.Addr().String(), stompclient.Options{})
	fa.next(t)
	fb.next(t)
	if err := c.SendReceipt(ctxT(t, 10*time.Second), "/queue/x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	fb.expectAny(t, "SEND")
	if st := svc.Status(); st.Backends[fb.addr()] != 1 {
		t.Fatalf("status %+v, want the session on the target", st)
	}
}
