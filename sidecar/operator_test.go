package sidecar

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"handover/internal/testutil"
)

// What an operator on call sees of the sidecar: /readyz, the log lines of
// an outage and a failover, the metrics' names, and refusals to share a
// port. Every listener here is on 127.0.0.1:0 unless its port must be
// known before it is bound (a backend that comes back).

// echoBackend is an echo server that can stop listening while the
// connections it has stay open (a broker that lost its lock but whose
// sockets are not closed yet: only the sidecar's sweep ends them), and
// listen again on the same address.
type echoBackend struct {
	t    *testing.T
	addr string
	mu   sync.Mutex
	ln   net.Listener
}

func newEchoBackend(t *testing.T, addr string) *echoBackend {
	b := &echoBackend{t: t, addr: addr}
	b.listen()
	t.Cleanup(b.stop)
	return b
}

func (b *echoBackend) listen() {
	b.t.Helper()
	ln, err := net.Listen("tcp", b.addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.mu.Lock()
	b.ln, b.addr = ln, ln.Addr().String()
	b.mu.Unlock()
	go echoAll(ln)
}

// stop closes the listener only.
func (b *echoBackend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
}

// adminURL is the in-process sidecar's admin address.
func (h *reloadHarness) adminURL() string { return "http://" + h.sc.adminLn.Addr().String() }

// listenOf is where service name listens now.
func (h *reloadHarness) listenOf(name string) string {
	h.sc.mu.Lock()
	defer h.sc.mu.Unlock()
	return h.sc.services[name].proxy.Addr().String()
}

// logLines parses the sidecar's JSON log lines.
func (h *reloadHarness) logLines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(h.logs.String()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func getReadyz(t *testing.T, url string) (int, readiness) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r readiness
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp.StatusCode, r
}

// TestReadyz: GET /readyz is 200 only while every service has a master,
// 503 naming those without one, and ?service=NAME asks about one.
func TestReadyz(t *testing.T) {
	up := newEchoBackend(t, "127.0.0.1:0")
	later := testutil.FreePort(t) // a broker that is not there yet
	h := startSidecar(t, "[admin]\nlisten = \"127.0.0.1:0\"\n"+
		serviceCfg("up", "127.0.0.1:0", []string{up.addr}, "")+
		serviceCfg("down", "127.0.0.1:0", []string{later}, ""))
	h.waitMaster("up", up.addr)

	testutil.Eventually(t, 5*time.Second, func() error {
		code, r := getReadyz(t, h.adminURL()+"/readyz")
		if code != 503 || r.Ready || !strings.Contains(r.Error, "no master for service down") || len(r.Services) != 2 {
			return fmt.Errorf("/readyz: %d %+v", code, r)
		}
		for _, s := range r.Services {
			if s.Name == "down" && (s.Ready || s.NoMasterSince == nil || s.Master != "") {
				return fmt.Errorf("service down: %+v", s)
			}
			if s.Name == "up" && (!s.Ready || s.Master != up.addr) {
				return fmt.Errorf("service up: %+v", s)
			}
		}
		return nil
	})
	if code, r := getReadyz(t, h.adminURL()+"/readyz?service=up"); code != 200 || !r.Ready || len(r.Services) != 1 {
		t.Errorf("/readyz?service=up: %d %+v", code, r)
	}
	if code, r := getReadyz(t, h.adminURL()+"/readyz?service=down"); code != 503 || r.Ready {
		t.Errorf("/readyz?service=down: %d %+v", code, r)
	}
	if code, r := getReadyz(t, h.adminURL()+"/readyz?service=nope"); code != 404 || !strings.Contains(r.Error, `no service "nope"`) {
		t.Errorf("/readyz?service=nope: %d %+v", code, r)
	}
	if st := h.sc.status(); st.Ready {
		t.Error("/status says ready without a master for down")
	}

	newEchoBackend(t, later)
	testutil.Eventually(t, 5*time.Second, func() error {
		if code, r := getReadyz(t, h.adminURL()+"/readyz"); code != 200 || !r.Ready || r.Error != "" {
			return fmt.Errorf("/readyz: %d %+v", code, r)
		}
		return nil
	})
}

// TestFailoverLogsTCP: in TCP mode, losing the master is an error line
// naming it; the sweep that follows is one line saying how many clients
// were disconnected and from which backend; the new master is one info
// line, "master changed", with old and new, how long the service was
// without a master and how many connections were closed or held. No line
// has an empty old or new, and durations are Go duration strings in JSON.
func TestFailoverLogsTCP(t *testing.T) {
	a := newEchoBackend(t, "127.0.0.1:0")
	bAddr := testutil.FreePort(t)
	h := startSidecar(t, "[log]\nformat = \"json\"\nlevel = \"debug\"\n[admin]\nlisten = \"\"\n"+
		serviceCfg("svc", "127.0.0.1:0", []string{a.addr, bAddr}, ""))
	h.waitMaster("svc", a.addr)
	listen := h.listenOf("svc")
	var clients []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A round trip: the client is proxied, not still being dialed.
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}

	a.stop() // its port closes; its connections stay open
	for _, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a client of the lost master was not disconnected")
		}
	}
	// A new client while there is no master is held.
	held, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := h.sc.status().Services[0].Connections; !strings.Contains(fmt.Sprintf("%+v", n), "Held:1") {
			return fmt.Errorf("connections %+v, want one held", n)
		}
		return nil
	})
	newEchoBackend(t, bAddr)
	h.waitMaster("svc", bAddr)
	held.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(held, "y"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(held, make([]byte, 1)); err != nil {
		t.Fatalf("held client not served by the new master: %v", err)
	}

	var lost, disconnected, changed []map[string]any
	testutil.Eventually(t, 5*time.Second, func() error {
		lost, disconnected, changed = nil, nil, nil
		for _, l := range h.logLines() {
			for _, k := range []string{"old", "new"} {
				if v, ok := l[k]; ok && v == "" {
					t.Fatalf("a line with an empty %s: %v", k, l)
				}
			}
			switch l["msg"] {
			case "service has no master: no client can be served until one is elected":
				lost = append(lost, l)
			case "disconnected clients: their backend is no longer a target, so they reconnect to the new one":
				disconnected = append(disconnected, l)
			case "master changed":
				changed = append(changed, l)
			}
		}
		if len(changed) == 0 {
			return fmt.Errorf("no master changed line yet")
		}
		return nil
	})
	if len(lost) != 1 || lost[0]["level"] != "error" || lost[0]["old"] != a.addr {
		t.Errorf("loss of the master logged as %v", lost)
	}
	if len(disconnected) != 1 || disconnected[0]["disconnected"] != 3.0 || disconnected[0]["from"] != a.addr {
		t.Errorf("disconnections logged as %v, want one line: 3 from %s", disconnected, a.addr)
	}
	if len(changed) != 1 {
		t.Fatalf("master changed logged %d times: %v", len(changed), changed)
	}
	c := changed[0]
	if c["level"] != "info" || c["old"] != a.addr || c["new"] != bAddr || c["closed"] != 3.0 || c["held"] != 1.0 {
		t.Errorf("failover logged as %v; want old %s, new %s, 3 closed, 1 held", c, a.addr, bAddr)
	}
	if d, ok := c["without_master"].(string); !ok {
		t.Errorf("without_master is %T %v in JSON, want a duration string", c["without_master"], c["without_master"])
	} else if _, err := time.ParseDuration(d); err != nil {
		t.Errorf("without_master %q: %v", d, err)
	}
	for _, l := range h.logLines() {
		for _, k := range []string{"interval", "timeout", "waited", "grace", "without_master", "retry_in"} {
			if v, ok := l[k]; ok {
				if _, isString := v.(string); !isString {
					t.Errorf("%s is %T in %v, want a duration string", k, v, l)
				}
			}
		}
	}
}

