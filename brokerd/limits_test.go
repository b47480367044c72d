package brokerd

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"handover/frame"
	"handover/internal/conf"
	"handover/stompclient"
)

// waitUntil polls cond until it holds or d passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConnectDeadlineIsAbsolute: a client that trickles its CONNECT a
// byte at a time, each byte well within connect_timeout of the last, is
// still closed once connect_timeout has passed since it was accepted.
func TestConnectDeadlineIsAbsolute(t *testing.T) {
	s := startServer(t, t.TempDir(), func(o *Options) { o.ConnectTimeout = conf.Duration(400 * time.Millisecond) })
	s.waitReady(t)
	c := dialRaw(t, s.Addr())
	start := time.Now()
	closed := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(c.nc)
		closed <- err
	}()
	// Never a whole frame: "CONNECT\n" and then header bytes forever.
	trickle := "CONNECT\naccept-version:1.2\nhost:" + strings.Repeat("x", 1000)
	for i := 0; ; i++ {
		select {
		case <-closed:
			t.Logf("closed %v after accept, %d bytes sent", time.Since(start).Round(time.Millisecond), i)
			return
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("a client trickling its CONNECT was still connected after 10 s with connect_timeout 400ms")
		}
		if _, err := c.nc.Write([]byte{trickle[i%len(trickle)]}); err != nil {
			<-closed
			return
		}
	}
}

// TestConnectionLimits: a connection over max_connections or
// max_connections_per_source gets an ERROR that names the limit and is
// closed; the ones admitted are unaffected, and a slot freed is reused.
func TestConnectionLimits(t *testing.T) {
	for _, tt := range []struct {
		name           string
		total, perHost int
		want           string
	}{
		{"total", 3, 0, "max_connections"},
		{"per source", 0, 3, "max_connections_per_source"},
		{"per source under total", 10, 3, "max_connections_per_source"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, t.TempDir(), func(o *Options) {
				o.MaxConnections, o.MaxConnectionsPerSource = tt.total, tt.perHost
			})
			s.waitReady(t)
			var held []*raw
			for range 3 {
				held = append(held, connectRaw(t, s.Addr()))
			}
			over := dialRaw(t, s.Addr())
			f, err := over.tryRead(5 * time.Second)
			if err != nil || f.Command != frame.ERROR || !strings.Contains(f.Value("message"), tt.want) {
				t.Fatalf("the 4th connection: %v, %v; want an ERROR naming %s", f, err, tt.want)
			}
			over.expectClosed()
			held[0].sendFrame(frame.New(frame.SEND, "destination", "/queue/x", "receipt", "r"))
			if f := held[0].read(); f.Command != frame.RECEIPT {
				t.Fatalf("an admitted connection: %v, want RECEIPT", f)
			}
			held[1].nc.Close()
			waitUntil(t, 5*time.Second, "the closed connection's slot was not freed", func() bool {
				return getStatus(t, s.AdminAddr()).Connections == 2
			})
			connectRaw(t, s.Addr())
			body := scrape(t, s.AdminAddr())
			if !strings.Contains(body, `brokerd_connections_refused_total{limit="`+tt.want+`"} 1`) {
				t.Errorf("/metrics does not count the refusal under %s", tt.want)
			}
		})
	}
}

func scrape(t testing.TB, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", resp.StatusCode, b)
	}
	return string(b)
}

