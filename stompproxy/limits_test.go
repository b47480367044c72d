package stompproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"handover/brokerd"
	"handover/frame"
	"handover/internal/serve"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
	"handover/stompclient"
)

// rawClient is a STOMP client connection without a client library, to
// write frames (or bytes) as a careless or hostile client would.
type rawClient struct {
	nc *net.TCPConn
	r  *frame.Reader
	w  *frame.Writer
}

// dialRaw connects to addr from source IP address from ("" for any).
func dialRaw(t testing.TB, addr, from string) *rawClient {
	t.Helper()
	var d net.Dialer
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	nc, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Skipf("no loopback address %s here (only Linux has all of 127/8): %v", from, err)
	}
	if err != nil {
		t.Fatalf("dial %s from %q: %v", addr, from, err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawClient{nc: nc.(*net.TCPConn), r: frame.NewReader(nc, frame.Limits{MaxBody: -1}), w: frame.NewWriter(nc)}
}

func (c *rawClient) send(t testing.TB, f *frame.Frame) {
	t.Helper()
	if err := c.w.Write(f); err != nil {
		t.Fatal(err)
	}
	if err := c.w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// read returns the next frame, failing after d.
func (c *rawClient) read(t testing.TB, d time.Duration) *frame.Frame {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(d))
	f, err := c.r.Read()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return f
}

// connect sends CONNECT and expects CONNECTED.
func (c *rawClient) connect(t testing.TB) {
	t.Helper()
	c.send(t, frame.New(frame.CONNECT, "accept-version", "1.2", "host", "/"))
	if f := c.read(t, 10*time.Second); f.Command != frame.CONNECTED {
		t.Fatalf("CONNECT answered with %v", f)
	}
}

// expectError reads frames until an ERROR, whose message must contain
// want, and then expects the connection closed, within d.
func (c *rawClient) expectError(t testing.TB, want string, d time.Duration) *frame.Frame {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(d))
	f, err := c.r.Read()
	for err == nil && f.Command != frame.ERROR {
		f, err = c.r.Read()
	}
	if err != nil {
		t.Fatalf("want an ERROR about %q, got %v", want, err)
	}
	if !strings.Contains(f.Value("message"), want) {
		t.Fatalf("want an ERROR about %q, got %v %q", want, f, f.Body)
	}
	c.expectClosed(t, d)
	return f
}

// expectClosed expects the connection to end (EOF or a reset) within d,
// with no frame before.
func (c *rawClient) expectClosed(t testing.TB, d time.Duration) {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(d))
	f, err := c.r.Read()
	var ne net.Error
	switch {
	case err == nil:
		t.Fatalf("want the connection closed, got %v", f)
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("connection still open after %v", d)
	}
}

// TestConnectTimeout: a client has ConnectTimeout from accept to send its
// whole CONNECT frame. The deadline does not move as bytes arrive: a client
// trickling its CONNECT a byte at a time (a slowloris) is closed on time,
// with an ERROR, as a silent one is; a client that connected in time is
// not held to it afterwards.
func TestConnectTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	a := startFake(t, "1.2", "0,0")
	svc := startService(t, proxytest.NewPicker(a.addr()), func(o *Options) { o.ConnectTimeout = timeout })

	tests := []struct {
		name string
		// trickle is how often the client sends the next byte of a CONNECT
		// that never ends; zero sends nothing.
		trickle time.Duration
	}{
		{"silent", 0},
		{"a byte every 50ms", 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, svc.Addr().String(), "")
			start := time.Now()
			stop := make(chan struct{})
			trickled := make(chan struct{})
			go func() {
				defer close(trickled)
				if tt.trickle == 0 {
					return
				}
				connect := "CONNECT\naccept-version:1.2\nhost:/\nlogin:" + strings.Repeat("x", 1000)
				// The pauses are the attack, not synchronization.
				tick := time.NewTicker(tt.trickle)
				defer tick.Stop()
				for i := 0; i < len(connect); i++ {
					if _, err := c.nc.Write([]byte{connect[i]}); err != nil {
						return
					}
					select {
					case <-tick.C:
					case <-stop:
						return
					}
				}
			}()
			c.expectError(t, "no whole CONNECT frame within 300ms", 10*timeout)
			close(stop)
			<-trickled
			if took := time.Since(start); took < timeout-20*time.Millisecond {
				t.Errorf("closed after %v, before the %v deadline", took, timeout)
			}
		})
	}
	// Counted once the session's goroutines are gone, just after the close.
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := proxytest.Counter(t, svc.metrics.closed.WithLabelValues("stomp", reasonConnectLate)); got != float64(len(tests)) {
			return fmt.Errorf("closed_total{reason=%q} = %v, want %v", reasonConnectLate, got, len(tests))
		}
		return nil
	})

	t.Run("connected in time", func(t *testing.T) {
		c := dialRaw(t, svc.Addr().String(), "")
		c.connect(t)
		a.next(t)
		// Quiet past the deadline (no heart-beats were negotiated): the
		// session must stay.
		time.Sleep(2 * timeout)
		c.send(t, frame.New(frame.SEND, "destination", "/queue/a", "receipt", "r1"))
		if f := c.read(t, 10*time.Second); f.Command != frame.RECEIPT || f.Value("receipt-id") != "r1" {
			t.Fatalf("after the connect deadline: %v", f)
		}
	})
}

