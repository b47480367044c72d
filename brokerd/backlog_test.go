package brokerd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"handover/frame"
	"handover/internal/conf"
	"handover/internal/testutil"
	"handover/stompclient"
)

// sendBatch sends n persistent messages to dest in one transaction and
// waits for the COMMIT's receipt: one fsync for the lot.
func sendBatch(t testing.TB, c *stompclient.Conn, dest string, from, n, size int) {
	t.Helper()
	tx := "tx" + strconv.Itoa(from)
	if err := c.Begin(tx); err != nil {
		t.Fatal(err)
	}
	for i := from; i < from+n; i++ {
		if err := c.Send(dest, body(i, size), frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "transaction", Value: tx}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SendFrame(ctx5(t), frame.New(frame.COMMIT, "transaction", tx), true); err != nil {
		t.Fatal(err)
	}
}

// body is message i's body: its number, padded to size.
func body(i, size int) []byte {
	b := []byte(fmt.Sprintf("%08d", i))
	return append(b, bytes.Repeat([]byte{byte('a' + i%26)}, size-len(b))...)
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestBacklogBodiesStayInStore: a backlog many times max_memory costs the
// heap an index entry per message, not its body; the bodies are read back
// from the journal, whole and in order, as the backlog is drained.
func TestBacklogBodiesStayInStore(t *testing.T) {
	const (
		n      = 3000
		size   = 16 << 10 // 48 MiB of bodies
		budget = 2 << 20
	)
	s := startServer(t, t.TempDir(), func(o *Options) { o.MaxMemory = budget })
	s.waitReady(t)
	p := dial(t, s.Addr())
	// Transactions of 50 (800 KiB): a transaction's bodies are held in
	// memory until COMMIT, so it must fit in the budget.
	for i := 0; i < n; i += 50 {
		sendBatch(t, p, "/queue/deep", i, min(50, n-i), size)
	}
	// The whole test process's heap, the client's included, against the
	// bodies queued: what stays is the index, the journal's batch buffer,
	// the cache, and buffers that do not grow with the backlog.
	heap := heapInUse()
	st := getStatus(t, s.AdminAddr())
	t.Logf("heap %d KiB with %d KiB of bodies queued; memory %+v", heap>>10, n*size>>10, st.Memory)
	if heap > n*size/3 {
		t.Errorf("heap is %d MiB with %d MiB of bodies queued: bodies are held in memory", heap>>20, n*size>>20)
	}
	if st.Memory.Cached > st.Memory.CacheLimit || st.Memory.CacheLimit > budget || st.Memory.Pinned != 0 {
		t.Errorf("memory %+v: want at most cache_limit (within %d) cached and nothing pinned", st.Memory, budget)
	}
	c := dial(t, s.Addr())
	sub, err := c.SubscribeReceipt(ctx5(t), "/queue/deep", stompclient.AckClientIndividual, frame.Header{Key: "activemq.prefetchSize", Value: "50"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		m := recv(t, sub)
		if !bytes.Equal(m.Body, body(i, size)) {
			t.Fatalf("message %d: got body %.8q…, want %.8q…", i, m.Body, body(i, size))
		}
		if err := c.Ack(m); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if m := getStatus(t, s.AdminAddr()).Memory; m.Pinned != 0 || m.Cached != 0 {
			return fmt.Errorf("memory after draining: %+v", m)
		}
		return nil
	})
}

// TestFlowControl: a producer of non-persistent messages that would take
// the broker past max_memory is held (its SEND is not answered) until a
// consumer frees memory, then goes on; held past flow_control_timeout it
// gets an ERROR, and nothing it had a receipt for is lost.
func TestFlowControl(t *testing.T) {
	const size = 64 << 10
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.MaxMemory = 1 << 20
		o.MaxDestinationMemory = o.MaxMemory // the whole budget, not a queue's share, is tested here
		o.FlowControlTimeout = conf.Duration(2 * time.Second)
	})
	s.waitReady(t)
	p := connectRaw(t, s.Addr())
	send := func(i int) {
		f := frame.New(frame.SEND, "destination", "/queue/np", "receipt", strconv.Itoa(i))
		f.Body = body(i, size)
		p.sendFrame(f)
	}
	receipted := 0
	for i := 0; ; i++ {
		if i > 64 {
			t.Fatalf("%d SENDs of %d KiB answered with a 1 MiB budget: no flow control", i, size>>10)
		}
		send(i)
		f, err := p.tryRead(500 * time.Millisecond)
		if err != nil {
			break // held
		}
		if f.Command != frame.RECEIPT {
			t.Fatalf("want RECEIPT, got %v", f)
		}
		receipted++
	}
	if st := getStatus(t, s.AdminAddr()); st.Memory.ProducersWaiting != 1 || st.Memory.Pinned < 1<<20 {
		t.Fatalf("memory while held: %+v", st.Memory)
	}
	c := dial(t, s.Addr())
	sub, err := c.Subscribe("/queue/np", stompclient.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= receipted; i++ {
		if m := recv(t, sub); !bytes.Equal(m.Body, body(i, size)) {
			t.Fatalf("message %d: got %.8q…", i, m.Body)
		}
	}
	// The held SEND went through once memory was freed.
	if f := p.read(); f.Command != frame.RECEIPT || f.Value("receipt-id") != strconv.Itoa(receipted) {
		t.Fatalf("want the held SEND's RECEIPT, got %v", f)
	}
	// With nobody consuming, a producer held past the timeout is refused.
	c.Close()
	q := connectRaw(t, s.Addr())
	for i := 0; ; i++ {
		f := frame.New(frame.SEND, "destination", "/topic/nobody-reads", "receipt", "t"+strconv.Itoa(i))
		f.Body = body(i, size)
		q.sendFrame(f)
		f = frame.New(frame.SEND, "destination", "/queue/np2", "receipt", "q"+strconv.Itoa(i))
		f.Body = body(i, size)
		q.sendFrame(f)
		r, err := q.tryRead(5 * time.Second)
		if err == nil && r.Command == frame.RECEIPT {
			if r, err = q.tryRead(5 * time.Second); err == nil && r.Command == frame.RECEIPT {
				continue
			}
		}
		if err != nil || r.Command != frame.ERROR || !strings.Contains(r.Value("message"), "max_memory") {
			t.Fatalf("want an ERROR about max_memory after the timeout, got %v, %v", r, err)
		}
		break
	}
	if st := getStatus(t, s.AdminAddr()); st.Memory.FlowTimeouts == 0 {
		t.Errorf("memory %+v: no flow-control timeout counted", st.Memory)
	}
}

// TestDamagedBodySkipped: a message whose body is damaged on disk after it
// was journaled is reported in /status with its file and offset when it
// is read back for delivery, and never delivered; the messages around it
// are.
func TestDamagedBodySkipped(t *testing.T) {
	const size = 4 << 10
	dir := t.TempDir()
	// A budget whose cache (an eighth) is too small for any body: all
	// three are read back.
	s := startServer(t, dir, func(o *Options) { o.MaxMemory = 32 << 10 })
	s.waitReady(t)
	p := dial(t, s.Addr())
	sendBatch(t, p, "/queue/dmg", 0, 3, size)
	segs, _ := filepath.Glob(filepath.Join(dir, "journal", "*.log"))
	damaged := false
	for _, seg := range segs {
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		if k := bytes.Index(b, body(1, size)); k >= 0 {
			f, err := os.OpenFile(seg, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.WriteAt([]byte{b[k+50] ^ 1}, int64(k+50))
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			damaged = true
		}
	}
	if !damaged {
		t.Fatal("message body not found in the journal")
	}
	c := dial(t, s.Addr())
	sub, err := c.Subscribe("/queue/dmg", stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		m := recv(t, sub)
		if !bytes.Equal(m.Body, body(i, size)) {
			t.Fatalf("got %.8q…, want message %d", m.Body, i)
		}
		c.Ack(m)
	}
	expectNone(t, sub, 200*time.Millisecond)
	st := getStatus(t, s.AdminAddr())
	if len(st.Damaged) != 1 || !strings.Contains(st.Damaged[0].Error, "offset") || !strings.Contains(st.Damaged[0].Error, ".log") {
		t.Fatalf("status damaged = %+v, want one report naming the file and offset", st.Damaged)
	}
}

// TestUnwrittenBytesCounted: what a consumer's socket has not taken of a
// delivery stays in the memory budget until it is written, so that
// consumers that stopped reading hold their unwritten bytes inside
// max_memory, not beside it; they are given back once written.
func TestUnwrittenBytesCounted(t *testing.T) {
	const size = 24 << 20 // far more than a loopback socket takes (a few MiB)
	s := startServer(t, t.TempDir(), func(o *Options) { o.MaxBody, o.MaxTransactionBytes = 32<<20, 32<<20 })
	s.waitReady(t)
	sendBatch(t, dial(t, s.Addr()), "/queue/unread", 0, 1, size)
	c := connectRaw(t, s.Addr())
	c.send("SUBSCRIBE\nid:1\ndestination:/queue/unread\nack:client-individual\n\n\x00")
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := getStatus(t, s.AdminAddr()); st.Memory.Pinned < size/3 {
			return fmt.Errorf("%d KiB pinned while a %d MiB MESSAGE waits for a consumer that does not read", st.Memory.Pinned>>10, size>>20)
		}
		return nil
	})
	// 24 MiB through a frame reader built with -race, on a busy machine,
	// takes longer than read's usual 5 s.
	f, err := c.tryRead(time.Minute)
	if err != nil {
		t.Fatalf("reading the MESSAGE: %v", err)
	}
	if f.Command != frame.MESSAGE || !bytes.Equal(f.Body, body(0, size)) {
		t.Fatalf("got %v, %d bytes", f.Command, len(f.Body))
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := getStatus(t, s.AdminAddr()); st.Memory.Pinned != 0 {
			return fmt.Errorf("%d bytes still pinned once the MESSAGE was written", st.Memory.Pinned)
		}
		return nil
	})
}

