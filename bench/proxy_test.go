package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/internal/testutil"
)

// The sidecar's data path against a direct connection and against HAProxy,
// in one run (issue 3, "Benchmark"). Every benchmark starts its own backend
// and proxies (loadgen_test.go); sub-benchmarks are named
// …/conns=N/{direct,handover,haproxy} so the three figures of a row sit on
// adjacent lines. Read the ratios, not the absolute numbers: the client,
// the backend and the proxy share two cores.

// lgConnCounts are the concurrency levels every figure is measured at.
var lgConnCounts = []int{1, 100}

// lgDialN opens n connections to addr, closed when the returned func is
// called.
func lgDialN(b *testing.B, addr string, n int) ([]*net.TCPConn, func()) {
	b.Helper()
	cs := make([]*net.TCPConn, 0, n)
	closeAll := func() {
		for _, c := range cs {
			c.Close()
		}
	}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := lgDial(ctx, addr)
		cancel()
		if err != nil {
			closeAll()
			b.Fatal(err)
		}
		cs = append(cs, c)
	}
	return cs, closeAll
}

// BenchmarkProxyThroughput sends bulk data one way, to the sink, over 1 and
// 100 connections at once, and reports the total in MB/s. The clock runs
// until the sink has every byte.
func BenchmarkProxyThroughput(b *testing.B) { lgThroughput(b, lgStartTargets(b)) }

// BenchmarkProxyTLSThroughput is BenchmarkProxyThroughput with the proxies
// originating TLS to the backend (issue 17: the sidecar's [service.tls]
// beside HAProxy's `ssl verify required`); clients stay plain.
func BenchmarkProxyTLSThroughput(b *testing.B) {
	lgThroughput(b, lgStartTargetsTLS(b, testutil.NewCA(b, "bench CA")))
}

// lgThroughput is BenchmarkProxyThroughput against ts.
func lgThroughput(b *testing.B, ts *lgTargets) {
	const chunk = 256 << 10
	buf := make([]byte, chunk)
	for _, conns := range lgConnCounts {
		for _, t := range ts.targets {
			b.Run(fmt.Sprintf("conns=%d/%s", conns, t.name), func(b *testing.B) {
				cs, closeAll := lgDialN(b, t.sink, conns)
				defer closeAll()
				reached := ts.be.expect(int64(b.N) * chunk)
				b.SetBytes(chunk)
				cpu := lgCPU(b, t.pid)
				b.ResetTimer()
				lgRun(b, conns, func(i, ops int) error {
					for range ops {
						if _, err := cs[i].Write(buf); err != nil {
							return err
						}
					}
					return nil
				})
				select {
				case <-reached:
				case <-time.After(time.Minute):
					b.Fatal("the sink did not get every byte within a minute")
				}
				b.StopTimer()
				lgReportCPU(b, t, cpu)
			})
		}
	}
}

// BenchmarkProxyRoundTrip measures echo round trips of 64 bytes and 1 KiB,
// one at a time on each of 1 and 100 connections, and reports their p50 and
// p99 in microseconds (ns/op is the inverse of the total round-trip rate).
func BenchmarkProxyRoundTrip(b *testing.B) { lgRoundTrip(b, lgStartTargets(b)) }

// BenchmarkProxyTLSRoundTrip is BenchmarkProxyRoundTrip with the proxies
// originating TLS to the backend, as BenchmarkProxyTLSThroughput.
func BenchmarkProxyTLSRoundTrip(b *testing.B) {
	lgRoundTrip(b, lgStartTargetsTLS(b, testutil.NewCA(b, "bench CA")))
}