// TestConnectionCapsSTOMP: a client over max_connections or
// max_connections_per_source gets an ERROR saying so, is closed at once and
// counted; a client from another address still gets in, and so does one
// once a place is free again.
func TestConnectionCapsSTOMP(t *testing.T) {
	tests := []struct {
		name           string
		max, perSource int
		from           []string // each client's source address, in order
		want           []string // "" for connected, else the reason refused
	}{
		{"max_connections", 2, 0,
			[]string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, []string{"", "", serve.RejectMax}},
		{"max_connections_per_source", 0, 1,
			[]string{"127.0.0.1", "127.0.0.1", "127.0.0.2"}, []string{"", serve.RejectPerSource, ""}},
	}
	message := map[string]string{
		serve.RejectMax:       "too many connections",
		serve.RejectPerSource: "too many connections from this address",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := startFake(t, "1.2", "0,0")
			svc := startService(t, proxytest.NewPicker(a.addr()), func(o *Options) {
				o.MaxConnections, o.MaxConnectionsPerSource = tt.max, tt.perSource
			})
			var first *rawClient
			refused := map[string]float64{}
			for i, from := range tt.from {
				c := dialRaw(t, svc.Addr().String(), from)
				if tt.want[i] == "" {
					c.connect(t)
					if first == nil {
						first = c
					}
					continue
				}
				c.send(t, frame.New(frame.CONNECT, "accept-version", "1.2", "host", "/"))
				if f := c.expectError(t, message[tt.want[i]], 5*time.Second); f.Value("message") != message[tt.want[i]] {
					t.Fatalf("refused with %q, want %q", f.Value("message"), message[tt.want[i]])
				}
				refused[tt.want[i]]++
			}
			for _, why := range []string{serve.RejectMax, serve.RejectPerSource} {
				if got := proxytest.Counter(t, svc.metrics.rejected.WithLabelValues("stomp", why)); got != refused[why] {
					t.Errorf("rejected_total{reason=%q} = %v, want %v", why, got, refused[why])
				}
			}
			if got := svc.Status().Accepted; got != uint64(len(tt.from))-uint64(len(refused)) {
				t.Errorf("accepted %d sessions, want %d", got, len(tt.from)-len(refused))
			}

			first.nc.Close()
			testutil.Eventually(t, 10*time.Second, func() error {
				if st := svc.Status(); st.Active != len(tt.from)-len(refused)-1 {
					return fmt.Errorf("the first session not gone: %+v", st)
				}
				return nil
			})
			dialRaw(t, svc.Addr().String(), tt.from[0]).connect(t)
		})
	}
}

