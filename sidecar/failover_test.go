package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

// TestStandbyIsStandby: with two real brokers, the slave is "standby" in
// /status and in the metrics (backend_state, backend_up 1), with no failures
// however many checks it answers; killed, the master is "down" and the slave
// "master".
func TestStandbyIsStandby(t *testing.T) {
	c := startCluster(t, 2)
	master, slave := c.brokers[0], c.brokers[1]
	c.waitSidecarMaster(master.listen)
	testutil.Eventually(t, 15*time.Second, func() error {
		st, err := c.status()
		if err != nil {
			return err
		}
		h := st.Services[0].Health
		if b := h.Backends[1]; b.State != "standby" || b.Failures != 0 || b.LastError != "" || b.Checks < 3 {
			return fmt.Errorf("slave after %d checks: %+v", b.Checks, b)
		}
		if b := h.Backends[0]; b.State != "master" {
			return fmt.Errorf("master: %+v", b)
		}
		return nil
	})
	metrics := func() string {
		resp, err := http.Get("http://" + c.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	m := metrics()
	for _, want := range []string{
		fmt.Sprintf(`handover_health_backend_state{backend=%q,service="stomp",state="standby"} 1`, slave.listen),
		fmt.Sprintf(`handover_health_backend_state{backend=%q,service="stomp",state="down"} 0`, slave.listen),
		fmt.Sprintf(`handover_health_backend_up{backend=%q,service="stomp"} 1`, slave.listen),
		fmt.Sprintf(`handover_health_backend_state{backend=%q,service="stomp",state="master"} 1`, master.listen),
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	master.p.Cmd.Process.Signal(syscall.SIGKILL)
	c.waitSidecarMaster(slave.listen)
	testutil.Eventually(t, 10*time.Second, func() error {
		st, err := c.status()
		if err != nil {
			return err
		}
		if b := st.Services[0].Health.Backends[0]; b.State != "down" {
			return fmt.Errorf("killed master: %+v", b)
		}
		return nil
	})
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
	// What -check let through before: a port out of range, an address
	// that is no address, two services and the admin server on one port,
	// and a type error hiding the unknown keys after it.
	worse := filepath.Join(t.TempDir(), "worse.toml")
	os.WriteFile(worse, []byte(`[admin]
listen = "127.0.0.1:61600"
[[service]]
name = "a"
listen = "127.0.0.1:99999"
backends = ["127.0.0.1:61613"]
[[service]]
name = "b"
listen = "256.1.1.1:61601"
backends = ["127.0.0.1:61613"]
[[service]]
name = "c"
listen = ":61600"
backends = ["127.0.0.1:61613"]
max_connections = "many"
colour = "red"
`), 0o644)
	tests := []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"-check", "-config", "../proxy.toml"}, 0, []string{"ok (1 services)"}},
		{[]string{"-check", "-config", bad}, 1, []string{"bad.toml:4: service[0].backends", "bad.toml:5: service[0].mode"}},
		{[]string{"-check", "-config", worse}, 1, []string{
			`worse.toml:5: service[0].listen: "127.0.0.1:99999": port 99999 is out of range`,
			`worse.toml:9: service[1].listen: "256.1.1.1:61601": 256.1.1.1 is not an IP address`,
			`worse.toml:13: service[2].listen: port 61600 is also where the admin server listens (admin.listen)`,
			`worse.toml:15: service[2].max_connections: incompatible types`,
			`worse.toml:16: unknown key "service.colour"`,
		}},
		{[]string{"-check", "-config", "/nonexistent.toml"}, 1, []string{"no such file"}},
		// -version says which build: the version, and the commit and
		// its date when built from a git checkout, and the Go version.
		{[]string{"-version"}, 0, []string{"handover " + Version, runtime.Version() + ")"}},
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
	// The failover is one info line, which counts the session as held
	// (not closed): it paused when its broker died and resumed.
	var changed []string
	for _, l := range strings.Split(c.sidecar.Out.String(), "\n") {
		if strings.Contains(l, `msg="master changed"`) {
			changed = append(changed, l)
		}
	}
	if len(changed) != 1 || !strings.Contains(changed[0], "held=1 ") || !strings.Contains(changed[0], "closed=0 ") ||
		!strings.Contains(changed[0], fmt.Sprintf("old=%q", c.brokers[0].listen)) || !strings.Contains(changed[0], fmt.Sprintf("new=%q", c.brokers[1].listen)) {
		t.Errorf("master changed lines: %q; want one, with the session held", changed)
	}
	if n := strings.Count(c.sidecar.Out.String(), "level=info msg=\"session resumed"); n != 0 {
		t.Errorf("%d info lines per session for one failover", n)
	}
	select {
	case <-cl.Done():
		t.Fatalf("client connection ended: %v", cl.Err())
	default:
	}
}

// TestStatusPageInBrowser: a person watching the sidecar's page in a
// browser during a failover sees the master named and the slave standby,
// then, once the master is killed, the slave named master and the killed
// broker marked down.
func TestStatusPageInBrowser(t *testing.T) {
	c := startCluster(t, 2)
	master, slave := c.brokers[0], c.brokers[1]
	c.waitSidecarMaster(master.listen)
	state := func(b *brokerProc, st string) string {
		return fmt.Sprintf(`<td>%s</td><td><span class="state %s">%s</span></td>`, b.listen, st, st)
	}
	testutil.Eventually(t, 15*time.Second, func() error {
		page := testutil.BrowserDOM(t, "http://"+c.admin+"/")
		for _, want := range []string{`id="master-stomp">` + master.listen + `</b>`, state(master, "master"), state(slave, "standby")} {
			if !strings.Contains(page, want) {
				return fmt.Errorf("the page before the failover lacks %s:\n%s", want, page)
			}
		}
		return nil
	})
	master.p.Cmd.Process.Signal(syscall.SIGKILL)
	c.waitSidecarMaster(slave.listen)
	testutil.Eventually(t, 15*time.Second, func() error {
		page := testutil.BrowserDOM(t, "http://"+c.admin+"/")
		for _, want := range []string{`id="master-stomp">` + slave.listen + `</b>`, state(slave, "master"), state(master, "down"),
			`id="ready-stomp">ready</span>`} {
			if !strings.Contains(page, want) {
				return fmt.Errorf("the page after the failover lacks %s:\n%s", want, page)
			}
		}
		return nil
	})
}
