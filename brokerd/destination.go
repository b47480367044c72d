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
	// memLoading: no body in memory, and a background read of it is on
	// its way (queue.fetch), which attaches it only if the message is
	// still loading then (a purge releases it to memNone).
	memLoading
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

	// Background reads of bodies (see fetchLocked): fetching is how many
	// are on their way; unreadable is a message one could not read, read
	// again alone (and reported if it fails again) when it reaches the
	// head.
	fetching   int
	unreadable *message
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
		pick := -1
		for i := range q.subs {
			k := (q.next + i) % len(q.subs)
			if c := q.subs[k]; len(c.inflight) < c.prefetch && (c.inflightBytes < q.s.opts.MaxPendingBytes || len(c.inflight) == 0) {
				pick = k
				break
			}
		}
		if pick < 0 {
			return
		}
		if br, ok := q.s.st.(store.BatchReader); ok {
			// The head's body is read with the next ones (see
			// fetchLocked); from a remote store in the background, and
			// whoever waits for it waits without the queue's lock, with
			// the next batches read while this one is delivered.
			if head := q.pending[q.head]; head.frame == nil && head != q.unreadable {
				if head.mem == memLoading || !q.fetchLocked(br, true) {
					return
				}
				continue // read: the head has its body now, or is unreadable (the same pick comes next)
			}
			if _, remote := br.(store.RemoteReader); remote {
				if i := q.head + readAheadScan - readAheadMessages; i < len(q.pending) && q.pending[i].frame == nil && q.pending[i].mem != memLoading {
					q.fetchLocked(br, false)
				}
			}
		}
		s := q.subs[pick]
		q.next = (pick + 1) % len(q.subs)
		m := q.popLocked()
		if m == q.unreadable {
			q.unreadable = nil
		}
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

// load reads m's body back from the store, alone, if memory does not hold
// it. A body the store cannot give back (damaged on disk, say) is reported
// with where it is, and the message is dropped from memory, never
// delivered: every other message keeps flowing. It stays in the store, for
// an operator to look at.
func (q *queue) load(m *message) bool {
	if m.frame != nil {
		return true
	}
	f, err := q.s.readMessage(m)
	if err != nil {
		q.s.damaged(m, q.name, err)
		return false
	}
	m.frame = f
	return true
}

// Read-ahead of a queue's head: the messages waiting without their body
// are read from the store in batches of up to readAheadMessages or
// readAheadBytes, so that draining a backlog costs a read per batch. A
// local store (the journal) is read on the dispatch path, a batch when the
// head needs one. A remote one (store.RemoteReader: PostgreSQL) is read in
// the background, so that the queue is not locked while the database
// answers (acknowledgements and sends to the queue go on meanwhile), and
// up to readAheadFetches batches are on their way at once: a batch is a
// round trip and a query, and one at a time left the drain waiting on
// them. The batch the head waits for is charged to the cache even past
// its share (it is delivered next, and it bounds the excess); the others
// are read only while the cache has room for them. readAheadScan bounds
// the messages a batch is looked for among.
const (
	readAheadMessages = 64
	readAheadBytes    = 256 << 10
	readAheadFetches  = 4
	readAheadScan     = readAheadFetches * readAheadMessages
)

// fetchLocked reads the bodies of the next messages waiting from the head
// without one, if fewer than readAheadFetches reads are on their way and,
// unless the head waits for it (needed), the cache has room. It says
// whether it read them before returning (a local store); from a remote
// store it starts a background read (fetch). q.mu is held.
func (q *queue) fetchLocked(br store.BatchReader, needed bool) (read bool) {
	// Room for a whole batch, looked at before the queue is: a full
	// cache is then one comparison per delivery.
	if q.fetching >= readAheadFetches || !needed && !q.s.mem.roomInCache(readAheadBytes) {
		return false
	}
	var batch []*message
	bytes := 0
	for _, n := range q.pending[q.head:min(len(q.pending), q.head+readAheadScan)] {
		if len(batch) >= readAheadMessages || bytes >= readAheadBytes {
			break
		}
		if n.frame == nil && n.mem != memLoading && n != q.unreadable {
			batch = append(batch, n)
			bytes += int(n.size)
		}
	}
	if len(batch) == 0 {
		return false
	}
	for _, m := range batch {
		m.mem = memLoading
	}
	if _, remote := br.(store.RemoteReader); !remote {
		q.attachLocked(batch, readBatch(br, batch))
		return true
	}
	q.fetching++
	q.s.fetches.Add(1)
	go q.fetch(br, batch)
	return false
}

// fetch reads batch's bodies in the background, attaches those still
// wanted, and dispatches.
func (q *queue) fetch(br store.BatchReader, batch []*message) {
	defer q.s.fetches.Done()
	frames := readBatch(br, batch)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.fetching--
	q.attachLocked(batch, frames)
	q.dispatchLocked()
}

// batchRead is what readBatch read of each message: its frame, or why not.
type batchRead struct {
	f   *frame.Frame
	err error
}

// readBatch reads and parses the bodies of batch from br.
func readBatch(br store.BatchReader, batch []*message) []batchRead {
	ids := make([]string, len(batch))
	for i, m := range batch {
		ids[i] = m.id
	}
	data, errs := br.ReadMany(ids)
	out := make([]batchRead, len(batch))
	for i, m := range batch {
		if out[i].err = errs[i]; out[i].err == nil {
			out[i].f, out[i].err = parseMessage(m, data[i])
		}
	}
	return out
}

// attachLocked gives the messages of batch that are still loading what
// readBatch read of them. One that could not be read is left for the head
// to read alone (see unreadable). q.mu is held.
func (q *queue) attachLocked(batch []*message, read []batchRead) {
	for i, m := range batch {
		if m.mem != memLoading {
			continue // purged meanwhile
		}
		m.mem = memNone
		if read[i].err != nil {
			// The head's, always: the head is not read again in a batch.
			if q.unreadable == nil || q.head < len(q.pending) && q.pending[q.head] == m {
				q.unreadable = m
			}
			continue
		}
		m.frame = read[i].f
		q.s.mem.cacheAnyway(int64(m.size))
		m.mem = memCached
	}
}
