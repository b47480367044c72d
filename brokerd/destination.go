package brokerd

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"handover/brokerd/store"
	"handover/frame"
)

// Destination prefixes, as ActiveMQ names them for STOMP clients.
const (
	queuePrefix = "/queue/"
	topicPrefix = "/topic/"
)

// message is one message held by a destination. Its frame is the MESSAGE
// frame every delivery starts from; deliveries add subscription, ack and
// redelivered headers to a copy of the header list and share the body.
//
// A persistent message's frame may be nil: its body is only in the store
// (a backlog larger than the cache, one recovered from the store, or a
// delivery whose frame went out: see conn.deliver), and is read back when
// the message is delivered. What memory holds for such a message is this
// struct and its place in its queue. Fields other than id and persistent
// are guarded by the queue's lock.
//
// A message does not know its destination (its queue does, and its frame's
// destination header): with the name it would take 48 bytes instead of 32,
// and a backlog of a million pays that a million times.
type message struct {
	id          string
	frame       *frame.Frame
	size        int32    // bytes of the encoded frame
	mem         memState // what of size is charged to the budget
	persistent  bool     // journaled: its acknowledgement must be journaled too
	redelivered bool
	gone        bool // acknowledged while in a standby's backlog
}

// memState says how a message's body counts against the budget. It is a
// byte so that a message stays within 32 bytes: a backlog of a million
// costs memory per message, and this struct is most of it.
type memState uint8

const (
	memNone memState = iota
	memCached
	memPinned
)

// hold charges m's body to the budget as it enters queue q: a persistent
// body is kept only if the cache has room (it is in the store anyway), a
// non-persistent one always (producers were held back before it came).
func (m *message) hold(q *queue) {
	if m.frame == nil || m.mem != memNone {
		return
	}
	b := q.s.mem
	switch {
	case !m.persistent:
		q.pinned.Add(int64(m.size))
		b.pin(int64(m.size))
		m.mem = memPinned
	case b.cache(int64(m.size)):
		m.mem = memCached
	default:
		m.frame = nil
	}
}

// pin charges m's body as pinned in q: it is being delivered.
func (m *message) pin(q *queue) {
	b := q.s.mem
	switch m.mem {
	case memPinned:
		return
	case memCached:
		b.uncache(int64(m.size))
	}
	q.pinned.Add(int64(m.size))
	b.pin(int64(m.size))
	m.mem = memPinned
}

// release gives back what m's body was charged in q, and drops a
// persistent body (requeued messages are read back when delivered again).
// The queue's count goes first: unpinning wakes producers that look at it.
func (m *message) release(q *queue) {
	b := q.s.mem
	switch m.mem {
	case memPinned:
		q.pinned.Add(-int64(m.size))
		b.unpin(int64(m.size))
	case memCached:
		b.uncache(int64(m.size))
	}
	m.mem = memNone
	if m.persistent {
		m.frame = nil
	}
}

// ackMode is a subscription's acknowledgement mode (STOMP 1.2 "SUBSCRIBE ack
// Header").
type ackMode string

const (
	ackAuto             ackMode = "auto"
	ackClient           ackMode = "client" // cumulative
	ackClientIndividual ackMode = "client-individual"
)

// subscription is one SUBSCRIBE of one connection.
type subscription struct {
	id       string
	dest     string
	ack      ackMode
	prefetch int
	c        *conn
	q        *queue // nil for a topic subscription
	t        *topic
	// pos is s's index in its destination's subs, guarded by that
	// destination's mu, so that unsubscribing is O(1) whatever the number
	// of subscribers.
	pos int
	// inflight holds the queue messages delivered to this subscription and
	// not yet acknowledged, in delivery order. Guarded by q.mu.
	inflight []*message
	// inflightBytes is the size of inflight: a subscription takes no more
	// deliveries past MaxPendingBytes, whatever its prefetch, so that a
	// queue's output to one connection is bounded in bytes too.
	inflightBytes int64
}

// splitDestination checks a destination header and says whether it names a
// queue or a topic.
func splitDestination(dest string) (isQueue bool, err error) {
	switch {
	case strings.HasPrefix(dest, queuePrefix) && len(dest) > len(queuePrefix):
		return true, nil
	case strings.HasPrefix(dest, topicPrefix) && len(dest) > len(topicPrefix):
		return false, nil
	case dest == "":
		return false, fmt.Errorf("missing destination header")
	default:
		return false, fmt.Errorf("destination %q must be /queue/NAME or /topic/NAME", dest)
	}
}

