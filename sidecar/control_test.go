package sidecar

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"handover/health"
	"handover/internal/testutil"
	"handover/proxy"
)

// ctlRun runs `handover ctl -admin ADMIN args...` in-process.
func (h *reloadHarness) ctlRun(args ...string) (int, string) {
	var out bytes.Buffer
	code := Ctl(append([]string{"-admin", h.sc.adminLn.Addr().String()}, args...), &out, &out)
	return code, out.String()
}

// connsOn is service's client connections by backend.
func (h *reloadHarness) connsOn(service string) map[string]int {
	for _, s := range h.sc.status().Services {
		if s.Name == service {
			return s.Connections.(proxy.ServiceStatus).Backends
		}
	}
	h.t.Fatalf("no service %s", service)
	return nil
}

func (h *reloadHarness) backendStatus(service, addr string) health.BackendStatus {
	for _, s := range h.sc.status().Services {
		for _, b := range s.Health.Backends {
			if s.Name == service && b.Addr == addr {
				return b
			}
		}
	}
	h.t.Fatalf("no backend %s in service %s", addr, service)
	return health.BackendStatus{}
}

// echoConn dials addr and makes one round trip, so the connection is
// proxied, not still being dialled, when it returns.
func echoConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := roundTrip(c); err != nil {
		t.Fatalf("round trip through %s: %v", addr, err)
	}
	return c
}

func roundTrip(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 4))
	return err
}

// closedSoon reports whether the sidecar closes c within 5s.
func closedSoon(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestRuntimeControl: disable, drain and enable a backend through the admin
// API and handover ctl. Disabled, a master is replaced and its clients'
// connections close as on a failover; draining, a backend gets no new
// connections and keeps its live ones; both show in /status, on the page
// and in the metrics, and outlast a reload until enabled.
func TestRuntimeControl(t *testing.T) {
	a, b := newEchoBackend(t, "127.0.0.1:0"), newEchoBackend(t, "127.0.0.1:0")
	cfg := func(order []string, extra string) string {
		return "[admin]\nlisten = \"127.0.0.1:0\"\n" +
			serviceCfg("m", "127.0.0.1:0", order, "") + extra +
			serviceCfg("y", "127.0.0.1:0", []string{a.addr, b.addr}, `mode = "any"`)
	}
	h := startSidecar(t, cfg([]string{a.addr, b.addr}, ""))
	h.waitMaster("m", a.addr)
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := h.backendStatus("y", b.addr).State; st != health.StateUp {
			return fmt.Errorf("y: b is %s", st)
		}
		return nil
	})

	// Mode master: disabling the master is a failover to b.
	x := echoConn(t, h.listenOf("m"))
	code, out := h.ctlRun("disable", "m", a.addr)
	if code != 0 || !strings.Contains(out, "m "+a.addr+": disabled (checks: up)") || !strings.Contains(out, "m: clients go to "+b.addr) {
		t.Fatalf("ctl disable: exit %d\n%s", code, out)
	}
	if !closedSoon(x) {
		t.Fatal("a client of the disabled master was not disconnected")
	}
	echoConn(t, h.listenOf("m"))
	if got := h.connsOn("m"); got[b.addr] != 1 || got[a.addr] != 0 {
		t.Fatalf("m's connections %v, want one, on b", got)
	}
	metrics := getBody(t, h.adminURL()+"/metrics")
	if want := fmt.Sprintf(`handover_health_backend_state{backend=%q,service="m",state="disabled"} 1`, a.addr); !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %s", want)
	}
	if page, want := getPage(t, h.adminURL()+"/"), `<td>`+a.addr+`</td><td><span class="state warn">disabled</span> (checks: up)</td>`; !strings.Contains(page, want) {
		t.Errorf("the page lacks %s:\n%s", want, page)
	}

	// A reload (new check interval, the list in another order) keeps it.
	h.write(cfg([]string{b.addr, a.addr}, "rise = 3\n"))
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	if st := h.backendStatus("m", a.addr); st.State != health.StateDisabled || st.Health != health.StateUp {
		t.Fatalf("after a reload, m's a: %+v; want still disabled", st)
	}
	if code, out := h.ctlRun("status"); code != 0 || !strings.Contains(out, "disabled (checks: up)") || !strings.Contains(out, "MASTER") {
		t.Errorf("ctl status: exit %d\n%s", code, out)
	}

	// Mode any: drain the backend a client is on; a new client goes to
	// the other, the first stays.
	x1 := echoConn(t, h.listenOf("y"))
	var on, other string
	for addr, n := range h.connsOn("y") {
		if n == 1 {
			on = addr
		}
	}
	if other = a.addr; on == a.addr {
		other = b.addr
	}
	if code, out := h.ctlRun("drain", "y", on); code != 0 || !strings.Contains(out, "y "+on+": draining (checks: up)") || !strings.Contains(out, "y: clients go to "+other) {
		t.Fatalf("ctl drain: exit %d\n%s", code, out)
	}
	y1 := echoConn(t, h.listenOf("y"))
	if got := h.connsOn("y"); got[on] != 1 || got[other] != 1 {
		t.Fatalf("y's connections %v, want one each", got)
	}
	// Disabling the other leaves y nothing to send new clients to: its
	// client is disconnected, the drained backend's kept.
	if code, out := h.ctlRun("disable", "y", other); code != 0 || !strings.Contains(out, "y: no master now") {
		t.Fatalf("ctl disable: exit %d\n%s", code, out)
	}
	if !closedSoon(y1) {
		t.Fatal("a client of the disabled backend was not disconnected")
	}
	if err := roundTrip(x1); err != nil {
		t.Fatalf("the drained backend's client: %v", err)
	}
	if code, r := getReadyz(t, h.adminURL()+"/readyz?service=y"); code != 503 || r.Ready {
		t.Errorf("/readyz?service=y with every backend out: %d %+v", code, r)
	}
	if code, out := h.ctlRun("enable", "y", other); code != 0 || !strings.Contains(out, "y: clients go to "+other) {
		t.Fatalf("ctl enable: exit %d\n%s", code, out)
	}
	if code, _ := h.ctlRun("disable", "y", on); code != 0 || !closedSoon(x1) {
		t.Fatal("disabling a draining backend did not disconnect its client")
	}
	for _, args := range [][]string{{"enable", "y", on}, {"enable", "m", a.addr}} {
		if code, out := h.ctlRun(args...); code != 0 {
			t.Fatalf("ctl %v: exit %d\n%s", args, code, out)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := h.backendStatus("y", on).State; st != health.StateUp {
			return fmt.Errorf("y: enabled backend is %s", st)
		}
		if st := h.backendStatus("m", a.addr).State; st != health.StateStandby {
			return fmt.Errorf("m: enabled a is %s, want standby (b stays master)", st)
		}
		return nil
	})
}