// TestInvalidUTF8Header: a frame with a header that is not UTF-8 is
// refused with an ERROR (no RECEIPT), and monitoring keeps working.
func TestInvalidUTF8Header(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	for _, tt := range []struct{ name, frame string }{
		{"destination", "SEND\ndestination:/queue/bad\xff\nreceipt:r\n\nx\x00"},
		{"key", "SEND\ndestination:/queue/ok\nk\xc3\x28:v\nreceipt:r\n\nx\x00"},
		{"subscribe", "SUBSCRIBE\nid:1\ndestination:/topic/\xfe\nreceipt:r\n\n\x00"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := connectRaw(t, s.Addr())
			c.send(tt.frame)
			f := c.read()
			if f.Command != frame.ERROR || !strings.Contains(f.Value("message"), "UTF-8") {
				t.Fatalf("got %v, want an ERROR about UTF-8", f)
			}
			c.expectClosed()
		})
	}
	scrape(t, s.AdminAddr())
	for _, d := range append(getStatus(t, s.AdminAddr()).Queues, getStatus(t, s.AdminAddr()).Topics...) {
		if strings.Contains(d.Name, "bad") || strings.ContainsRune(d.Name, '\uFFFD') {
			t.Errorf("destination %q exists after its SEND was refused", d.Name)
		}
	}
}

// TestTransactionLimits: the frames of an open transaction count against
// the memory budget until COMMIT or ABORT, and a transaction that grows
// past max_transaction_bytes is refused.
func TestTransactionLimits(t *testing.T) {
	const limit = 64 << 10
	s := startServer(t, t.TempDir(), func(o *Options) { o.MaxTransactionBytes = limit })
	s.waitReady(t)
	body := strings.Repeat("b", 16<<10)

	c := connectRaw(t, s.Addr())
	c.send("BEGIN\ntransaction:t1\n\n\x00")
	for i := range 2 {
		c.sendFrame(&frame.Frame{Command: frame.SEND, Headers: []frame.Header{{Key: "destination", Value: "/queue/tx"}, {Key: "transaction", Value: "t1"}, {Key: "receipt", Value: strconv.Itoa(i)}}, Body: []byte(body)})
		if f := c.read(); f.Command != frame.RECEIPT {
			t.Fatalf("SEND %d in the transaction: %v", i, f)
		}
	}
	if p := getStatus(t, s.AdminAddr()).Memory.Pinned; p < 2*16<<10 {
		t.Errorf("pinned %d bytes with 32 KiB in an open transaction", p)
	}
	c.send("ABORT\ntransaction:t1\nreceipt:a\n\n\x00")
	if f := c.read(); f.Command != frame.RECEIPT {
		t.Fatalf("ABORT: %v", f)
	}
	if p := getStatus(t, s.AdminAddr()).Memory.Pinned; p != 0 {
		t.Errorf("pinned %d bytes after ABORT, want 0", p)
	}

	c.send("BEGIN\ntransaction:t2\n\n\x00")
	var got *frame.Frame
	for i := range 10 {
		c.sendFrame(&frame.Frame{Command: frame.SEND, Headers: []frame.Header{{Key: "destination", Value: "/queue/tx"}, {Key: "transaction", Value: "t2"}, {Key: "receipt", Value: strconv.Itoa(i)}}, Body: []byte(body)})
		if got = c.read(); got.Command != frame.RECEIPT {
			break
		}
	}
	if got.Command != frame.ERROR || !strings.Contains(got.Value("message"), "max_transaction_bytes") {
		t.Fatalf("a transaction past %d bytes: %v, want an ERROR naming max_transaction_bytes", limit, got)
	}
	c.expectClosed()
	waitUntil(t, 5*time.Second, "the refused transaction's bytes stayed pinned", func() bool {
		return getStatus(t, s.AdminAddr()).Memory.Pinned == 0
	})
	if st := getStatus(t, s.AdminAddr()); len(st.Queues) > 0 && st.Queues[0].Depth != 0 {
		t.Errorf("queue %+v: nothing of an aborted or refused transaction may be queued", st.Queues[0])
	}
}

