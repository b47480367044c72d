package stompproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"handover/frame"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
	"handover/stompclient"
)

// TestResumeReplays: when the master changes, the client's connection stays
// open; the new broker gets the client's CONNECT, its SUBSCRIBE, the SEND
// still waiting for its RECEIPT (same stamp) and the open transaction, in
// that order; the client never sees a second CONNECTED, and its pending
// SendReceipt completes.
func TestResumeReplays(t *testing.T) {
	a, b := startFake(t, "1.2", "0,0"), startFake(t, "1.2", "0,0")
	p := proxytest.NewPicker(a.addr())
	svc := startService(t, p, nil)
	c := dialClient(t, svc.Addr().String(), stompclient.Options{Login: "app", Headers: []frame.Header{hdr("x-app", "1")}})
	ca := a.next(t)

	sub, err := c.SubscribeReceipt(ctxT(t, 5*time.Second), "/queue/in", stompclient.AckClientIndividual, hdr("activemq.prefetchSize", "7"))
	if err != nil {
		t.Fatal(err)
	}
	subF := ca.expect(t, frame.SUBSCRIBE)
	if err := c.SendReceipt(ctxT(t, 5*time.Second), "/queue/out", []byte("confirmed")); err != nil {
		t.Fatal(err)
	}
	ca.expect(t, frame.SEND)

	a.autoReceipt.Store(false)
	pending := make(chan error, 1)
	go func() { pending <- c.SendReceipt(ctxT(t, 10*time.Second), "/queue/out", []byte("pending"), persistent) }()
	sent := ca.expect(t, frame.SEND)
	if sent.Value(HeaderProducer) == "" || sent.Value(HeaderSeq) != "2" {
		t.Fatalf("SEND not stamped: %v", sent)
	}
	if err := c.Begin("tx1"); err != nil {
		t.Fatal(err)
	}
	ca.expect(t, frame.BEGIN)
	if err := c.Send("/queue/out", []byte("in tx"), hdr("transaction", "tx1")); err != nil {
		t.Fatal(err)
	}
	ca.expect(t, frame.SEND)

	p.Set(b.addr())
	cb := b.next(t)
	for _, k := range []string{"accept-version", "host", "login", "x-app"} {
		if cb.connect.Value(k) != ca.connect.Value(k) {
			t.Fatalf("CONNECT replayed with %s=%q, first was %q", k, cb.connect.Value(k), ca.connect.Value(k))
		}
	}
	s2 := cb.expect(t, frame.SUBSCRIBE)
	for _, k := range []string{"id", "destination", "ack", "activemq.prefetchSize"} {
		if s2.Value(k) != subF.Value(k) {
			t.Fatalf("SUBSCRIBE replayed with %s=%q, first was %q", k, s2.Value(k), subF.Value(k))
		}
	}
	re := cb.expect(t, frame.SEND)
	if string(re.Body) != "pending" || re.Value(HeaderProducer) != sent.Value(HeaderProducer) || re.Value(HeaderSeq) != "2" {
		t.Fatalf("replayed SEND %v %q, want the pending one with its stamp", re, re.Body)
	}
	cb.expect(t, frame.BEGIN)
	if f := cb.expect(t, frame.SEND); string(f.Body) != "in tx" || f.Value("transaction") != "tx1" {
		t.Fatalf("transaction frame replayed as %v", f)
	}
	select {
	case err := <-pending:
		if err != nil {
			t.Fatalf("pending SendReceipt: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending SendReceipt did not complete after the resume")
	}
	// The session carries on: the client commits, and gets messages.
	if err := c.SendFrame(ctxT(t, 5*time.Second), frame.New(frame.COMMIT, "transaction", "tx1"), true); err != nil {
		t.Fatal(err)
	}
	cb.expect(t, frame.COMMIT)
	cb.send(frame.New(frame.MESSAGE, "subscription", s2.Value("id"), "message-id", "n1", "ack", "n1", "destination", "/queue/in"))
	if m := recv(t, sub); m.Value("message-id") != "n1" {
		t.Fatalf("got %v", m)
	}
	if c.Err() != nil {
		t.Fatalf("client connection ended: %v", c.Err())
	}
	st := svc.Status()
	if st.Resumed != 1 || st.FramesReplayed != 4 || st.DuplicatesDropped != 1 || st.Active != 1 || st.Backends[b.addr()] != 1 {
		t.Fatalf("status %+v", st)
	}
	if p.Rechecks.Load() == 0 {
		t.Fatal("no health re-check asked for after the upstream loss")
	}
}

// TestHeartbeatsDuringPause: while there is no master for longer than the
// client's heart-beat timeout, the client keeps hearing from the sidecar,
// and frames it sends meanwhile are forwarded after the resume.
func TestHeartbeatsDuringPause(t *testing.T) {
	a := startFake(t, "1.2", "50,50")
	p := proxytest.NewPicker(a.addr())
	svc := startService(t, p, nil)
	// The client wants to hear from the server every 250ms and gives up
	// after 500ms of silence.
	c := dialClient(t, svc.Addr().String(), stompclient.Options{HeartBeat: [2]time.Duration{100 * time.Millisecond, 250 * time.Millisecond}})
	if send, recv := c.HeartBeats(); send != 100*time.Millisecond || recv != 250*time.Millisecond {
		t.Fatalf("negotiated %v %v", send, recv)
	}
	p.Set() // no master: the session pauses
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := svc.Status(); st.Paused != 1 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if err := c.Send("/queue/x", []byte("during the pause")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := c.Err(); err != nil {
		t.Fatalf("client gave up during the pause: %v", err)
	}
	for len(a.frames) > 0 {
		<-a.frames
	}
	p.Set(a.addr())
	if f := a.expectAny(t, frame.SEND); string(f.Body) != "during the pause" {
		t.Fatalf("buffered frame forwarded as %v", f)
	}
	if err := c.SendReceipt(ctxT(t, 5*time.Second), "/queue/x", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if st := svc.Status(); st.Resumed < 1 {
		t.Fatalf("status %+v", st)
	}
}

// TestUpstreamHeartbeatTimeout: a broker that stops sending heart-beats (a
// frozen master) is given up on after twice its interval, and the session
// resumes.
func TestUpstreamHeartbeatTimeout(t *testing.T) {
	a := startFake(t, "1.2", "50,50")
	p := proxytest.NewPicker(a.addr())
	svc := startService(t, p, nil)
	// We expect the broker's beats every 250ms, so give up after 500ms.
	c := dialClient(t, svc.Addr().String(), stompclient.Options{HeartBeat: [2]time.Duration{100 * time.Millisecond, 250 * time.Millisecond}})
	a.next(t)
	a.frozen.Store(true)
	a.next(t)
	a.frozen.Store(false)
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := svc.Status(); st.Resumed < 1 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if err := c.SendReceipt(ctxT(t, 5*time.Second), "/queue/x", []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// TestOverLimitCloses: a session holding more than MaxReplayBytes is closed
// on its next upstream loss instead of resumed, as TCP mode would.
func TestOverLimitCloses(t *testing.T) {
	a := startFake(t, "1.2", "0,0")
	p := proxytest.NewPicker(a.addr())
	svc := startService(t, p, func(o *Options) { o.MaxReplayBytes = 2048 })
	c := dialClient(t, svc.Addr().String(), stompclient.Options{})
	ca := a.next(t)
	a.autoReceipt.Store(false)
	go c.SendReceipt(context.Background(), "/queue/big", make([]byte, 4096))
	ca.expect(t, frame.SEND)
	ca.close()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("over-limit session not closed on upstream loss")
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := svc.Status(); st.Unresumable != 1 || st.Resumed != 0 || st.Active != 0 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// TestCommitInFlight: a COMMIT whose RECEIPT never came is reported with an
// ERROR naming the transaction, never re-sent.
func TestCommitInFlight(t *testing.T) {
	a, b := startFake(t, "1.2", "0,0"), startFake(t, "1.2", "0,0")
	p := proxytest.NewPicker(a.addr())
	svc := startService(t, p, nil)
	c := dialClient(t, svc.Addr().String(), stompclient.Options{})
	ca := a.next(t)
	c.Begin("pay-42")
	c.Send("/queue/ledger", []byte("debit"), hdr("transaction", "pay-42"))
	ca.expect(t, frame.BEGIN)
	ca.expect(t, frame.SEND)
	a.autoReceipt.Store(false)
	done := make(chan error, 1)
	go func() {
		done <- c.SendFrame(ctxT(t, 10*time.Second), frame.New(frame.COMMIT, "transaction", "pay-42", "receipt", "commit-1"), true)
	}()
	ca.expect(t, frame.COMMIT)
	p.Set(b.addr())
	var se *stompclient.ServerError
	select {
	case err := <-done:
		if !errors.As(err, &se) || !strings.Contains(se.Message, "pay-42") || se.Frame.Value("receipt-id") != "commit-1" {
			t.Fatalf("want an ERROR naming pay-42 with receipt-id commit-1, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer to the COMMIT")
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client not closed after the ERROR")
	}
	select {
	case cb := <-b.conns:
		t.Fatalf("the session went on to the new master (CONNECT %v)", cb.connect)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestVersionMismatch: a new master that negotiates another version cannot
// carry the session: the client gets an ERROR.
func TestVersionMismatch(t *testing.T) {
	a, b := startFake(t, "1.2", "0,0"), startFake(t, "1.1", "0,0")
	p := proxytest.NewPicker(a.addr())
	svc := startService(t, p, nil)
	c := dialClient(t, svc.Addr().String(), stompclient.Options{})
	a.next(t)
	p.Set(b.addr())
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session not closed")
	}
	var se *stompclient.ServerError
	if !errors.As(c.Err(), &se) || !strings.Contains(se.Message, "1.1") {
		t.Fatalf("want an ERROR about the version, got %v", c.Err())
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := svc.Status(); st.Unresumable != 1 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// TestNoMasterInTime: a session paused for longer than Timeout is closed.
func TestNoMasterInTime(t *testing.T) {
	a := startFake(t, "1.2", "0,0")
	p := proxytest.NewPicker(a.addr())
	svc := startService(t, p, func(o *Options) { o.Timeout = 300 * time.Millisecond })
	c := dialClient(t, svc.Addr().String(), stompclient.Options{})
	ca := a.next(t)
	p.Set()
	ca.close()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session not closed after Timeout without a master")
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := svc.Status(); st.Unresumable != 1 || st.Active != 0 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// TestClientProtocolError: a client frame over the limits gets an ERROR and
// the connection closes, as brokerd does.
func TestClientProtocolError(t *testing.T) {
	a := startFake(t, "1.2", "0,0")
	svc := startService(t, proxytest.NewPicker(a.addr()), func(o *Options) { o.Limits = frame.Limits{MaxBody: 100} })
	c := dialClient(t, svc.Addr().String(), stompclient.Options{})
	c.Send("/queue/x", make([]byte, 200))
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not closed")
	}
	var se *stompclient.ServerError
	if !errors.As(c.Err(), &se) || !strings.Contains(se.Message, "too large") {
		t.Fatalf("want an ERROR about the body size, got %v", c.Err())
	}
}

func TestOptionsValidate(t *testing.T) {
	if err := (Options{}).Validate(); err == nil || !strings.Contains(err.Error(), "name") || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("empty options: %v", err)
	}
	bad := Options{Name: "x", Listen: "x", MaxReplayBytes: -1, BackoffMultiplier: 0.5, InitialReconnectDelay: 2 * time.Second}
	err := bad.Validate()
	for _, want := range []string{"max_replay_bytes", "backoff_multiplier", "max_reconnect_delay"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want a %s problem in %v", want, err)
		}
	}
	if d := (Options{}).withDefaults(); d.MaxReplayBytes != DefaultMaxReplayBytes || d.Timeout != 30*time.Second {
		t.Fatalf("defaults %+v", d)
	}
}

// TestFrameThenEOLFlushed: many clients end each frame with NUL and an EOL;
// a frame followed by such an EOL (or by part of the next frame) must still
// reach the broker at once, not wait for the next frame.
func TestFrameThenEOLFlushed(t *testing.T) {
	a := startFake(t, "1.2", "0,0")
	nc, r := connectRawClient(t, a, "CONNECT\naccept-version:1.2\nhost:/\n\n\x00\n")
	ca := a.next(t)
	io.WriteString(nc, "SEND\ndestination:/queue/a\nreceipt:r1\n\nhello\x00\nSEND\ndestination:/queue/a\n\nhal")
	select {
	case f := <-ca.frames:
		if f.Command != frame.SEND || string(f.Body) != "hello" {
			t.Fatalf("got %v", f)
		}
	case <-time.After(time.Second):
		t.Fatal("a complete frame waited behind the next, partial one")
	}
	nc.SetReadDeadline(time.Now().Add(time.Second))
	if f, err := r.Read(); err != nil || f.Command != frame.RECEIPT || f.Value("receipt-id") != "r1" {
		t.Fatalf("RECEIPT: %v %v", f, err)
	}
}

// TestPlainSendsPassUnchanged: a burst mixing frames the sidecar passes on
// as raw bytes (SENDs without receipt or transaction) with frames it parses
// and tracks reaches the broker in the client's order, the raw ones exactly
// as written (no stamp, headers and binary bodies intact), the tracked ones
// stamped or rewritten as before.
func TestPlainSendsPassUnchanged(t *testing.T) {
	a := startFake(t, "1.2", "0,0")
	nc, r := connectRawClient(t, a, "CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
	ca := a.next(t)
	burst := "SEND\ndestination:/queue/a\nn:1\n\none\x00\n" +
		"SEND\ndestination:/queue/a\nn:2\ncontent-length:5\n\nt\x00w\x00o\x00" +
		"SEND\ndestination:/queue/a\nn:3\nreceipt:r3\n\nthree\x00" +
		"BEGIN\ntransaction:tx\n\n\x00" +
		"SEND\ndestination:/queue/a\nn:4\ntransaction:tx\n\nfour\x00" +
		"COMMIT\ntransaction:tx\n\n\x00" +
		"SEND\r\ndestination:/queue/a\r\nn:5\r\n\r\nfive\x00" +
		"SEND\ndestination:/queue/a\nn:6\n\nsix\x00" +
		"SEND\ndestination:/queue/a\nn:7\nreceipt:r7\n\nseven\x00"
	// Cut inside the body of the content-length SEND: the sidecar waits
	// for the rest of a frame it can pass on (frame.Reader.FillTo).
	cut := strings.Index(burst, "t\x00w") + 2
	io.WriteString(nc, burst[:cut])
	time.Sleep(50 * time.Millisecond)
	io.WriteString(nc, burst[cut:])

	type want struct {
		cmd, n, body string
		stamped      bool
	}
	for _, w := range []want{
		{frame.SEND, "1", "one", false},
		{frame.SEND, "2", "t\x00w\x00o", false},
		{frame.SEND, "3", "three", true},
		{frame.BEGIN, "", "", false},
		{frame.SEND, "4", "four", false},
		{frame.COMMIT, "", "", false},
		{frame.SEND, "5", "five", false},
		{frame.SEND, "6", "six", false},
		{frame.SEND, "7", "seven", true},
	} {
		f := ca.expect(t, w.cmd)
		if f.Value("n") != w.n || string(f.Body) != w.body {
			t.Fatalf("broker got %v n:%q body %q, want n:%q body %q", f.Command, f.Value("n"), f.Body, w.n, w.body)
		}
		_, stamped := f.Get(HeaderSeq)
		if stamped != w.stamped {
			t.Fatalf("SEND n:%s stamped = %v, want %v (%v)", w.n, stamped, w.stamped, f)
		}
		// The sidecar's encoder always writes a content-length: frames
		// without one came through as raw bytes.
		if _, cl := f.Get("content-length"); (w.n == "1" || w.n == "6") && cl {
			t.Fatalf("SEND n:%s was re-encoded, not passed on as written: %v", w.n, f.Headers)
		}
	}
	for _, id := range []string{"r3", "r7"} {
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err := r.Read()
		for err == nil && f.Command == frame.RECEIPT && f.Value("receipt-id") != id {
			f, err = r.Read() // BEGIN's and COMMIT's, which the sidecar asked for
		}
		if err != nil || f.Value("receipt-id") != id {
			t.Fatalf("RECEIPT %s: %v %v", id, f, err)
		}
	}
}

// connectRawClient starts a sidecar in front of a, connects a raw client
// that sends connect (exact bytes), and returns it once CONNECTED.
func connectRawClient(t *testing.T, a *fakeBroker, connect string) (net.Conn, *frame.Reader) {
	t.Helper()
	svc := startService(t, proxytest.NewPicker(a.addr()), nil)
	nc, err := net.Dial("tcp", svc.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	r := frame.NewReader(nc, frame.Limits{})
	io.WriteString(nc, connect)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if f, err := r.Read(); err != nil || f.Command != frame.CONNECTED {
		t.Fatalf("CONNECTED: %v %v", f, err)
	}
	return nc, r
}
