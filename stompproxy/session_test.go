package stompproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"handover/frame"
	"handover/internal/serve"
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
	bad := Options{Settings: serve.Settings{Name: "x", Listen: "x", BackoffMultiplier: 0.5, InitialReconnectDelay: 2 * time.Second},
		MaxReplayBytes: -1, ClientWriteTimeout: -time.Second}
	err := bad.Validate()
	for _, want := range []string{"max_replay_bytes", "backoff_multiplier", "max_reconnect_delay", "client_write_timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want a %s problem in %v", want, err)
		}
	}
	if d := (Options{}).withDefaults(); d.MaxReplayBytes != DefaultMaxReplayBytes || d.Timeout != 30*time.Second ||
		d.ClientWriteTimeout != DefaultClientWriteTimeout {
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

// TestStampedSendWire: at every STOMP version, a receipted SEND the client
// writes plainly reaches the broker with the stamp and an internal receipt
// spliced in after the command line and every other byte as written; the
// broker's RECEIPT reaches the client under the client's receipt id,
// encoded for its version; after a failover the SEND not yet confirmed is
// replayed once, byte for byte but for a fresh receipt id, and the one
// confirmed is not.
func TestStampedSendWire(t *testing.T) {
	for _, tc := range []struct {
		v                  frame.Version
		connect, connected string
		receiptID          string // the client's "r:1" as the sidecar must write it
	}{
		{frame.V10, "CONNECT\nlogin:app\n\n\x00", "CONNECTED\nsession:s\n\n\x00", "r:1"},
		{frame.V11, "CONNECT\naccept-version:1.1\nhost:/\n\n\x00", "CONNECTED\nversion:1.1\n\n\x00", `r\c1`},
		{frame.V12, "CONNECT\naccept-version:1.2\nhost:/\n\n\x00", "CONNECTED\nversion:1.2\n\n\x00", `r\c1`},
	} {
		t.Run(string(tc.v), func(t *testing.T) {
			b := startRawBroker(t)
			svc := startService(t, proxytest.NewPicker(b.addr()), nil)
			nc, err := net.Dial("tcp", svc.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { nc.Close() })
			cr := bufio.NewReader(nc)
			io.WriteString(nc, tc.connect)
			c1 := b.accept(t, tc.connect, tc.connected)
			expectBytes(t, nc, cr, tc.connected)

			io.WriteString(nc, "SEND\ndestination:/queue/a\nreceipt:r:1\nx:y\ncontent-length:3\n\none\x00\n"+
				"\n\nSEND\nreceipt:r2\ndestination:/queue/a\n\ntwo\x00")
			s1 := c1.readFrame(t)
			producer := regexp.MustCompile(`\nhandover-producer:([0-9a-f]+-[0-9]+)\n`).FindStringSubmatch(s1)
			if producer == nil {
				t.Fatalf("SEND not stamped: %q", s1)
			}
			stamp := func(rid, seq string) string {
				return "SEND\nreceipt:handover-" + rid + "\nhandover-producer:" + producer[1] + "\nhandover-seq:" + seq + "\n"
			}
			if want := stamp("1", "1") + "destination:/queue/a\nx:y\ncontent-length:3\n\none\x00"; s1 != want {
				t.Fatalf("broker got\n%q\nwant\n%q", s1, want)
			}
			s2 := c1.readFrame(t)
			if want := stamp("2", "2") + "destination:/queue/a\n\ntwo\x00"; s2 != want {
				t.Fatalf("broker got\n%q\nwant\n%q", s2, want)
			}
			io.WriteString(c1.nc, "RECEIPT\nreceipt-id:handover-1\n\n\x00")
			expectBytes(t, nc, cr, "RECEIPT\nreceipt-id:"+tc.receiptID+"\n\n\x00")

			// The broker dies before answering the second SEND.
			c1.nc.Close()
			c2 := b.accept(t, tc.connect, tc.connected)
			if re, want := c2.readFrame(t), stamp("3", "2")+"destination:/queue/a\n\ntwo\x00"; re != want {
				t.Fatalf("replay\n%q\nwant\n%q", re, want)
			}
			io.WriteString(c2.nc, "RECEIPT\nreceipt-id:handover-3\n\n\x00")
			expectBytes(t, nc, cr, "RECEIPT\nreceipt-id:r2\n\n\x00")
			c2.quiet(t)
			expectQuiet(t, nc, cr)
			if st := svc.Status(); st.DuplicatesDropped != 1 || st.FramesReplayed != 1 {
				t.Fatalf("status %+v, want one replayed SEND confirmed", st)
			}

			// The session carries on; a RECEIPT with more than its id (a
			// header, a body) takes the Frame path, which keeps the rest.
			io.WriteString(nc, "SEND\ndestination:/queue/a\nreceipt:r3\n\n\x00")
			if s3, want := c2.readFrame(t), stamp("4", "3")+"destination:/queue/a\n\n\x00"; s3 != want {
				t.Fatalf("broker got\n%q\nwant\n%q", s3, want)
			}
			io.WriteString(c2.nc, "RECEIPT\nreceipt-id:handover-4\nx:1\n\n\x00")
			expectBytes(t, nc, cr, "RECEIPT\nreceipt-id:r3\nx:1\n\n\x00")
			io.WriteString(nc, "SEND\ndestination:/queue/a\nreceipt:r4\n\n\x00")
			c2.readFrame(t)
			io.WriteString(c2.nc, "RECEIPT\nreceipt-id:handover-5\n\nok\x00")
			expectBytes(t, nc, cr, "RECEIPT\nreceipt-id:r4\ncontent-length:2\n\nok\x00")
		})
	}
}

// rawBroker is a broker a test speaks to byte by byte.
type rawBroker struct {
	ln    net.Listener
	conns chan net.Conn
}

type rawConn struct {
	nc net.Conn
	br *bufio.Reader
}

func startRawBroker(t *testing.T) *rawBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBroker{ln: ln, conns: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			b.conns <- nc
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for len(b.conns) > 0 {
			(<-b.conns).Close()
		}
	})
	return b
}

