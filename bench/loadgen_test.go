package bench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/internal/testutil"
)

// The load generator behind the proxy benchmarks (proxy_test.go): a Go
// sink and echo backend in the test process, and the proxies under test,
// each a separate process started from a generated config in a temp dir:
// the handover sidecar (built without -race unless the test binary has it)
// and, when Debian's haproxy is installed, HAProxy in mode tcp. Both
// proxies therefore compete for the same two cores with the same client and
// backend, which is what makes their figures comparable within one run.

// lgTarget is one way to reach the backend: directly, or through a proxy.
type lgTarget struct {
	name       string
	sink, echo string // addresses of the sink and echo services
	pid        int    // the proxy's process; 0 for direct
}

// lgTargets is what every proxy benchmark runs against: direct first (the
// baseline), then handover, then haproxy when it is installed.
type lgTargets struct {
	be      *lgBackend
	targets []lgTarget
}

// lgStartTargets starts the backend and the proxies in front of it; they
// stop when b's cleanups run.
func lgStartTargets(b *testing.B) *lgTargets { return lgStartTargetsTLS(b, nil) }

// lgStartTargetsTLS is lgStartTargets with, unless ca is nil, a backend
// that speaks TLS with a certificate ca signed, and proxies that originate
// TLS to it, verifying it against ca: clients stay plain. There is then no
// direct target (the clients speak no TLS).
func lgStartTargetsTLS(b *testing.B, ca *testutil.CA) *lgTargets {
	b.Helper()
	be := lgStartBackend(b)
	ts := &lgTargets{be: be, targets: []lgTarget{{name: "direct", sink: be.sinkAddr(), echo: be.echoAddr()}}}
	handoverCfg, haproxyCfg := lgBenchHandoverConfig, lgHAProxyConfig
	if ca != nil {
		certFile, keyFile, _ := ca.Issue(b, "127.0.0.1", time.Now().Add(-time.Hour), 24*time.Hour)
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			b.Fatal(err)
		}
		be.tls = &tls.Config{Certificates: []tls.Certificate{cert}}
		ts.targets = nil
		caFile := ca.File(b)
		// A check is then a TLS handshake, which on two saturated cores
		// can take longer than 100ms: both check every second instead
		// (each's default), so no backend is marked down under load.
		handoverCfg = strings.ReplaceAll(handoverCfg, "[service.check]", fmt.Sprintf("[service.tls]\nca = %q\n[service.check]", caFile))
		handoverCfg = strings.ReplaceAll(handoverCfg, `interval = "100ms"`, `interval = "1s"`)
		haproxyCfg = strings.ReplaceAll(haproxyCfg, "check inter 100ms", "check inter 1s ssl verify required ca-file "+caFile)
	}
	ho := lgStartHandover(b, handoverCfg, be)
	ts.targets = append(ts.targets, lgTarget{name: "handover", sink: ho.sink, echo: ho.echo, pid: ho.proc.Cmd.Process.Pid})
	if ca != nil {
		// The sidecar offers Go's default key exchange, the post-quantum
		// hybrid X25519MLKEM768, first; HAProxy (OpenSSL 3.0) offers
		// X25519. A second sidecar offering what HAProxy does shows the
		// difference that makes.
		cfg := strings.ReplaceAll(handoverCfg, "[service.tls]\n", "[service.tls]\ncurves = \"X25519\"\n")
		hx := lgStartHandover(b, cfg, be)
		ts.targets = append(ts.targets, lgTarget{name: "handover-x25519", sink: hx.sink, echo: hx.echo, pid: hx.proc.Cmd.Process.Pid})
	}
	if bin := lgHAProxyBinary(); bin != "" {
		hp := lgStartHAProxy(b, bin, haproxyCfg, be)
		ts.targets = append(ts.targets, lgTarget{name: "haproxy", sink: hp.sink, echo: hp.echo, pid: hp.proc.Cmd.Process.Pid})
	} else {
		b.Log("haproxy is not installed: no haproxy figures (apt-get install haproxy)")
	}
	return ts
}

// lgBackend is the in-process backend: a sink that reads and drops bytes
// (counting them, so a throughput run can wait for its last byte) and an
// echo server. Health checks connect to both and close at once; each just
// sees an EOF.
type lgBackend struct {
	sink, echo *net.TCPListener
	// tls, when set before the first connection, makes both services
	// speak TLS (lgStartTargetsTLS).
	tls *tls.Config

	mu      sync.Mutex
	total   int64         // bytes the sink has received
	want    int64         // total to reach before closing reached
	reached chan struct{} // nil when nobody waits
	wg      sync.WaitGroup
}

