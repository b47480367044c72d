package proxy

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"handover/internal/serve"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
)

// TestFailoverDisconnectsLoggedOnce: a change of targets that closes
// connections on every event loop (and on the goroutine path) is one log
// line, saying how many clients were disconnected and from which backend,
// and FailoverCounts counts them.
func TestFailoverDisconnectsLoggedOnce(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(5)) // four loops
	checkLeaks(t)
	a := startBackend(t, "", echo)
	b := startBackend(t, "", echo)
	picker := proxytest.NewPicker(a.addr)
	log := proxytest.Log(t)
	hook := test.NewLocal(log.Logger)
	ts := startServiceLog(t, picker, Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}}, false, log)
	const n = 24
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = ts.dial(t)
		roundTrip(t, conns[i], "x") // touched: closed at a failover, not dialed again
	}
	picker.Set(b.addr)
	for _, c := range conns {
		expectClosed(t, c, 5*time.Second)
	}
	var lines []*logrus.Entry
	testutil.Eventually(t, 5*time.Second, func() error {
		lines = nil
		for _, e := range hook.AllEntries() {
			if strings.HasPrefix(e.Message, "disconnected clients") {
				lines = append(lines, e)
			}
		}
		if len(lines) == 0 {
			return errors.New("no disconnected clients line")
		}
		return nil
	})
	if len(lines) != 1 || lines[0].Data["disconnected"] != n || lines[0].Data["from"] != a.addr || lines[0].Level != logrus.WarnLevel {
		for _, l := range lines {
			t.Logf("%v %v", l.Message, l.Data)
		}
		t.Fatalf("%d lines for one failover, want one: %d clients from %s", len(lines), n, a.addr)
	}
	if c := ts.FailoverCounts(); c.Closed != n || c.Held != 0 {
		t.Errorf("FailoverCounts %+v, want %d closed, none held", c, n)
	}
}

// TestStopAcceptingBecause: a listener a reload retires logs that it drains,
// and why, not that the service shuts down.
func TestStopAcceptingBecause(t *testing.T) {
	be := startBackend(t, "", echo)
	log := proxytest.Log(t)
	hook := test.NewLocal(log.Logger)
	ts := startServiceLog(t, proxytest.NewPicker(be.addr), Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}}, false, log)
	roundTrip(t, ts.dial(t), "x")
	ts.StopAcceptingBecause("listener replaced by a reload")
	ts.StopAccepting() // the first reason stays
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	ts.Shutdown(ctx)
	var msgs []string
	for _, e := range hook.AllEntries() {
		msgs = append(msgs, e.Message)
	}
	all := strings.Join(msgs, "\n")
	if strings.Contains(all, "shutting down") || strings.Contains(all, "shutdown grace") ||
		!strings.Contains(all, "listener replaced by a reload: not accepting; draining live connections") ||
		!strings.Contains(all, "drain grace over (listener replaced by a reload): closing live connections") {
		t.Errorf("log lines:\n%s", all)
	}
}