// TestStartLogsVersionAndConfig: the first lines say which build runs and
// with what: the version, the config file, each service's listen address,
// mode and backends.
func TestStartLogsVersionAndConfig(t *testing.T) {
	a := newEchoBackend(t, "127.0.0.1:0")
	h := startSidecar(t, "[log]\nformat = \"json\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"+
		serviceCfg("svc", "127.0.0.1:0", []string{a.addr, "127.0.0.1:1"}, ""))
	h.waitMaster("svc", a.addr)
	var start, listening map[string]any
	for _, l := range h.logLines() {
		switch l["msg"] {
		case "handover starting":
			start = l
		case "listening":
			if l["component"] == "handover" {
				listening = l
			}
		}
	}
	if start == nil || start["version"] != Version || !strings.Contains(start["build"].(string), "go1") || start["config"] != h.path {
		t.Errorf("start-up line %v", start)
	}
	if listening == nil || listening["service"] != "svc" || listening["listen"] != h.listenOf("svc") ||
		listening["backends"] != a.addr+" 127.0.0.1:1" || listening["mode"] != "master" || listening["protocol"] != "tcp" {
		t.Errorf("service line %v", listening)
	}
}

// TestReloadLogs: a reload applies [log] format, not only the level, and
// the old listener of a service that moved logs that it drains for the
// reload, not that the sidecar shuts down.
func TestReloadLogs(t *testing.T) {
	a := newEchoBackend(t, "127.0.0.1:0")
	h := startSidecar(t, "[admin]\nlisten = \"\"\n"+serviceCfg("svc", "127.0.0.1:0", []string{a.addr}, ""))
	h.waitMaster("svc", a.addr)
	before := len(h.logs.String())
	h.write("[log]\nformat = \"json\"\n[admin]\nlisten = \"\"\n" + serviceCfg("svc", "127.0.0.2:0", []string{a.addr}, ""))
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	var after []string
	testutil.Eventually(t, 5*time.Second, func() error {
		after = strings.Split(strings.TrimSpace(h.logs.String()[before:]), "\n")
		if !strings.Contains(h.logs.String()[before:], "draining live connections") {
			return fmt.Errorf("no drain line yet")
		}
		return nil
	})
	for _, l := range after {
		if !json.Valid([]byte(l)) {
			t.Errorf("after a reload to format json, a line that is not JSON: %s", l)
		}
		if strings.Contains(l, "shutting down") {
			t.Errorf("a reload's drain logged as a shutdown: %s", l)
		}
	}
	if !strings.Contains(h.logs.String()[before:], `"msg":"listener replaced by a reload (new address 127.0.0.2:`) {
		t.Errorf("no line says the old listener drains for the reload:\n%s", strings.Join(after, "\n"))
	}
}

