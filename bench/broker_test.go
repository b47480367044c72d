package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"handover/brokerd"
	"handover/frame"
	"handover/internal/brokertest"
	"handover/stompclient"
)

var body1K = make([]byte, 1024)

var persistent = frame.Header{Key: "persistent", Value: "true"}

func startBroker(b *testing.B) *brokerd.Server {
	b.Helper()
	return startBrokerWith(b, func(*brokerd.Options) {})
}

// startBrokerWith is startBroker with options changed by set, and waits
// for it to serve.
func startBrokerWith(b *testing.B, set func(*brokerd.Options)) *brokerd.Server {
	b.Helper()
	br := brokertest.Start(b, "", set)
	br.WaitReady(b)
	return br.Server
}

func dial(b *testing.B, addr string) *stompclient.Conn {
	c, err := stompclient.Dial(context.Background(), addr, stompclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkDiskFsync1KiB is the physical limit for one producer that waits
// for each receipt: a 1 KiB write plus fdatasync, as `dd oflag=dsync bs=1k`.
func BenchmarkDiskFsync1KiB(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "fsync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.Write(body1K); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSendReceipt: persistent 1 KiB SENDs, each waiting for its RECEIPT
// (so each is fsync'd first), on 1 and 8 connections.
func BenchmarkSendReceipt(b *testing.B) {
	for _, conns := range []int{1, 8} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			sendReceipts(b, startBroker(b), conns)
		})
	}
}

// BenchmarkSendNoReceipt: persistent 1 KiB SENDs without receipts on one
// connection; a last SEND with a receipt marks the end (the broker applies a
// connection's frames in order, so its receipt means all were journaled).
func BenchmarkSendNoReceipt(b *testing.B) {
	s := startBroker(b)
	c := dial(b, s.Addr())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.Send("/queue/bench", body1K, persistent); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.SendReceipt(context.Background(), "/queue/bench", body1K, persistent); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkConsumeClientIndividual: drain b.N persistent messages with a
// client-individual subscription, acking each.
func BenchmarkConsumeClientIndividual(b *testing.B) {
	consume(b, stompclient.AckClientIndividual)
}

// BenchmarkConsumeAuto: drain b.N persistent messages with an auto-ack
// subscription (the broker acknowledges each once the client's TCP stack
// has it).
func BenchmarkConsumeAuto(b *testing.B) {
	consume(b, stompclient.AckAuto)
}

func consume(b *testing.B, mode stompclient.AckMode) {
	s := startBroker(b)
	p := dial(b, s.Addr())
	for i := 0; i < b.N; i++ {
		if err := p.Send("/queue/bench", body1K, persistent, frame.Header{Key: "n", Value: strconv.Itoa(i)}); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.SendReceipt(context.Background(), "/queue/fence", nil); err != nil {
		b.Fatal(err)
	}
	c := dial(b, s.Addr())
	b.ResetTimer()
	sub, err := c.Subscribe("/queue/bench", mode)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		select {
		case m := <-sub.C():
			if mode == stompclient.AckAuto {
				continue
			}
			if err := c.Ack(m); err != nil {
				b.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			b.Fatalf("stalled after %d of %d", i, b.N)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSendReceiptVsDisk is issue 2's one-connection target measured as
// a ratio on a noisy machine: it alternates slices of 200 disk writes
// (BenchmarkDiskFsync1KiB's 1 KiB write + fdatasync, appending to a file
// in the same file system as the broker's journal) with slices of 200
// receipted persistent 1 KiB SENDs on one connection from a synchronous
// producer (syncProducer) and 200 from stompclient, so that all three see
// the same moments of load. It reports each rate and of-disk, the broker's
// rate with the synchronous producer over the disk's (the target is at
// least 0.9), and stompclient-of-disk, the same with stompclient's
// reader-goroutine hand-off added to every round trip.
func BenchmarkSendReceiptVsDisk(b *testing.B) {
	s := startBroker(b)
	c := dial(b, s.Addr())
	p := dialSync(b, s.Addr())
	f, err := os.Create(filepath.Join(b.TempDir(), "fsync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	const slice = 200
	var diskTime, syncTime, clientTime time.Duration
	var n int
	ctx := context.Background()
	b.ResetTimer()
	for n < b.N {
		k := min(slice, b.N-n)
		t0 := time.Now()
		for range k {
			if _, err := f.Write(body1K); err != nil {
				b.Fatal(err)
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		for range k {
			if err := p.sendReceipt("/queue/bench", body1K); err != nil {
				b.Fatal(err)
			}
		}
		t2 := time.Now()
		for range k {
			if err := c.SendReceipt(ctx, "/queue/bench", body1K, persistent); err != nil {
				b.Fatal(err)
			}
		}
		diskTime += t1.Sub(t0)
		syncTime += t2.Sub(t1)
		clientTime += time.Since(t2)
		n += k
	}
	rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
	b.ReportMetric(rate(syncTime), "msgs/s")
	b.ReportMetric(rate(clientTime), "stompclient-msgs/s")
	b.ReportMetric(rate(diskTime), "disk-msgs/s")
	b.ReportMetric(rate(syncTime)/rate(diskTime), "of-disk")
	b.ReportMetric(rate(clientTime)/rate(diskTime), "stompclient-of-disk")
}
