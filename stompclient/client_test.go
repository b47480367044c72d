package stompclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/frame"
)

// testTimeout bounds every wait in these tests; nothing should come close.
const testTimeout = 5 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, s *fakeServer, opts Options) *Conn {
	t.Helper()
	c, err := Dial(testCtx(t), s.addr(), opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, sub *Subscription) *frame.Frame {
	t.Helper()
	select {
	case m, ok := <-sub.C():
		if !ok {
			t.Fatal("subscription channel closed")
		}
		return m
	case <-time.After(testTimeout):
		t.Fatal("no MESSAGE")
		return nil
	}
}

func waitDone(t *testing.T, c *Conn, within time.Duration) {
	t.Helper()
	select {
	case <-c.Done():
		return
	default:
	}
	select {
	case <-c.Done():
	case <-time.After(within):
		t.Fatalf("connection not done within %v", within)
	}
}

func hdr(k, v string) frame.Header { return frame.Header{Key: k, Value: v} }

// TestVersions runs a full session on each version and checks the
// version-specific ACK/NACK header forms on the wire.
func TestVersions(t *testing.T) {
	tests := []struct {
		v       frame.Version
		ack     AckMode
		wantAck map[string]string // headers the server must see on ACK
		noAck   []string          // headers it must not see
	}{
		{frame.V10, AckClient, map[string]string{"message-id": "*"}, []string{"id", "subscription"}},
		{frame.V11, AckClientIndividual, map[string]string{"message-id": "*", "subscription": "*"}, []string{"id"}},
		{frame.V12, AckClientIndividual, map[string]string{"id": "ack-*"}, []string{"message-id", "subscription"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.v), func(t *testing.T) {
			s := newFakeServer(t).start()
			c := dial(t, s, Options{AcceptVersion: string(tt.v), Login: "u", Passcode: "p"})
			if c.Version() != tt.v {
				t.Fatalf("Version = %q, want %q", c.Version(), tt.v)
			}
			if c.Server() != "fake/1" {
				t.Errorf("Server = %q", c.Server())
			}
			ctx := testCtx(t)
			sub, err := c.SubscribeReceipt(ctx, "/queue/a", tt.ack)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.waitFrame(t, frame.SUBSCRIBE); got.Value("id") != sub.ID() || got.Value("ack") != string(tt.ack) {
				t.Errorf("SUBSCRIBE = %v", got)
			}
			body := []byte("hello\x00world") // NUL needs content-length
			if err := c.SendReceipt(ctx, "/queue/a", body, hdr("x-colon", "a:b"), hdr("content-type", "text/plain")); err != nil {
				t.Fatalf("SendReceipt: %v", err)
			}
			m := recv(t, sub)
			if string(m.Body) != string(body) || m.Value("x-colon") != "a:b" || m.Value("subscription") != sub.ID() {
				t.Fatalf("MESSAGE = %v %q", m, m.Body)
			}
			if err := c.AckReceipt(ctx, m, hdr("x-extra", "1")); err != nil {
				t.Fatalf("AckReceipt: %v", err)
			}
			ack := s.waitFrame(t, frame.ACK)
			checkHeaders(t, ack, tt.wantAck, tt.noAck)
			if ack.Value("x-extra") != "1" {
				t.Errorf("ACK lost extra header: %v", ack)
			}
			if ack.Value("message-id") != "" && ack.Value("message-id") != m.Value("message-id") {
				t.Errorf("ACK message-id %q, MESSAGE had %q", ack.Value("message-id"), m.Value("message-id"))
			}

			err = c.Nack(m)
			if tt.v == frame.V10 {
				if !errors.Is(err, ErrUnsupported) {
					t.Errorf("Nack on 1.0 = %v, want ErrUnsupported", err)
				}
			} else {
				if err != nil {
					t.Fatalf("Nack: %v", err)
				}
				checkHeaders(t, s.waitFrame(t, frame.NACK), tt.wantAck, tt.noAck)
			}

			tx := frame.New(frame.BEGIN, "transaction", "tx1")
			if err := c.SendFrame(ctx, tx, true); err != nil {
				t.Fatalf("BEGIN with receipt: %v", err)
			}
			if _, ok := tx.Get("receipt"); ok {
				t.Error("SendFrame modified the caller's frame")
			}
			if err := c.Commit("tx1"); err != nil {
				t.Fatal(err)
			}
			if got := s.waitFrame(t, frame.COMMIT); got.Value("transaction") != "tx1" {
				t.Errorf("COMMIT = %v", got)
			}
			if err := c.Disconnect(ctx); err != nil {
				t.Fatalf("Disconnect: %v", err)
			}
			if !errors.Is(c.Err(), ErrClosed) {
				t.Errorf("Err after Disconnect = %v", c.Err())
			}
		})
	}
}

func checkHeaders(t *testing.T, f *frame.Frame, want map[string]string, absent []string) {
	t.Helper()
	for k, v := range want {
		got, ok := f.Get(k)
		if !ok || got == "" {
			t.Errorf("%s lacks %s header: %v", f.Command, k, f)
		} else if strings.HasSuffix(v, "*") && !strings.HasPrefix(got, strings.TrimSuffix(v, "*")) {
			t.Errorf("%s %s = %q, want %s", f.Command, k, got, v)
		}
	}
	for _, k := range absent {
		if _, ok := f.Get(k); ok {
			t.Errorf("%s has %s header, which this version does not use: %v", f.Command, k, f)
		}
	}
}

// TestRouteByDestination: a 1.0 server that omits the subscription header
// still gets its MESSAGEs to the right subscription.
func TestRouteByDestination(t *testing.T) {
	s := newFakeServer(t)
	s.omitSubHeader = true
	s.start()
	c := dial(t, s, Options{AcceptVersion: "1.0"})
	ctx := testCtx(t)
	a, err := c.SubscribeReceipt(ctx, "/queue/a", AckClient)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.SubscribeReceipt(ctx, "/queue/b", AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendReceipt(ctx, "/queue/b", []byte("to b")); err != nil {
		t.Fatal(err)
	}
	if err := c.SendReceipt(ctx, "/queue/a", []byte("to a")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, a); string(m.Body) != "to a" {
		t.Errorf("a got %q", m.Body)
	}
	if m := recv(t, b); string(m.Body) != "to b" {
		t.Errorf("b got %q", m.Body)
	}
	if _, err := c.Subscribe("/queue/c", AckClientIndividual); !errors.Is(err, ErrUnsupported) {
		t.Errorf("client-individual on 1.0 = %v, want ErrUnsupported", err)
	}
}

func TestNegotiation(t *testing.T) {
	tests := []struct {
		name     string
		server   []frame.Version
		accept   string
		want     frame.Version
		wantFail bool
	}{
		{"default picks newest", nil, "", frame.V12, false},
		{"server caps at 1.1", []frame.Version{frame.V10, frame.V11}, "", frame.V11, false},
		{"server 1.0 only", []frame.Version{frame.V10}, "", frame.V10, false},
		{"no overlap", []frame.Version{frame.V10}, "1.2", "", true},
		{"unknown versions only", nil, "2.0", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeServer(t)
			s.versions = tt.server
			s.start()
			c, err := Dial(testCtx(t), s.addr(), Options{AcceptVersion: tt.accept})
			if tt.wantFail {
				if err == nil {
					c.Close()
					t.Fatal("Dial succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Version() != tt.want {
				t.Errorf("Version = %q, want %q", c.Version(), tt.want)
			}
		})
	}
}

func TestConnectRejected(t *testing.T) {
	s := newFakeServer(t)
	s.rejectLogin = "mallory"
	s.start()
	_, err := Dial(testCtx(t), s.addr(), Options{Login: "mallory"})
	var se *ServerError
	if !errors.As(err, &se) || se.Message != "bad login" {
		t.Fatalf("Dial = %v, want ServerError \"bad login\"", err)
	}
	if !strings.Contains(err.Error(), "bad login") {
		t.Errorf("error text %q lacks the message header", err)
	}
}

// TestConnectTimeout: a peer that accepts TCP but never speaks STOMP must not
// hang Dial past ConnectTimeout, nor past ctx cancellation.
func TestConnectTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, nc)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, nc := range held {
			nc.Close()
		}
		mu.Unlock()
	})

	start := time.Now()
	_, err = Dial(context.Background(), ln.Addr().String(), Options{ConnectTimeout: 100 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Dial took %v", d)
	}

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := Dial(ctx, ln.Addr().String(), Options{})
		errc <- err
	}()
	// Cancel once the TCP connection exists, so cancellation must interrupt
	// the handshake read rather than the dial.
	for {
		mu.Lock()
		n := len(held)
		mu.Unlock()
		if n == 2 {
			break
		}
		runtime.Gosched()
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Dial after cancel = %v, want Canceled", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Dial ignored ctx cancellation")
	}
}