func lgStartBackend(b *testing.B) *lgBackend {
	b.Helper()
	be := &lgBackend{sink: lgListen(b), echo: lgListen(b)}
	be.wg.Add(2)
	go be.serve(be.sink, be.drain)
	go be.serve(be.echo, lgEcho)
	b.Cleanup(func() {
		be.sink.Close()
		be.echo.Close()
		be.wg.Wait()
	})
	return be
}

func lgListen(b *testing.B) *net.TCPListener {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	return ln.(*net.TCPListener)
}

func (be *lgBackend) sinkAddr() string { return be.sink.Addr().String() }
func (be *lgBackend) echoAddr() string { return be.echo.Addr().String() }

// serve accepts until ln is closed, handling each connection in its own
// goroutine; it returns once they have all ended.
func (be *lgBackend) serve(ln *net.TCPListener, handle func(net.Conn)) {
	defer be.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			if be.tls != nil {
				handle(tls.Server(c, be.tls))
				return
			}
			handle(c)
		}()
	}
}

// drain reads c until EOF, counting the bytes.
func (be *lgBackend) drain(c net.Conn) {
	buf := make([]byte, 256<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			be.mu.Lock()
			be.total += int64(n)
			if be.reached != nil && be.total >= be.want {
				close(be.reached)
				be.reached = nil
			}
			be.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// expect returns a channel closed once the sink has received n more bytes.
// Call it before sending them.
func (be *lgBackend) expect(n int64) <-chan struct{} {
	be.mu.Lock()
	defer be.mu.Unlock()
	ch := make(chan struct{})
	be.want, be.reached = be.total+n, ch
	if n <= 0 {
		close(ch)
		be.reached = nil
	}
	return ch
}

// lgEcho writes back whatever it reads, through a plain user-space buffer
// (io.Copy would splice, which suits bulk data, not small round trips).
func lgEcho(c net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// lgProxy is a running proxy process: its addresses for the sink and echo
// services, and the process.
type lgProxy struct {
	sink, echo string
	proc       *testutil.Process
}

// lgBenchHandoverConfig is the sidecar's config for the throughput and
// latency runs: the two backend services, tcp checks every 100ms as
// HAProxy's `check inter 100ms`, everything else the defaults.
const lgBenchHandoverConfig = `
[log]
level = "warn"
[admin]
listen = "{{admin}}"

[[service]]
name = "sink"
listen = "{{sink}}"
backends = ["{{sink_backend}}"]
[service.check]
kind = "tcp"
interval = "100ms"

[[service]]
name = "echo"
listen = "{{echo}}"
backends = ["{{echo_backend}}"]
[service.check]
kind = "tcp"
interval = "100ms"
`

// lgStartHandover starts the sidecar with config, whose {{…}} placeholders
// are filled with free ports and be's addresses, and waits until both
// services route to their backend.
func lgStartHandover(b *testing.B, config string, be *lgBackend) *lgProxy {
	b.Helper()
	p := &lgProxy{sink: testutil.FreePort(b), echo: testutil.FreePort(b)}
	admin := testutil.FreePort(b)
	cfg := strings.NewReplacer(
		"{{admin}}", admin,
		"{{sink}}", p.sink,
		"{{echo}}", p.echo,
		"{{sink_backend}}", be.sinkAddr(),
		"{{echo_backend}}", be.echoAddr(),
	).Replace(config)
	path := filepath.Join(b.TempDir(), "proxy.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	p.proc = testutil.Start(b, "handover", testutil.Binary(b, "handover/cmd/handover"), "-config", path)
	testutil.Eventually(b, 10*time.Second, func() error {
		if p.proc.ExitCode() >= 0 {
			return fmt.Errorf("handover exited: %s", p.proc.Out.String())
		}
		masters, err := lgSidecarMasters(admin)
		if err != nil {
			return err
		}
		if len(masters) != 2 || slices.Contains(masters, "") {
			return fmt.Errorf("services' masters: %q", masters)
		}
		return nil
	})
	return p
}

// lgSidecarMasters reads the current master of each service from the
// sidecar's /status.
func lgSidecarMasters(admin string) ([]string, error) {
	resp, err := http.Get("http://" + admin + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st struct {
		Services []struct {
			Master string `json:"master"`
		} `json:"services"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, err
	}
	var masters []string
	for _, s := range st.Services {
		masters = append(masters, s.Master)
	}
	return masters, nil
}

// lgHAProxyBinary is the path of haproxy, or "" when it is not installed.
// Debian puts it in /usr/sbin, which a user's PATH may lack.
func lgHAProxyBinary() string {
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	return ""
}

// lgHAProxyConfig is HAProxy in front of the same two services: mode tcp,
// checks every 100ms, loopback only, everything else HAProxy's defaults
// (one thread per CPU, no splicing options), as Debian's package runs it.
const lgHAProxyConfig = `
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 1m
    timeout server 1m

frontend sink
    bind {{sink}}
    default_backend sink
backend sink
    server sink {{sink_backend}} check inter 100ms

frontend echo
    bind {{echo}}
    default_backend echo
backend echo
    server echo {{echo_backend}} check inter 100ms
`

// lgStartHAProxy starts haproxy in the foreground with a generated config
// and waits until it carries an echo round trip.
func lgStartHAProxy(b *testing.B, bin, config string, be *lgBackend) *lgProxy {
	b.Helper()
	p := &lgProxy{sink: testutil.FreePort(b), echo: testutil.FreePort(b)}
	cfg := strings.NewReplacer(
		"{{sink}}", p.sink,
		"{{echo}}", p.echo,
		"{{sink_backend}}", be.sinkAddr(),
		"{{echo_backend}}", be.echoAddr(),
	).Replace(config)
	path := filepath.Join(b.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	// -db: stay in the foreground, one process, so that the PID we hold is
	// the one doing the work (and the one whose RSS we read).
	p.proc = testutil.Start(b, "haproxy", bin, "-db", "-f", path)
	testutil.Eventually(b, 10*time.Second, func() error {
		if p.proc.ExitCode() >= 0 {
			return fmt.Errorf("haproxy exited: %s", p.proc.Out.String())
		}
		return lgEchoOnce(p.echo)
	})
	return p
}

// lgEchoOnce makes one connection to an echo service and one round trip.
func lgEchoOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, 4))
	return err
}

// lgRSS returns a process's resident set size in MB (VmRSS, in KiB, from
// /proc/PID/status).
func lgRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, errors.New("no VmRSS line")
}

// lgUsage is what a process has used so far, summed over its threads
// from /proc/PID/task/*/schedstat: time on a CPU, and the times a thread
// was put on one (each after a sleep or a preemption: a context switch).
type lgUsage struct {
	cpu      time.Duration
	switches int64
}

// lgCPU returns the usage of process pid so far, or the zero usage for
// pid 0.
func lgCPU(b *testing.B, pid int) lgUsage {
	var u lgUsage
	if pid == 0 {
		return u
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		b.Fatalf("no schedstat for pid %d: %v", pid, err)
	}
	for _, t := range tasks {
		raw, err := os.ReadFile(t)
		if err != nil {
			continue // the thread just exited
		}
		f := strings.Fields(string(raw))
		if len(f) < 3 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			b.Fatalf("%s: %q: %v", t, raw, err)
		}
		n, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			b.Fatalf("%s: %q: %v", t, raw, err)
		}
		u.cpu += time.Duration(ns)
		u.switches += n
	}
	return u
}

// lgReportCPU reports, for a proxied target, the proxy's CPU time and
// context switches per operation since start (from lgCPU): how much of
// the two cores the proxy takes from the client and the backend for the
// same work, and how often it was woken for it.
func lgReportCPU(b *testing.B, t lgTarget, start lgUsage) {
	if t.pid == 0 {
		return
	}
	u := lgCPU(b, t.pid)
	b.ReportMetric(float64(u.cpu-start.cpu)/1e3/float64(b.N), "proxy-cpu-us/op")
	b.ReportMetric(float64(u.switches-start.switches)/float64(b.N), "proxy-switches/op")
}

// lgPercentile returns the p-th percentile (0 < p <= 100) of sorted, by the
// nearest-rank method.
func lgPercentile[T any](sorted []T, p float64) T {
	i := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// lgSplit divides n operations among workers as evenly as possible.
func lgSplit(n, workers, i int) int {
	per := n / workers
	if i < n%workers {
		per++
	}
	return per
}

// lgRun runs work on workers goroutines, worker i doing lgSplit(b.N) of
// the operations, and fails b with the first error.
func lgRun(b *testing.B, workers int, work func(i, ops int) error) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for i := range workers {
		ops := lgSplit(b.N, workers, i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = work(i, ops)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
}

// lgDial dials addr, bounded by ctx.
func lgDial(ctx context.Context, addr string) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}