// TestSlowTopicConsumerDroppedByBytes: a topic subscriber that stops
// reading is dropped once max_pending_bytes wait for it, whatever the
// number of frames; what it held is given back to the budget, and the
// producer and other subscribers carry on.
func TestSlowTopicConsumerDroppedByBytes(t *testing.T) {
	const limit = 1 << 20
	s := startServer(t, t.TempDir(), func(o *Options) { o.MaxPendingBytes = limit })
	s.waitReady(t)
	slow := connectRaw(t, s.Addr())
	slow.send("SUBSCRIBE\nid:s\ndestination:/topic/fast\nreceipt:r\n\n\x00")
	if f := slow.read(); f.Command != frame.RECEIPT {
		t.Fatalf("SUBSCRIBE: %v", f)
	}
	p := dial(t, s.Addr())
	body := []byte(strings.Repeat("m", 64<<10))
	// 32 MiB: far beyond the limit plus what the socket buffers hold. The
	// heap (the broker's and the test's) is sampled while it goes on: what
	// waits for the subscriber must stay within about the limit.
	var peak uint64
	for i := range 512 {
		if err := p.SendReceipt(ctx5(t), "/topic/fast", body); err != nil {
			t.Fatalf("SEND %d: %v", i, err)
		}
		if i%64 == 63 {
			peak = max(peak, heapInUse())
			if strings.Contains(scrape(t, s.AdminAddr()), "brokerd_slow_consumers_dropped_total 1") {
				break
			}
		}
	}
	t.Logf("peak heap %d KiB with max_pending_bytes %d KiB", peak>>10, limit>>10)
	if peak > 16<<20 {
		t.Errorf("the heap reached %d MiB while a subscriber did not read: what waits for it is not bounded", peak>>20)
	}
	waitUntil(t, 10*time.Second, "the slow subscriber was not dropped", func() bool {
		return strings.Contains(scrape(t, s.AdminAddr()), "brokerd_slow_consumers_dropped_total 1")
	})
	waitUntil(t, 10*time.Second, "the dropped subscriber's frames stayed pinned", func() bool {
		return getStatus(t, s.AdminAddr()).Memory.Pinned == 0
	})
	if err := p.SendReceipt(ctx5(t), "/topic/fast", body); err != nil {
		t.Fatalf("the producer after the drop: %v", err)
	}
}

// TestMaxSubscriptions: one connection cannot hold more than
// max_subscriptions subscriptions.
func TestMaxSubscriptions(t *testing.T) {
	s := startServer(t, t.TempDir(), func(o *Options) { o.MaxSubscriptions = 3 })
	s.waitReady(t)
	c := connectRaw(t, s.Addr())
	for i := range 3 {
		c.send(fmt.Sprintf("SUBSCRIBE\nid:%d\ndestination:/topic/t%d\nreceipt:%d\n\n\x00", i, i, i))
		if f := c.read(); f.Command != frame.RECEIPT {
			t.Fatalf("SUBSCRIBE %d: %v", i, f)
		}
	}
	c.send("SUBSCRIBE\nid:x\ndestination:/topic/t9\nreceipt:x\n\n\x00")
	if f := c.read(); f.Command != frame.ERROR || !strings.Contains(f.Value("message"), "max_subscriptions") {
		t.Fatalf("the 4th SUBSCRIBE: %v, want an ERROR naming max_subscriptions", f)
	}
}

// TestSubscriptionPositions: removing subscriptions in any order keeps
// every remaining one at the index it records, so unsubscribing stays
// O(1) and nobody is lost or delivered twice.
func TestSubscriptionPositions(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 10, 1000} {
		var subs []*subscription
		all := make([]*subscription, n)
		for i := range all {
			all[i] = &subscription{id: strconv.Itoa(i)}
			subs = addSub(subs, all[i])
		}
		rng.Shuffle(n, func(i, j int) { all[i], all[j] = all[j], all[i] })
		for k, gone := range all {
			subs = removeSub(subs, gone)
			subs = removeSub(subs, gone) // twice: a no-op
			if len(subs) != n-k-1 {
				t.Fatalf("n=%d: %d left after %d removals", n, len(subs), k+1)
			}
			for i, s := range subs {
				if s.pos != i || s == gone {
					t.Fatalf("n=%d: subs[%d] is %s at pos %d after removing %s", n, i, s.id, s.pos, gone.id)
				}
			}
		}
	}
}

