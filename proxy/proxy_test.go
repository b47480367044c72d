package proxy

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
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

	"handover/internal/serve"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
)

func TestOptionsValidate(t *testing.T) {
	base := Options{Settings: serve.Settings{Name: "stomp", Listen: "127.0.0.1:0"}}
	tests := []struct {
		name    string
		mod     func(*Options)
		wantErr string // "" for valid
	}{
		{"zero values mean defaults", func(*Options) {}, ""},
		{"negative timeout refuses at once", func(o *Options) { o.Timeout = -1 }, ""},
		{"negative keepalive disables it", func(o *Options) { o.KeepAlive = -1 }, ""},
		{"keep mode", func(o *Options) { o.OnFailover = OnFailoverKeep }, ""},
		{"no name", func(o *Options) { o.Name = "" }, "name"},
		{"no listen", func(o *Options) { o.Listen = "" }, "listen"},
		{"negative dial timeout", func(o *Options) { o.DialTimeout = -time.Second }, "dial_timeout"},
		{"negative idle timeout", func(o *Options) { o.IdleTimeout = -time.Second }, "idle_timeout"},
		{"shrinking backoff", func(o *Options) { o.BackoffMultiplier = 0.5 }, "backoff_multiplier"},
		{"negative attempts", func(o *Options) { o.MaxReconnectAttempts = -1 }, "max_reconnect_attempts"},
		{"no connection cap", func(o *Options) { o.MaxConnections = NoLimit }, ""},
		{"max connections below -1", func(o *Options) { o.MaxConnections = -2 }, "max_connections: must be -1 (no cap), 0 (the default, 10000) or positive, got -2"},
		{"negative max connections per source", func(o *Options) { o.MaxConnectionsPerSource = -1 }, "max_connections_per_source"},
		{"unknown failover mode", func(o *Options) { o.OnFailover = "drain" }, "on_failover"},
		{"max delay below initial", func(o *Options) { o.InitialReconnectDelay = 2 * time.Second }, "max_reconnect_delay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.mod(&o)
			err := o.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate: got %v, want an error about %s", err, tt.wantErr)
			}
		})
	}
}

func TestEchoAndStatus(t *testing.T) {
	checkLeaks(t)
	be := startBackend(t, "", echo)
	ts := startService(t, proxytest.NewPicker(be.addr), nil)
	c := ts.dial(t)
	roundTrip(t, c, "CONNECT\n\n\x00")
	roundTrip(t, c, "SEND\ndestination:/queue/a\n\nhello\x00")

	st := ts.Status()
	if st.Active != 1 || st.Backends[be.addr] != 1 || st.Accepted != 1 || st.Held != 0 || st.Listen != ts.Addr().String() {
		t.Fatalf("status while connected: %+v", st)
	}
	c.Close()
	ts.waitStatus(t, "connection gone", func(st ServiceStatus) bool { return st.Active == 0 })
	ts.waitMetric(t, 1, "handover_proxy_connections_closed_total", "backend", be.addr, "reason", reasonEOF)
	if got := ts.picker.Rechecks.Load(); got != 0 {
		t.Errorf("Recheck called %d times on a clean connection", got)
	}
}

// TestLargeTransfer pushes 64 MiB each way through an echo backend while
// reading the echo concurrently, and compares checksums; then checks that
// the byte counters saw every byte exactly once. Both ways of counting run:
// the kernel's (splice kept) and the counting writer's.
func TestLargeTransfer(t *testing.T) {
	size := int64(64 << 20)
	if testing.Short() {
		size = 8 << 20
	}
	for _, tt := range []struct {
		name     string
		counting bool
	}{{"kernel counts", false}, {"proxy counts", true}} {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			be := startBackend(t, "", echo)
			ts := startServiceOpts(t, proxytest.NewPicker(be.addr), Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}}, tt.counting)
			c := ts.dial(t)

			sent := make(chan []byte, 1)
			go func() {
				h := sha256.New()
				_, err := io.Copy(io.MultiWriter(c, h), newPattern(size))
				if err != nil {
					t.Errorf("write: %v", err)
				}
				c.CloseWrite()
				sent <- h.Sum(nil)
			}()
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil || n != size {
				t.Fatalf("read %d bytes (%v), want %d", n, err, size)
			}
			if got, want := h.Sum(nil), <-sent; string(got) != string(want) {
				t.Fatalf("checksum mismatch")
			}
			c.Close()
			ts.waitStatus(t, "connection gone", func(st ServiceStatus) bool { return st.Active == 0 })
			for _, dir := range []string{"up", "down"} {
				if got := ts.metric(t, "handover_proxy_bytes_total", "direction", dir); got != float64(size) {
					t.Errorf("bytes %s = %v, want %d", dir, got, size)
				}
			}
		})
	}
}

