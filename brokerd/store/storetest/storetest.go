// Package storetest is the conformance suite of the store contract
// (handover/brokerd/store): one set of cases that every backend (the file
// journal, PostgreSQL) runs, as nats-server runs one suite over all its
// stores, so that the broker can rely on the contract rather than on
// whichever backend it was tested with.
//
// A backend's test implements Harness and calls Run:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) storetest.Harness {
//			return newHarness(t) // an empty store private to t
//		})
//	}
//
// Each case asks for its own harness, hence its own empty store: cases
// count what a store holds, and some damage it on purpose. The optional
// capabilities (TornTailer, BitFlipper, PartialWriter) are found by type
// assertion on the harness; the cases that need one are skipped, with the
// reason, when it is missing.
//
// Every case checks a behaviour the broker relies on; each comment says
// which. Waiting is always polling with a deadline, never a fixed sleep, so
// the cases are as fast as the backend and fail with a message rather than
// hang.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"handover/brokerd/store"
)

// Harness is one backend's side of the suite, bound to one empty store
// (Run asks for a new one per case). Methods are called from the case's
// goroutine and fail t rather than return errors.
type Harness interface {
	// Follow opens a new Standby on the harness's store, as another broker
	// process would: its own files or connection, sharing nothing in memory
	// with the other Standbys and Stores of the harness. It must work on a
	// store nothing was ever written to (a slave may start before any
	// master). The suite closes or promotes what it opens.
	Follow(t *testing.T) store.Standby
	// Promotion returns what Promote needs to write as a new master: an
	// Epoch higher than every one returned before (the suite checks), made
	// current in the store where the backend fences by epoch (PostgreSQL:
	// the lock's epoch row), and the Fence, which may be nil. The suite
	// wraps Fence in its own check so that it can revoke the lease.
	Promotion(t *testing.T) store.Promotion
	// Crash abandons s as SIGKILL would end its process: nothing that was
	// not yet durable is flushed, its files or connections are dropped,
	// and it writes nothing more, ever (a killed process cannot), though
	// done callbacks may still be called or never be. It returns once s
	// can write no more. The suite makes no call on s afterwards.
	Crash(t *testing.T, s store.Store)
}

// TornTailer is the optional capability of backends whose writes can tear
// (the journal; not PostgreSQL, whose commits are atomic).
type TornTailer interface {
	// TornTail damages the last write of the store, whose writer has
	// crashed (Crash), as a crash in the middle of that write would have
	// left it: a prefix of its bytes written, say. The suite made that
	// write as one Append, alone in its commit.
	TornTail(t *testing.T)
}

// BitFlipper is the optional capability of backends that checksum message
// bodies.
type BitFlipper interface {
	// FlipBit damages the stored body of live message id, whose Data is
	// body, in the storage under s (the open master store), as a failing
	// disk would: one bit flipped, so that the body fails its checksum.
	// It returns a string that Read's error must contain to name where the
	// damage is (the file's name, say), or "" to skip that check.
	FlipBit(t *testing.T, s store.Store, id string, body []byte) (where string)
}

// PartialWriter is the optional capability of backends in which a Standby
// can see a write that is still in progress (the journal: a batch half
// written to the file).
type PartialWriter interface {
	// PartialWrite calls s.Append(recs, done) and arranges that the commit
	// carrying recs stops part-way: it returns once some, but not all, of
	// that commit's bytes are where a Standby reads them, with the rest
	// held back. finish lets the commit complete, after which done is
	// called as usual. The suite makes no other Append on s meanwhile.
	PartialWrite(t *testing.T, s store.Store, recs []store.Record, done func(error)) (finish func())
}

// patience bounds every wait of the suite: a backend that has not done
// what it must within it is taken to never do it. It is far above what any
// case needs, so it only decides how soon a broken backend fails. (A
// variable only so that this package's own tests of failing runs can
// shorten it.)
var patience = 15 * time.Second