// TestInactiveDestinationsReclaimed: destinations left empty and without
// subscribers disappear after inactive_destination_timeout; one that is
// used again meanwhile loses nothing, even while the reclaimer runs
// constantly.
func TestInactiveDestinationsReclaimed(t *testing.T) {
	s := startServer(t, t.TempDir(), func(o *Options) { o.InactiveDestinationTimeout = conf.Duration(20 * time.Millisecond) })
	s.waitReady(t)
	p := dial(t, s.Addr())
	for i := range 100 {
		if err := p.SendReceipt(ctx5(t), "/topic/nobody-"+strconv.Itoa(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 10*time.Second, "inactive topics were not reclaimed", func() bool {
		st := getStatus(t, s.AdminAddr())
		return len(st.Topics) == 0
	})

	// Sends, subscribes and acks racing the reclaimer: every message is
	// delivered once.
	c := dial(t, s.Addr())
	for i := range 200 {
		q := "/queue/churn-" + strconv.Itoa(i%5)
		if err := p.SendReceipt(ctx5(t), q, []byte(strconv.Itoa(i)), frame.Header{Key: "persistent", Value: "true"}); err != nil {
			t.Fatal(err)
		}
		sub, err := c.SubscribeReceipt(ctx5(t), q, stompclient.AckClientIndividual)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-sub.C():
			if string(m.Body) != strconv.Itoa(i) {
				t.Fatalf("got %q from %s, want %d", m.Body, q, i)
			}
			if err := c.AckReceipt(ctx5(t), m); err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d on %s was not delivered", i, q)
		}
		if err := sub.Unsubscribe(); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 10*time.Second, "inactive queues were not reclaimed", func() bool {
		return len(getStatus(t, s.AdminAddr()).Queues) == 0
	})
}

// TestDiskFullConsumersDrain: when the journal reaches max_disk, a
// persistent SEND gets an ERROR and no receipt, but consumers keep
// acknowledging every message already stored; once they have drained,
// producers are taken again.
func TestDiskFullConsumersDrain(t *testing.T) {
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.MaxDisk, o.SegmentSize, o.DiskReserve = 256<<10, 64<<10, -1
	})
	s.waitReady(t)
	body := []byte(strings.Repeat("d", 4<<10))
	persistent := frame.Header{Key: "persistent", Value: "true"}
	p := dial(t, s.Addr())
	stored := 0
	for ; ; stored++ {
		if stored > 1000 {
			t.Fatal("4 MB taken with max_disk 256 KiB")
		}
		err := p.SendReceipt(ctx5(t), "/queue/full", body, persistent)
		if err == nil {
			continue
		}
		if !strings.Contains(err.Error(), "disk is full") {
			t.Fatalf("SEND %d: %v, want an ERROR saying the disk is full", stored, err)
		}
		break
	}
	if m := scrape(t, s.AdminAddr()); !strings.Contains(m, "brokerd_disk_full_refusals_total 1") ||
		!strings.Contains(m, `brokerd_refusals_total{limit="max_disk"} 1`) || strings.Contains(m, "brokerd_protocol_errors_total 1") {
		t.Error("the refusal is not counted in /metrics as a refusal (and not as a protocol error)")
	}
	c := dial(t, s.Addr())
	sub, err := c.SubscribeReceipt(ctx5(t), "/queue/full", stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	for i := range stored {
		select {
		case m := <-sub.C():
			if err := c.AckReceipt(ctx5(t), m); err != nil {
				t.Fatalf("ACK %d of %d on a full disk: %v", i, stored, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d of %d stored was not delivered", i, stored)
		}
	}
	waitUntil(t, 10*time.Second, "producers still refused after the queue was drained", func() bool {
		q := dial(t, s.Addr())
		defer q.Close()
		return q.SendReceipt(ctx5(t), "/queue/full", body, persistent) == nil
	})
}

// TestSlowAutoAckConsumerLosesNothing: an auto-ack consumer stops reading,
// then dies. Every message is either among the bytes its TCP stack had
// taken (they count as consumed: the client had them) or is delivered to
// the next consumer: what was still in the broker's send queue goes back
// to the queue.
func TestSlowAutoAckConsumerLosesNothing(t *testing.T) {
	const n, size = 1500, 16 << 10
	s := startServer(t, t.TempDir(), func(o *Options) { o.MaxPendingBytes = 1 << 20 })
	s.waitReady(t)
	slow := connectRaw(t, s.Addr())
	slow.send("SUBSCRIBE\nid:s\ndestination:/queue/slow\nack:auto\nactivemq.prefetchSize:100000\nreceipt:r\n\n\x00")
	if f := slow.read(); f.Command != frame.RECEIPT {
		t.Fatalf("SUBSCRIBE: %v", f)
	}
	p := dial(t, s.Addr())
	body := []byte(strings.Repeat("s", size))
	for i := range n {
		if err := p.Send("/queue/slow", body, frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "n", Value: strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.SendReceipt(ctx5(t), "/queue/fence", nil); err != nil {
		t.Fatal(err)
	}
	// The consumer's socket buffers fill and deliveries stop.
	depth := func() int {
		for _, q := range getStatus(t, s.AdminAddr()).Queues {
			if q.Name == "/queue/slow" {
				return q.Depth - q.Inflight
			}
		}
		return -1
	}
	last := -1
	waitUntil(t, 20*time.Second, "deliveries to the consumer that does not read did not stop", func() bool {
		d := depth()
		stable := d == last && d > 0
		last = d
		time.Sleep(100 * time.Millisecond)
		return stable
	})

	// What the dead client had: the bytes in its receive queue now,
	// peeked, so that its receive window stays shut and nothing more
	// arrives before it dies.
	seen := map[int]int{}
	tc := slow.nc.(*net.TCPConn)
	sc, _ := tc.SyscallConn()
	var buf []byte
	sc.Control(func(fd uintptr) {
		queued, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		buf = make([]byte, queued)
		k, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != nil {
			t.Fatal(err)
		}
		buf = buf[:k]
	})
	r := frame.NewReader(bytes.NewReader(buf), frame.Limits{MaxBody: -1})
	had := 0
	for {
		f, err := r.Read()
		if err != nil {
			break
		}
		if f.Command == frame.MESSAGE {
			k, _ := strconv.Atoi(f.Value("n"))
			seen[k]++
			had++
		}
	}
	tc.SetLinger(0)
	tc.Close() // the client dies: nothing more reaches it

	c := dial(t, s.Addr())
	sub, err := c.SubscribeReceipt(ctx5(t), "/queue/slow", stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	again := 0
	for len(seen) < n {
		select {
		case m := <-sub.C():
			k, _ := strconv.Atoi(m.Value("n"))
			seen[k]++
			again++
			if err := c.Ack(m); err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("lost %d of %d messages: the dead consumer had %d, the next one got %d", n-len(seen), n, had, again)
		}
	}
	t.Logf("the dead consumer had %d messages, the next one got %d", had, again)
	// Exactly: a message counts as consumed when its last byte is in the
	// client's TCP stack, so none of those is delivered twice either.
	if had+again != n {
		t.Errorf("the dead consumer had %d and the next one got %d: %d delivered twice", had, again, had+again-n)
	}
}

// TestShutdownWithMassSubscriptions: a client holding a great many
// subscriptions on one topic (here with max_subscriptions raised to allow
// it) does not hold up a SIGTERM: the teardown of its subscriptions is
// linear, and the broker stops (releasing the master lock) well within its
// grace.
func TestShutdownWithMassSubscriptions(t *testing.T) {
	const n = 200000
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.MaxSubscriptions = n + 1
		o.ShutdownGrace = conf.Duration(time.Second)
	})
	s.waitReady(t)
	c := connectRaw(t, s.Addr())
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "SUBSCRIBE\nid:%d\ndestination:/topic/mass\n\n\x00", i)
		if b.Len() > 1<<20 {
			c.send(b.String())
			b.Reset()
		}
	}
	b.WriteString("SUBSCRIBE\nid:last\ndestination:/topic/other\nreceipt:r\n\n\x00")
	c.send(b.String())
	if f, err := c.tryRead(60 * time.Second); err != nil || f.Command != frame.RECEIPT {
		t.Fatalf("after %d SUBSCRIBEs: %v, %v", n, f, err)
	}
	start := time.Now()
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	// Quadratic teardown took minutes at this size; the bound leaves
	// room for a loaded machine.
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("shutdown with %d subscriptions on one topic took %v", n, took)
	}
}