// queue delivers each message to exactly one subscriber, round-robin among
// those with room under their prefetch limit.
type queue struct {
	name string
	s    *Server

	mu       sync.Mutex
	pending  []*message // pending[head:] wait for a subscriber, oldest first
	head     int
	subs     []*subscription
	next     int // round-robin cursor into subs
	inflight int // delivered, not acknowledged, over all subscriptions
	enqueued uint64
	dequeued uint64
	// idleSince is when the queue was first seen empty and without
	// subscribers by the reclaimer; removed marks it reclaimed, so that
	// whoever still holds it looks it up again.
	idleSince time.Time
	removed   bool

	// pinned is the bytes of this queue's bodies pinned in the budget
	// (non-persistent messages waiting, deliveries not acknowledged);
	// producers of non-persistent messages to a queue at
	// MaxDestinationMemory wait, as for the whole budget.
	pinned atomic.Int64
}

// queueStats is a snapshot for /status and /metrics.
type queueStats struct {
	Name      string `json:"name"`
	Depth     int    `json:"depth"`
	Inflight  int    `json:"inflight"`
	Consumers int    `json:"consumers"`
	Enqueued  uint64 `json:"enqueued"`
	Dequeued  uint64 `json:"dequeued"`
	// Memory is the bytes of bodies the destination holds pinned in the
	// memory budget.
	Memory int64 `json:"memory"`
}

func (q *queue) stats() queueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return queueStats{
		Name:      q.name,
		Depth:     len(q.pending) - q.head + q.inflight,
		Inflight:  q.inflight,
		Consumers: len(q.subs),
		Enqueued:  q.enqueued,
		Dequeued:  q.dequeued,
		Memory:    q.pinned.Load(),
	}
}

// enqueue adds messages at the tail and delivers what it can. It returns
// false, doing nothing, if the queue was reclaimed.
func (q *queue) enqueue(ms ...*message) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.removed {
		return false
	}
	for _, m := range ms {
		m.hold(q)
	}
	q.pending = append(q.pending, ms...)
	q.enqueued += uint64(len(ms))
	q.dispatchLocked()
	return true
}

// requeueLocked puts messages back at the head, in their original order,
// marked redelivered, so a consumer that failed does not reorder the queue.
func (q *queue) requeueLocked(ms []*message) {
	if len(ms) == 0 {
		return
	}
	for _, m := range ms {
		m.redelivered = true
		m.release(q)
		m.hold(q)
	}
	if q.head >= len(ms) {
		q.head -= len(ms)
		copy(q.pending[q.head:], ms)
		return
	}
	rest := q.pending[q.head:]
	p := make([]*message, 0, len(ms)+len(rest))
	p = append(append(p, ms...), rest...)
	q.pending, q.head = p, 0
}

func (q *queue) popLocked() *message {
	m := q.pending[q.head]
	q.pending[q.head] = nil
	q.head++
	if q.head == len(q.pending) {
		q.pending, q.head = q.pending[:0], 0
	} else if q.head > 1024 && q.head > len(q.pending)/2 {
		n := copy(q.pending, q.pending[q.head:])
		clear(q.pending[n:])
		q.pending, q.head = q.pending[:n], 0
	}
	return m
}

// dispatchLocked hands pending messages to subscriptions with room, in
// round-robin order, until one or the other runs out.
func (q *queue) dispatchLocked() {
	for q.head < len(q.pending) && len(q.subs) > 0 {
		var s *subscription
		for i := range q.subs {
			c := q.subs[(q.next+i)%len(q.subs)]
			if len(c.inflight) < c.prefetch && (c.inflightBytes < q.s.opts.MaxPendingBytes || len(c.inflight) == 0) {
				s = c
				q.next = (q.next + i + 1) % len(q.subs)
				break
			}
		}
		if s == nil {
			return
		}
		m := q.popLocked()
		if !q.load(m) {
			continue
		}
		m.pin(q)
		s.inflight = append(s.inflight, m)
		s.inflightBytes += int64(m.size)
		q.inflight++
		s.c.deliver(s, m)
	}
}

// subscribe adds s; it returns false, doing nothing, if the queue was
// reclaimed.
func (q *queue) subscribe(s *subscription) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.removed {
		return false
	}
	q.subs = addSub(q.subs, s)
	q.dispatchLocked()
	return true
}

// addSub and removeSub keep a destination's subscriptions in a slice
// with each one's index in it: a removal moves the last one into the gap.
func addSub(subs []*subscription, s *subscription) []*subscription {
	s.pos = len(subs)
	return append(subs, s)
}

func removeSub(subs []*subscription, s *subscription) []*subscription {
	i := s.pos
	if i >= len(subs) || subs[i] != s {
		return subs
	}
	last := len(subs) - 1
	subs[i] = subs[last]
	subs[i].pos = i
	subs[last] = nil
	return subs[:last]
}

// unsubscribe removes s and gives its unacknowledged messages back to the
// queue, marked redelivered (the consumer may have seen them).
func (q *queue) unsubscribe(s *subscription) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.subs = removeSub(q.subs, s)
	if q.next >= len(q.subs) {
		q.next = 0
	}
	back := s.inflight
	s.inflight, s.inflightBytes = nil, 0
	q.inflight -= len(back)
	s.c.forget(back)
	q.requeueLocked(back)
	q.dispatchLocked()
}

