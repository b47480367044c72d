package storetest

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"sync/atomic"

	"handover/brokerd/store"
)

// Index is a store.Index that remembers everything it was told, so that a
// test can compare what a Standby built with what was appended (a model
// built with Apply) or with what another Standby built (Diff).
//
// It keeps, as the broker's own index must: the live messages with their
// queue and size, their order per queue (by the order the store gave each
// Put, so that a moved message arriving late takes its original place),
// and the producers' windows. It also counts the calls it received, so a
// test can tell how much a CatchUp or Promote read.
//
// An Index is not safe for concurrent use, on purpose: the contract says its
// methods are called from the goroutine that called CatchUp or Promote, so
// the suite reads it on that goroutine only, between calls, and the race
// detector reports a backend that calls it from anywhere else. Run also
// flags a call that arrives while no CatchUp or Promote is running.
type Index struct {
	live      map[string]entry
	producers map[string]uint64
	applied   uint64 // Puts applied by Apply: the order it gives the next
	calls     int

	// Set by the suite only (see guard): calls outside CatchUp/Promote and
	// overlapping calls are counted rather than trusted. Atomic, because
	// such calls come, by definition, from a goroutine the suite does not
	// control.
	guarded  atomic.Bool
	open     atomic.Bool
	busy     atomic.Int32
	strays   atomic.Int64
	overlaps atomic.Int64
}

var _ store.Index = (*Index)(nil)

// entry is one live message.
type entry struct {
	queue string
	size  int
	order uint64
}

// NewIndex returns an empty Index.
func NewIndex() *Index {
	return &Index{live: map[string]entry{}, producers: map[string]uint64{}}
}

// enter and leave bracket every method, to notice calls the contract
// forbids (see Index).
func (x *Index) enter() {
	if x.busy.Add(1) != 1 {
		x.overlaps.Add(1)
	}
	if x.guarded.Load() && !x.open.Load() {
		x.strays.Add(1)
	}
	x.calls++
}

func (x *Index) leave() { x.busy.Add(-1) }

// Put records message id, of size bytes, live in queue at place order of
// the store's append order. As the contract says, a Put of an id that is
// already live with the same order is a move and changes nothing; with
// another order it replaces the message, at the new place.
func (x *Index) Put(id, queue string, size int, order uint64) {
	x.enter()
	defer x.leave()
	if e, ok := x.live[id]; ok && e.order == order {
		return
	}
	x.live[id] = entry{queue: queue, size: size, order: order}
}

// Ack forgets message id; an id that is not live is a no-op, as the
// contract allows.
func (x *Index) Ack(id string) {
	x.enter()
	defer x.leave()
	delete(x.live, id)
}

// Producer sets producer id's window to seq; seq 0 forgets the producer.
func (x *Index) Producer(id string, seq uint64) {
	x.enter()
	defer x.leave()
	if seq == 0 {
		delete(x.producers, id)
		return
	}
	x.producers[id] = seq
}

// Apply feeds recs to x with the meaning the contract gives them, as one
// Append: a model of what a store holding recs must hand a Standby. Like a
// store, it refuses the whole batch, applying none of it, with an error
// wrapping store.ErrInvalid, if a record is one a store must refuse (empty
// ID, unknown kind), or a producer window that is not a positive decimal
// (the model cannot know what a store would make of it). Puts are given
// increasing orders; only the resulting order per queue matters to Diff,
// so a model compares with any store's index.
func (x *Index) Apply(recs ...store.Record) error {
	seqs := make([]uint64, len(recs))
	for i, r := range recs {
		if r.ID == "" {
			return fmt.Errorf("%w: record %d: empty ID", store.ErrInvalid, i)
		}
		switch r.Kind {
		case store.KindPut, store.KindAck, store.KindProducerEnd:
		case store.KindProducer:
			seq, err := strconv.ParseUint(string(r.Data), 10, 64)
			if err != nil || seq == 0 {
				return fmt.Errorf("%w: record %d: producer %q window %q is not a positive decimal", store.ErrInvalid, i, r.ID, r.Data)
			}
			seqs[i] = seq
		default:
			return fmt.Errorf("%w: record %d: unknown kind %v", store.ErrInvalid, i, r.Kind)
		}
	}
	for i, r := range recs {
		switch r.Kind {
		case store.KindPut:
			x.applied++
			x.Put(r.ID, r.Queue, len(r.Data), x.applied)
		case store.KindAck:
			x.Ack(r.ID)
		case store.KindProducer:
			x.Producer(r.ID, seqs[i])
		case store.KindProducerEnd:
			x.Producer(r.ID, 0)
		}
	}
	return nil
}

// Calls is the number of Put, Ack and Producer calls x received, Apply's
// included: the difference across a CatchUp or Promote is how many changes
// it applied.
func (x *Index) Calls() int { return x.calls }