// newPattern returns size bytes of incompressible data: a random block
// repeated, each copy stamped with its index so that a lost or repeated
// block changes the checksum.
func newPattern(size int64) io.Reader {
	block := make([]byte, 1<<20)
	rand.Read(block)
	return &pattern{block: block, left: size}
}

type pattern struct {
	block []byte
	off   int
	index uint64
	left  int64
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if p.off == 0 {
		binary.BigEndian.PutUint64(p.block, p.index)
		p.index++
	}
	n := copy(b, p.block[p.off:])
	n = int(min(int64(n), p.left))
	p.off = (p.off + n) % len(p.block)
	p.left -= int64(n)
	return n, nil
}

// TestLiveByteCounts checks that the byte counters move while a connection
// is open (scrape-time sampling), and that closing it neither loses nor
// double-counts a byte (our FINs are not bytes).
func TestLiveByteCounts(t *testing.T) {
	for _, tt := range []struct {
		name     string
		counting bool
	}{{"kernel counts", false}, {"proxy counts", true}} {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			be := startBackend(t, "", echo)
			ts := startServiceOpts(t, proxytest.NewPicker(be.addr), Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}}, tt.counting)
			c := ts.dial(t)
			msg := strings.Repeat("x", 1000)
			roundTrip(t, c, msg)
			ts.waitMetric(t, 1000, "handover_proxy_bytes_total", "direction", "up")
			ts.waitMetric(t, 1000, "handover_proxy_bytes_total", "direction", "down")
			roundTrip(t, c, msg)
			ts.waitMetric(t, 2000, "handover_proxy_bytes_total", "direction", "up")
			ts.waitMetric(t, 2000, "handover_proxy_bytes_total", "direction", "down")

			// Half-close both ways, so both FINs are sent and acked
			// while the pair lives, then close.
			c.CloseWrite()
			if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
				t.Fatalf("after half-close: read %q, %v", b, err)
			}
			c.Close()
			ts.waitStatus(t, "connection gone", func(st ServiceStatus) bool { return st.Active == 0 })
			for _, dir := range []string{"up", "down"} {
				if got := ts.metric(t, "handover_proxy_bytes_total", "direction", dir); got != 2000 {
					t.Errorf("bytes %s after close = %v, want 2000", dir, got)
				}
			}
		})
	}
}

// TestHalfClose: a client that sends its request and shuts down its write
// side gets the backend's answer, which the backend sends only after it
// has seen EOF.
func TestHalfClose(t *testing.T) {
	checkLeaks(t)
	be := startBackend(t, "", func(c *net.TCPConn) {
		req, err := io.ReadAll(c) // until the client's FIN, passed on
		if err != nil {
			t.Errorf("backend read: %v", err)
			return
		}
		io.WriteString(c, "answer to "+string(req))
		c.CloseWrite()
		io.ReadAll(c) // wait for the proxy to close
	})
	ts := startService(t, proxytest.NewPicker(be.addr), nil)
	c := ts.dial(t)
	io.WriteString(c, "question")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "answer to question" {
		t.Fatalf("got %q, %v", got, err)
	}
	ts.waitMetric(t, 1, "handover_proxy_connections_closed_total", "reason", reasonEOF)
}

