package journal

import (
	"strconv"
	"sync"
	"sync/atomic"

	"handover/brokerd/store"
)

// loc is where a live record is: its segment, and the offset and length of
// the whole record (header included) in that segment. Memory holds one per
// live message, not its body: 16 bytes, beside the id.
type loc struct {
	seg uint64
	off uint32
	n   uint32
}

// segment is the in-memory bookkeeping of one segment file.
type segment struct {
	seq  uint64
	name string // base name, for logs and errors
	size int64  // end of well-formed data, header included
	live int    // live records (Puts and producer windows) stored here
	// liveBytes is the encoded size of those live records: what carrying
	// them forward would copy. recBytes is the encoded size of all its
	// records, live or not (batch headers excluded).
	liveBytes int64
	recBytes  int64
	// refs counts, per older segment, the records in this segment that
	// retired a record stored there (Acks, moves, superseding producer
	// windows). While that older segment exists this one must be kept, or
	// replay would see the old record without what retired it and
	// resurrect it.
	refs map[uint64]int
	// zeroed is true when the file's reserved space was written with
	// zeros ahead of time (a spare), so fdatasync after a write into it
	// flushes data only. A segment made on the spot (at Open) has
	// fallocate's unwritten extents, and every fdatasync must also commit
	// their conversion: measurably slower per receipt.
	zeroed bool
	// carried is how far compaction has looked for live records to carry
	// forward out of this segment.
	carried int64
}

func newSegment(seq uint64, size int64) *segment {
	return &segment{seq: seq, name: segName(seq), size: size, refs: make(map[uint64]int)}
}

// state is the live set and the segment bookkeeping. Replay (a Standby)
// builds it; the writer takes it over at Promote and keeps it current.
// Whoever owns it (the standby's caller, then the writer) mutates it; the
// live map is also read by Read, so changes to it hold mu.
type state struct {
	segs  map[uint64]*segment
	order []uint64 // sequence numbers of segs, ascending

	mu        sync.RWMutex
	live      *locIndex      // message id -> its live Put
	producers map[string]loc // producer id -> its live window

	compactDue bool // some segment may have become deletable

	nSegments  atomic.Int64
	nBytes     atomic.Int64
	nLive      atomic.Int64
	nLiveBytes atomic.Int64
}

func newState() *state {
	return &state{
		segs:      make(map[uint64]*segment),
		live:      newLocIndex(),
		producers: make(map[string]loc),
	}
}

func (st *state) addSegment(s *segment) {
	st.segs[s.seq] = s
	st.order = append(st.order, s.seq)
	st.nSegments.Add(1)
	st.nBytes.Add(s.size)
}

// lookup returns where the live Put id is.
func (st *state) lookup(id string) (loc, bool) {
	st.mu.RLock()
	l, ok := st.live.get(id)
	st.mu.RUnlock()
	return l, ok
}

// applyRecord applies one record read from the files at l, telling idx
// what it changed. intern gives the queue name's shared string.
func (st *state) applyRecord(r *rawRecord, l loc, idx store.Index, intern func([]byte) string) {
	id := string(r.id) // one copy, shared by the live set and the index
	switch r.kind {
	case store.KindPut, kindMove:
		if r.kind == kindMove {
			if _, known := st.lookup(id); known {
				st.apply(r.kind, id, l) // the index has it where it belongs
				return
			}
		}
		if st.apply(r.kind, id, l) && idx != nil {
			data, order := r.data, l.order()
			if r.kind == kindMove {
				data, order = r.data[moveKeyLen:], le.Uint64(r.data)
			}
			idx.Put(id, intern(r.queue), len(data), order)
		}
	case store.KindAck:
		if st.apply(r.kind, id, l) && idx != nil {
			idx.Ack(id)
		}
	case store.KindProducer, store.KindProducerEnd:
		if st.apply(r.kind, id, l) && idx != nil {
			seq := uint64(0)
			if r.kind == store.KindProducer {
				seq, _ = strconv.ParseUint(string(r.data), 10, 64)
			}
			idx.Producer(id, seq)
		}
	}
}

