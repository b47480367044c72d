package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"handover/internal/serve"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
)

// backend is an in-process TCP server running handle on each connection.
type backend struct {
	addr     string
	ln       *net.TCPListener
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[*net.TCPConn]struct{}
}

// startBackend serves handle on addr ("" for any loopback port) until test
// cleanup, which closes every connection and waits for the handlers.
func startBackend(t testing.TB, addr string, handle func(*net.TCPConn)) *backend {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: ln.Addr().String(), ln: ln.(*net.TCPListener), conns: map[*net.TCPConn]struct{}{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := b.ln.AcceptTCP()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.mu.Lock()
			b.conns[c] = struct{}{}
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c)
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(b.close)
	return b
}

func (b *backend) close() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// echo sends back whatever it reads, passing on a half-close.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// sink reads and drops everything.
func sink(c *net.TCPConn) { io.Copy(io.Discard, c) }

// testService is a running Service with what tests look at.
type testService struct {
	*Service
	picker *proxytest.Picker
	reg    *prometheus.Registry
	cancel context.CancelFunc // cancels Serve's context
	served chan struct{}      // closed when Serve has returned
	err    error              // what Serve returned
}

// startService runs a Service on a loopback port with picker, until test
// cleanup shuts it down and checks that Serve returned nil.
func startService(t testing.TB, picker *proxytest.Picker, mod func(*Options)) *testService {
	t.Helper()
	opts := Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}}
	if mod != nil {
		mod(&opts)
	}
	return startServiceOpts(t, picker, opts, false)
}

func startServiceOpts(t testing.TB, picker *proxytest.Picker, opts Options, forceCounting bool) *testService {
	t.Helper()
	return startServiceLog(t, picker, opts, forceCounting, proxytest.Log(t))
}

// startServiceLog is startServiceOpts with the service's log entry.
func startServiceLog(t testing.TB, picker *proxytest.Picker, opts Options, forceCounting bool, log *logrus.Entry) *testService {
	t.Helper()
	reg := prometheus.NewRegistry()
	if forceCounting || os.Getenv("HANDOVER_PROXY_GOROUTINES") != "" {
		// Counting mode is the goroutine path's; the variable runs the
		// whole suite on that path (make test does, once more).
		opts.goroutines = true
	}
	s, err := New(opts, picker, log, NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	s.forceCounting = forceCounting
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testService{Service: s, picker: picker, reg: reg, cancel: cancel, served: make(chan struct{})}
	go func() {
		ts.err = s.Serve(ctx)
		close(ts.served)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ts.served:
			if ts.err != nil {
				t.Errorf("Serve: %v", ts.err)
			}
		case <-time.After(s.opts.ShutdownGrace + 10*time.Second):
			t.Errorf("Serve did not return")
		}
	})
	return ts
}

// dial connects a client to the service.
func (ts *testService) dial(t testing.TB) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", ts.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// metric returns the value of the series name with exactly labels, or 0 if
// there is none.
func (ts *testService) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

// waitMetric polls until the series reaches want.
func (ts *testService) waitMetric(t testing.TB, want float64, name string, labels ...string) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		if got := ts.metric(t, name, labels...); got != want {
			return fmt.Errorf("%s%v = %v, want %v", name, labels, got, want)
		}
		return nil
	})
}

// waitStatus polls until cond holds for the service's status.
func (ts *testService) waitStatus(t testing.TB, what string, cond func(ServiceStatus) bool) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		if st := ts.Status(); !cond(st) {
			return fmt.Errorf("%s: status %+v", what, st)
		}
		return nil
	})
}

// roundTrip writes msg and expects it echoed.
func roundTrip(t testing.TB, c net.Conn, msg string) { testutil.RoundTrip(t, c, msg) }

// expectClosed waits up to timeout for c to be closed by the proxy (EOF or
// reset) and fails if it reads data or times out.
func expectClosed(t testing.TB, c net.Conn, timeout time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case n > 0:
		t.Fatalf("read data, want the connection closed")
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("connection still open after %v", timeout)
	case err == nil:
		t.Fatalf("read returned nothing and no error")
	}
}

// checkLeaks fails the test if, once every other cleanup has run, the
// number of goroutines does not come back to what it is now. Call it first,
// so that its cleanup runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		testutil.Eventually(t, 5*time.Second, func() error {
			if n := runtime.NumGoroutine(); n > base {
				buf := make([]byte, 1<<16)
				return fmt.Errorf("%d goroutines, started with %d:\n%s", n, base, buf[:runtime.Stack(buf, true)])
			}
			return nil
		})
	})
}

// hangingAddr returns a loopback address where a connect neither succeeds
// nor fails: a listener that never accepts, with a backlog of zero already
// taken by one connection, so Linux drops further handshakes and the
// dialer keeps retransmitting its SYN.
func hangingAddr(t testing.TB) string {
	t.Helper()
	addr, _ := slowAddr(t)
	return addr
}

// slowAddr is hangingAddr with a way out: accept frees the backlog, and a
// connect then completes at the dialer's next SYN (about a second after
// the first).
func slowAddr(t testing.TB) (addr string, accept func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr = fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	filler, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("filling the backlog of %s: %v", addr, err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr, func() {
		nfd, _, err := syscall.Accept(fd)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Close(nfd) })
	}
}
