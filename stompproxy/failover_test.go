package stompproxy

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"handover/brokerd"
	"handover/frame"
	"handover/internal/conf"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
	"handover/stompclient"
)

// TestHeaderNamesMatchBrokerd: the stamp brokerd de-duplicates on is the
// one the sidecar puts on.
func TestHeaderNamesMatchBrokerd(t *testing.T) {
	if HeaderProducer != brokerd.HeaderProducer || HeaderSeq != brokerd.HeaderSeq || HeaderShutdown != brokerd.HeaderShutdown {
		t.Fatalf("sidecar stamps %s/%s, brokerd reads %s/%s", HeaderProducer, HeaderSeq, brokerd.HeaderProducer, brokerd.HeaderSeq)
	}
}

// TestFailoverMasterSlave is the promise of STOMP mode against real
// brokers: two brokerd on one data directory, the master stopped under a
// consumer and a producer that never reconnect. Their connections stay
// open; sends made during the pause complete; the subscription goes on;
// ACKs of deliveries made by the old master are accepted; the consumer sees
// no message twice and none is lost.
func TestFailoverMasterSlave(t *testing.T) {
	dir := t.TempDir()
	m := startBroker(t, dir, "")
	m.WaitReady(t)
	slaveAddr := testutil.FreePort(t)
	sl := startBroker(t, dir, slaveAddr)

	p := proxytest.NewPicker(m.Addr())
	svc := startService(t, p, nil)
	addr := svc.Addr().String()
	const q = "/queue/orders"
	cons := dialClient(t, addr, stompclient.Options{HeartBeat: [2]time.Duration{time.Second, time.Second}})
	sub, err := cons.SubscribeReceipt(ctxT(t, 5*time.Second), q, stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	prod := dialClient(t, addr, stompclient.Options{})
	for i := 0; i < 10; i++ {
		if err := prod.SendReceipt(ctxT(t, 5*time.Second), q, body(i), persistent); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	var early []*frame.Frame
	for i := 0; i < 10; i++ {
		msg := recv(t, sub)
		seen[string(msg.Body)]++
		early = append(early, msg)
	}
	for _, msg := range early[:4] {
		if err := cons.AckReceipt(ctxT(t, 5*time.Second), msg); err != nil {
			t.Fatal(err)
		}
	}

	// The master stops; its clients' connections drop. Ours must not.
	m.Stop(t)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 10; i < 15; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := prod.SendReceipt(ctxT(t, 20*time.Second), q, body(i), persistent); err != nil {
				errs <- fmt.Errorf("send %d: %w", i, err)
			}
		}()
	}
	for _, msg := range early[4:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cons.AckReceipt(ctxT(t, 20*time.Second), msg); err != nil {
				errs <- fmt.Errorf("ack of pre-failover %s: %w", msg.Body, err)
			}
		}()
	}
	// The slave takes over once the master released the lock; the
	// health checks (here, the test) then point the sidecar at it.
	sl.WaitReady(t)
	p.Set(slaveAddr)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := 10; i < 15; i++ {
		msg := recv(t, sub)
		seen[string(msg.Body)]++
		if err := cons.AckReceipt(ctxT(t, 5*time.Second), msg); err != nil {
			t.Fatal(err)
		}
	}
	expectNone(t, sub, 300*time.Millisecond)
	for i := 0; i < 15; i++ {
		if n := seen[string(body(i))]; n != 1 {
			t.Errorf("%s delivered %d times, want once", body(i), n)
		}
	}
	for _, c := range []*stompclient.Conn{cons, prod} {
		if err := c.Err(); err != nil {
			t.Fatalf("a client connection ended: %v", err)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if d := sl.depth(q); d != 0 {
			return fmt.Errorf("queue depth %d on the new master", d)
		}
		return nil
	})
	st := svc.Status()
	if st.Resumed != 2 || st.Unresumable != 0 || st.RedeliveriesSuppressed != 6 || st.Backends[slaveAddr] != 2 {
		t.Fatalf("status %+v", st)
	}
}