// TestDestinationMemoryShare: a queue flooded with non-persistent messages
// that nobody consumes is held at max_destination_memory, while producers
// to other queues go on; its held producer gets an ERROR naming the limit.
func TestDestinationMemoryShare(t *testing.T) {
	const size = 64 << 10
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.MaxMemory, o.MaxDestinationMemory = 8<<20, 1<<20
		o.FlowControlTimeout = conf.Duration(time.Second)
	})
	s.waitReady(t)
	flood := connectRaw(t, s.Addr())
	held := false
	for i := 0; i < 64 && !held; i++ {
		f := frame.New(frame.SEND, "destination", "/queue/flooded", "receipt", strconv.Itoa(i))
		f.Body = make([]byte, size)
		flood.sendFrame(f)
		r, err := flood.tryRead(5 * time.Second)
		switch {
		case err != nil:
			t.Fatal(err)
		case r.Command == frame.ERROR:
			if !strings.Contains(r.Value("message"), "max_destination_memory") {
				t.Fatalf("the flooding producer: %v, want an ERROR naming max_destination_memory", r)
			}
			held = true
		case r.Command != frame.RECEIPT:
			t.Fatalf("want RECEIPT or ERROR, got %v", r)
		}
	}
	if !held {
		t.Fatal("4 MiB of non-persistent SENDs to one queue taken with a 1 MiB share")
	}
	var flooded queueStats
	for _, q := range getStatus(t, s.AdminAddr()).Queues {
		if q.Name == "/queue/flooded" {
			flooded = q
		}
	}
	if flooded.Memory < 1<<20 || flooded.Memory > 1<<20+2*size {
		t.Errorf("the flooded queue holds %d bytes, want its share of %d", flooded.Memory, 1<<20)
	}
	// Another queue is not held back by the flooded one.
	other := dial(t, s.Addr())
	for i := range 8 {
		if err := other.SendReceipt(ctx5(t), "/queue/other", make([]byte, size)); err != nil {
			t.Fatalf("SEND %d to another queue: %v", i, err)
		}
	}
}

// TestShutdownTellsClients: on SIGTERM a client gets an ERROR saying the
// broker is shutting down, then the connection closes; what it sent after
// the shutdown began is not read (it gets no RECEIPT for it, so it knows
// to send it again to the next master).
func TestShutdownTellsClients(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	c := connectRaw(t, s.Addr())
	c.send("SUBSCRIBE\nid:1\ndestination:/queue/bye\nreceipt:s\n\n\x00")
	if f := c.read(); f.Command != frame.RECEIPT {
		t.Fatalf("SUBSCRIBE: %v", f)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- s.stop(t) }()
	var got []string
	for {
		f, err := c.tryRead(10 * time.Second)
		if err != nil {
			break
		}
		got = append(got, f.Command+" "+f.Value("message"))
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "ERROR the broker is shutting down") {
		t.Fatalf("frames during the shutdown: %q, want one ERROR saying the broker is shutting down", got)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