// TestHoldUntilTarget: with no master, the client's connection is held, not
// refused; what it sent meanwhile reaches the backend once there is one.
func TestHoldUntilTarget(t *testing.T) {
	checkLeaks(t)
	be := startBackend(t, "", echo)
	ts := startService(t, proxytest.NewPicker(), func(o *Options) { o.Timeout = 10 * time.Second })
	c := ts.dial(t)
	io.WriteString(c, "CONNECT\n\n\x00")
	ts.waitStatus(t, "client held", func(st ServiceStatus) bool { return st.Held == 1 })
	ts.waitMetric(t, 1, "handover_proxy_connections_held")
	time.Sleep(200 * time.Millisecond) // the master takes a while to appear: part of the scenario, not sync
	ts.picker.Set(be.addr)

	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len("CONNECT\n\n\x00"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "CONNECT\n\n\x00" {
		t.Fatalf("got %q, %v", buf, err)
	}
	ts.waitMetric(t, 0, "handover_proxy_connections_held")
}

// TestNoTargetGivesUp: a held client is closed when Timeout runs out; with a
// negative Timeout it is not held at all.
func TestNoTargetGivesUp(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		reason  string
		minWait time.Duration
	}{
		{"timeout expires", 150 * time.Millisecond, "timeout", 150 * time.Millisecond},
		{"negative timeout refuses at once", -1, "no_target", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			ts := startService(t, proxytest.NewPicker(), func(o *Options) { o.Timeout = tt.timeout })
			start := time.Now()
			c := ts.dial(t)
			expectClosed(t, c, 5*time.Second)
			if took := time.Since(start); took < tt.minWait || took > tt.minWait+2*time.Second {
				t.Errorf("closed after %v, want about %v", took, tt.minWait)
			}
			ts.waitMetric(t, 1, "handover_proxy_connections_failed_total", "reason", tt.reason)
		})
	}
}

// TestDialRetry: while the target refuses connections, each failed round
// asks for a health re-check and retries with backoff; once the backend
// listens, the held client gets through.
func TestDialRetry(t *testing.T) {
	checkLeaks(t)
	addr := testutil.FreePort(t)
	picker := proxytest.NewPicker(addr)
	ts := startService(t, picker, func(o *Options) {
		o.Timeout = 10 * time.Second
		o.MaxReconnectDelay = 50 * time.Millisecond
	})
	c := ts.dial(t)
	io.WriteString(c, "ping")
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := picker.Rechecks.Load(); n < 3 {
			return errors.New("fewer than 3 re-checks")
		}
		return nil
	})
	if n := ts.metric(t, "handover_proxy_dial_errors_total", "backend", addr); n < 3 {
		t.Errorf("dial errors = %v, want at least 3", n)
	}
	startBackend(t, addr, echo)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("got %q, %v", buf, err)
	}
}

// TestMaxReconnectAttempts: the client is closed after that many failed
// rounds, each followed by a re-check.
func TestMaxReconnectAttempts(t *testing.T) {
	checkLeaks(t)
	addr := testutil.FreePort(t)
	picker := proxytest.NewPicker(addr)
	ts := startService(t, picker, func(o *Options) {
		o.Timeout = 10 * time.Second
		o.MaxReconnectAttempts = 3
	})
	c := ts.dial(t)
	expectClosed(t, c, 5*time.Second)
	ts.waitMetric(t, 1, "handover_proxy_connections_failed_total", "reason", "attempts")
	if n := picker.Rechecks.Load(); n != 3 {
		t.Errorf("re-checks = %d, want 3", n)
	}
}

// TestConnectionFailures: a backend reset while proxying asks for a health
// re-check; a clean close by the backend, or a client reset, does not.
func TestConnectionFailures(t *testing.T) {
	tests := []struct {
		name        string
		backendRST  bool // the backend resets after the first message
		clientRST   bool // the client resets after the first message
		reason      string
		wantRecheck int64
	}{
		{"backend resets", true, false, reasonUpstreamError, 1},
		{"backend closes cleanly", false, false, reasonEOF, 0},
		{"client resets", false, true, reasonClientError, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			be := startBackend(t, "", func(c *net.TCPConn) {
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				c.Write(buf)
				if tt.backendRST {
					c.SetLinger(0) // close sends RST
					return
				}
				if tt.clientRST {
					io.Copy(io.Discard, c)
				}
			})
			picker := proxytest.NewPicker(be.addr)
			ts := startService(t, picker, nil)
			c := ts.dial(t)
			roundTrip(t, c, "ping")
			if tt.clientRST {
				c.SetLinger(0)
				c.Close()
			} else {
				expectClosed(t, c, 5*time.Second)
				c.Close()
			}
			ts.waitMetric(t, 1, "handover_proxy_connections_closed_total", "reason", tt.reason)
			if got := picker.Rechecks.Load(); got != tt.wantRecheck {
				t.Errorf("re-checks = %d, want %d", got, tt.wantRecheck)
			}
		})
	}
}