// TestRuntimeControlRefusals: the admin API says what is wrong with a
// control request, refuses one a web page could have made, and ctl says
// so too.
func TestRuntimeControlRefusals(t *testing.T) {
	a := newEchoBackend(t, "127.0.0.1:0")
	h := startSidecar(t, "[admin]\nlisten = \"127.0.0.1:0\"\n"+serviceCfg("m", "127.0.0.1:0", []string{a.addr}, ""))
	h.waitMaster("m", a.addr)
	for _, tt := range []struct {
		method, path, origin string
		code                 int
		want                 string
	}{
		{"POST", "/backends/disable?service=nope&backend=" + a.addr, "", 404, "no service nope"},
		{"POST", "/backends/disable?service=m&backend=127.0.0.1:1", "", 404, "no such backend"},
		{"POST", "/backends/reboot?service=m&backend=" + a.addr, "", 404, "unknown action reboot"},
		{"POST", "/backends/drain?service=m", "", 400, "backend=ADDR"},
		{"GET", "/backends/disable?service=m&backend=" + a.addr, "", 405, ""},
		{"POST", "/backends/disable?service=m&backend=" + a.addr, "http://evil.example", 403, "cross-origin"},
	} {
		req, _ := http.NewRequest(tt.method, h.adminURL()+tt.path, nil)
		if tt.origin != "" {
			req.Header.Set("Origin", tt.origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code || !strings.Contains(string(body), tt.want) {
			t.Errorf("%s %s: %d %s; want %d with %q", tt.method, tt.path, resp.StatusCode, body, tt.code, tt.want)
		}
	}
	if st := h.backendStatus("m", a.addr).State; st != health.StateMaster {
		t.Errorf("after refused requests, a is %s", st)
	}
	if code, out := h.ctlRun("disable", "m", "127.0.0.1:1"); code != 1 || !strings.Contains(out, "no such backend") {
		t.Errorf("ctl disable of an unknown backend: exit %d\n%s", code, out)
	}
	if code, out := h.ctlRun("frobnicate"); code != 2 || !strings.Contains(out, "usage: handover ctl") {
		t.Errorf("ctl frobnicate: exit %d\n%s", code, out)
	}
	var out bytes.Buffer
	if code := Ctl([]string{"-admin", "127.0.0.1:1", "status"}, &out, &out); code != 1 || !strings.Contains(out.String(), "handover ctl:") {
		t.Errorf("ctl status against nothing: exit %d\n%s", code, &out)
	}
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
