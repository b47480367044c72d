package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
// "stomp"; each workload runs through the tcp one, then the stomp one, and
// the stomp sub-benchmark reports its rate as a fraction of the tcp one.
// Client, sidecar and broker share the machine's cores: read the ratio.

type smTargets struct {
	broker   string // brokerd's STOMP address, for reference
	tcp, smp string // the two sidecars' client addresses
}

func smStart(b *testing.B) smTargets {
	b.Helper()
	bin := testutil.Binary(b, "handover/cmd/brokerd")
	listen, admin := testutil.FreePort(b), testutil.FreePort(b)
	testutil.Start(b, "brokerd", bin, "-listen", listen, "-admin", admin, "-data", b.TempDir())
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

// BenchmarkStompModeOverhead runs, through the tcp sidecar and then the
// stomp one:
//
//   - persistent-receipt/conns=8: persistent 1 KiB SENDs to a queue, each
//     waiting for its RECEIPT (so each is journaled and fsync'd, in group
//     commits), on 8 connections at once;
//   - transient-pipelined/conns=1: non-persistent 1 KiB SENDs without a
//     receipt, written back to back on one connection, to a topic without
//     subscribers (the broker parses and drops them, so the data path is
//     most of the cost); the clock stops at the RECEIPT of a final SEND,
//     which the broker answers after every SEND before it.
//
// Each reports msgs/s; the stomp one also stomp/tcp (its rate over the tcp
// one's, measured just before in the same run) and overhead-% (1 − that
// ratio, in percent; the target is at most 10).
func BenchmarkStompModeOverhead(b *testing.B) {
	ts := smStart(b)
	workloads := []struct {
		name  string
		conns int
		run   func(b *testing.B, cs []*stompclient.Conn, dest string)
	}{
		{"persistent-receipt", 8, smPersistentReceipt},
		{"transient-pipelined", 1, smTransientPipelined},
	}
	for wi, wl := range workloads {
		var tcpRate float64
		for _, mode := range []string{"tcp", "stomp"} {
			addr := ts.tcp
			if mode == "stomp" {
				addr = ts.smp
			}
			b.Run(fmt.Sprintf("%s/conns=%d/%s", wl.name, wl.conns, mode), func(b *testing.B) {
				cs := smDialN(b, addr, wl.conns)
				dest := fmt.Sprintf("/queue/stompmode-%d-%s", wi, mode)
				if wl.name == "transient-pipelined" {
					dest = fmt.Sprintf("/topic/stompmode-%d-%s", wi, mode)
				}
				b.SetBytes(int64(len(body1K)))
				b.ResetTimer()
				wl.run(b, cs, dest)
				b.StopTimer()
				rate := float64(b.N) / b.Elapsed().Seconds()
				b.ReportMetric(rate, "msgs/s")
				if mode == "tcp" {
					tcpRate = rate // the last call is the one reported
				} else if tcpRate > 0 {
					b.ReportMetric(rate/tcpRate, "stomp/tcp")
					b.ReportMetric(100*(1-rate/tcpRate), "overhead-%")
				}
			})
		}
	}
}

func smPersistentReceipt(b *testing.B, cs []*stompclient.Conn, dest string) {
	lgRun(b, len(cs), func(i, ops int) error {
		ctx := context.Background()
		for range ops {
			if err := cs[i].SendReceipt(ctx, dest, body1K, persistent); err != nil {
				return err
			}
		}
		return nil
	})
}

func smTransientPipelined(b *testing.B, cs []*stompclient.Conn, dest string) {
	c := cs[0]
	for range b.N {
		if err := c.Send(dest, body1K); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.SendReceipt(ctx, dest, []byte("end"), frame.Header{Key: "persistent", Value: "false"}); err != nil {
		b.Fatal(err)
	}
}