// Run runs every case of the suite, one after the other, each as a
// subtest with a harness of its own from newHarness (hence an empty
// store; harnesses may share a server between cases, since none runs in
// parallel). The harnesses are taken to be of one type: the optional
// capabilities are looked up on the first, so that a case needing one the
// backend lacks is skipped without making a store for nothing.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	var first Harness
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.needs != nil && first != nil {
				if why := c.needs(first); why != "" {
					t.Skip(why)
				}
			}
			e := newEnv(t, newHarness)
			if first == nil {
				first = e.h
			}
			c.run(e)
		})
	}
}

// cases lists the suite's cases, in the order they run: the basic ones
// first, so that a backend that fails them fails with the simplest story.
// needs, if set, says why a harness cannot run the case, or "".
var cases = []struct {
	name  string
	run   func(e *env)
	needs func(h Harness) string
}{
	{"RoundTrip", testRoundTrip, nil},
	{"DoneOrder", testDoneOrder, nil},
	{"DoneBarrier", testDoneBarrier, nil},
	{"DoneInvalid", testDoneInvalid, nil},
	{"DoneClose", testDoneClose, nil},
	{"Crash", testCrash, nil},
	{"Follow", testFollow, nil},
	{"TakeoverReadsTail", testTakeoverReadsTail, nil},
	{"Fencing", testFencing, nil},
	{"Scale", testScale, nil},
	{"ReadMany", testReadMany, nil},
	{"TornTail", testTornTail, needsTornTailer},
	{"BitFlip", testBitFlip, needsBitFlipper},
	{"PartialWrite", testPartialWrite, needsPartialWriter},
}

func needsTornTailer(h Harness) string {
	if _, ok := h.(TornTailer); !ok {
		return "the harness does not implement storetest.TornTailer"
	}
	return ""
}

func needsBitFlipper(h Harness) string {
	if _, ok := h.(BitFlipper); !ok {
		return "the harness does not implement storetest.BitFlipper"
	}
	return ""
}

func needsPartialWriter(h Harness) string {
	if _, ok := h.(PartialWriter); !ok {
		return "the harness does not implement storetest.PartialWriter"
	}
	return ""
}

// env is one case's harness and the bookkeeping that lets a case end
// cleanly whatever it did: stores and standbys still open are closed,
// crashed ones left alone.
type env struct {
	t         *testing.T
	h         Harness
	epoch     uint64 // highest Promotion epoch seen
	liveWrong bool   // a Stats().Live check failed (see checkLive)
}

func newEnv(t *testing.T, newHarness func(t *testing.T) Harness) *env {
	t.Helper()
	h := newHarness(t)
	if h == nil {
		t.Fatal("storetest: newHarness returned nil")
	}
	return &env{t: t, h: h}
}

// errRevoked is what a revoked lease's fence says.
var errRevoked = errors.New("storetest: the test revoked this lease")

// lease is a Promotion whose fence the case can make refuse, as the broker's
// lease watcher does when the master lock is lost.
type lease struct {
	p       store.Promotion
	revoked atomic.Bool
}

// revoke makes every later call of the lease's fence refuse. It is safe to
// call from a done callback.
func (l *lease) revoke() { l.revoked.Store(true) }

func (l *lease) promotion() store.Promotion {
	return store.Promotion{Epoch: l.p.Epoch, Fence: func() error {
		if l.revoked.Load() {
			return errRevoked
		}
		if l.p.Fence != nil {
			return l.p.Fence()
		}
		return nil
	}}
}

// promotion asks the harness for a new lease, checking that its epoch is
// higher than every earlier one: fencing by epoch depends on it.
func (e *env) promotion() *lease {
	e.t.Helper()
	p := e.h.Promotion(e.t)
	if p.Epoch == 0 || p.Epoch <= e.epoch {
		e.t.Fatalf("harness: Promotion returned epoch %d after %d; each must be positive and higher than the last", p.Epoch, e.epoch)
	}
	e.epoch = p.Epoch
	return &lease{p: p}
}

// standby is a Standby with the Index it feeds.
type standby struct {
	e    *env
	sb   store.Standby
	idx  *Index
	done bool // promoted or closed: the suite must not touch sb again
}