// TestOnFailover: when the targets switch from A, a live connection to A is
// closed (close) or left alone (keep); new connections go to the new target.
func TestOnFailover(t *testing.T) {
	tests := []struct {
		mode      string
		toNewOne  bool // switch to B; otherwise to no target at all
		keepA     bool // the picker asks to keep A's connections (a removed master)
		wantClose bool
	}{
		{OnFailoverClose, true, false, true},
		{OnFailoverClose, false, false, true},
		{OnFailoverKeep, true, false, false},
		{OnFailoverClose, false, true, false},
	}
	for _, tt := range tests {
		name := tt.mode + "/to B"
		if !tt.toNewOne {
			name = tt.mode + "/to none"
		}
		if tt.keepA {
			name += "/A kept"
		}
		t.Run(name, func(t *testing.T) {
			checkLeaks(t)
			a := startBackend(t, "", echo)
			b := startBackend(t, "", echo)
			ts := startService(t, proxytest.NewPicker(a.addr), func(o *Options) { o.OnFailover = tt.mode })
			c1 := ts.dial(t)
			roundTrip(t, c1, "to A")
			if tt.keepA {
				ts.picker.SetKept(a.addr)
			}

			if tt.toNewOne {
				ts.picker.Set(b.addr)
			} else {
				ts.picker.Set()
			}
			if tt.wantClose {
				expectClosed(t, c1, 5*time.Second)
				ts.waitMetric(t, 1, "handover_proxy_connections_closed_total", "backend", a.addr, "reason", reasonFailover)
			}
			if tt.toNewOne {
				c2 := ts.dial(t)
				roundTrip(t, c2, "to B")
				if n := b.accepted.Load(); n != 1 {
					t.Errorf("B accepted %d connections, want 1", n)
				}
			}
			if !tt.wantClose {
				roundTrip(t, c1, "still to A")
				wantB := 0
				if tt.toNewOne {
					wantB = 1
				}
				if st := ts.Status(); st.Backends[a.addr] != 1 || st.Backends[b.addr] != wantB {
					t.Errorf("status: %+v", st)
				}
			}
		})
	}
}

// TestFailoverDuringDial: the targets switch from A to B while a new
// client's connection to A is being made. The pair must not be registered
// to A behind the failover's back: the proxy drops A and reaches B.
func TestFailoverDuringDial(t *testing.T) {
	checkLeaks(t)
	a := startBackend(t, "", echo)
	b := startBackend(t, "", echo)
	ts := startService(t, proxytest.NewPicker(a.addr), nil)
	c1 := ts.dial(t)
	roundTrip(t, c1, "to A") // Serve is past its own first read of the targets

	ts.picker.FlipAfterNextRead(b.addr)
	c2 := ts.dial(t)
	roundTrip(t, c2, "to B")
	expectClosed(t, c1, 5*time.Second)
	// The stale dial completed in A's kernel, but A's accept loop may not
	// have taken it from the backlog yet.
	testutil.Eventually(t, 5*time.Second, func() error {
		if na, nb := a.accepted.Load(), b.accepted.Load(); na != 2 || nb != 1 {
			return fmt.Errorf("A accepted %d (want 2: c1, and c2's stale dial), B accepted %d (want 1)", na, nb)
		}
		return nil
	})
	ts.waitStatus(t, "only c2, to B", func(st ServiceStatus) bool {
		return st.Active == 1 && st.Backends[b.addr] == 1
	})
}