// TestDeliveredBodiesLetGo: a persistent message's body is held in memory
// only until its MESSAGE is written to the consumer, not for as long as
// it waits for its ACK; a redelivery (NACK, or the consumer gone) reads it
// back from the store, whole.
func TestDeliveredBodiesLetGo(t *testing.T) {
	const (
		n    = 200
		size = 64 << 10 // 12.5 MiB in flight
	)
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	p := dial(t, s.Addr())
	for i := 0; i < n; i += 50 {
		sendBatch(t, p, "/queue/held", i, 50, size)
	}
	c := dial(t, s.Addr())
	prefetch := frame.Header{Key: "activemq.prefetchSize", Value: strconv.Itoa(n)}
	sub, err := c.SubscribeReceipt(ctx5(t), "/queue/held", stompclient.AckClientIndividual, prefetch)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]*frame.Frame, n)
	for i := range got {
		if got[i] = recv(t, sub); !bytes.Equal(got[i].Body, body(i, size)) {
			t.Fatalf("message %d: got %.8q…", i, got[i].Body)
		}
		got[i].Body = nil // this process's heap is the broker's too
	}
	// Everything is in flight, unacknowledged, and nothing is pinned.
	testutil.Eventually(t, 5*time.Second, func() error {
		st := getStatus(t, s.AdminAddr())
		if st.Memory.Pinned != 0 || len(st.Queues) != 1 || st.Queues[0].Inflight != n || st.Queues[0].Memory != 0 {
			return fmt.Errorf("memory %+v, queues %+v: want %d in flight, nothing pinned", st.Memory, st.Queues, n)
		}
		return nil
	})
	if heap := heapInUse(); heap > n*size*3/4 {
		t.Errorf("heap %d MiB with %d MiB of bodies in flight: they are held", heap>>20, n*size>>20)
	}
	// A NACK redelivers from the store.
	if err := c.Nack(got[7]); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, sub); !bytes.Equal(m.Body, body(7, size)) || m.Value("redelivered") != "true" {
		t.Fatalf("redelivery of message 7: redelivered=%q, body %.8q…", m.Value("redelivered"), m.Body)
	}
	// So does the consumer's going away (in the order of its deliveries:
	// 7 last).
	c.Close()
	c2 := dial(t, s.Addr())
	sub2, err := c2.Subscribe("/queue/held", stompclient.AckClientIndividual, prefetch)
	if err != nil {
		t.Fatal(err)
	}
	for k := range n {
		i := k
		switch {
		case k == n-1:
			i = 7
		case k >= 7:
			i = k + 1
		}
		m := recv(t, sub2)
		if !bytes.Equal(m.Body, body(i, size)) {
			t.Fatalf("redelivery %d: got %.8q…, want message %d", k, m.Body, i)
		}
		if err := c2.Ack(m); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if m := getStatus(t, s.AdminAddr()).Memory; m.Pinned != 0 || m.Cached != 0 {
			return fmt.Errorf("memory after draining: %+v", m)
		}
		return nil
	})
}