// TestPortTakenByAnotherProcess: SO_REUSEPORT lets sockets of one user
// share a port, but the sidecar never joins a port another socket has: at
// start (a service, the admin server) and at reload it fails, and says why.
func TestPortTakenByAnotherProcess(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0") // no SO_REUSEPORT, as most servers
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	a := newEchoBackend(t, "127.0.0.1:0")
	write := func(cfg string) string {
		path := filepath.Join(t.TempDir(), "proxy.toml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for name, cfg := range map[string]string{
		"service": "[admin]\nlisten = \"\"\n" + serviceCfg("svc", taken.Addr().String(), []string{a.addr}, ""),
		"admin":   fmt.Sprintf("[admin]\nlisten = %q\n", taken.Addr().String()) + serviceCfg("svc", "127.0.0.1:0", []string{a.addr}, ""),
	} {
		c, err := LoadConfig(write(cfg))
		if err != nil {
			t.Fatal(err)
		}
		sc, err := New(c, "", tWriter{t})
		if err == nil {
			sc.closeListeners()
			t.Errorf("%s: the sidecar bound %s beside another listener", name, taken.Addr())
		} else if !strings.Contains(err.Error(), "address already in use: another process") {
			t.Errorf("%s: error %v does not say the port is taken", name, err)
		}
	}

	// A reload moving a service onto it is rejected; the service stays.
	h := startSidecar(t, "[admin]\nlisten = \"\"\n"+serviceCfg("svc", "127.0.0.1:0", []string{a.addr}, ""))
	h.waitMaster("svc", a.addr)
	listen := h.listenOf("svc")
	h.write("[admin]\nlisten = \"\"\n" + serviceCfg("svc", taken.Addr().String(), []string{a.addr}, ""))
	if err := h.reload(); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("reload onto a taken port: %v", err)
	}
	if got := h.listenOf("svc"); got != listen {
		t.Fatalf("after the rejected reload the service listens on %s, want %s", got, listen)
	}
	if s := stream(t, listen); s() != nil {
		t.Fatal("the service stopped serving after a rejected reload")
	}
}

