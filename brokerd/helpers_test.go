package brokerd

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"handover/frame"
	"handover/internal/testutil"
)

func testLog(t testing.TB) *logrus.Entry { return testutil.Logger(t) }

type testServer struct {
	*Server
	cancel context.CancelFunc
	done   chan error
}

// startServer runs a broker on loopback ports in dir and waits until it
// serves (or, with wantMaster false, until it runs as a slave).
func startServer(t testing.TB, dir string, mod func(*Options)) *testServer {
	t.Helper()
	o := NewOptions()
	o.Listen, o.Admin, o.Data = "127.0.0.1:0", "127.0.0.1:0", dir
	o.Log = testLog(t)
	if mod != nil {
		mod(&o)
	}
	initData(t, o.Data)
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: s, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- s.Run(ctx) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// initData gives dir a cluster identity unless it has one (a restarted
// broker's).
func initData(t testing.TB, dir string) {
	t.Helper()
	if _, err := ReadData(dir); err == nil {
		return
	}
	if _, err := InitData(dir); err != nil {
		t.Fatal(err)
	}
}

func (ts *testServer) waitReady(t testing.TB) {
	t.Helper()
	select {
	case <-ts.Ready():
	case err := <-ts.done:
		t.Fatalf("server stopped before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("server not ready in 10s")
	}
}

// stop cancels Run and returns its error; idempotent.
func (ts *testServer) stop(t testing.TB) error {
	ts.cancel()
	select {
	case err, ok := <-ts.done:
		if ok {
			close(ts.done)
		}
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("server did not stop in 20s")
		return nil
	}
}

// raw is a hand-driven STOMP connection for tests that send exact bytes.
type raw struct {
	t  testing.TB
	nc net.Conn
	r  *frame.Reader
	w  *bufio.Writer
}

func dialRaw(t testing.TB, addr string) *raw {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &raw{t: t, nc: nc, r: frame.NewReader(nc, frame.Limits{MaxBody: -1}), w: bufio.NewWriter(nc)}
}

// connectRaw dials and completes a STOMP 1.2 CONNECT.
func connectRaw(t testing.TB, addr string) *raw {
	t.Helper()
	c := dialRaw(t, addr)
	c.send("CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
	if f := c.read(); f.Command != frame.CONNECTED {
		t.Fatalf("want CONNECTED, got %v", f)
	}
	return c
}

func (c *raw) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *raw) sendFrame(f *frame.Frame) {
	c.t.Helper()
	if _, err := c.nc.Write(frame.Append(nil, f, frame.V12)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *raw) read() *frame.Frame {
	c.t.Helper()
	f, err := c.tryRead(5 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

func (c *raw) tryRead(d time.Duration) (*frame.Frame, error) {
	c.nc.SetReadDeadline(time.Now().Add(d))
	return c.r.Read()
}

// expectClosed asserts the server closes the connection.
func (c *raw) expectClosed() {
	c.t.Helper()
	for {
		f, err := c.tryRead(5 * time.Second)
		if err == io.EOF || err != nil && strings.Contains(err.Error(), "reset") {
			return
		}
		if err != nil {
			c.t.Fatalf("want the connection closed, got %v", err)
		}
		c.t.Fatalf("want the connection closed, got frame %v", f)
	}
}