// lgRoundTrip is BenchmarkProxyRoundTrip against ts.
func lgRoundTrip(b *testing.B, ts *lgTargets) {
	for _, size := range []int{64, 1024} {
		for _, conns := range lgConnCounts {
			for _, t := range ts.targets {
				b.Run(fmt.Sprintf("size=%d/conns=%d/%s", size, conns, t.name), func(b *testing.B) {
					cs, closeAll := lgDialN(b, t.echo, conns)
					defer closeAll()
					lat := make([][]time.Duration, conns)
					cpu := lgCPU(b, t.pid)
					b.ResetTimer()
					lgRun(b, conns, func(i, ops int) error {
						msg, reply := make([]byte, size), make([]byte, size)
						l := make([]time.Duration, 0, ops)
						for range ops {
							start := time.Now()
							if _, err := cs[i].Write(msg); err != nil {
								return err
							}
							if _, err := io.ReadFull(cs[i], reply); err != nil {
								return err
							}
							l = append(l, time.Since(start))
						}
						lat[i] = l
						return nil
					})
					b.StopTimer()
					lgReportCPU(b, t, cpu)
					all := slices.Concat(lat...)
					slices.Sort(all)
					b.ReportMetric(float64(lgPercentile(all, 50))/1e3, "p50-us")
					b.ReportMetric(float64(lgPercentile(all, 99))/1e3, "p99-us")
				})
			}
		}
	}
}

// lgSlice is how many round trips BenchmarkProxyRoundTripInterleaved
// makes through one target before it moves to the next.
const lgSlice = 400

// BenchmarkProxyRoundTripInterleaved measures what BenchmarkProxyRoundTrip
// does, but takes turns: lgSlice round trips (spread over the connections)
// direct, then through handover, then through HAProxy, and again, until
// each has made b.N. This machine's noise comes in bursts of tens of
// milliseconds to seconds, long enough to land on one target's whole run
// and move its p99 by 3x; taking turns spreads it over all of them, so
// their p99s can be compared. It reports each target's p50 and p99
// (NAME-p50-us, NAME-p99-us) and handover's p99 over HAProxy's
// (p99-ratio, when HAProxy is installed).
func BenchmarkProxyRoundTripInterleaved(b *testing.B) {
	ts := lgStartTargets(b)
	for _, size := range []int{64, 1024} {
		for _, conns := range lgConnCounts {
			b.Run(fmt.Sprintf("size=%d/conns=%d", size, conns), func(b *testing.B) {
				conn := make([][]*net.TCPConn, len(ts.targets))
				for i, t := range ts.targets {
					cs, closeAll := lgDialN(b, t.echo, conns)
					defer closeAll()
					conn[i] = cs
				}
				lat := make([][]time.Duration, len(ts.targets))
				per := max(1, lgSlice/conns) // round trips per connection per turn
				b.ResetTimer()
				for done := 0; done < b.N; done += per * conns {
					for i := range ts.targets {
						lat[i] = append(lat[i], lgRoundTrips(b, conn[i], size, per)...)
					}
				}
				b.StopTimer()
				p99 := map[string]float64{}
				for i, t := range ts.targets {
					slices.Sort(lat[i])
					b.ReportMetric(float64(lgPercentile(lat[i], 50))/1e3, t.name+"-p50-us")
					p99[t.name] = float64(lgPercentile(lat[i], 99)) / 1e3
					b.ReportMetric(p99[t.name], t.name+"-p99-us")
				}
				if hp, ok := p99["haproxy"]; ok {
					b.ReportMetric(p99["handover"]/hp, "p99-ratio")
				}
			})
		}
	}
}

// BenchmarkProxyConnectInterleaved measures what BenchmarkProxyConnect
// does, taking turns as BenchmarkProxyRoundTripInterleaved does: lgSlice
// new connections (each with one 64-byte round trip) direct, then through
// handover, then through HAProxy, and again, until each has made b.N. It
// reports each target's rate over the time spent on it (NAME-conns/s) and
// handover's rate over HAProxy's (rate-ratio).
func BenchmarkProxyConnectInterleaved(b *testing.B) { lgConnectInterleaved(b, lgStartTargets(b)) }

// BenchmarkProxyTLSConnectInterleaved is BenchmarkProxyConnectInterleaved
// with the proxies originating TLS (issue 17's "new TLS connections/s"
// beside HAProxy): each new client connection is a TLS handshake with the
// backend, resumed from the proxy's session cache (both proxies keep one).
func BenchmarkProxyTLSConnectInterleaved(b *testing.B) {
	lgConnectInterleaved(b, lgStartTargetsTLS(b, testutil.NewCA(b, "bench CA")))
}