func (b *rawBroker) addr() string { return b.ln.Addr().String() }

// accept takes the next connection, which must send connect, and answers
// connected.
func (b *rawBroker) accept(t *testing.T, connect, connected string) *rawConn {
	t.Helper()
	select {
	case nc := <-b.conns:
		t.Cleanup(func() { nc.Close() })
		c := &rawConn{nc: nc, br: bufio.NewReader(nc)}
		if f := c.readFrame(t); f != connect {
			t.Fatalf("broker got %q, want the client's CONNECT %q", f, connect)
		}
		io.WriteString(nc, connected)
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection reached the broker in 10s")
		return nil
	}
}

// readFrame returns the next frame's bytes, up to its NUL (the bodies here
// hold none).
func (c *rawConn) readFrame(t *testing.T) string {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	s, err := c.br.ReadString(0)
	if err != nil {
		t.Fatalf("broker read %q: %v", s, err)
	}
	return s
}

// quiet asserts the broker gets nothing more for a while.
func (c *rawConn) quiet(t *testing.T) {
	t.Helper()
	expectQuiet(t, c.nc, c.br)
}

// expectBytes reads len(want) bytes from r (over nc) and asserts they are
// want.
func expectBytes(t *testing.T, nc net.Conn, r *bufio.Reader, want string) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if n, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("read %q: %v; want %q", got[:n], err, want)
	}
	if string(got) != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

// expectQuiet asserts nothing more arrives on r (over nc) for 200ms.
func expectQuiet(t *testing.T, nc net.Conn, r *bufio.Reader) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if b, err := r.ReadByte(); err == nil {
		rest, _ := r.Peek(r.Buffered())
		t.Fatalf("unexpected %q", append([]byte{b}, rest...))
	}
}

// TestPickPlain: which frames each direction takes in wire form, and
// whether alone (one frame, handled apart) or in a run passed unchanged.
func TestPickPlain(t *testing.T) {
	for _, tc := range []struct {
		name     string
		broker   bool // the broker's frames (pickReceipt), not the client's (pickPlain)
		in       string
		n        int // frames taken
		alone    bool
		wantHdrs string
	}{
		{"unreceipted run", false, "SEND\nd:/q/a\n\n\x00SEND\nd:/q/a\n\n\x00BEGIN\ntransaction:t\n\n\x00", 2, false, ""},
		{"receipted alone", false, "SEND\nd:/q/a\nreceipt:r\n\n\x00SEND\nd:/q/a\n\n\x00", 1, true, "d:/q/a\nreceipt:r\n"},
		{"receipted ends a run", false, "SEND\nd:/q/a\n\n\x00SEND\nd:/q/a\nreceipt:r\n\n\x00", 1, false, ""},
		{"receipted after receipted", false, "SEND\nreceipt:r\n\n\x00SEND\nreceipt:s\n\n\x00", 1, true, "receipt:r\n"},
		{"transaction", false, "SEND\nd:/q/a\nreceipt:r\ntransaction:t\n\n\x00", 0, false, ""},
		{"the client's own stamp", false, "SEND\nreceipt:r\nhandover-seq:9\n\n\x00", 0, false, ""},
		{"the client's own producer", false, "SEND\nhandover-producer:x\n\n\x00", 0, false, ""},
		{"not a SEND", false, "SUBSCRIBE\nid:1\nreceipt:r\n\n\x00", 0, false, ""},
		{"receipt for us", true, "RECEIPT\nreceipt-id:handover-7\n\n\x00RECEIPT\nreceipt-id:handover-8\n\n\x00", 1, true, "receipt-id:handover-7\n"},
		{"receipt for the client", true, "RECEIPT\nreceipt-id:r7\n\n\x00", 0, false, ""},
		{"receipt with more", true, "RECEIPT\nreceipt-id:handover-7\nx:1\n\n\x00", 0, false, ""},
		{"MESSAGE", true, "MESSAGE\nreceipt-id:handover-7\n\n\x00", 0, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &session{}
			r := frame.NewReader(strings.NewReader(tc.in), frame.Limits{})
			if err := r.FillTo(len(tc.in)); err != nil {
				t.Fatal(err)
			}
			pick, st := s.pickPlain, &s.plain
			if tc.broker {
				pick, st = s.pickReceipt, &s.rcpt
			}
			raw, _ := r.PeekPlain(pick)
			if got := bytes.Count(raw, []byte{0}); got != tc.n || st.alone != tc.alone || string(st.hdrs) != tc.wantHdrs {
				t.Fatalf("took %d frames (%q), alone=%v hdrs %q; want %d, alone=%v hdrs %q", got, raw, st.alone, st.hdrs, tc.n, tc.alone, tc.wantHdrs)
			}
		})
	}
}