func TestSendReceipt(t *testing.T) {
	s := newFakeServer(t).start()
	c := dial(t, s, Options{})
	ctx := testCtx(t)
	for i := range 10 {
		if err := c.SendReceipt(ctx, "/queue/r", []byte(fmt.Sprint(i))); err != nil {
			t.Fatalf("SendReceipt %d: %v", i, err)
		}
	}
	// The receipt header is unique per call.
	seen := map[string]bool{}
	for range 10 {
		f := s.waitFrame(t, frame.SEND)
		r := f.Value("receipt")
		if r == "" || seen[r] {
			t.Fatalf("receipt header %q missing or reused", r)
		}
		seen[r] = true
	}
}

// blockedWaiter starts a SendReceipt to the blackhole (never answered) and
// returns once the server holds the frame, so the waiter is registered.
func blockedWaiter(t *testing.T, s *fakeServer, c *Conn, ctx context.Context) <-chan error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- c.SendReceipt(ctx, destBlackhole, nil) }()
	s.waitFrame(t, frame.SEND)
	return errc
}

func TestReceiptWaiterFailsOnServerError(t *testing.T) {
	s := newFakeServer(t).start()
	c := dial(t, s, Options{})
	errc := blockedWaiter(t, s, c, context.Background())

	// The ERROR names its own receipt; that waiter gets it too.
	err := c.SendReceipt(testCtx(t), destError, nil)
	var se *ServerError
	if !errors.As(err, &se) || se.Message != "boom" || se.Frame == nil {
		t.Fatalf("SendReceipt to error dest = %v, want ServerError boom", err)
	}
	select {
	case err := <-errc:
		if !errors.As(err, &se) || se.Message != "boom" {
			t.Errorf("other waiter = %v, want ServerError boom", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("receipt waiter not released by ERROR")
	}
	waitDone(t, c, testTimeout)
	if !errors.As(c.Err(), &se) || !strings.Contains(c.Err().Error(), "boom") {
		t.Errorf("Err = %v", c.Err())
	}
	if err := c.Send("/queue/x", nil); !errors.As(err, &se) {
		t.Errorf("Send after ERROR = %v, want the ServerError", err)
	}
}

func TestReceiptWaiterFailsOnConnLoss(t *testing.T) {
	s := newFakeServer(t).start()
	c := dial(t, s, Options{})
	sub, err := c.SubscribeReceipt(testCtx(t), "/queue/s", AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	errc := blockedWaiter(t, s, c, context.Background())
	if err := c.Send(destDrop, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, io.EOF) {
			t.Errorf("waiter = %v, want EOF", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("receipt waiter not released by connection loss")
	}
	waitDone(t, c, testTimeout)
	if _, ok := <-sub.C(); ok {
		t.Error("subscription channel open after connection loss")
	}
	if err := c.SendReceipt(testCtx(t), "/queue/x", nil); !errors.Is(err, io.EOF) {
		t.Errorf("SendReceipt on dead conn = %v", err)
	}
	if _, err := c.Subscribe("/queue/x", AckAuto); err == nil {
		t.Error("Subscribe on dead conn succeeded")
	}
}

func TestContextCancel(t *testing.T) {
	s := newFakeServer(t).start()
	c := dial(t, s, Options{})

	ctx, cancel := context.WithCancel(context.Background())
	errc := blockedWaiter(t, s, c, ctx)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("waiter = %v, want Canceled", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("receipt waiter ignored ctx")
	}
	if err := c.SendReceipt(ctx, "/queue/x", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("SendReceipt with done ctx = %v", err)
	}
	// Giving up on a receipt does not hurt the connection.
	if err := c.SendReceipt(testCtx(t), "/queue/x", nil); err != nil {
		t.Fatalf("conn unusable after cancel: %v", err)
	}
	c.mu.Lock()
	n := len(c.receipts)
	c.mu.Unlock()
	if n != 0 {
		t.Errorf("%d receipt waiters left registered", n)
	}
}

// TestBlockedWrite: a server that stops reading fills the TCP buffers and
// blocks our write; ctx must still end SendReceipt (killing the connection,
// since the frame is half sent) and Close must still free a plain Send.
func TestBlockedWrite(t *testing.T) {
	s := newFakeServer(t)
	s.silent = true // answers CONNECT, then reads nothing
	s.start()
	big := make([]byte, 32<<20) // far beyond loopback socket buffers

	c := dial(t, s, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.SendReceipt(ctx, "/queue/big", big); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("SendReceipt = %v, want DeadlineExceeded", err)
	}
	waitDone(t, c, testTimeout)

	c = dial(t, s, Options{})
	errc := make(chan error, 1)
	go func() { errc <- c.Send("/queue/big", big) }()
	// A second writer queues behind the blocked one and gives up on ctx.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	for c.lockWrite(ctx2) == nil { // wait until the big Send holds the turn
		c.unlockWrite()
		runtime.Gosched()
	}
	if ctx2.Err() == nil {
		t.Fatal("lockWrite failed before ctx ended")
	}
	select {
	case err := <-errc:
		t.Fatalf("Send of 32 MiB to a non-reading server returned early: %v", err)
	default:
	}
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("blocked Send after Close = %v, want ErrClosed", err)
	}
}

// TestHeartbeatSilentServer: a server that promises heart-beats and goes
// quiet is declared dead after twice its interval.
func TestHeartbeatSilentServer(t *testing.T) {
	s := newFakeServer(t)
	s.heartBeat = "50,0"
	s.silent = true
	s.start()
	start := time.Now()
	c := dial(t, s, Options{HeartBeat: [2]time.Duration{0, 50 * time.Millisecond}})
	if _, recv := c.HeartBeats(); recv != 50*time.Millisecond {
		t.Fatalf("recv heart-beat = %v", recv)
	}
	waitDone(t, c, testTimeout)
	if d := time.Since(start); d < 100*time.Millisecond || d > 3*time.Second {
		t.Errorf("declared dead after %v, want about 100ms", d)
	}
	if !errors.Is(c.Err(), ErrHeartbeatTimeout) {
		t.Errorf("Err = %v, want ErrHeartbeatTimeout", c.Err())
	}
}

// TestHeartbeatKeepsAlive: an idle server that does send heart-beats keeps
// the connection up well past the timeout. The margins are wide because a
// loaded CI machine can stall a process for a few hundred milliseconds.
func TestHeartbeatKeepsAlive(t *testing.T) {
	s := newFakeServer(t)
	s.heartBeat = "300,0"
	s.sendHB = 20 * time.Millisecond
	s.start()
	c := dial(t, s, Options{HeartBeat: [2]time.Duration{0, 300 * time.Millisecond}})
	select {
	case <-c.Done():
		t.Fatalf("connection died: %v", c.Err())
	case <-time.After(1500 * time.Millisecond): // 2.5 timeouts' worth of idleness
	}
	if err := c.SendReceipt(testCtx(t), "/queue/x", nil); err != nil {
		t.Fatal(err)
	}
}

// TestClientSendsHeartbeats: negotiated as max(cx, sy) and sent when idle.
func TestClientSendsHeartbeats(t *testing.T) {
	s := newFakeServer(t)
	s.heartBeat = "0,40"
	s.start()
	c := dial(t, s, Options{HeartBeat: [2]time.Duration{20 * time.Millisecond, 0}})
	if send, recv := c.HeartBeats(); send != 40*time.Millisecond || recv != 0 {
		t.Fatalf("HeartBeats = %v, %v; want 40ms, 0", send, recv)
	}
	for i := range 3 {
		select {
		case <-s.hbSeen:
		case <-time.After(testTimeout):
			t.Fatalf("heart-beat %d never arrived", i)
		}
	}
}

func TestHeartbeatNegotiation(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		offer            [2]time.Duration
		server           string
		wantSend, wantRx time.Duration
	}{
		{[2]time.Duration{0, 0}, "100,100", 0, 0},
		{[2]time.Duration{10 * ms, 10 * ms}, "0,0", 0, 0},
		{[2]time.Duration{10 * ms, 300 * ms}, "200,50", 50 * ms, 300 * ms},
		{[2]time.Duration{500 * ms, 0}, "", 0, 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.offer, tt.server), func(t *testing.T) {
			s := newFakeServer(t)
			s.heartBeat = tt.server
			s.sendHB = 20 * ms
			s.start()
			c := dial(t, s, Options{HeartBeat: tt.offer})
			if send, rx := c.HeartBeats(); send != tt.wantSend || rx != tt.wantRx {
				t.Errorf("HeartBeats = %v, %v; want %v, %v", send, rx, tt.wantSend, tt.wantRx)
			}
		})
	}
}