// TestTwoSidecarsOnOnePort: a second handover process given the port of a
// running one exits at once and says why, instead of sharing the port
// (SO_REUSEPORT) and taking half its clients.
func TestTwoSidecarsOnOnePort(t *testing.T) {
	a := newEchoBackend(t, "127.0.0.1:0")
	listen := testutil.FreePort(t) // both processes must be told it
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first.toml"), filepath.Join(dir, "second.toml")
	os.WriteFile(first, []byte("[admin]\nlisten = \"\"\n"+serviceCfg("svc", listen, []string{a.addr}, "")), 0o644)
	os.WriteFile(second, []byte("[admin]\nlisten = \"\"\n"+serviceCfg("svc", listen, []string{a.addr}, "")), 0o644)
	bin := testutil.Binary(t, "handover/cmd/handover")
	p1 := testutil.Start(t, "handover-1", bin, "-config", first)
	testutil.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(p1.Out.String(), `msg=listening`) {
			return fmt.Errorf("first sidecar not listening yet")
		}
		return nil
	})
	p2 := testutil.Start(t, "handover-2", bin, "-config", second)
	if err := p2.Wait(10 * time.Second); err == nil || p2.ExitCode() != 1 {
		t.Fatalf("second sidecar on the same port: %v (exit %d)\n%s", err, p2.ExitCode(), p2.Out.String())
	}
	if out := p2.Out.String(); !strings.Contains(out, "address already in use: another process") {
		t.Errorf("second sidecar's error does not say the port is taken:\n%s", out)
	}
	select {
	case <-p1.Done():
		t.Fatalf("first sidecar exited:\n%s", p1.Out.String())
	default:
	}
	p1.Signal(syscall.SIGTERM)
	if err := p1.Wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestMetricNames: the sidecar's series follow Prometheus' naming (the
// unit before _total), label values have no spaces, label names are few
// and the same across subsystems, and handover_build_info says which
// build runs.
func TestMetricNames(t *testing.T) {
	a := newEchoBackend(t, "127.0.0.1:0")
	h := startSidecar(t, "[admin]\nlisten = \"\"\n"+serviceCfg("svc", "127.0.0.1:0", []string{a.addr, "127.0.0.1:1"}, ""))
	h.waitMaster("svc", a.addr)
	if s := stream(t, h.listenOf("svc")); s() != nil {
		t.Fatal("no traffic through the sidecar")
	}
	mfs, err := h.sc.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]*dto.MetricFamily{}
	allowed := map[string]bool{"service": true, "backend": true, "reason": true, "result": true, "state": true,
		"direction": true, "name": true, "version": true, "commit": true, "go_version": true}
	for _, mf := range mfs {
		names[mf.GetName()] = mf
		if !strings.HasPrefix(mf.GetName(), "handover_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !allowed[l.GetName()] {
					t.Errorf("%s has label %q: not one of the sidecar's label names", mf.GetName(), l.GetName())
				}
				if strings.ContainsAny(l.GetValue(), " \t") {
					t.Errorf("%s{%s=%q}: a label value with a space", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
	for _, want := range []string{"handover_health_without_master_seconds_total", "handover_health_backend_state", "handover_health_backend_up", "handover_build_info"} {
		if names[want] == nil {
			t.Errorf("no %s", want)
		}
	}
	if names["handover_health_seconds_without_master_total"] != nil {
		t.Error("the old name handover_health_seconds_without_master_total is exported")
	}
	if bi := names["handover_build_info"]; bi != nil {
		m := bi.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if m.GetGauge().GetValue() != 1 || labels["version"] != Version || !strings.HasPrefix(labels["go_version"], "go") {
			t.Errorf("handover_build_info %v = %v", labels, m.GetGauge().GetValue())
		}
	}
}
