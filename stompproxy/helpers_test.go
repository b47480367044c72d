package stompproxy

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"handover/brokerd"
	"handover/frame"
	"handover/internal/brokertest"
	"handover/internal/conf"
	"handover/internal/serve"
	"handover/internal/testutil"
	"handover/proxy"
	"handover/proxy/proxytest"
	"handover/stompclient"
)

// startService runs a Service on a loopback port until test cleanup.
func startService(t testing.TB, p proxy.Picker, mod func(*Options)) *Service {
	t.Helper()
	o := Options{Settings: serve.Settings{Name: "stomp", Listen: "127.0.0.1:0", Timeout: 10 * time.Second,
		InitialReconnectDelay: 5 * time.Millisecond, MaxReconnectDelay: 50 * time.Millisecond, ShutdownGrace: time.Second}}
	if mod != nil {
		mod(&o)
	}
	s, err := New(o, p, proxytest.Log(t).WithField("component", "stompproxy"), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return in 10s")
		}
	})
	return s
}

func dialClient(t testing.TB, addr string, opts stompclient.Options) *stompclient.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := stompclient.Dial(ctx, addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func recv(t testing.TB, s *stompclient.Subscription) *frame.Frame {
	t.Helper()
	return testutil.Recv(t, s, 10*time.Second)
}

func expectNone(t testing.TB, s *stompclient.Subscription, d time.Duration) {
	t.Helper()
	testutil.ExpectNone(t, s, d)
}

// broker is an in-process brokerd.
type broker struct{ *brokertest.Broker }

// startBroker runs brokerd on data dir dir, STOMP on listen ("" for any
// port), until test cleanup. With several on one dir, the first is master
// and the others wait as slaves.
func startBroker(t testing.TB, dir, listen string) *broker {
	t.Helper()
	return startBrokerWith(t, dir, listen, nil)
}

// startBrokerWith is startBroker with options changed by mod.
func startBrokerWith(t testing.TB, dir, listen string, mod func(*brokerd.Options)) *broker {
	t.Helper()
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	return &broker{brokertest.Start(t, dir, func(o *brokerd.Options) {
		o.Listen = listen
		o.ShutdownGrace = conf.Duration(time.Second)
		o.Log = proxytest.Log(t).WithField("component", "brokerd-"+listen)
		if mod != nil {
			mod(o)
		}
	})}
}

func (b *broker) depth(queue string) int {
	for _, q := range b.Status().Queues {
		if q.Name == queue {
			return q.Depth
		}
	}
	return 0
}

// fakeBroker is a scripted STOMP server: it answers CONNECT with CONNECTED
// (its version and heart-beat), hands each connection to the test, and
// answers receipts while autoReceipt is set.
type fakeBroker struct {
	t           testing.TB
	ln          net.Listener
	version     string
	heartBeat   string // CONNECTED heart-beat; the fake sends beats at sx/2
	autoReceipt atomic.Bool
	frozen      atomic.Bool // no heart-beats: a broker stopped with SIGSTOP
	conns       chan *fakeConn
	frames      chan *frame.Frame // every frame of every connection, after CONNECT
	wg          sync.WaitGroup
	mu          sync.Mutex
	all         []*fakeConn
}

type fakeConn struct {
	b       *fakeBroker
	nc      net.Conn
	connect *frame.Frame
	frames  chan *frame.Frame
	wmu     sync.Mutex
	w       *frame.Writer
	closed  chan struct{}
	once    sync.Once
}

func startFake(t testing.TB, version, heartBeat string) *fakeBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBroker{t: t, ln: ln, version: version, heartBeat: heartBeat, conns: make(chan *fakeConn, 16), frames: make(chan *frame.Frame, 1000)}
	b.autoReceipt.Store(true)
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.all {
			c.close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *fakeBroker) addr() string { return b.ln.Addr().String() }

func (b *fakeBroker) accept() {
	defer b.wg.Done()
	for {
		nc, err := b.ln.Accept()
		if err != nil {
			return
		}
		c := &fakeConn{b: b, nc: nc, frames: make(chan *frame.Frame, 1000), w: frame.NewWriter(nc), closed: make(chan struct{})}
		b.mu.Lock()
		b.all = append(b.all, c)
		b.mu.Unlock()
		b.wg.Add(1)
		go c.serve()
	}
}

func (c *fakeConn) serve() {
	defer c.b.wg.Done()
	defer c.close()
	r := frame.NewReader(c.nc, frame.Limits{MaxBody: -1})
	f, err := r.Read()
	if err != nil {
		return
	}
	c.connect = f
	v := frame.Version(c.b.version)
	if err := c.send(frame.New(frame.CONNECTED, "version", c.b.version, "heart-beat", c.b.heartBeat)); err != nil {
		return
	}
	r.SetVersion(v)
	c.wmu.Lock()
	c.w.SetVersion(v)
	c.wmu.Unlock()
	if sx, _, _ := frame.ParseHeartBeat(c.b.heartBeat); sx > 0 {
		c.b.wg.Add(1)
		go c.beat(sx)
	}
	c.b.conns <- c
	for {
		f, err := r.Read()
		if err != nil {
			return
		}
		c.frames <- f
		c.b.frames <- f
		if id, ok := f.Get("receipt"); ok && c.b.autoReceipt.Load() {
			c.send(frame.New(frame.RECEIPT, "receipt-id", id))
		}
	}
}

func (c *fakeConn) beat(every time.Duration) {
	defer c.b.wg.Done()
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
		}
		if c.b.frozen.Load() {
			continue
		}
		c.wmu.Lock()
		c.w.WriteHeartbeat()
		c.w.Flush()
		c.wmu.Unlock()
	}
}

func (c *fakeConn) send(f *frame.Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.w.Write(f); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *fakeConn) close() {
	c.once.Do(func() {
		close(c.closed)
		c.nc.Close()
	})
}

// next returns the next connection the fake accepted.
func (b *fakeBroker) next(t testing.TB) *fakeConn {
	t.Helper()
	select {
	case c := <-b.conns:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection reached the fake broker in 10s")
		return nil
	}
}

// expect returns the next frame, which must be a cmd.
func (c *fakeConn) expect(t testing.TB, cmd string) *frame.Frame {
	t.Helper()
	return expectFrame(t, c.frames, cmd)
}

// expectAny returns the next frame on any connection, which must be a cmd:
// for tests where a slow machine may make the session reconnect.
func (b *fakeBroker) expectAny(t testing.TB, cmd string) *frame.Frame {
	t.Helper()
	return expectFrame(t, b.frames, cmd)
}

// expectFrame returns the next frame from frames, which must be a cmd.
func expectFrame(t testing.TB, frames <-chan *frame.Frame, cmd string) *frame.Frame {
	t.Helper()
	select {
	case f := <-frames:
		if f.Command != cmd {
			t.Fatalf("fake broker got %v, want %s", f, cmd)
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatalf("fake broker got no %s in 10s", cmd)
		return nil
	}
}

// quiet asserts nothing arrives for d.
func (c *fakeConn) quiet(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case f := <-c.frames:
		t.Fatalf("fake broker got unexpected %v", f)
	case <-time.After(d):
	}
}

func hdr(k, v string) frame.Header { return frame.Header{Key: k, Value: v} }

var persistent = hdr("persistent", "true")

func body(i int) []byte { return []byte(fmt.Sprintf("m%03d", i)) }