func TestDisconnectWaitsForReceipt(t *testing.T) {
	s := newFakeServer(t)
	s.disconnectGate = make(chan struct{})
	s.start()
	c := dial(t, s, Options{})
	errc := make(chan error, 1)
	go func() { errc <- c.Disconnect(testCtx(t)) }()
	s.waitFrame(t, frame.DISCONNECT)
	select {
	case err := <-errc:
		t.Fatalf("Disconnect returned before the RECEIPT: %v", err)
	case <-c.Done():
		t.Fatal("connection ended before the RECEIPT")
	default:
	}
	close(s.disconnectGate)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Disconnect = %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Disconnect did not return")
	}
	waitDone(t, c, 0)
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err = %v, want ErrClosed", c.Err())
	}
}

func TestDisconnectContext(t *testing.T) {
	s := newFakeServer(t)
	s.disconnectGate = make(chan struct{}) // never opened
	s.start()
	c := dial(t, s, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Disconnect(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Disconnect = %v, want DeadlineExceeded", err)
	}
	waitDone(t, c, 0) // closed regardless
}

func TestCloseIdempotent(t *testing.T) {
	s := newFakeServer(t).start()
	c := dial(t, s, Options{HeartBeat: [2]time.Duration{10 * time.Millisecond, 10 * time.Millisecond}})
	sub, err := c.Subscribe("/queue/c", AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := c.Close(); err != nil {
				t.Errorf("Close = %v", err)
			}
		})
	}
	wg.Wait()
	waitDone(t, c, 0)
	if err := c.Close(); err != nil {
		t.Errorf("Close again = %v", err)
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err = %v", c.Err())
	}
	if _, ok := <-sub.C(); ok {
		t.Error("subscription channel open after Close")
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Errorf("Unsubscribe after Close = %v", err)
	}
	if err := c.Send("/queue/c", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v", err)
	}
	if err := c.Disconnect(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Disconnect after Close = %v", err)
	}
}

