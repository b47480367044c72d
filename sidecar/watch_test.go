package sidecar

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"handover/health"
	"handover/internal/testutil"
	"handover/stompclient"
)

// TestWatchMix: the sidecar in front of a mix, failing over both ways:
// brokerd A offers its watch on its admin port and is followed; brokerd B
// is behind a proxy that passes /readyz only ("a brokerd behind something
// else") and is polled. Then A, master, is frozen: its missing heartbeat
// takes it out within watch_timeout, and B takes over by lease.
func TestWatchMix(t *testing.T) {
	data := t.TempDir()
	testutil.InitBroker(t, "-data", data)
	bin := testutil.Binary(t, "handover/cmd/brokerd")
	type broker struct {
		name, listen, admin string
		p                   *testutil.Process
	}
	start := func(b *broker) {
		b.p = testutil.Start(t, b.name, bin, "-listen", b.listen, "-admin", b.admin, "-data", data)
	}
	a := &broker{name: "brokerd-a", listen: testutil.FreePort(t), admin: testutil.FreePort(t)}
	b := &broker{name: "brokerd-b", listen: testutil.FreePort(t), admin: testutil.FreePort(t)}
	start(a)
	waitReadyz(t, a.admin)
	start(b)

	// B's admin port, as something that knows /readyz and nothing else.
	bAdmin, _ := url.Parse("http://" + b.admin)
	rp := httputil.NewSingleHostReverseProxy(bAdmin)
	front := testutil.FreePort(t)
	srv := &http.Server{Addr: front, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.ListenAndServe()
	t.Cleanup(func() { srv.Close() })

	listen, admin := testutil.FreePort(t), testutil.FreePort(t)
	cfg := fmt.Sprintf(`[log]
level = "debug"
[admin]
listen = %q
[[service]]
name = "s"
listen = %q
backends = [{ addr = %q, check_url = "http://%s/readyz" }, { addr = %q, check_url = "http://%s/readyz" }]
[service.check]
kind = "http"
interval = "1s"
timeout = "500ms"
watch_timeout = "4s"
`, admin, listen, a.listen, a.admin, b.listen, front)
	path := filepath.Join(t.TempDir(), "proxy.toml")
	os.WriteFile(path, []byte(cfg), 0o644)
	testutil.Start(t, "handover", testutil.Binary(t, "handover/cmd/handover"), "-config", path)

	backend := func(addr string) (health.BackendStatus, string, error) {
		resp, err := http.Get("http://" + admin + "/status")
		if err != nil {
			return health.BackendStatus{}, "", err
		}
		defer resp.Body.Close()
		var st Status
		if err := jsonDecode(resp.Body, &st); err != nil || len(st.Services) != 1 {
			return health.BackendStatus{}, "", fmt.Errorf("status: %v", err)
		}
		for _, bs := range st.Services[0].Health.Backends {
			if bs.Addr == addr {
				return bs, st.Services[0].Master, nil
			}
		}
		return health.BackendStatus{}, "", fmt.Errorf("no backend %s in status", addr)
	}
	want := func(what string, addr string, cond func(bs health.BackendStatus, master string) bool) {
		t.Helper()
		testutil.Eventually(t, 15*time.Second, func() error {
			bs, master, err := backend(addr)
			if err != nil {
				return err
			}
			if !cond(bs, master) {
				return fmt.Errorf("%s: backend %+v, master %q", what, bs, master)
			}
			return nil
		})
	}

	want("A master, watched", a.listen, func(bs health.BackendStatus, m string) bool {
		return m == a.listen && bs.Watch == health.WatchWatched
	})
	want("B polled: it offers no watch", b.listen, func(bs health.BackendStatus, m string) bool {
		return bs.Watch == health.WatchPolled && strings.Contains(bs.WatchError, "offers no watch") && bs.State == health.StateStandby
	})

	// A (watched) dies: B (polled) is found by its checks.
	a.p.Kill()
	want("B master after kill -9 of A", b.listen, func(bs health.BackendStatus, m string) bool { return m == b.listen })
	want("A down", a.listen, func(bs health.BackendStatus, m string) bool { return bs.State == health.StateDown })

	// A comes back as a slave and is watched again; B (polled) dies: A's
	// promotion is pushed.
	start(a)
	want("A standby, watched", a.listen, func(bs health.BackendStatus, m string) bool {
		return bs.State == health.StateStandby && bs.Watch == health.WatchWatched
	})
	b.p.Kill()
	want("A master after kill -9 of B", a.listen, func(bs health.BackendStatus, m string) bool { return m == a.listen })

	// A, master and watched, freezes: no heartbeat for watch_timeout (4s)
	// takes it out; B, back as a slave, takes over by lease.
	start(b)
	want("B standby", b.listen, func(bs health.BackendStatus, m string) bool { return bs.State == health.StateStandby })
	stopped := time.Now()
	if err := a.p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer a.p.Signal(syscall.SIGCONT)
	want("A's watch stalled", a.listen, func(bs health.BackendStatus, m string) bool {
		return bs.Watch == health.WatchPolled && strings.Contains(bs.WatchError, "stalled")
	})
	if took := time.Since(stopped); took > 4*time.Second+3*time.Second {
		t.Errorf("a frozen master's watch was taken as stalled after %v; watch_timeout is 4s", took)
	}
	want("B master after SIGSTOP of A", b.listen, func(bs health.BackendStatus, m string) bool { return m == b.listen })
}

// waitReadyz waits until a brokerd's admin answers /readyz with 200.
func waitReadyz(t *testing.T, admin string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
}

// TestSIGTERMPushed: a master that is SIGTERMed says so on its watch
// before its port closes, and the sidecar takes it out on that word (not
// on a failed check or a closed connection); a STOMP-mode session carries
// on, on the new master, on its first connection.
func TestSIGTERMPushed(t *testing.T) {
	c := startClusterWith(t, 2, `protocol = "stomp"`)
	c.waitSidecarMaster(c.brokers[0].listen)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := stompclient.Dial(ctx, c.listen, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.SendReceipt(ctx, "/queue/sigterm", []byte("before")); err != nil {
		t.Fatal(err)
	}
	c.brokers[0].p.Signal(syscall.SIGTERM)
	c.waitSidecarMaster(c.brokers[1].listen)
	if err := cl.SendReceipt(ctx, "/queue/sigterm", []byte("after")); err != nil {
		t.Fatalf("the session did not carry on after SIGTERM of its master: %v", err)
	}
	var down string
	for _, l := range strings.Split(c.sidecar.Out.String(), "\n") {
		if strings.Contains(l, `msg="backend down"`) && strings.Contains(l, fmt.Sprintf("backend=%q", c.brokers[0].listen)) {
			down = l
			break
		}
	}
	if !strings.Contains(down, "pushed: master stopping") {
		t.Errorf("the SIGTERMed master was not taken out on its pushed stop; its first down line: %q", down)
	}
}