// TestConnectionCaps: a client over max_connections, or over
// max_connections_per_source from its address, is closed at accept rather
// than left waiting in the listen backlog, logged and counted; a client
// within the caps still gets in, and a place freed is taken again. The
// event loops and the goroutine path each enforce the caps.
func TestConnectionCaps(t *testing.T) {
	tests := []struct {
		name           string
		max, perSource int
		// from is each client's source address, in the order they
		// connect; want is "" for one served, else why it is refused.
		from, want []string
	}{
		{"max_connections", 2, 0,
			[]string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, []string{"", "", serve.RejectMax}},
		{"max_connections_per_source", 0, 1,
			[]string{"127.0.0.1", "127.0.0.1", "127.0.0.2"}, []string{"", serve.RejectPerSource, ""}},
		{"no cap", NoLimit, 0,
			[]string{"127.0.0.1", "127.0.0.1", "127.0.0.1"}, []string{"", "", ""}},
	}
	for _, tt := range tests {
		for _, goroutines := range []bool{false, true} {
			name := tt.name + "/event loops"
			if goroutines {
				name = tt.name + "/goroutines"
			}
			t.Run(name, func(t *testing.T) {
				checkLeaks(t)
				be := startBackend(t, "", echo)
				log := proxytest.Log(t)
				hook := logtest.NewLocal(log.Logger)
				opts := Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0", MaxConnections: tt.max,
					MaxConnectionsPerSource: tt.perSource}, goroutines: goroutines}
				ts := startServiceLog(t, proxytest.NewPicker(be.addr), opts, false, log)

				var first *net.TCPConn
				refused := map[string]float64{}
				for i, from := range tt.from {
					c := dialFrom(t, ts.Addr().String(), from)
					if tt.want[i] == "" {
						roundTrip(t, c, fmt.Sprint("client ", i))
						if first == nil {
							first = c
						}
						continue
					}
					expectClosed(t, c, 5*time.Second)
					refused[tt.want[i]]++
				}
				for _, why := range []string{serve.RejectMax, serve.RejectPerSource} {
					if got := ts.metric(t, "handover_proxy_connections_rejected_total", "reason", why); got != refused[why] {
						t.Errorf("rejected_total{reason=%q} = %v, want %v", why, got, refused[why])
					}
				}
				if len(refused) == 0 {
					return
				}
				var logged bool
				for _, e := range hook.AllEntries() {
					logged = logged || e.Level == logrus.WarnLevel && e.Data["reason"] != nil && e.Data["client"] != nil
				}
				if !logged {
					t.Error("no warning with the client and the reason for the refused connection")
				}

				// The first client's place is free once it has gone:
				// a client from its address gets in again.
				first.Close()
				testutil.Eventually(t, 5*time.Second, func() error {
					c := dialFrom(t, ts.Addr().String(), tt.from[0])
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err := io.WriteString(c, "again"); err != nil {
						return err
					}
					buf := make([]byte, 5)
					_, err := io.ReadFull(c, buf)
					return err
				})
			})
		}
	}
}

// dialFrom connects to addr from source IP address from (any of 127/8 is
// loopback on Linux).
func dialFrom(t testing.TB, addr, from string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Skipf("no loopback address %s here (only Linux has all of 127/8): %v", from, err)
	}
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// TestIdleTimeout: a pair with no bytes either way for IdleTimeout is
// closed; one that keeps talking is not. Both ways of watching for activity
// run: the kernel's TCP_INFO and the counting writer.
func TestIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	for _, tt := range []struct {
		name     string
		counting bool
	}{{"kernel watches", false}, {"proxy watches", true}} {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			be := startBackend(t, "", echo)
			ts := startServiceOpts(t, proxytest.NewPicker(be.addr), Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}, IdleTimeout: idle}, tt.counting)
			c := ts.dial(t)
			// Talk every idle/3 for twice the timeout: the pair must
			// stay up. (The pauses are the scenario, not sync.)
			var start time.Time // of the silence
			for end := time.Now().Add(2 * idle); ; time.Sleep(idle / 3) {
				roundTrip(t, c, "ping")
				if start = time.Now(); start.After(end) {
					break
				}
			}
			expectClosed(t, c, 5*time.Second)
			if took := time.Since(start); took < idle-50*time.Millisecond || took > idle+2*time.Second {
				t.Errorf("closed %v after the last byte, want about %v", took, idle)
			}
			ts.waitMetric(t, 1, "handover_proxy_connections_closed_total", "reason", reasonIdle)
		})
	}
}