func TestUnsubscribe(t *testing.T) {
	s := newFakeServer(t).start()
	c := dial(t, s, Options{})
	ctx := testCtx(t)
	a, err := c.SubscribeReceipt(ctx, "/queue/u", AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.SubscribeReceipt(ctx, "/queue/u", AckAuto, hdr("id", "mine"))
	if err != nil {
		t.Fatal(err)
	}
	if b.ID() != "mine" || a.ID() == b.ID() {
		t.Fatalf("ids %q %q", a.ID(), b.ID())
	}
	if _, err := c.Subscribe("/queue/u", AckAuto, hdr("id", "mine")); err == nil {
		t.Error("duplicate subscription id accepted")
	}
	if err := a.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if got := s.waitFrame(t, frame.UNSUBSCRIBE); got.Value("id") != a.ID() {
		t.Errorf("UNSUBSCRIBE = %v", got)
	}
	if err := a.Unsubscribe(); err != nil {
		t.Errorf("second Unsubscribe = %v", err)
	}
	if err := c.SendReceipt(ctx, "/queue/u", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, b); string(m.Body) != "x" {
		t.Errorf("b got %q", m.Body)
	}
	if m, ok := <-a.C(); ok {
		t.Errorf("unsubscribed channel delivered %v", m)
	}
}

// TestBackpressure: a consumer that stops reading stalls the reader (and so
// TCP), yet Close still returns and nothing delivered is lost or reordered.
func TestBackpressure(t *testing.T) {
	s := newFakeServer(t).start()
	c := dial(t, s, Options{Buffer: 2})
	ctx := testCtx(t)
	sub, err := c.SubscribeReceipt(ctx, "/queue/bp", AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	p := dial(t, s, Options{})
	const n = 50
	for i := range n {
		if err := p.Send("/queue/bp", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.SendReceipt(ctx, "/queue/other", nil); err != nil {
		t.Fatal(err) // the server has handled all n SENDs
	}
	for i := range 5 {
		if m := recv(t, sub); string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("message %d = %q", i, m.Body)
		}
	}
	// The reader is now blocked on the full channel; Close must free it.
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Fatal("Close hung on a blocked reader")
	}
	next := 5
	for m := range sub.C() {
		if string(m.Body) != fmt.Sprint(next) {
			t.Fatalf("after close got %q, want %d", m.Body, next)
		}
		next++
	}
}

// TestConcurrentNoLoss: many goroutines publishing through one Conn and a
// subscriber on another; every message arrives exactly once.
func TestConcurrentNoLoss(t *testing.T) {
	s := newFakeServer(t)
	s.noRecord = true
	s.start()
	s.heartBeat = "0,5" // the client's heart-beat sender competes with the writers
	ctx := testCtx(t)
	sc := dial(t, s, Options{})
	sub, err := sc.SubscribeReceipt(ctx, "/queue/n", AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	pc := dial(t, s, Options{HeartBeat: [2]time.Duration{5 * time.Millisecond, 0}})
	const workers, per = 8, 300
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				body := []byte(fmt.Sprintf("%d-%d", w, i))
				var err error
				if i%3 == 0 {
					err = pc.SendReceipt(ctx, "/queue/n", body)
				} else {
					err = pc.Send("/queue/n", body, hdr("x-w", fmt.Sprint(w)))
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	seen := map[string]bool{}
	for len(seen) < workers*per {
		m := recv(t, sub)
		if seen[string(m.Body)] {
			t.Fatalf("duplicate %q", m.Body)
		}
		seen[string(m.Body)] = true
	}
	wg.Wait()
}

// TestNoGoroutineLeak drives connections through every way of ending and
// checks the package's goroutines, and the process's, return to baseline.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("sessions", func(t *testing.T) {
		s := newFakeServer(t)
		// Heart-beats both ways so the sender goroutine exists too; the
		// 1s read timeout leaves room for a loaded machine.
		s.heartBeat = "500,10"
		s.sendHB = 10 * time.Millisecond
		s.start()
		hb := Options{HeartBeat: [2]time.Duration{10 * time.Millisecond, 500 * time.Millisecond}, Buffer: 1}
		ctx := testCtx(t)
		for _, end := range []string{"close", "disconnect", "error", "drop", "blocked"} {
			c := dial(t, s, hb)
			sub, err := c.SubscribeReceipt(ctx, "/queue/leak-"+end, AckClient)
			if err != nil {
				t.Fatal(err)
			}
			if end == "blocked" {
				// More than Buffer: the reader blocks delivering, with
				// nobody receiving, when Close arrives.
				for range 5 {
					if err := c.Send("/queue/leak-blocked", nil); err != nil {
						t.Fatal(err)
					}
				}
			} else {
				if err := c.SendReceipt(ctx, "/queue/leak-"+end, nil); err != nil {
					t.Fatal(err)
				}
				recv(t, sub)
			}
			switch end {
			case "close", "blocked":
				c.Close()
			case "disconnect":
				if err := c.Disconnect(ctx); err != nil {
					t.Fatal(err)
				}
			case "error":
				c.Send(destError, nil)
			case "drop":
				c.Send(destDrop, nil)
			}
			waitDone(t, c, testTimeout)
		}
	})
	// Cleanups have stopped the server; all that remains is exit latency.
	deadline := time.Now().Add(testTimeout)
	for running.Load() != 0 || runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("leak: %d package goroutines, %d total vs %d before\n%s",
				running.Load(), runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond) // polling for goroutine exit; there is no event to wait on
	}
}

