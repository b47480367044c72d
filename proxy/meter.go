package proxy

import (
	"io"
	"net"
	"sync/atomic"
	"time"

	"handover/internal/serve"
)

// Counting bytes without touching them.
//
// The copiers (relay.go) hand bulk data to splice(2): bytes move socket to
// pipe to socket inside the kernel and the copier never sees them. A reader
// or writer wrapped around a socket to count them would turn that back into
// read(2) and write(2) through a user-space buffer
// (BenchmarkThroughput/proxy-counting measures the cost). And a copier
// reports its count only when it returns: at connection end, hours away for
// a STOMP client.
//
// The kernel counts anyway. TCP_INFO's tcpi_bytes_acked on each destination
// socket is the bytes its peer has acknowledged (RFC 4898's
// tcpEStatsAppHCThruOctetsAcked), and tcpi_last_data_recv on each socket is
// how long ago data last arrived on it. A scrape samples the first
// (Metrics.Collect), so handover_proxy_bytes_total moves while a connection
// lives, lagging by the bytes in flight; IdleTimeout looks at the second
// (pair.checkIdle). Nothing runs per chunk of data, and nothing runs at all
// unless someone scrapes or IdleTimeout is set. When a copier returns, its
// count (bytes written to the socket) becomes the final figure.
//
// Where TCP_INFO is missing (not Linux, where io.Copy cannot splice
// anyway; a sandbox that refuses the getsockopt) the copiers write through a
// countingWriter instead, which gives the same figures.

// flow is one direction of a pair, as metrics and idle checks see it.
type flow struct {
	// final is the copier's count once it has returned, -1 before.
	final atomic.Int64
	// written counts bytes as they are written, in counting mode only.
	written atomic.Int64
	// base is the destination socket's tcpi_bytes_acked before our first
	// byte: a socket that called connect() counts its SYN as one.
	base uint64
	// reported is the largest count a scrape has shown, so that the
	// counter never goes back. Guarded by Metrics.mu.
	reported int64
}

// kernelInfo is what we read from a socket's TCP_INFO.
type kernelInfo struct {
	closed   bool          // TCP_CLOSE: reset, timed out or shut down for good
	acked    uint64        // tcpi_bytes_acked
	lastRecv time.Duration // tcpi_last_data_recv
}

// The baselines of tcpi_bytes_acked before any data has moved, as Linux
// sets them: a socket that called connect() counts its SYN, acknowledged by
// the SYN-ACK, as one; an accepted socket starts past its SYN-ACK
// (tcp_create_openreq_child), at zero.
const (
	acceptedBase = 0
	dialedBase   = 1
)

// basesKnown is set once a pair has found TCP_INFO working and the
// baselines as above; later pairs then take them as given, sparing two
// getsockopt calls per connection. Until then (and for ever on a kernel
// that says otherwise, say with TCP Fast Open data in the SYN) each pair
// reads its own.
var basesKnown atomic.Bool

// startMeter sets the pair's flows up before any byte moves: kernel
// baselines if the kernel counts, counting mode if not (or if forced).
func (p *pair) startMeter(forceCounting bool) {
	p.up.final.Store(-1)
	p.down.final.Store(-1)
	if forceCounting {
		p.counting = true
		return
	}
	if basesKnown.Load() {
		p.down.base, p.up.base = acceptedBase, dialedBase
		return
	}
	c, cok := kernelInfoOf(p.client)
	u, uok := kernelInfoOf(p.upstreamTCP)
	if !cok || !uok {
		p.counting = true
		return
	}
	p.down.base = c.acked
	p.up.base = u.acked
	if c.acked == acceptedBase && u.acked == dialedBase {
		basesKnown.Store(true)
	}
}

// copy copies src to dst for one direction of the pair and returns the
// bytes written: with relay, which splices bulk data, when the kernel
// counts; through a countingWriter otherwise.
func (p *pair) copy(dst, src serve.Conn, f *flow) (int64, error) {
	if !p.counting {
		// Not counting: both are bare sockets (newPair).
		return relay(dst.(*net.TCPConn), src.(*net.TCPConn))
	}
	return io.Copy(&countingWriter{dst: dst, f: f, p: p}, src)
}

// sample returns the bytes moved so far, up and down, for a scrape or, once
// both copiers have returned, for the final totals. Called under Metrics.mu.
func (p *pair) sample() (up, down int64) {
	var c, u kernelInfo
	var cok, uok bool
	// Once both copiers have returned (always so for the final sample, at
	// connection end) the kernel has nothing to add: spare two getsockopt
	// calls per connection.
	if !p.counting && (p.up.final.Load() < 0 || p.down.final.Load() < 0) {
		c, cok = kernelInfoOf(p.client)
		u, uok = kernelInfoOf(p.upstreamTCP)
	}
	return p.up.current(p.counting, u.acked, uok), p.down.current(p.counting, c.acked, cok)
}

// current returns the flow's count given the kernel's acked count (if ok),
// never less than the last one it returned.
//
// The kernel was read before final is, here: a copier stores final before
// it half-closes, so while final is still -1 the kernel's count can't yet
// include our FIN (which takes a sequence number of its own) and is at most
// what the copier will return. Counters therefore never run ahead of the final
// figure, and never go back.
func (f *flow) current(counting bool, acked uint64, ok bool) int64 {
	v := f.final.Load()
	switch {
	case v >= 0:
	case counting:
		v = f.written.Load()
	case ok && acked >= f.base:
		v = int64(acked - f.base)
	default:
		v = 0
	}
	f.reported = max(f.reported, v)
	return f.reported
}

// idleFor is how long no data has arrived on either socket.
func (p *pair) idleFor() time.Duration {
	if p.counting {
		return time.Since(p.start) - time.Duration(p.lastWrite.Load())
	}
	c, cok := kernelInfoOf(p.client)
	u, uok := kernelInfoOf(p.upstreamTCP)
	if !cok || !uok {
		return 0 // closed under us: the pair is ending anyway
	}
	return min(c.lastRecv, u.lastRecv)
}

// upstreamBroken tells, after a copier failed, whether the backend's side
// is the one that broke: the kernel has moved its socket to TCP_CLOSE (it
// was reset, or timed out). Where the kernel can't say, it answers yes: a
// needless re-check is cheap, a missed one leaves clients dialing a dead
// master until the next periodic check.
func (p *pair) upstreamBroken() bool {
	u, ok := kernelInfoOf(p.upstreamTCP)
	return !ok || u.closed
}

// countingWriter counts what a copier writes, where the kernel won't. It
// hides the socket's ReadFrom, so io.Copy falls back to a user-space buffer.
type countingWriter struct {
	dst serve.Conn
	f   *flow
	p   *pair
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.dst.Write(b)
	w.f.written.Add(int64(n))
	w.p.lastWrite.Store(int64(time.Since(w.p.start)))
	return n, err
}