// order is the append-order key of a Put found at l: later records have
// greater keys, and a carried-forward record keeps its Put's.
func (l loc) order() uint64 { return l.seg<<32 | uint64(l.off) }

// applyWritten applies a record the writer has just made durable at l.
func (st *state) applyWritten(r *store.Record, l loc) { st.apply(r.Kind, r.ID, l) }

// apply applies one durable record of kind for id, found at l, and reports
// whether it changed the live set.
func (st *state) apply(kind store.Kind, id string, l loc) bool {
	seg := st.segs[l.seg]
	seg.recBytes += int64(l.n)
	switch kind {
	case store.KindPut, kindMove:
		// A move (carried forward by compaction, ahead of every record
		// appended after compaction looked: see carry) moves a live
		// record; found without its Put (its segment was deleted after
		// the move), it is the Put.
		st.mu.Lock()
		old, was := st.live.get(id)
		st.live.set(id, l)
		st.mu.Unlock()
		if was {
			st.retire(old, seg)
		}
		st.hold(seg, l, !was)
	case store.KindAck:
		st.mu.Lock()
		old, ok := st.live.del(id)
		st.mu.Unlock()
		if !ok {
			return false
		}
		st.retire(old, seg)
		st.nLive.Add(-1)
	case store.KindProducer:
		if old, ok := st.producers[id]; ok {
			st.retire(old, seg)
		}
		st.producers[id] = l
		st.hold(seg, l, false)
	case store.KindProducerEnd:
		old, ok := st.producers[id]
		if !ok {
			return false
		}
		st.retire(old, seg)
		delete(st.producers, id)
	}
	return true
}

// hold counts a record at l as live in seg; newMsg says it is a message
// that was not live before (for the live-message count).
func (st *state) hold(seg *segment, l loc, newMsg bool) {
	seg.live++
	seg.liveBytes += int64(l.n)
	st.nLiveBytes.Add(int64(l.n))
	if newMsg {
		st.nLive.Add(1)
	}
}

// retire marks the live record at old as no longer needed because of a
// record in seg, and remembers the cross-segment dependency.
func (st *state) retire(old loc, seg *segment) {
	s := st.segs[old.seg]
	if s == nil {
		return // its segment is gone (a standby saw it deleted)
	}
	s.live--
	s.liveBytes -= int64(old.n)
	st.nLiveBytes.Add(-int64(old.n))
	if old.seg != seg.seq {
		seg.refs[old.seg]++
	}
	if s.live == 0 {
		st.compactDue = true
	}
}

// dropSegment forgets a segment that another process deleted: everything
// live in it is not live (a writer deletes only segments without live
// records), so the index hears an Ack for each such message.
func (st *state) dropSegment(seq uint64, idx store.Index) {
	s := st.segs[seq]
	if s == nil {
		return
	}
	if s.live > 0 {
		var gone []string
		st.live.eachWhere(func(l loc) bool { return l.seg == seq }, func(id string, _ loc) {
			gone = append(gone, id)
		})
		st.mu.Lock()
		for _, id := range gone {
			l, _ := st.live.del(id)
			st.nLive.Add(-1)
			st.nLiveBytes.Add(-int64(l.n))
		}
		st.mu.Unlock()
		if idx != nil {
			for _, id := range gone {
				idx.Ack(id)
			}
		}
		for id, l := range st.producers {
			if l.seg == seq {
				delete(st.producers, id)
				st.nLiveBytes.Add(-int64(l.n))
				if idx != nil {
					idx.Producer(id, 0)
				}
			}
		}
	}
	delete(st.segs, seq)
	st.order = deleteSeq(st.order, seq)
	st.nSegments.Add(-1)
	st.nBytes.Add(-s.size)
}

func deleteSeq(order []uint64, seq uint64) []uint64 {
	for i, s := range order {
		if s == seq {
			return append(order[:i], order[i+1:]...)
		}
	}
	return order
}