func TestServerErrorText(t *testing.T) {
	tests := []struct {
		msg, body, want string
	}{
		{"boom", "", "stomp server error: boom"},
		{"boom", "boom\n", "stomp server error: boom"},
		{"", "details", "stomp server error: (no message header): details"},
		{"bad", strings.Repeat("x", 300), "stomp server error: bad: " + strings.Repeat("x", 200) + "…"},
	}
	for _, tt := range tests {
		e := newServerError(&frame.Frame{Command: frame.ERROR, Headers: []frame.Header{{Key: "message", Value: tt.msg}}, Body: []byte(tt.body)})
		if tt.msg == "" {
			e = newServerError(&frame.Frame{Command: frame.ERROR, Body: []byte(tt.body)})
		}
		if e.Error() != tt.want {
			t.Errorf("Error() = %q, want %q", e.Error(), tt.want)
		}
	}
}

func BenchmarkSend(b *testing.B) {
	s := newFakeServer(b)
	s.noRecord = true
	s.start()
	c, err := Dial(context.Background(), s.addr(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	body := make([]byte, 256)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Send("/queue/bench", body); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.SendReceipt(context.Background(), "/queue/bench", nil); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	s := newFakeServer(b)
	s.noRecord = true
	s.start()
	c, err := Dial(context.Background(), s.addr(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	sub, err := c.SubscribeReceipt(context.Background(), "/queue/bench", AckAuto)
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 256)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Send("/queue/bench", body); err != nil {
			b.Fatal(err)
		}
		<-sub.C()
	}
}
