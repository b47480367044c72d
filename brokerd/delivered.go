package brokerd

import (
	"sync"
	"time"
)

// An auto-ack delivery counts as consumed once the client has it, and for
// that having written it to the socket is not enough: the bytes may sit in
// the kernel's send queue of a consumer that stopped reading, and die with
// the connection when it is dropped as slow. So each auto-ack MESSAGE is
// confirmed only once the client's TCP stack has acknowledged its last
// byte: the connection knows where each frame ends in its output stream,
// and the kernel says how much of the stream the peer has acknowledged
// (sendq_linux.go).
// What is not confirmed when the connection ends is still an unacknowledged
// delivery and goes back to its queue. Where the kernel cannot tell, a
// write counts as delivery, as before.

// confirmEvery is how soon writeLoop looks again while deliveries wait
// for confirmation and nothing else wakes it: a subscription whose
// prefetch window is all unconfirmed waits this long at most.
const confirmEvery = 2 * time.Millisecond

// delivery is an onWritten callback waiting for the client to have the
// bytes up to end of the connection's output stream.
type delivery struct {
	end int64
	fn  func()
}

// deliveries are a connection's unconfirmed deliveries, in stream order.
type deliveries struct {
	mu      sync.Mutex
	pending []delivery
	sealed  bool // the socket is closing: nothing more is confirmed
}

// add queues fn to run once the stream up to end is delivered.
func (d *deliveries) add(end int64, fn func()) {
	d.mu.Lock()
	if !d.sealed {
		d.pending = append(d.pending, delivery{end, fn})
	}
	d.mu.Unlock()
}

// seal drops what is still unconfirmed, for good: the socket is about to
// close, after which the kernel can no longer say what the client has.
func (d *deliveries) seal() {
	d.mu.Lock()
	d.sealed = true
	d.pending = nil
	d.mu.Unlock()
}

// confirm runs the callbacks of deliveries whose frames end within the
// first delivered bytes of the stream. It reports whether some are still
// waiting.
func (d *deliveries) confirm(delivered int64) bool {
	d.mu.Lock()
	if d.sealed {
		d.mu.Unlock()
		return false
	}
	n := 0
	for n < len(d.pending) && d.pending[n].end <= delivered {
		n++
	}
	done := make([]delivery, n)
	copy(done, d.pending[:n])
	rest := copy(d.pending, d.pending[n:])
	clear(d.pending[rest:])
	d.pending = d.pending[:rest]
	waiting := rest > 0
	d.mu.Unlock()
	for _, x := range done {
		x.fn()
	}
	return waiting
}

// confirmDeliveries runs the callbacks of what the client has and reports
// whether some are still waiting. Where the kernel cannot tell, everything
// handed to the socket counts.
func (c *conn) confirmDeliveries() bool {
	sent := c.sent.Load()
	delivered, ok := int64(0), false
	if c.raw != nil {
		delivered, ok = peerHas(c.raw, sent)
	}
	if !ok {
		delivered = sent
	}
	return c.delivered.confirm(delivered)
}