// TestShutdown: Shutdown stops accepting at once, closes clients still
// waiting for a backend, lets live connections finish within the grace,
// closes them after it, and leaves no goroutine behind.
func TestShutdown(t *testing.T) {
	t.Run("live transfer finishes within grace", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		ts := startService(t, proxytest.NewPicker(be.addr), func(o *Options) { o.ShutdownGrace = time.Minute })
		c := ts.dial(t)
		roundTrip(t, c, "first half")

		shut := make(chan error, 1)
		go func() { shut <- ts.Shutdown(context.Background()) }()
		// Probe only once shutdown has begun: a probe accepted before
		// would be proxied, and closed, like any client.
		<-ts.lc.Stopping()
		testutil.Eventually(t, 5*time.Second, func() error {
			nc, err := net.Dial("tcp", ts.Addr().String())
			if err == nil {
				nc.Close()
				return errors.New("still accepting")
			}
			return nil
		})
		roundTrip(t, c, "second half")
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned (%v) with a live connection inside the grace", err)
		default:
		}
		c.Close()
		if err := <-shut; err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		<-ts.served
		if ts.err != nil {
			t.Fatalf("Serve: %v", ts.err)
		}
		if got := ts.metric(t, "handover_proxy_connections_closed_total", "reason", reasonEOF); got != 1 {
			t.Errorf("closed with eof = %v, want 1", got)
		}
	})

	t.Run("grace over closes live connections", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		ts := startService(t, proxytest.NewPicker(be.addr), func(o *Options) { o.ShutdownGrace = 200 * time.Millisecond })
		c := ts.dial(t)
		roundTrip(t, c, "hello")
		start := time.Now()
		if err := ts.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if took := time.Since(start); took < 200*time.Millisecond {
			t.Errorf("Shutdown returned after %v, before the grace", took)
		}
		expectClosed(t, c, time.Second)
		ts.waitMetric(t, 1, "handover_proxy_connections_closed_total", "reason", reasonShutdown)
	})

	t.Run("ctx ends before grace", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		ts := startService(t, proxytest.NewPicker(be.addr), nil) // default grace: 10s
		c := ts.dial(t)
		roundTrip(t, c, "hello")
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: got %v, want %v", err, context.DeadlineExceeded)
		}
		expectClosed(t, c, time.Second)
		// Idempotent: a second call finds nothing to wait for.
		if err := ts.Shutdown(context.Background()); err != nil {
			t.Fatalf("second Shutdown: %v", err)
		}
	})

	t.Run("held clients are closed at once", func(t *testing.T) {
		checkLeaks(t)
		ts := startService(t, proxytest.NewPicker(), nil)
		c := ts.dial(t)
		ts.waitStatus(t, "client held", func(st ServiceStatus) bool { return st.Held == 1 })
		start := time.Now()
		if err := ts.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Shutdown took %v with only a held client", took)
		}
		expectClosed(t, c, time.Second)
		ts.waitMetric(t, 1, "handover_proxy_connections_failed_total", "reason", "shutdown")
	})

	t.Run("clients dialing or retrying are closed at once", func(t *testing.T) {
		checkLeaks(t)
		// A loopback listener whose backlog is full: the dial hangs
		// in its handshake and the client is held meanwhile.
		ts := startService(t, proxytest.NewPicker(hangingAddr(t)), func(o *Options) { o.DialTimeout = time.Minute })
		c := ts.dial(t)
		ts.waitStatus(t, "client held", func(st ServiceStatus) bool { return st.Held == 1 })
		start := time.Now()
		if err := ts.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Shutdown took %v with a dial in flight", took)
		}
		expectClosed(t, c, time.Second)
	})

	t.Run("cancelling Serve's context", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		ts := startService(t, proxytest.NewPicker(be.addr), func(o *Options) { o.ShutdownGrace = 100 * time.Millisecond })
		c := ts.dial(t)
		roundTrip(t, c, "hello")
		ts.cancel()
		<-ts.served
		if ts.err != nil {
			t.Fatalf("Serve: %v", ts.err)
		}
		expectClosed(t, c, time.Second)
	})

	t.Run("a second Serve leaves the first alone", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		ts := startService(t, proxytest.NewPicker(be.addr), nil)
		c := ts.dial(t)
		roundTrip(t, c, "before")
		if err := ts.Serve(context.Background()); err == nil {
			t.Fatal("second Serve: no error")
		}
		roundTrip(t, c, "after")
		roundTrip(t, ts.dial(t), "a new client")
	})

	t.Run("before Serve", func(t *testing.T) {
		checkLeaks(t)
		s, err := New(Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}}, proxytest.NewPicker(), proxytest.Log(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if err := s.Serve(context.Background()); err != nil {
			t.Fatalf("Serve after Shutdown: %v", err)
		}
		if err := s.Serve(context.Background()); err == nil {
			t.Fatalf("second Serve: no error")
		}
	})
}
