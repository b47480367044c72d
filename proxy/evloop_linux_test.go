package proxy

import (
	"net"
	"strings"
	"testing"
	"time"

	"handover/proxy/proxytest"
)

// The event loops' own cases: what they hand to the goroutine path, and
// how. The rest of the suite runs on the loops too.

// needLoops skips a test of the loops when the suite runs on goroutines.
func needLoops(t *testing.T, ts *testService) {
	if ts.loops == nil {
		t.Skip("the event loops are off (HANDOVER_PROXY_GOROUTINES)")
	}
}

// TestLoopHandsOff: a client the loop can't serve itself goes to the
// goroutine path, which reaches the backend as it always did, and is held
// against Timeout from when the loop accepted it.
func TestLoopHandsOff(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for dial timeouts")
	}
	t.Run("backend named by host name", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		_, port, _ := net.SplitHostPort(be.addr)
		name := net.JoinHostPort("localhost", port)
		ts := startService(t, proxytest.NewPicker(name), nil)
		needLoops(t, ts)
		c := ts.dial(t)
		roundTrip(t, c, "by name")
		ts.lc.Mu.Lock()
		pairs := len(ts.pairs)
		ts.lc.Mu.Unlock()
		if pairs != 1 {
			t.Errorf("goroutine pairs = %d, want 1: the loop should have handed the client off", pairs)
		}
		if st := ts.Status(); st.Active != 1 || st.Backends[name] != 1 || st.Accepted != 1 {
			t.Errorf("status %+v, want one active connection to %s, one accepted", st, name)
		}
	})

	t.Run("dial timed out, then a live target", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		picker := proxytest.NewPicker(hangingAddr(t))
		ts := startService(t, picker, func(o *Options) { o.DialTimeout = 300 * time.Millisecond })
		needLoops(t, ts)
		c := ts.dial(t)
		ts.waitStatus(t, "client held while the loop dials", func(st ServiceStatus) bool { return st.Held == 1 })
		// The loop's dial times out: counted, a re-check, and the
		// goroutine path takes over (and dials the hanging address again).
		ts.waitMetric(t, 1, "handover_proxy_dial_errors_total")
		if n := picker.Rechecks.Load(); n < 1 {
			t.Errorf("re-checks = %d after the loop's dial timed out, want at least 1", n)
		}
		if st := ts.Status(); st.Held != 1 {
			t.Errorf("held = %d after the hand-off, want 1", st.Held)
		}
		picker.Set(be.addr)
		roundTrip(t, c, "after the hand-off")
		ts.waitStatus(t, "proxied, none held", func(st ServiceStatus) bool {
			return st.Held == 0 && st.Active == 1 && st.Backends[be.addr] == 1
		})
	})

	t.Run("timeout counts from the loop's accept", func(t *testing.T) {
		checkLeaks(t)
		ts := startService(t, proxytest.NewPicker(hangingAddr(t)), func(o *Options) {
			o.DialTimeout = 500 * time.Millisecond
			o.Timeout = 600 * time.Millisecond
		})
		needLoops(t, ts)
		start := time.Now()
		c := ts.dial(t)
		expectClosed(t, c, 5*time.Second)
		// The loop's dial took 500ms of the 600ms; the goroutine path
		// has 100ms left, not another 600ms.
		if took := time.Since(start); took > 950*time.Millisecond {
			t.Errorf("client closed after %v, want about the 600ms Timeout", took)
		}
		ts.waitMetric(t, 1, "handover_proxy_connections_failed_total", "reason", "timeout")
	})
}

// TestLoopsSpreadConnections: every loop listens (SO_REUSEPORT) and serves
// what the kernel gives it; many clients at once all get through, and the
// status counts each once.
func TestLoopsSpreadConnections(t *testing.T) {
	checkLeaks(t)
	be := startBackend(t, "", echo)
	ts := startService(t, proxytest.NewPicker(be.addr), nil)
	const n = 64
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = ts.dial(t)
	}
	for i, c := range conns {
		roundTrip(t, c, strings.Repeat("x", i+1))
	}
	ts.waitStatus(t, "all proxied", func(st ServiceStatus) bool {
		return st.Active == n && st.Backends[be.addr] == n && st.Accepted == n
	})
	for _, c := range conns {
		c.Close()
	}
	ts.waitStatus(t, "all closed", func(st ServiceStatus) bool { return st.Active == 0 })
	ts.waitMetric(t, n, "handover_proxy_connections_closed_total", "reason", reasonEOF)
}
