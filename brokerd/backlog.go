package brokerd

import (
	"sort"
	"time"
)

// backlog is the store.Index (handover/brokerd/store) a slave keeps current while it waits for the
// master lock, and that a new master turns into its queues (adopt): one
// small message per live persistent message, its body left in the store.
// Only the goroutine calling the standby's CatchUp or Promote touches it.
type backlog struct {
	msgs      map[string]blEntry
	queues    map[string]*blist
	producers map[string]uint64
	live      int
	bytes     int64
}

// blEntry is a live message of the backlog and its queue's list.
type blEntry struct {
	m *message
	l *blist
}

// blist is one queue's messages in store order. Acknowledged messages are
// left in place, marked, and swept when they are the majority, so that an
// acknowledgement costs a map delete and not a slice shift.
type blist struct {
	ms       []*message
	orders   []uint64 // each message's store order, for sorting
	dead     int
	unsorted bool // a moved message arrived behind younger ones
}

func newBacklog() *backlog {
	return &backlog{msgs: map[string]blEntry{}, queues: map[string]*blist{}, producers: map[string]uint64{}}
}

// Put implements store.Index.
func (b *backlog) Put(id, queue string, size int, order uint64) {
	if _, ok := b.msgs[id]; ok {
		b.Ack(id) // put again: it takes its new place
	}
	l := b.queues[queue]
	if l == nil {
		l = &blist{}
		b.queues[queue] = l
	}
	m := &message{id: id, persistent: true, redelivered: true, size: int32(min(size, 1<<31-1))}
	if n := len(l.orders); n > 0 && l.orders[n-1] > order {
		l.unsorted = true
	}
	l.ms = append(l.ms, m)
	l.orders = append(l.orders, order)
	b.msgs[id] = blEntry{m, l}
	b.live++
	b.bytes += int64(size)
}

// Ack implements store.Index.
func (b *backlog) Ack(id string) {
	e, ok := b.msgs[id]
	if !ok {
		return
	}
	delete(b.msgs, id)
	b.live--
	b.bytes -= int64(e.m.size)
	e.m.gone = true
	l := e.l
	l.dead++
	if l.dead > 1024 && l.dead > len(l.ms)/2 {
		l.sweep()
	}
}

// Producer implements store.Index.
func (b *backlog) Producer(id string, seq uint64) {
	if seq == 0 {
		delete(b.producers, id)
		return
	}
	b.producers[id] = seq
}

// sweep drops acknowledged messages and puts the rest in store order.
func (l *blist) sweep() {
	live, orders := l.ms[:0], l.orders[:0]
	for i, m := range l.ms {
		if !m.gone {
			live = append(live, m)
			orders = append(orders, l.orders[i])
		}
	}
	clear(l.ms[len(live):])
	l.ms, l.orders, l.dead = live, orders, 0
	if l.unsorted {
		sort.Stable(byOrder{l})
		l.unsorted = false
	}
}

// byOrder sorts a blist's messages and orders together.
type byOrder struct{ l *blist }

func (b byOrder) Len() int           { return len(b.l.ms) }
func (b byOrder) Less(i, j int) bool { return b.l.orders[i] < b.l.orders[j] }
func (b byOrder) Swap(i, j int) {
	b.l.ms[i], b.l.ms[j] = b.l.ms[j], b.l.ms[i]
	b.l.orders[i], b.l.orders[j] = b.l.orders[j], b.l.orders[i]
}

// standbyStatus is what /status shows of a slave's standby.
type standbyStatus struct {
	// Ready says whether this slave could take over now: its standby
	// reads the store and its listen address can be bound. NotReady says
	// why not. A slave that is not ready is discovered before the outage
	// that needs it.
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready,omitempty"`
	// Following is false when the store has no standby reader running (a
	// master, or a slave whose store failed to open; see Error).
	Following bool `json:"following"`
	// Messages and Bytes are the live messages the standby has indexed.
	Messages int   `json:"messages"`
	Bytes    int64 `json:"bytes"`
	// LastCatchUp is when the standby last read the store; AgeSeconds how
	// long ago that was when this status was taken.
	LastCatchUp time.Time `json:"last_catch_up"`
	AgeSeconds  float64   `json:"age_seconds"`
	// BehindRecords and BehindBytes are what that catch-up found to read:
	// how far behind the master the standby was when it looked.
	BehindRecords int    `json:"behind_records"`
	BehindBytes   int64  `json:"behind_bytes"`
	Position      string `json:"position"`
	Waiting       string `json:"waiting,omitempty"`
	Error         string `json:"error,omitempty"`
	// TotalRecords counts records read since the standby started.
	TotalRecords uint64 `json:"total_records"`
}