// follow opens a Standby feeding a new, guarded Index.
func (e *env) follow() *standby {
	e.t.Helper()
	sb := e.h.Follow(e.t)
	if sb == nil {
		e.t.Fatal("harness: Follow returned nil")
	}
	s := &standby{e: e, sb: sb, idx: NewIndex()}
	s.idx.guard()
	e.t.Cleanup(func() {
		if !s.done {
			s.sb.Close()
		}
	})
	return s
}

// catchUp calls CatchUp once; an error fails the case, since the contract
// allows none for a store that is merely being written. It returns the
// progress and the number of Index calls the call made.
func (s *standby) catchUp() (store.Progress, int) {
	s.e.t.Helper()
	before := s.idx.Calls()
	s.idx.open.Store(true)
	p, err := s.sb.CatchUp(s.idx)
	s.idx.open.Store(false)
	calls := s.idx.Calls() - before
	if err != nil {
		s.e.t.Fatalf("CatchUp: %v (after %d records; a store being written must never make CatchUp fail)", err, p.Records)
	}
	s.checkProgress(p, calls)
	return p, calls
}

// checkProgress checks what any CatchUp must report about itself: no
// negative counts, and records read if it changed the index (/status shows
// these numbers as the standby's progress).
func (s *standby) checkProgress(p store.Progress, calls int) {
	s.e.t.Helper()
	if p.Records < 0 || p.Bytes < 0 {
		s.e.t.Errorf("CatchUp reported %d records, %d bytes: negative", p.Records, p.Bytes)
	}
	if calls > 0 && p.Records == 0 {
		s.e.t.Errorf("CatchUp made %d Index calls but reported 0 records read", calls)
	}
	if m := s.idx.misuse(); m != "" {
		s.e.t.Fatalf("the contract says Index methods are called one at a time, during CatchUp or Promote: %s", m)
	}
}

// converge calls CatchUp until the standby's index equals want (the
// appends it models are all done), as a slave's periodic catch-up would,
// and returns the records and Index calls the calls reported in all.
func (s *standby) converge(want *Index) (records, calls int) {
	s.e.t.Helper()
	var last string
	ok := s.e.poll(func() bool {
		p, c := s.catchUp()
		records += p.Records
		calls += c
		last = s.idx.Diff(want)
		return last == ""
	})
	if !ok {
		s.e.t.Fatalf("a Standby calling CatchUp for %v did not reach the appended state: %s", patience, last)
	}
	return records, calls
}

// promote promotes the standby under l; an error fails the case.
func (s *standby) promote(l *lease) *master {
	s.e.t.Helper()
	m, err := s.tryPromote(l)
	if err != nil {
		s.e.t.Fatalf("Promote: %v", err)
	}
	return m
}

// promoteMaster promotes the standby under a new lease.
func (s *standby) promoteMaster() *master {
	s.e.t.Helper()
	return s.promote(s.e.promotion())
}

// tryPromote promotes the standby under l; the Store it returns is closed
// when the case ends, unless the case crashed it.
func (s *standby) tryPromote(l *lease) (*master, error) {
	s.e.t.Helper()
	s.done = true
	s.idx.open.Store(true)
	st, err := s.sb.Promote(l.promotion(), s.idx)
	s.idx.open.Store(false)
	if m := s.idx.misuse(); m != "" {
		s.e.t.Errorf("the contract says Index methods are called one at a time, during CatchUp or Promote: %s", m)
	}
	if err != nil {
		return nil, err
	}
	if st == nil {
		s.e.t.Fatal("Promote returned a nil Store and no error")
	}
	m := &master{Store: st, lease: l}
	s.e.t.Cleanup(func() {
		if !m.crashed.Load() {
			m.Close()
		}
	})
	return m, nil
}

// close closes the standby.
func (s *standby) close() {
	s.e.t.Helper()
	s.done = true
	if err := s.sb.Close(); err != nil {
		s.e.t.Errorf("Standby.Close: %v", err)
	}
}

// master is a store the case writes, with its lease. Harness methods get
// the Store itself (m.Store), which is what they know how to handle.
type master struct {
	store.Store
	lease   *lease
	crashed atomic.Bool
}

