package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"handover/internal/testutil"
)

// echoServer is a backend that echoes every byte back.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go echoAll(ln)
	return ln.Addr().String()
}

// echoAll echoes every connection ln accepts, until ln is closed; the
// connections live on until their clients close them (a backend whose
// listener is closed keeps its live connections).
func echoAll(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

type reloadHarness struct {
	t    *testing.T
	path string
	sc   *Sidecar
	stop func()
	logs *testutil.SyncBuffer // everything the sidecar logged
}

func (h *reloadHarness) write(cfg string) {
	h.t.Helper()
	if err := os.WriteFile(h.path, []byte(cfg), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func startSidecar(t *testing.T, cfg string) *reloadHarness {
	t.Helper()
	h := &reloadHarness{t: t, path: filepath.Join(t.TempDir(), "proxy.toml"), logs: &testutil.SyncBuffer{}}
	h.write(cfg)
	c, err := LoadConfig(h.path)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := New(c, h.path, io.MultiWriter(tWriter{t}, h.logs))
	if err != nil {
		t.Fatal(err)
	}
	h.sc = sc
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sc.Run(ctx); close(done) }()
	h.stop = func() { cancel(); <-done }
	t.Cleanup(h.stop)
	return h
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func serviceCfg(name, listen string, backends []string, extra string) string {
	q := make([]string, len(backends))
	for i, b := range backends {
		q[i] = fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("[[service]]\nname = %q\nlisten = %q\nbackends = [%s]\n%s\n[service.check]\nkind = \"tcp\"\ninterval = \"100ms\"\n",
		name, listen, strings.Join(q, ", "), extra)
}

// stream keeps a connection through the sidecar busy with echo round trips
// and reports the first error.
func stream(t *testing.T, addr string) (stop func() error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// One round trip before returning: the connection is then proxied,
	// not still being dialled, when the test goes on to reload.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatalf("first round trip through %s: %v", addr, err)
	}
	quit := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 5)
		for i := 0; ; i++ {
			select {
			case <-quit:
				errc <- nil
				return
			default:
			}
			msg := fmt.Sprintf("%05d", i%100000)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, msg); err != nil {
				errc <- fmt.Errorf("write %d: %w", i, err)
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
				errc <- fmt.Errorf("echo %d: %q %v", i, buf, err)
				return
			}
		}
	}()
	return func() error {
		close(quit)
		err := <-errc
		c.Close()
		return err
	}
}

func (h *reloadHarness) reload() error { return h.sc.RequestReload(context.Background()) }

func (h *reloadHarness) waitMaster(service, addr string) {
	h.t.Helper()
	testutil.Eventually(h.t, 5*time.Second, func() error {
		for _, s := range h.sc.status().Services {
			if s.Name == service && s.Master == addr {
				return nil
			}
		}
		return fmt.Errorf("%s: master is not %s: %+v", service, addr, h.sc.status().Services)
	})
}

// TestReloadUnderTraffic: a client streaming through the sidecar sees no
// error while backends and checks are reloaded, a service is added, a
// listen address changes and a bad file is rejected.
func TestReloadUnderTraffic(t *testing.T) {
	a, b := echoServer(t), echoServer(t)
	listen1, listen2, listen3 := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	h := startSidecar(t, "[admin]\nlisten = \"\"\n"+serviceCfg("one", listen1, []string{a}, ""))
	h.waitMaster("one", a)
	stop := stream(t, listen1)

	// 1. Backends and checks change; the master stays in the list.
	h.write("[admin]\nlisten = \"\"\n" + strings.Replace(serviceCfg("one", listen1, []string{a, b}, ""), `interval = "100ms"`, `interval = "200ms"`+"\nrise = 3", 1))
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	if st := h.sc.status(); st.Generation != 1 || !st.LastReload.OK || len(st.Services[0].Health.Backends) != 2 {
		t.Fatalf("after reload 1: %+v", st)
	}

	// 2. A file that fails validation is rejected whole; nothing changes.
	h.write("[admin]\nlisten = \"\"\n" + serviceCfg("one", listen1, []string{a}, "mode = \"leader\""))
	err := h.reload()
	if err == nil || !strings.Contains(err.Error(), `service[0].mode: "leader"`) {
		t.Fatalf("bad file: %v", err)
	}
	if st := h.sc.status(); st.Generation != 1 || st.LastReload.OK || !strings.Contains(st.LastReload.Error, "leader") || len(st.Services[0].Health.Backends) != 2 {
		t.Fatalf("after rejected reload: %+v", st)
	}

	// 3. A new service starts; the first one's listen address moves.
	h.write("[admin]\nlisten = \"\"\n" + serviceCfg("one", listen2, []string{a, b}, "") + serviceCfg("two", listen3, []string{b}, ""))
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	h.waitMaster("two", b)
	for _, addr := range []string{listen2, listen3} {
		s := stream(t, addr)
		time.Sleep(20 * time.Millisecond)
		if err := s(); err != nil {
			t.Fatalf("through %s: %v", addr, err)
		}
	}
	if _, err := net.DialTimeout("tcp", listen1, time.Second); err == nil {
		t.Fatalf("old listen address %s still accepts", listen1)
	}

	// 4. A removed service stops accepting.
	h.write("[admin]\nlisten = \"\"\n" + serviceCfg("one", listen2, []string{a, b}, ""))
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if c, err := net.DialTimeout("tcp", listen3, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("removed service still accepts")
		}
		return nil
	})

	// The stream on the original connection never saw an error.
	if err := stop(); err != nil {
		t.Fatalf("live connection broke during reloads: %v", err)
	}
}

