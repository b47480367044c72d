package brokerd

import (
	"container/list"
	"strconv"
	"sync"

	"handover/brokerd/store"
	"handover/frame"
)

// Producer de-duplication. The handover sidecar in STOMP mode replays, on
// the new master, every SEND whose RECEIPT it had not seen when the old
// master died; some of them were already persisted. It stamps each SEND
// with a producer id (unique per client session) and a sequence number that
// only grows, and the broker drops a SEND whose sequence it has already
// accepted from that producer, answering its receipt all the same.
//
// The window is one number per producer: the highest sequence persisted. It
// survives failover because it is in the store: each stamped persistent SEND
// carries, in the same atomic batch as the message, a store.KindProducer
// record naming the producer, with the sequence as its data. A later record
// of the same producer supersedes the earlier one, so the store holds one
// per producer.
const (
	// HeaderShutdown marks the ERROR a client gets because the broker is
	// shutting down, not because of anything it did: the sidecar resumes
	// such a session on the next master instead of ending it.
	HeaderShutdown = "handover-shutdown"
	// HeaderProducer and HeaderSeq are the SEND headers the sidecar adds.
	HeaderProducer = "handover-producer"
	HeaderSeq      = "handover-seq"

	// maxProducers bounds the window: the least recently used producer is
	// forgotten (and its record removed from the store) beyond it. A
	// session of the sidecar lives as long as one client connection.
	maxProducers = 100000
)

// stamp is the de-duplication key of a SEND, if it has one.
type stamp struct {
	producer string
	seq      uint64
}

func stampOf(f *frame.Frame) (stamp, bool) {
	p, ok := f.Get(HeaderProducer)
	if !ok || p == "" {
		return stamp{}, false
	}
	seq, err := strconv.ParseUint(f.Value(HeaderSeq), 10, 64)
	if err != nil {
		return stamp{}, false
	}
	return stamp{p, seq}, true
}

type producerState struct {
	id        string
	accepted  uint64 // highest sequence taken in (possibly not yet durable)
	persisted uint64 // highest sequence whose SEND was applied
	elem      *list.Element
}

// dedup is the broker's window of producer sequences.
type dedup struct {
	mu        sync.Mutex
	producers map[string]*producerState
	lru       list.List // of *producerState, most recent at the front
	dropped   uint64
}

func newDedup() *dedup { return &dedup{producers: map[string]*producerState{}} }

func (d *dedup) get(id string) *producerState {
	p := d.producers[id]
	if p == nil {
		p = &producerState{id: id}
		p.elem = d.lru.PushFront(p)
		d.producers[id] = p
	} else {
		d.lru.MoveToFront(p.elem)
	}
	return p
}

// accept reports whether a SEND with st is new, and takes it in if so. It
// also returns the store records of producers evicted from the window.
func (d *dedup) accept(st stamp) (fresh bool, evicted []store.Record) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.get(st.producer)
	if st.seq <= p.accepted {
		d.dropped++
		return false, nil
	}
	p.accepted = st.seq
	for len(d.producers) > maxProducers {
		old := d.lru.Remove(d.lru.Back()).(*producerState)
		delete(d.producers, old.id)
		evicted = append(evicted, store.Record{Kind: store.KindProducerEnd, ID: old.id})
	}
	return true, evicted
}

// persisted records that the SEND with st was applied (made durable, for a
// persistent one).
func (d *dedup) persisted(st stamp) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.get(st.producer)
	p.persisted = max(p.persisted, st.seq)
}

// isPersisted reports whether the SEND with st (or a later one) was applied.
func (d *dedup) isPersisted(st stamp) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.producers[st.producer]
	return p != nil && p.persisted >= st.seq
}

// restore loads a producer's sequence from the store.
func (d *dedup) restore(id string, seq uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.get(id)
	p.accepted, p.persisted = max(p.accepted, seq), max(p.persisted, seq)
}

func (d *dedup) droppedCount() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped
}

// dedupRecord is the store record of a producer's sequence.
func dedupRecord(st stamp) store.Record {
	return store.Record{Kind: store.KindProducer, ID: st.producer, Data: strconv.AppendUint(nil, st.seq, 10)}
}