// lgConnectInterleaved is BenchmarkProxyConnectInterleaved against ts.
func lgConnectInterleaved(b *testing.B, ts *lgTargets) {
	for _, conns := range lgConnCounts {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			spent := make([]time.Duration, len(ts.targets))
			made := make([]int, len(ts.targets))
			per := max(1, lgSlice/conns) // connections per client per turn
			b.ResetTimer()
			for done := 0; done < b.N; done += per * conns {
				for i, t := range ts.targets {
					start := time.Now()
					lgConnects(b, t.echo, conns, per)
					spent[i] += time.Since(start)
					made[i] += per * conns
				}
			}
			b.StopTimer()
			rate := map[string]float64{}
			for i, t := range ts.targets {
				rate[t.name] = float64(made[i]) / spent[i].Seconds()
				b.ReportMetric(rate[t.name], t.name+"-conns/s")
			}
			if hp, ok := rate["haproxy"]; ok {
				b.ReportMetric(rate["handover"]/hp, "rate-ratio")
				if hx, ok := rate["handover-x25519"]; ok {
					b.ReportMetric(hx/hp, "x25519-rate-ratio")
				}
			}
		})
	}
}

// lgConnects has each of clients clients make n connections to addr in
// turn, each with one 64-byte echo round trip and a close.
func lgConnects(b *testing.B, addr string, clients, n int) {
	var wg sync.WaitGroup
	errs := make([]error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, reply := make([]byte, 64), make([]byte, 64)
			for range n {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := lgDial(ctx, addr)
				cancel()
				if err == nil {
					if _, err = c.Write(msg); err == nil {
						_, err = io.ReadFull(c, reply)
					}
					c.Close()
				}
				if err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
}

// lgRoundTrips makes n echo round trips of size bytes on each of cs at
// once, one at a time per connection, and returns their latencies.
func lgRoundTrips(b *testing.B, cs []*net.TCPConn, size, n int) []time.Duration {
	lat := make([][]time.Duration, len(cs))
	var wg sync.WaitGroup
	errs := make([]error, len(cs))
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, reply := make([]byte, size), make([]byte, size)
			l := make([]time.Duration, 0, n)
			for range n {
				start := time.Now()
				if _, err := c.Write(msg); err != nil {
					errs[i] = err
					return
				}
				if _, err := io.ReadFull(c, reply); err != nil {
					errs[i] = err
					return
				}
				l = append(l, time.Since(start))
			}
			lat[i] = l
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	return slices.Concat(lat...)
}

// BenchmarkProxyConnect measures new connections per second from 1 and 100
// clients at once. Each operation is a new connection, one 64-byte round
// trip (through a proxy, the only proof that the backend was reached) and a
// close.
func BenchmarkProxyConnect(b *testing.B) { lgConnect(b, lgStartTargets(b)) }

// BenchmarkProxyTLSConnect is BenchmarkProxyConnect with the proxies
// originating TLS: each client connection costs the proxy a TLS handshake
// with the backend, resumed from its session cache.
func BenchmarkProxyTLSConnect(b *testing.B) {
	lgConnect(b, lgStartTargetsTLS(b, testutil.NewCA(b, "bench CA")))
}

// lgConnect is BenchmarkProxyConnect against ts.
func lgConnect(b *testing.B, ts *lgTargets) {
	for _, conns := range lgConnCounts {
		for _, t := range ts.targets {
			b.Run(fmt.Sprintf("conns=%d/%s", conns, t.name), func(b *testing.B) {
				cpu := lgCPU(b, t.pid)
				b.ResetTimer()
				lgRun(b, conns, func(i, ops int) error {
					msg, reply := make([]byte, 64), make([]byte, 64)
					for range ops {
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						c, err := lgDial(ctx, t.echo)
						cancel()
						if err != nil {
							return err
						}
						_, err = c.Write(msg)
						if err == nil {
							_, err = io.ReadFull(c, reply)
						}
						c.Close()
						if err != nil {
							return err
						}
					}
					return nil
				})
				b.StopTimer()
				lgReportCPU(b, t, cpu)
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
			})
		}
	}
}

// lgIdleFor is how long the idle proxies sit before their RSS is read:
// long enough for start-up garbage to be collected and a few rounds of
// health checks to run, short enough for `make bench`.
const lgIdleFor = 2 * time.Second

// BenchmarkProxyIdleRSS reports the resident memory (VmRSS) of a sidecar
// started with the sample proxy.toml (its addresses changed: a master that
// answers /readyz and a slave whose port is closed, as brokerd pairs do)
// and of HAProxy with the benchmark config, after lgIdleFor without
// clients. The measurement is made once, in the parent; the sub-benchmarks
// only report it (ns/op means nothing here).
func BenchmarkProxyIdleRSS(b *testing.B) {
	be := lgStartBackend(b)
	readyz := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/master/readyz" {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"ready":false,"role":"slave","epoch":0}`)
			return
		}
		fmt.Fprint(w, `{"ready":true,"role":"master","epoch":1}`)
	}))
	b.Cleanup(readyz.Close)
	admin := testutil.FreePort(b)
	cfg := lgSampleConfig(b, lgSampleAddrs{
		listen:   testutil.FreePort(b),
		admin:    admin,
		backends: [2]string{be.echoAddr(), testutil.FreePort(b)},
		checks:   [2]string{readyz.URL + "/master/readyz", readyz.URL + "/slave/readyz"},
	}, false)
	path := filepath.Join(b.TempDir(), "proxy.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	ho := testutil.Start(b, "handover", testutil.Binary(b, "handover/cmd/handover"), "-config", path)
	procs := []struct {
		name string
		proc *testutil.Process
	}{{"handover", ho}}
	testutil.Eventually(b, 10*time.Second, func() error {
		masters, err := lgSidecarMasters(admin)
		if err == nil && (len(masters) != 1 || masters[0] != be.echoAddr()) {
			err = fmt.Errorf("sidecar masters %q, want [%s]", masters, be.echoAddr())
		}
		return err
	})
	if bin := lgHAProxyBinary(); bin != "" {
		procs = append(procs, struct {
			name string
			proc *testutil.Process
		}{"haproxy", lgStartHAProxy(b, bin, lgHAProxyConfig, be).proc})
	}
	time.Sleep(lgIdleFor)
	rss := make([]float64, len(procs))
	for i, p := range procs {
		if p.proc.ExitCode() >= 0 {
			b.Fatalf("%s exited while idle:\n%s", p.name, p.proc.Out.String())
		}
		var err error
		if rss[i], err = lgRSS(p.proc.Cmd.Process.Pid); err != nil {
			b.Fatal(err)
		}
	}
	for i, p := range procs {
		b.Run(p.name, func(b *testing.B) {
			b.ReportMetric(rss[i], "RSS-MB")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// lgSampleAddrs are the addresses that replace the sample proxy.toml's.
type lgSampleAddrs struct {
	listen, admin string
	backends      [2]string // the brokers' STOMP addresses
	checks        [2]string // their check URLs
}

// lgSampleConfig returns the repository's proxy.toml with its addresses
// replaced, and with JSON logs when jsonLogs is set (the failover benchmark
// reads the events' timestamps). Every other setting is the sample's: that
// is the default configuration the figures are about.
func lgSampleConfig(b *testing.B, a lgSampleAddrs, jsonLogs bool) string {
	b.Helper()
	raw, err := os.ReadFile("../proxy.toml")
	if err != nil {
		b.Fatal(err)
	}
	cfg := string(raw)
	subst := [][2]string{
		{`listen = "127.0.0.1:9090"`, fmt.Sprintf("listen = %q", a.admin)},
		{`listen = "127.0.0.1:61600"`, fmt.Sprintf("listen = %q", a.listen)},
		{`"127.0.0.1:61613"`, fmt.Sprintf("%q", a.backends[0])},
		{`"127.0.0.1:61614"`, fmt.Sprintf("%q", a.backends[1])},
		{`"http://127.0.0.1:8161/readyz"`, fmt.Sprintf("%q", a.checks[0])},
		{`"http://127.0.0.1:8162/readyz"`, fmt.Sprintf("%q", a.checks[1])},
	}
	if jsonLogs {
		subst = append(subst, [2]string{`format = "text"`, `format = "json"`})
	}
	for _, s := range subst {
		// The sample changed shape: the figures would no longer be about
		// the default configuration, so say so rather than guess.
		if n := strings.Count(cfg, s[0]); n != 1 {
			b.Fatalf("../proxy.toml: want %s once, found it %d times", s[0], n)
		}
		cfg = strings.Replace(cfg, s[0], s[1], 1)
	}
	return cfg
}