// TestHeartbeatsWithBrokerd: the sidecar beats for the client (whose own
// beats the frame reader swallows), so brokerd, which drops a client silent
// for twice the interval, keeps the session's connection through a quiet
// spell; and brokerd's beats reach the client.
func TestHeartbeatsWithBrokerd(t *testing.T) {
	b := startBrokerWith(t, t.TempDir(), "", func(o *brokerd.Options) { o.HeartBeat = conf.Duration(100 * time.Millisecond) })
	b.WaitReady(t)
	svc := startService(t, proxytest.NewPicker(b.Addr()), nil)
	c := dialClient(t, svc.Addr().String(), stompclient.Options{HeartBeat: [2]time.Duration{100 * time.Millisecond, 100 * time.Millisecond}})
	time.Sleep(time.Second)
	if err := c.Err(); err != nil {
		t.Fatalf("client connection ended: %v", err)
	}
	if err := c.SendReceipt(ctxT(t, 5*time.Second), "/queue/hb", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if st := svc.Status(); st.Resumed != 0 {
		t.Fatalf("brokerd dropped the session's connection: %+v", st)
	}
}

// brokerdDropsDuplicates reports whether brokerd already drops a SEND
// repeating a (handover-producer, handover-seq) it persisted.
func brokerdDropsDuplicates(t *testing.T, b *broker) bool {
	c := dialClient(t, b.Addr(), stompclient.Options{})
	const q = "/queue/dedup-probe"
	for range 2 {
		if err := c.SendReceipt(ctxT(t, 5*time.Second), q, []byte("probe"), persistent,
			hdr(HeaderProducer, "probe-producer"), hdr(HeaderSeq, "1")); err != nil {
			t.Fatal(err)
		}
	}
	return b.depth(q) == 1
}

// TestReplayedSendNotDuplicated: a SEND the old connection delivered but
// whose RECEIPT was lost is re-sent on resume; brokerd recognizes its stamp,
// keeps one copy and answers the receipt, so the producer's pending
// SendReceipt completes and the consumer sees the message once.
func TestReplayedSendNotDuplicated(t *testing.T) {
	b := startBroker(t, t.TempDir(), "")
	b.WaitReady(t)
	if !brokerdDropsDuplicates(t, b) {
		t.Skip("brokerd does not drop a repeated (handover-producer, handover-seq) SEND yet (brokerd/conn.go)")
	}
	tap := startTap(t, b.Addr())
	p := proxytest.NewPicker(tap.addr())
	svc := startService(t, p, nil)
	c := dialClient(t, svc.Addr().String(), stompclient.Options{})
	const q = "/queue/once"
	if err := c.SendReceipt(ctxT(t, 5*time.Second), q, []byte("first"), persistent); err != nil {
		t.Fatal(err)
	}
	// The broker's answers are lost from now on, as if it died right after
	// persisting the next SEND.
	tap.mute.Store(true)
	pending := make(chan error, 1)
	go func() { pending <- c.SendReceipt(ctxT(t, 20*time.Second), q, []byte("second"), persistent) }()
	testutil.Eventually(t, 5*time.Second, func() error {
		if d := b.depth(q); d != 2 {
			return fmt.Errorf("depth %d", d)
		}
		return nil
	})
	tap.mute.Store(false)
	tap.cut()
	select {
	case err := <-pending:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SendReceipt not completed after the resume")
	}
	sub, err := c.Subscribe(q, stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"first", "second"} {
		msg := recv(t, sub)
		if string(msg.Body) != want {
			t.Fatalf("got %q, want %q", msg.Body, want)
		}
		c.Ack(msg)
	}
	expectNone(t, sub, 200*time.Millisecond)
	if st := svc.Status(); st.Resumed != 1 || st.DuplicatesDropped != 1 {
		t.Fatalf("status %+v", st)
	}
}

// tap is a TCP relay to a backend whose backend-to-client direction can be
// muted (bytes read and dropped) and whose connections can be cut.
type tap struct {
	ln    net.Listener
	mute  atomic.Bool
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startTap(t testing.TB, backend string) *tap {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln}
	tp.wg.Add(1)
	go func() {
		defer tp.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			tp.mu.Lock()
			tp.conns = append(tp.conns, c, u)
			tp.mu.Unlock()
			tp.wg.Add(2)
			go func() {
				defer tp.wg.Done()
				io.Copy(u, c)
				u.Close()
			}()
			go func() {
				defer tp.wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := u.Read(buf)
					if n > 0 && !tp.mute.Load() {
						if _, werr := c.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		tp.cut()
		tp.wg.Wait()
	})
	return tp
}

func (tp *tap) addr() string { return tp.ln.Addr().String() }

// cut closes every relayed connection.
func (tp *tap) cut() {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, c := range tp.conns {
		c.Close()
	}
	tp.conns = nil
}