// Len is the number of live messages.
func (x *Index) Len() int { return len(x.live) }

// Lookup returns the queue and size of live message id.
func (x *Index) Lookup(id string) (queue string, size int, ok bool) {
	e, ok := x.live[id]
	return e.queue, e.size, ok
}

// Queues returns the names of the queues holding live messages, sorted.
func (x *Index) Queues() []string {
	set := map[string]bool{}
	for _, e := range x.live {
		set[e.queue] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// Order returns the live messages of queue in the order the broker must
// deliver them: by the order the store gave their Puts (ties, which a
// store must not give, by id).
func (x *Index) Order(queue string) []string {
	var ids []string
	for id, e := range x.live {
		if e.queue == queue {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := x.live[ids[i]].order, x.live[ids[j]].order
		return a < b || a == b && ids[i] < ids[j]
	})
	return ids
}

// tie returns two live messages of queue that the store gave the same
// order, which leaves their delivery order undefined, or "", "".
func (x *Index) tie(queue string) (string, string) {
	ids := x.Order(queue)
	for i := 1; i < len(ids); i++ {
		if x.live[ids[i-1]].order == x.live[ids[i]].order {
			return ids[i-1], ids[i]
		}
	}
	return "", ""
}

// Producers returns a copy of the producers' windows.
func (x *Index) Producers() map[string]uint64 { return maps.Clone(x.producers) }

// Diff compares x (what a store gave) with want and describes the first
// difference, or returns "" when they hold the same live messages, in the
// same order per queue, with the same sizes, and the same producers. The
// order between queues and the call counts do not matter: the broker
// neither sees nor needs them. Queues and producers are compared in sorted
// order, so the report is the same on every run.
func (x *Index) Diff(want *Index) string {
	if x.Len() != want.Len() {
		if d := x.firstQueueDiff(want); d != "" {
			return fmt.Sprintf("%d live messages, want %d; first difference: %s", x.Len(), want.Len(), d)
		}
		return fmt.Sprintf("%d live messages, want %d", x.Len(), want.Len())
	}
	if d := x.firstQueueDiff(want); d != "" {
		return d
	}
	ids := slices.Sorted(maps.Keys(x.producers))
	for _, id := range slices.Sorted(maps.Keys(want.producers)) {
		if _, ok := x.producers[id]; !ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		got, gok := x.producers[id]
		w, wok := want.producers[id]
		switch {
		case gok && !wok:
			return fmt.Sprintf("producer %q has window %d, want none", id, got)
		case !gok && wok:
			return fmt.Sprintf("producer %q missing, want window %d", id, w)
		case got != w:
			return fmt.Sprintf("producer %q has window %d, want %d", id, got, w)
		}
	}
	return ""
}

// firstQueueDiff compares the queues' contents, in order, and the sizes.
func (x *Index) firstQueueDiff(want *Index) string {
	queues := x.Queues()
	for _, q := range want.Queues() {
		if !slices.Contains(queues, q) {
			queues = append(queues, q)
		}
	}
	sort.Strings(queues)
	for _, q := range queues {
		if a, b := x.tie(q); a != "" {
			return fmt.Sprintf("messages %q and %q of queue %q were put with the same order %d: their delivery order is undefined", a, b, q, x.live[a].order)
		}
		got, w := x.Order(q), want.Order(q)
		for i := 0; i < max(len(got), len(w)); i++ {
			switch {
			case i >= len(got):
				return fmt.Sprintf("queue %q ends after %d messages, want %q at position %d (of %d)", q, len(got), w[i], i, len(w))
			case i >= len(w):
				return fmt.Sprintf("queue %q has %q at position %d, want the queue to end after %d messages", q, got[i], i, len(w))
			case got[i] != w[i]:
				return fmt.Sprintf("queue %q has %q at position %d, want %q", q, got[i], i, w[i])
			}
			if gs, ws := x.live[got[i]].size, want.live[w[i]].size; gs != ws {
				return fmt.Sprintf("message %q in queue %q has size %d, want %d", got[i], q, gs, ws)
			}
		}
	}
	return ""
}

// guard makes x count calls that arrive while no CatchUp or Promote is
// running (see expect).
func (x *Index) guard() { x.guarded.Store(true) }

// misuse reports calls the contract forbids that x has seen, or "".
func (x *Index) misuse() string {
	s, o := x.strays.Load(), x.overlaps.Load()
	switch {
	case s > 0 && o > 0:
		return fmt.Sprintf("%d Index calls arrived while no CatchUp or Promote was running, and %d overlapped another", s, o)
	case s > 0:
		return fmt.Sprintf("%d Index calls arrived while no CatchUp or Promote was running", s)
	case o > 0:
		return fmt.Sprintf("%d Index calls overlapped another (Index methods are called one at a time)", o)
	}
	return ""
}