// TestClientWriteTimeout: a client that stops reading its socket is closed
// once a write to it has waited ClientWriteTimeout, with a warning naming
// it and its backend, counted as client_write_timeout, and its broker
// session ends with it, so that the broker redelivers what it left
// unacknowledged (issue 14). Another client of the same sidecar goes on
// meanwhile (it produces the flood, each SEND receipted through the
// sidecar) and afterwards.
func TestClientWriteTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	// Room in flight for more than any socket buffers hold: the
	// subscription below has a prefetch of 100,000.
	b := startBrokerWith(t, t.TempDir(), "", func(o *brokerd.Options) { o.MaxPendingBytes = 64 << 20 })
	b.WaitReady(t)
	svc := startService(t, proxytest.NewPicker(b.Addr()), func(o *Options) { o.ClientWriteTimeout = timeout })
	hook := logtest.NewLocal(svc.log.Logger)
	addr := svc.Addr().String()

	// The stalled consumer, with the default socket buffers: the flood
	// fills them soon enough. (With a tiny SO_RCVBUF, loopback's 64 KiB
	// segments never fit its window again, and reading what is queued
	// after the close crawls on zero-window probes.)
	slow := dialRaw(t, addr, "")
	slow.connect(t)
	slow.send(t, frame.New(frame.SUBSCRIBE, "id", "1", "destination", "/queue/flood", "ack", "client",
		"activemq.prefetchSize", "100000", "receipt", "s1"))
	if f := slow.read(t, 10*time.Second); f.Command != frame.RECEIPT {
		t.Fatalf("SUBSCRIBE answered with %v", f)
	}
	// From here on it reads nothing.

	other := dialClient(t, addr, stompclient.Options{})
	ctx := ctxT(t, time.Minute)
	stop := make(chan struct{})
	type result struct {
		n   int
		err error
	}
	produced := make(chan result, 1)
	go func() {
		pad := make([]byte, 16<<10)
		for n := 0; ; n++ {
			select {
			case <-stop:
				produced <- result{n, nil}
				return
			default:
			}
			if err := other.SendReceipt(ctx, "/queue/flood", fmt.Appendf(nil, "%06d %s", n, pad)); err != nil {
				produced <- result{n, err}
				return
			}
		}
	}()

	testutil.Eventually(t, 30*time.Second, func() error {
		if got := proxytest.Counter(t, svc.metrics.closed.WithLabelValues("stomp", reasonWriteTimeout)); got != 1 {
			return fmt.Errorf("closed_total{reason=%q} = %v, want 1", reasonWriteTimeout, got)
		}
		return nil
	})
	close(stop)
	if r := <-produced; r.err != nil || r.n == 0 {
		t.Fatalf("the other client's SENDs through the sidecar: %d, then %v", r.n, r.err)
	}

	// The stalled client's connection is closed: what the sidecar wrote to
	// it, then its end.
	slow.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, slow.nc); isTimeout(err) {
		t.Fatalf("the stalled client's connection is still open (%d bytes read)", n)
	}
	var warned bool
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.WarnLevel && strings.Contains(e.Message, "stopped reading") {
			warned = true
			if e.Data["service"] != "stomp" || e.Data["client"] != slow.nc.LocalAddr().String() || e.Data["backend"] != b.Addr() {
				t.Errorf("warning %q with fields %v: want service, client and backend", e.Message, e.Data)
			}
		}
	}
	if !warned {
		t.Error("no warning about the client that stopped reading")
	}
	// Its broker session is gone with it, and its deliveries, never
	// acknowledged, go to the next consumer, the first one first.
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := b.Status().Connections; n != 1 {
			return fmt.Errorf("brokerd has %d connections, want the other client's only", n)
		}
		return nil
	})
	sub, err := other.SubscribeReceipt(ctx, "/queue/flood", stompclient.AckClient, hdr("activemq.prefetchSize", "1"))
	if err != nil {
		t.Fatal(err)
	}
	if f := recv(t, sub); !bytes.HasPrefix(f.Body, []byte("000000 ")) || f.Value("redelivered") != "true" {
		t.Fatalf("first redelivery: %v body %.10q", f, f.Body)
	}
}