// cold opens the store as a broker starting up does: Follow, then Promote
// at once under a new lease. It returns the master and the Index the
// Promote filled.
func (e *env) cold() (*master, *Index) {
	e.t.Helper()
	sb := e.follow()
	return sb.promoteMaster(), sb.idx
}

// crash crashes m through the harness.
func (e *env) crash(m *master) {
	e.t.Helper()
	m.crashed.Store(true)
	e.h.Crash(e.t, m.Store)
}

// poll calls cond until it returns true, backing off from a millisecond to
// twenty, and reports whether it did within patience.
func (e *env) poll(cond func() bool) bool {
	deadline := time.Now().Add(patience)
	wait := time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// await waits for ch to be closed or to deliver, failing the case after
// patience with what it was waiting for.
func await[T any](e *env, ch <-chan T, what string, args ...any) T {
	e.t.Helper()
	timer := time.NewTimer(patience)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		e.t.Fatalf("waited %v for %s", patience, fmt.Sprintf(what, args...))
		panic("unreachable")
	}
}

// write appends recs and waits for their done.
func (e *env) write(s store.Store, recs ...store.Record) error {
	e.t.Helper()
	ch := make(chan error, 1)
	s.Append(recs, func(err error) { ch <- err })
	return await(e, ch, "the done of an Append of %d records", len(recs))
}

// mustWrite appends recs, failing the case unless they are made durable,
// and applies them to model (if not nil).
func (e *env) mustWrite(s store.Store, model *Index, recs ...store.Record) {
	e.t.Helper()
	if err := e.write(s, recs...); err != nil {
		e.t.Fatalf("Append of %d records (first %s %q): %v", len(recs), kindOf(recs), idOf(recs), err)
	}
	if model != nil {
		if err := model.Apply(recs...); err != nil {
			e.t.Fatalf("storetest model: %v", err)
		}
	}
}

// writeAll appends every batch at once (pipelined, as many producers do),
// waits for all their dones, fails the case if one failed, and applies them
// to model in order.
func (e *env) writeAll(s store.Store, model *Index, batches [][]store.Record) {
	e.t.Helper()
	errs := make([]error, len(batches))
	var left atomic.Int64
	left.Store(int64(len(batches)))
	all := make(chan struct{})
	if len(batches) == 0 {
		close(all)
	}
	for i, b := range batches {
		s.Append(b, func(err error) {
			errs[i] = err
			if left.Add(-1) == 0 {
				close(all)
			}
		})
	}
	await(e, all, "the dones of %d pipelined Appends (%d still missing)", len(batches), left.Load())
	for i, err := range errs {
		if err != nil {
			e.t.Fatalf("pipelined Append %d of %d (first %s %q): %v", i, len(batches), kindOf(batches[i]), idOf(batches[i]), err)
		}
	}
	if model != nil {
		for _, b := range batches {
			if err := model.Apply(b...); err != nil {
				e.t.Fatalf("storetest model: %v", err)
			}
		}
	}
}

// checkLive checks that s.Stats().Live, the broker's gauge of stored
// messages, comes to want. It may trail the dones by a moment, so it is
// polled; once it was found wrong, later checks of the case look once.
func (e *env) checkLive(s store.Store, want int, when string) {
	e.t.Helper()
	var got int
	cond := func() bool { got = s.Stats().Live; return got == want }
	if e.liveWrong {
		if !cond() {
			e.t.Errorf("Stats().Live %s = %d, want %d", when, got, want)
		}
		return
	}
	if !e.poll(cond) {
		e.liveWrong = true
		e.t.Errorf("Stats().Live %s = %d, want %d (waited %v)", when, got, want, patience)
	}
}

// budget keeps a case from reporting thousands of errors about a badly
// broken store: the first few tell the story.
type budget struct {
	t *testing.T
	n int
}

const budgetErrors = 10

func (b *budget) errorf(format string, args ...any) {
	b.t.Helper()
	b.n++
	if b.n <= budgetErrors {
		b.t.Errorf(format, args...)
	}
}

// flush reports how many errors were left out.
func (b *budget) flush() {
	if b.n > budgetErrors {
		b.t.Errorf("... and %d more errors like these", b.n-budgetErrors)
	}
}