// TestReloadSameListenNewOptions: changing a data-path option on the same
// address replaces the listener without touching live connections.
func TestReloadSameListenNewOptions(t *testing.T) {
	a := echoServer(t)
	listen := testutil.FreePort(t)
	h := startSidecar(t, "[admin]\nlisten = \"\"\n"+serviceCfg("one", listen, []string{a}, ""))
	h.waitMaster("one", a)
	stop := stream(t, listen)
	h.write("[admin]\nlisten = \"\"\n" + serviceCfg("one", listen, []string{a}, "max_connections = 100\ndial_timeout = \"1s\""))
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	s2 := stream(t, listen)
	time.Sleep(20 * time.Millisecond)
	if err := s2(); err != nil {
		t.Fatalf("new listener: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("live connection broke: %v", err)
	}
}

// TestSIGHUPAndPOSTReload drive the real binary.
func TestSIGHUPAndPOSTReload(t *testing.T) {
	a := echoServer(t)
	admin, listen := testutil.FreePort(t), testutil.FreePort(t)
	path := filepath.Join(t.TempDir(), "proxy.toml")
	write := func(extra string) {
		os.WriteFile(path, []byte(fmt.Sprintf("[admin]\nlisten = %q\n", admin)+serviceCfg("one", listen, []string{a}, extra)), 0o644)
	}
	write("")
	p := testutil.Start(t, "handover", testutil.Binary(t, "handover/cmd/handover"), "-config", path)
	gen := func() (int, error) {
		resp, err := http.Get("http://" + admin + "/status")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var st Status
		if err := jsonDecode(resp.Body, &st); err != nil {
			return 0, err
		}
		return st.Generation, nil
	}
	testutil.Eventually(t, 10*time.Second, func() error { _, err := gen(); return err })
	write("timeout = \"5s\"")
	p.Signal(syscall.SIGHUP)
	testutil.Eventually(t, 5*time.Second, func() error {
		if g, err := gen(); err != nil || g != 1 {
			return fmt.Errorf("generation %d %v", g, err)
		}
		return nil
	})
	write("mode = \"leader\"")
	resp, err := http.Post("http://"+admin+"/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "leader") {
		t.Fatalf("POST /reload of a bad file: %d %s", resp.StatusCode, body)
	}
	write("")
	resp, err = http.Post("http://"+admin+"/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /reload: %d", resp.StatusCode)
	}
	if g, _ := gen(); g != 2 {
		t.Fatalf("generation %d after two good reloads", g)
	}
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }

// TestReloadedShutdownGrace: a service a reload adds drains for the new
// file's shutdown_grace, not the one the sidecar started with: raised from
// 100ms to 1m, a client on the added service keeps its connection through
// the first second of a shutdown (the old grace would cut it at 100ms).
func TestReloadedShutdownGrace(t *testing.T) {
	be := echoServer(t)
	a, b := testutil.FreePort(t), testutil.FreePort(t)
	head := func(grace string) string {
		return fmt.Sprintf("shutdown_grace = %q\n[admin]\nlisten = \"\"\n", grace)
	}
	h := startSidecar(t, head("100ms")+serviceCfg("a", a, []string{be}, ""))
	h.waitMaster("a", be)
	h.write(head("1m") + serviceCfg("a", a, []string{be}, "") + serviceCfg("b", b, []string{be}, ""))
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	h.waitMaster("b", be)
	stop := stream(t, b)
	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	time.Sleep(time.Second) // the time the client is owed, not a wait for a condition
	select {
	case <-stopped:
		t.Fatal("the sidecar stopped within a second with a client still on the added service")
	default:
	}
	if err := stop(); err != nil {
		t.Errorf("the client on the added service lost its connection during the shutdown: %v", err)
	}
	<-stopped
}