// ack acknowledges the delivery of message id to s: only it, or (cumulative,
// for ack mode client) it and every earlier delivery to s. It returns the
// acknowledged messages, or an error when s holds no such delivery.
func (q *queue) ack(s *subscription, id string, cumulative bool) ([]*message, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := indexOf(s.inflight, id)
	if i < 0 {
		return nil, fmt.Errorf("message %q is not awaiting acknowledgement on subscription %q", id, s.id)
	}
	var acked []*message
	if cumulative {
		acked = append(acked, s.inflight[:i+1]...)
		s.inflight = append(s.inflight[:0], s.inflight[i+1:]...)
	} else {
		acked = []*message{s.inflight[i]}
		s.inflight = append(s.inflight[:i], s.inflight[i+1:]...)
	}
	q.inflight -= len(acked)
	q.dequeued += uint64(len(acked))
	for _, m := range acked {
		s.inflightBytes -= int64(m.size)
		m.release(q)
	}
	s.c.forget(acked)
	q.dispatchLocked()
	return acked, nil
}

// nack gives the delivery of id back to the queue for redelivery.
func (q *queue) nack(s *subscription, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := indexOf(s.inflight, id)
	if i < 0 {
		return fmt.Errorf("message %q is not awaiting acknowledgement on subscription %q", id, s.id)
	}
	m := s.inflight[i]
	s.inflight = append(s.inflight[:i], s.inflight[i+1:]...)
	s.inflightBytes -= int64(m.size)
	q.inflight--
	s.c.forget([]*message{m})
	q.requeueLocked([]*message{m})
	q.dispatchLocked()
	return nil
}

func indexOf(ms []*message, id string) int {
	for i, m := range ms {
		if m.id == id {
			return i
		}
	}
	return -1
}

// topic delivers each message to every current subscriber. Topic messages
// are not journaled: like ActiveMQ's non-durable topic subscriptions, a
// subscriber only sees what is published while it is subscribed.
type topic struct {
	name string

	mu        sync.Mutex
	subs      []*subscription
	enqueued  uint64
	dequeued  uint64
	idleSince time.Time // see queue
	removed   bool
}

// publish delivers m to every subscriber; it returns false, doing
// nothing, if the topic was reclaimed.
func (t *topic) publish(m *message) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.removed {
		return false
	}
	t.enqueued++
	for _, s := range t.subs {
		s.c.deliver(s, m)
		t.dequeued++
	}
	return true
}

// subscribe adds s; it returns false, doing nothing, if the topic was
// reclaimed.
func (t *topic) subscribe(s *subscription) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.removed {
		return false
	}
	t.subs = addSub(t.subs, s)
	return true
}

func (t *topic) unsubscribe(s *subscription) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.subs = removeSub(t.subs, s)
}

func (t *topic) stats() queueStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return queueStats{Name: t.name, Consumers: len(t.subs), Enqueued: t.enqueued, Dequeued: t.dequeued}
}

// load reads m's body back from the store if memory does not hold it. A
// body the store cannot give back (damaged on disk, say) is reported with
// where it is, and the message is dropped from memory, never delivered:
// every other message keeps flowing. It stays in the store, for an
// operator to look at.
func (q *queue) load(m *message) bool {
	if m.frame != nil {
		return true
	}
	if br, ok := q.s.st.(store.BatchReader); ok {
		return q.loadHead(m, br)
	}
	f, err := q.s.readMessage(m)
	if err != nil {
		q.s.damaged(m, q.name, err)
		return false
	}
	m.frame = f
	return true
}

// Read-ahead of a queue's head: when a message must be read back from the
// store, the next ones waiting without their body are read with it, up to
// readAheadMessages or readAheadBytes, so that draining a backlog costs a
// read per batch. They are charged to the cache even past its share: they
// are delivered next, and the batch bounds the excess.
const (
	readAheadMessages = 64
	readAheadBytes    = 256 << 10
)

func (q *queue) loadHead(m *message, br store.BatchReader) bool {
	batch := []*message{m}
	bytes := int(m.size)
	for _, n := range q.pending[q.head:] {
		if len(batch) >= readAheadMessages || bytes >= readAheadBytes {
			break
		}
		if n.frame == nil && n.persistent {
			batch = append(batch, n)
			bytes += int(n.size)
		}
	}
	ids := make([]string, len(batch))
	for i, b := range batch {
		ids[i] = b.id
	}
	data, errs := br.ReadMany(ids)
	ok := true
	for i, b := range batch {
		err := errs[i]
		var f *frame.Frame
		if err == nil {
			f, err = parseMessage(b, data[i])
		}
		switch {
		case err != nil && i == 0:
			q.s.damaged(b, q.name, err)
			ok = false
		case err != nil:
			// Reported when it reaches the head and is read alone.
		case i == 0:
			b.frame = f
		default:
			b.frame = f
			q.s.mem.cacheAnyway(int64(b.size))
			b.mem = memCached
		}
	}
	return ok
}
