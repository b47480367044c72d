package proxy

import (
	"io"
	"net"
	"testing"
	"time"

	"handover/internal/serve"
	"handover/proxy/proxytest"
)

// benchTargets are the ways a benchmark client reaches its backend: straight
// to it, for the baseline, and through the proxy in several setups.
var benchTargets = []struct {
	name     string
	proxy    bool
	idle     time.Duration // Options.IdleTimeout
	counting bool          // the copiers count bytes themselves, giving up splice
}{
	{name: "direct"},
	{name: "proxy", proxy: true},
	// IdleTimeout watched through TCP_INFO: splice kept.
	{name: "proxy-idle", proxy: true, idle: time.Minute},
	// What counting in the data path (a wrapping reader or writer, or
	// netutil.LimitListener's wrapped conns) would cost: no splice.
	{name: "proxy-counting", proxy: true, counting: true},
}

// benchDial starts a backend running handle and returns a client connected
// to it, directly or through a proxy.
func benchDial(b *testing.B, handle func(*net.TCPConn), proxy bool, idle time.Duration, counting bool) *net.TCPConn {
	b.Helper()
	be := startBackend(b, "", handle)
	addr := be.addr
	if proxy {
		ts := startServiceOpts(b, proxytest.NewPicker(be.addr), Options{Settings: serve.Settings{Name: "bench", Listen: "127.0.0.1:0"}, IdleTimeout: idle}, counting)
		addr = ts.Addr().String()
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// BenchmarkThroughput sends bulk data one way, to a backend that reads and
// drops it, and reports MB/s: direct to the backend and through the proxy.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 256 << 10
	for _, bt := range benchTargets {
		b.Run(bt.name, func(b *testing.B) {
			got := make(chan int64, 1)
			c := benchDial(b, func(c *net.TCPConn) {
				var n int64
				buf := make([]byte, chunk)
				for {
					m, err := c.Read(buf)
					n += int64(m)
					if err != nil {
						break
					}
				}
				got <- n
			}, bt.proxy, bt.idle, bt.counting)
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			// The clock runs until the backend has every byte.
			c.CloseWrite()
			if n := <-got; n != int64(b.N)*chunk {
				b.Fatalf("backend got %d bytes, want %d", n, int64(b.N)*chunk)
			}
		})
	}
}

// BenchmarkRoundTrip64 measures the latency of a 64-byte echo round trip:
// direct to the backend and through the proxy.
func BenchmarkRoundTrip64(b *testing.B) {
	for _, bt := range benchTargets {
		b.Run(bt.name, func(b *testing.B) {
			c := benchDial(b, echo, bt.proxy, bt.idle, bt.counting)
			msg := make([]byte, 64)
			reply := make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, reply); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