// checkRead reads id from s and checks that it is body, byte for byte.
func (e *env) checkRead(s store.Store, id string, body []byte) {
	e.t.Helper()
	got, err := s.Read(id)
	if err != nil {
		e.t.Errorf("Read(%q): %v", id, err)
		return
	}
	if !bytes.Equal(got, body) {
		e.t.Errorf("Read(%q) = %d bytes %s, want %d bytes %s", id, len(got), preview(got), len(body), preview(body))
	}
}

// checkNotFound checks that Read(id) fails with store.ErrNotFound.
func (e *env) checkNotFound(s store.Store, id, why string) {
	e.t.Helper()
	got, err := s.Read(id)
	if !errors.Is(err, store.ErrNotFound) {
		e.t.Errorf("Read(%q) of a message %s = %d bytes, error %v; want an error wrapping store.ErrNotFound", id, why, len(got), err)
	}
}

// put, ack, producer and producerEnd build records.
func put(id, queue string, data []byte) store.Record {
	return store.Record{Kind: store.KindPut, ID: id, Queue: queue, Data: data}
}

func ack(id string) store.Record { return store.Record{Kind: store.KindAck, ID: id} }

func producer(id string, seq uint64) store.Record {
	return store.Record{Kind: store.KindProducer, ID: id, Data: []byte(strconv.FormatUint(seq, 10))}
}

func producerEnd(id string) store.Record { return store.Record{Kind: store.KindProducerEnd, ID: id} }

// body returns n bytes that are a function of id: every body differs (so a
// mix-up between messages shows, and a harness can find one by content),
// and they hold every byte value, NUL included, as STOMP frames can.
func body(id string, n int) []byte {
	h := fnv.New64a()
	h.Write([]byte(id))
	r := rand.New(rand.NewPCG(h.Sum64(), uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// preview shows the start of b for an error message.
func preview(b []byte) string {
	if len(b) > 16 {
		return fmt.Sprintf("%x...", b[:16])
	}
	return fmt.Sprintf("%x", b)
}

func kindOf(recs []store.Record) string {
	if len(recs) == 0 {
		return "(none)"
	}
	return recs[0].Kind.String()
}

func idOf(recs []store.Record) string {
	if len(recs) == 0 {
		return ""
	}
	return recs[0].ID
}

// doneLog records the done calls of many Appends, from the commit
// goroutine, for the case goroutine to check: the contract's promises
// about done (once each, in Append order, one at a time) are what the
// broker's receipts rest on.
type doneLog struct {
	mu      sync.Mutex
	errs    []error // by Append number
	calls   []int   // done calls per Append
	order   []int   // Append numbers in the order done was called
	running atomic.Int32
	overlap atomic.Int32
	left    atomic.Int64
	all     chan struct{}
}

func newDoneLog(n int) *doneLog {
	d := &doneLog{errs: make([]error, n), calls: make([]int, n), all: make(chan struct{})}
	d.left.Store(int64(n))
	if n == 0 {
		close(d.all)
	}
	return d
}

// done returns the done callback of Append i; after calls to it, extra
// (if not nil) runs inside it.
func (d *doneLog) done(i int, extra func(err error)) func(error) {
	return func(err error) {
		if d.running.Add(1) != 1 {
			d.overlap.Add(1)
		}
		d.mu.Lock()
		d.errs[i] = err
		d.calls[i]++
		d.order = append(d.order, i)
		first := d.calls[i] == 1
		d.mu.Unlock()
		if extra != nil {
			extra(err)
		}
		d.running.Add(-1)
		if first && d.left.Add(-1) == 0 {
			close(d.all)
		}
	}
}

// wait waits for every Append's first done call.
func (d *doneLog) wait(e *env, what string) {
	e.t.Helper()
	await(e, d.all, "the dones of %s (%d of %d missing)", what, d.left.Load(), len(d.errs))
}

// snapshot returns copies of the errors and call counts so far.
func (d *doneLog) snapshot() (errs []error, calls []int, order []int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]error(nil), d.errs...), append([]int(nil), d.calls...), append([]int(nil), d.order...)
}
