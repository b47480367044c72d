package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/frame"
	"handover/internal/testutil"
	"handover/stompclient"
)

// Per-message overhead of STOMP mode (protocol = "stomp", the sidecar
// parses and tracks every frame) against TCP mode (bytes copied), in one
// run (issue 7, "Targets": at most 10 % fewer messages per second). One
// brokerd process, and two handover processes in front of it started from
// the sample proxy.toml, one with protocol = "tcp" and one with protocol =
// "stomp"; each workload alternates between them (see
// BenchmarkStompModeOverhead) and reports the stomp rate as a fraction of
// the tcp one.
// Client, sidecar and broker share the machine's cores: read the ratio.

type smTargets struct {
	broker   string // brokerd's STOMP address, for reference
	tcp, smp string // the two sidecars' client addresses
}

func smStart(b *testing.B) smTargets {
	b.Helper()
	bin := testutil.Binary(b, "handover/cmd/brokerd")
	listen, admin := testutil.FreePort(b), testutil.FreePort(b)
	data := b.TempDir()
	testutil.InitBroker(b, "-data", data)
	testutil.Start(b, "brokerd", bin, "-listen", listen, "-admin", admin, "-data", data)
	ts := smTargets{broker: listen}
	sidecar := testutil.Binary(b, "handover/cmd/handover")
	for _, mode := range []string{"tcp", "stomp"} {
		a := lgSampleAddrs{
			listen: testutil.FreePort(b),
			admin:  testutil.FreePort(b),
			// The sample names two brokers; the second is a closed port,
			// as a dead slave would be.
			backends: [2]string{listen, testutil.FreePort(b)},
			checks:   [2]string{"http://" + admin + "/readyz", "http://" + testutil.FreePort(b) + "/readyz"},
		}
		cfg := lgSampleConfig(b, a, false)
		if n := strings.Count(cfg, `protocol = "tcp"`); n != 1 {
			b.Fatalf("../proxy.toml: want protocol = \"tcp\" once, found it %d times", n)
		}
		cfg = strings.Replace(cfg, `protocol = "tcp"`, fmt.Sprintf("protocol = %q", mode), 1)
		path := filepath.Join(b.TempDir(), "proxy.toml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			b.Fatal(err)
		}
		testutil.Start(b, "handover-"+mode, sidecar, "-config", path)
		testutil.Eventually(b, 20*time.Second, func() error {
			masters, err := lgSidecarMasters(a.admin)
			if err != nil {
				return err
			}
			if len(masters) != 1 || masters[0] != listen {
				return fmt.Errorf("sidecar (%s) master %q, want %s", mode, masters, listen)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := stompclient.Dial(ctx, a.listen, stompclient.Options{})
			if err != nil {
				return err
			}
			defer c.Close()
			return c.SendReceipt(ctx, "/queue/warmup", []byte("w"), persistent)
		})
		if mode == "tcp" {
			ts.tcp = a.listen
		} else {
			ts.smp = a.listen
		}
	}
	return ts
}

// smDialN opens n stompclient connections to addr.
func smDialN(b *testing.B, addr string, n int) []*stompclient.Conn {
	b.Helper()
	cs := make([]*stompclient.Conn, n)
	for i := range cs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := stompclient.Dial(ctx, addr, stompclient.Options{})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		cs[i] = c
	}
	return cs
}

// BenchmarkStompModeOverhead runs each workload through both sidecars,
// alternating slices of it between the tcp one and the stomp one within one
// sub-benchmark, so that both modes see the same moments of this noisy
// machine's load (run one after the other, their rates drifted by more
// than the difference being measured):
//
//   - persistent-receipt/conns=8: persistent 1 KiB SENDs to a queue, each
//     waiting for its RECEIPT (so each is journaled and fsync'd, in group
//     commits), on 8 connections at once, slices of 400;
//   - transient-pipelined/conns=1: non-persistent 1 KiB SENDs without a
//     receipt, written back to back on one connection, to a topic without
//     subscribers (the broker parses and drops them, so the data path is
//     most of the cost), slices of 20,000; a slice ends at the RECEIPT of a
//     final SEND, which the broker answers after every SEND before it.
//
// Each reports tcp-msgs/s and stomp-msgs/s, stomp/tcp (the second over the
// first) and overhead-% (1 − that ratio, in percent; the target is at most
// 10).
func BenchmarkStompModeOverhead(b *testing.B) {
	ts := smStart(b)
	workloads := []struct {
		name  string
		conns int
		slice int
		run   func(cs []*stompclient.Conn, dest string, n int) error
	}{
		{"persistent-receipt", 8, 400, smPersistentReceipt},
		{"transient-pipelined", 1, 20000, smTransientPipelined},
	}
	for wi, wl := range workloads {
		b.Run(fmt.Sprintf("%s/conns=%d", wl.name, wl.conns), func(b *testing.B) {
			conns := map[string][]*stompclient.Conn{
				"tcp":   smDialN(b, ts.tcp, wl.conns),
				"stomp": smDialN(b, ts.smp, wl.conns),
			}
			dest := func(mode string) string {
				if wl.name == "transient-pipelined" {
					return fmt.Sprintf("/topic/stompmode-%d-%s", wi, mode)
				}
				return fmt.Sprintf("/queue/stompmode-%d-%s", wi, mode)
			}
			elapsed := map[string]time.Duration{}
			b.SetBytes(int64(len(body1K)))
			b.ResetTimer()
			for done := 0; done < b.N; {
				k := min(wl.slice, b.N-done)
				for _, mode := range []string{"tcp", "stomp"} {
					start := time.Now()
					if err := wl.run(conns[mode], dest(mode), k); err != nil {
						b.Fatalf("%s: %v", mode, err)
					}
					elapsed[mode] += time.Since(start)
				}
				done += k
			}
			b.StopTimer()
			tcp := float64(b.N) / elapsed["tcp"].Seconds()
			smp := float64(b.N) / elapsed["stomp"].Seconds()
			b.ReportMetric(tcp, "tcp-msgs/s")
			b.ReportMetric(smp, "stomp-msgs/s")
			b.ReportMetric(smp/tcp, "stomp/tcp")
			b.ReportMetric(100*(1-smp/tcp), "overhead-%")
		})
	}
}

// smPersistentReceipt sends n receipted persistent SENDs spread over cs.
func smPersistentReceipt(cs []*stompclient.Conn, dest string, n int) error {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		ops := lgSplit(n, len(cs), i)
		wg.Go(func() {
			ctx := context.Background()
			for range ops {
				if err := c.SendReceipt(ctx, dest, body1K, persistent); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// smTransientPipelined writes n SENDs back to back on cs[0], then waits for
// the RECEIPT of one more.
func smTransientPipelined(cs []*stompclient.Conn, dest string, n int) error {
	c := cs[0]
	for range n {
		if err := c.Send(dest, body1K); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return c.SendReceipt(ctx, dest, []byte("end"), frame.Header{Key: "persistent", Value: "false"})
}
