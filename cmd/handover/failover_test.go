package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"handover/frame"
	"handover/internal/testutil"
	"handover/stompclient"
)

type brokerProc struct {
	listen, admin string
	p             *testutil.Process
}

type cluster struct {
	t       *testing.T
	data    string
	brokers []*brokerProc
	sidecar *testutil.Process
	listen  string // the sidecar's client address
	admin   string
}

// startCluster starts n brokerd on one data directory and the sidecar in
// front of them, with the default config but for addresses.
func startCluster(t *testing.T, n int) *cluster { return startClusterWith(t, n, "") }

// startClusterWith is startCluster with extra keys for the [[service]].
func startClusterWith(t *testing.T, n int, serviceKeys string) *cluster {
	t.Helper()
	c := &cluster{t: t, data: t.TempDir(), listen: testutil.FreePort(t), admin: testutil.FreePort(t)}
	bin := testutil.Binary(t, "handover/cmd/brokerd")
	testutil.InitBroker(t, "-data", c.data)
	var backends []string
	for i := 0; i < n; i++ {
		b := &brokerProc{listen: testutil.FreePort(t), admin: testutil.FreePort(t)}
		b.p = testutil.Start(t, fmt.Sprintf("brokerd-%d", i), bin, "-listen", b.listen, "-admin", b.admin, "-data", c.data)
		c.brokers = append(c.brokers, b)
		backends = append(backends, fmt.Sprintf("{ addr = %q, check_url = \"http://%s/readyz\" }", b.listen, b.admin))
		if i == 0 {
			c.waitMaster(b)
		}
	}
	cfg := fmt.Sprintf(`
[log]
level = "debug"
[admin]
listen = %q
[[service]]
name = "stomp"
listen = %q
backends = [%s]
%s
[service.check]
kind = "http"
interval = "1s"
timeout = "500ms"
`, c.admin, c.listen, strings.Join(backends, ", "), serviceKeys)
	path := filepath.Join(t.TempDir(), "proxy.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.sidecar = testutil.Start(t, "handover", testutil.Binary(t, "handover/cmd/handover"), "-config", path)
	return c
}

func (c *cluster) waitMaster(b *brokerProc) {
	c.t.Helper()
	testutil.Eventually(c.t, 10*time.Second, func() error {
		resp, err := http.Get("http://" + b.admin + "/readyz")
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

func (c *cluster) status() (Status, error) {
	var st Status
	resp, err := http.Get("http://" + c.admin + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (c *cluster) waitSidecarMaster(addr string) {
	c.t.Helper()
	testutil.Eventually(c.t, 10*time.Second, func() error {
		st, err := c.status()
		if err != nil {
			return err
		}
		if len(st.Services) == 0 {
			return fmt.Errorf("status lists no service")
		}
		if m := st.Services[0].Master; m != addr {
			return fmt.Errorf("sidecar master %q, want %q", m, addr)
		}
		return nil
	})
}

// sendOnce opens a new client connection through the sidecar and completes
// CONNECT and a receipted persistent SEND, as a legacy client would.
func sendOnce(ctx context.Context, addr, body string) error {
	c, err := stompclient.Dial(ctx, addr, stompclient.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SendReceipt(ctx, "/queue/sidecar", []byte(body), frame.Header{Key: "persistent", Value: "true"})
}

// TestFailoverThroughSidecar: kill -9 the master; a new client connection
// through the sidecar completes CONNECT and a receipted SEND within 1s.
func TestFailoverThroughSidecar(t *testing.T) {
	c := startCluster(t, 2)
	c.waitSidecarMaster(c.brokers[0].listen)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sendOnce(ctx, c.listen, "before"); err != nil {
		t.Fatal(err)
	}
	// A live client connection bound to the master.
	live, err := stompclient.Dial(ctx, c.listen, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	killed := time.Now()
	c.brokers[0].p.Cmd.Process.Signal(syscall.SIGKILL)
	// Like a legacy client, retry the same address after an error: a
	// connection made in the instant of the kill may reach the dying
	// master.
	attempts := 0
	for {
		attempts++
		sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
		err = sendOnce(sctx, c.listen, "after")
		scancel()
		if err == nil {
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("no successful client within 10s of the kill: %v", err)
		}
		t.Logf("attempt %d: %v", attempts, err)
	}
	took := time.Since(killed)
	t.Logf("kill -9 to first receipted SEND through the sidecar: %v (%d attempts)", took, attempts)
	if took > time.Second {
		t.Errorf("failover took %v, want under 1s", took)
	}
	select {
	case <-live.Done():
	case <-time.After(2 * time.Second):
		t.Error("connection bound to the dead master was not closed")
	}
	c.waitSidecarMaster(c.brokers[1].listen)

	// Both messages are on the new master.
	cl, err := stompclient.Dial(ctx, c.listen, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sub, _ := cl.Subscribe("/queue/sidecar", stompclient.AckAuto)
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case m := <-sub.C():
			got[string(m.Body)] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("got %v, want before and after", got)
		}
	}

	// The admin surface reports it.
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b := new(strings.Builder)
	buf := make([]byte, 1<<16)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	resp.Body.Close()
	for _, want := range []string{"handover_", c.brokers[1].listen} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestSidecarSIGTERM(t *testing.T) {
	c := startCluster(t, 1)
	c.waitSidecarMaster(c.brokers[0].listen)
	c.sidecar.Signal(syscall.SIGTERM)
	if err := c.sidecar.Wait(15 * time.Second); err != nil {
		t.Fatalf("SIGTERM: %v (exit %d)", err, c.sidecar.ExitCode())
	}
}

func TestCheckFlag(t *testing.T) {
	bin := testutil.Binary(t, "handover/cmd/handover")
	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = [\"x\"]\nmode = \"leader\"\n"), 0o644)
	tests := []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"-check", "-config", "../../proxy.toml"}, 0, []string{"ok (1 services)"}},
		{[]string{"-check", "-config", bad}, 1, []string{"bad.toml:4: service[0].backends", "bad.toml:5: service[0].mode"}},
		{[]string{"-check", "-config", "/nonexistent.toml"}, 1, []string{"no such file"}},
		{[]string{"-version"}, 0, []string{"handover " + Version}},
	}
	for _, tt := range tests {
		out, err := exec.Command(bin, tt.args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != tt.code {
			t.Errorf("%v: exit %d, want %d\n%s", tt.args, code, tt.code, out)
		}
		for _, w := range tt.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%v: output lacks %q:\n%s", tt.args, w, out)
			}
		}
	}
}

// TestStompModeSessionSurvivesFailover: with protocol = "stomp", a client
// that never reconnects keeps its one connection through a kill -9 of the
// master: its pending and later receipted SENDs succeed, its subscription
// goes on, nothing is lost or delivered twice.
func TestStompModeSessionSurvivesFailover(t *testing.T) {
	c := startClusterWith(t, 2, `protocol = "stomp"`)
	c.waitSidecarMaster(c.brokers[0].listen)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := stompclient.Dial(ctx, c.listen, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sub, err := cl.SubscribeReceipt(ctx, "/queue/session", stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	const total = 200
	got := map[string]int{}
	var pauseMax time.Duration
	for i := 0; i < total; i++ {
		if i == total/2 {
			c.brokers[0].p.Cmd.Process.Signal(syscall.SIGKILL)
		}
		start := time.Now()
		if err := cl.SendReceipt(ctx, "/queue/session", []byte(fmt.Sprint(i)), frame.Header{Key: "persistent", Value: "true"}); err != nil {
			t.Fatalf("send %d on the original connection: %v", i, err)
		}
		pauseMax = max(pauseMax, time.Since(start))
	drain:
		for {
			select {
			case m := <-sub.C():
				got[string(m.Body)]++
				if err := cl.Ack(m); err != nil {
					t.Fatalf("ack: %v", err)
				}
			default:
				break drain
			}
		}
	}
	deadline := time.After(15 * time.Second)
	for len(got) < total {
		select {
		case m := <-sub.C():
			got[string(m.Body)]++
			cl.Ack(m)
		case <-deadline:
			t.Fatalf("received %d of %d", len(got), total)
		case <-cl.Done():
			t.Fatalf("client connection ended: %v", cl.Err())
		}
	}
	for body, n := range got {
		if n > 1 {
			t.Errorf("message %s delivered %d times", body, n)
		}
	}
	t.Logf("longest SendReceipt across the failover: %v", pauseMax)
	c.waitSidecarMaster(c.brokers[1].listen) // the session really moved
	select {
	case <-cl.Done():
		t.Fatalf("client connection ended: %v", cl.Err())
	default:
	}
}
