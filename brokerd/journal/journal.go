// Package journal is the durable, append-only journal of brokerd, one of
// the stores behind handover/brokerd/store.
//
// A persistent SEND is appended as a Put and fsync'd before the broker sends
// its RECEIPT; the consumer's ACK is appended as an Ack naming the Put.
// Memory holds where each live record is (state.go), not its body: Read
// reads a body back, checked against its CRC, when it is delivered.
//
// A Standby (standby.go) reads the segment files while another process may
// be writing them, never writing and never waiting for the writer, and
// keeps the live set current; Promote makes it the writer, reading only
// what was appended since its last look. A cold start is a Standby promoted
// at once, so there is one reading path.
//
// One writer goroutine owns the files. It takes every Append queued since its
// last batch, encodes them into one buffer and commits them with one
// synchronous write, pwritev2 with RWF_DSYNC (or write(2) and fdatasync where
// that is missing), so many concurrent producers share the cost of one disk
// flush (group commit). The on-disk format is described in format.go.
//
// Disk use follows the backlog, not the history: a segment is deleted as soon
// as nothing in it is needed to reconstruct the live set (see compact), and
// the few live records left in a mostly dead segment are carried forward
// into the current one (read.go, carry).
package journal

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/sirupsen/logrus"

	"handover/brokerd/store"
)

// Record, Kind and Stats are the store contract's; the journal adds no
// fields of its own.
type (
	// Record is one journal entry (store.Record).
	Record = store.Record
	// Kind says what a Record means (store.Kind). Replay refuses kinds it
	// does not know instead of skipping them, so an older broker never
	// silently misreads a journal written by a newer one.
	Kind = store.Kind
	// Stats is a snapshot of the journal's counters (store.Stats).
	Stats = store.Stats
)

// The record kinds, as the store contract defines them.
const (
	KindPut         = store.KindPut
	KindAck         = store.KindAck
	KindProducer    = store.KindProducer
	KindProducerEnd = store.KindProducerEnd
)

// DefaultSegmentSize is the SegmentSize used when Options leaves it zero.
const DefaultSegmentSize = 64 << 20

// maxBatchBytes caps one group commit. Appends queued beyond it go into the
// next batch so one huge backlog does not become one huge write and a long
// wait for every producer in it.
const maxBatchBytes = 4 << 20

// Options configures Open.
type Options struct {
	// Dir is the directory of segment files; it is created if missing.
	Dir string
	// SegmentSize is the size after which writing moves on to a new segment
	// (default DefaultSegmentSize). Smaller segments free disk space sooner.
	SegmentSize int64
	// Fence, if set, is called before each batch is written; a non-nil error
	// fails the batch without writing it. The broker passes "is my master
	// lease still held", so a deposed master stops writing.
	Fence func() error
	// Verify, if set, is called after each batch is durable and before its
	// Appends are told so, instead of Fence: a non-nil error fails them.
	Verify func() error
	// Log receives warnings (torn tails, write failures) and segment events.
	// Nil discards them.
	Log *logrus.Entry
	// MaxBytes caps the bytes of segment files: an Append holding a Put
	// fails with ErrFull while they are at or over it. Zero means no cap.
	MaxBytes int64
	// Reserve is the free space of the file system that Puts may not
	// use: an Append holding a Put fails with ErrFull while less is free,
	// and a new segment is not preallocated where that would cut into it.
	// Acknowledgements and compaction write on, so consumers can drain
	// the queues whose deletion frees space. Zero means DefaultReserve;
	// negative means none.
	Reserve int64

	// prealloc overrides the preallocation strategy (tests and benchmarks).
	prealloc preallocMode
	// noEarlyRoll keeps writing the segment made at Open until it is full
	// (tests that need every record in one segment).
	noEarlyRoll bool
	// noCarry turns off carrying live records forward (tests of the
	// deletion rules alone).
	noCarry bool
	// hooks replaces file operations to inject faults (tests); it implies
	// buffered writes.
	hooks *hooks
	// buffered turns off O_DIRECT writes (tests and benchmarks comparing
	// the two paths).
	buffered bool
	// space replaces the file system's free and total bytes (tests of a
	// full disk).
	space func() (free, total int64, err error)
}

var (
	// ErrClosed is passed to done for an Append made after Close. It
	// wraps store.ErrClosed.
	ErrClosed = fmt.Errorf("journal: %w", store.ErrClosed)
	// ErrCorrupt is wrapped by Open's error when a segment holds damaged
	// data that cannot be a torn final write, i.e. data that had been
	// fsync'd is now unreadable. The message names the file and offset.
	// Open refuses rather than skipping, because skipping could resurrect
	// acknowledged messages or drop stored ones; an operator must decide.
	// It wraps store.ErrCorrupt, as does Read's error for a damaged body.
	ErrCorrupt = fmt.Errorf("journal: %w", store.ErrCorrupt)
	// ErrBroken is wrapped by every Append's error once a failed write could
	// not be rolled back: the segment may end in garbage, so nothing more may
	// be written after it. The cause is wrapped too. Reopening repairs it.
	ErrBroken = errors.New("journal: broken")
	// ErrInvalid is passed to done for an Append holding a record that could
	// not be replayed faithfully (unknown kind, empty or oversized ID, ...).
	// Nothing of such an Append is written; other Appends are unaffected.
	// It wraps store.ErrInvalid.
	ErrInvalid = fmt.Errorf("journal: %w", store.ErrInvalid)
	// ErrFull is passed to done for an Append holding a Put while the
	// journal is at MaxBytes or the file system has less than Reserve
	// free. It wraps store.ErrFull.
	ErrFull = fmt.Errorf("journal: %w", store.ErrFull)
)

// DefaultReserve is the free space Puts leave, unless Options.Reserve
// says otherwise: two segments (room for a great many acknowledgements
// and for compaction's carried records), but at most an eighth of the
// file system, so a small one is still usable.
func DefaultReserve(segSize, fsSize int64) int64 {
	return min(2*segSize, fsSize/8)
}

// preallocMode says how a new segment's space is reserved. Preallocation
// matters because an fdatasync after a write that grew the file must also
// commit the new size (a file system journal commit); writing inside space
// that is already allocated and initialised needs only the data flushed.
type preallocMode int

const (
	preallocDefault   preallocMode = iota
	preallocNone                   // grow the file as it is written
	preallocFallocate              // fallocate(2): size fixed, extents "unwritten"
	// preallocZero: the next segment is zero-filled in the background once
	// the current one is half full, so its extents are already written when
	// the writer moves there; segments created synchronously (at Open, or
	// when no spare is ready) fall back to fallocate.
	preallocZero
)

// defaultPrealloc is what preallocDefault means. Measured on ext4 with
// bench_test.go (1 KiB records, 4 MiB segments so that rolls are included):
// with 64 concurrent producers zero-filled segments gave ~155k msgs/s against
// ~125k for fallocate and ~120k for plain appends, because writing into
// fallocate's unwritten extents still costs a metadata commit per fdatasync
// to convert them; a single producer got ~7k msgs/s with either kind of
// preallocation and ~4.9k without.
const defaultPrealloc = preallocZero

// hooks are the file operations of the write path, replaceable in tests.
// writeSync writes and makes the data durable in one call; when a test
// replaces writeAt or sync, it is the two in turn.
type hooks struct {
	writeAt   func(f *os.File, b []byte, off int64) (int, error)
	sync      func(f *os.File) error
	writeSync func(f *os.File, b []byte, off int64) error
	truncate  func(f *os.File, size int64) error
}

// request is one Append waiting for the writer. internal marks the
// journal's own records (carried forward by compaction).
type request struct {
	recs     []Record
	done     func(error)
	internal bool
}

// Journal is an open journal. Its methods are safe for concurrent use.
type Journal struct {
	dir      string
	segSize  int64
	fence    func() error
	verify   func() error
	log      *logrus.Entry
	prealloc preallocMode
	hooks    hooks
	maxBytes int64
	reserve  int64 // set by start; 0 = none
	space    func() (free, total int64, err error)

	trash     chan struct{} // wakes removeTrash; closed by Close
	trashDone chan struct{}
	closeOnce sync.Once
	// earlyRoll: leave a segment made on the spot for a zero-filled spare
	// as soon as one is ready (see spareReady).
	earlyRoll bool
	noCarry   bool

	mu      sync.Mutex
	cond    sync.Cond
	pending []request
	closed  bool
	// busy: a goroutine is committing, the writer or an AppendNow caller.
	// Whoever sets it owns the fields below until it clears it.
	busy     bool
	exited   chan struct{}
	closeErr error // set by the writer before exited is closed

	// Owned by whoever set busy once Open has returned.
	now       [1]request // AppendNow's batch
	f         *os.File
	direct    *direct // O_DIRECT path for f, nil when writes are buffered
	tryDirect bool    // open one for each new segment
	active    *segment
	st        *state
	broken    error
	buf       []byte
	offs      []int // offset in buf of each record encoded, in order
	errs      []error
	fullErr   error      // why Puts are refused in the batches of this process call
	dirDirty  bool       // a removal has not been made durable yet
	spare     chan spare // result of the background zero-fill, if started
	carrying  bool       // a batch of carried-forward records is pending

	// rmu guards rfiles, the read-only descriptors Read uses, one per
	// segment, opened on first use and closed when the segment is deleted.
	rmu    sync.Mutex
	rfiles map[uint64]*os.File
	ahead  map[uint64]int64 // how far read-ahead was asked for, per segment
	// cache holds blocks of sealed segments, those before activeSeq, the
	// segment being written (cache.go).
	cache     *blockCache
	activeSeq atomic.Uint64

	nSyncs   atomic.Uint64
	nRecords atomic.Uint64
	// token names this journal's temporary files (see tmpPath).
	token string
	// abandoned makes the journal behave as a killed process's: it writes,
	// deletes and truncates nothing more (tests).
	abandoned atomic.Bool
}

// Open replays every segment in opts.Dir and returns the journal, ready for
// appends, with the live Puts in append order, their Data read back. It is
// Follow then Promote for callers that want the records themselves (tests,
// tools); brokerd keeps only an index and reads bodies as it delivers them.
//
// A damaged final batch of the last segment is what a crash mid-write leaves
// behind; it is truncated away with a warning. Damage anywhere else fails
// Open with an error wrapping ErrCorrupt. Writing always continues in a new
// segment, so files written before Open are never appended to again.
func Open(opts Options) (*Journal, []Record, error) {
	sb, err := Follow(opts)
	if err != nil {
		return nil, nil, err
	}
	var idx orderIndex
	j, err := sb.promoteJournal(store.Promotion{}, &idx)
	if err != nil {
		return nil, nil, err
	}
	out := make([]Record, 0, len(idx.live))
	for _, id := range idx.ids() {
		data, err := j.Read(id)
		if err != nil {
			j.Close()
			return nil, nil, err
		}
		out = append(out, Record{Kind: KindPut, ID: id, Queue: idx.live[id], Data: data})
	}
	return j, out, nil
}

// orderIndex is the store.Index of Open: the live ids and their queues,
// listed in store order by ids.
type orderIndex struct {
	live  map[string]string
	keys  map[string]uint64
	order []keyed // every Put seen; keys says which is current
}

type keyed struct {
	id  string
	key uint64
}

func (x *orderIndex) Put(id, queue string, _ int, order uint64) {
	if x.live == nil {
		x.live = map[string]string{}
		x.keys = map[string]uint64{}
	}
	x.live[id] = queue
	x.keys[id] = order
	x.order = append(x.order, keyed{id, order})
}

func (x *orderIndex) Ack(id string) { delete(x.live, id) }

func (x *orderIndex) Producer(string, uint64) {}

// ids returns the live ids in store order.
func (x *orderIndex) ids() []string {
	slices.SortStableFunc(x.order, func(a, b keyed) int { return cmp.Compare(a.key, b.key) })
	var out []string
	for _, k := range x.order {
		if _, ok := x.live[k.id]; ok && x.keys[k.id] == k.key && (len(out) == 0 || out[len(out)-1] != k.id) {
			out = append(out, k.id)
		}
	}
	return out
}

// newJournal makes a Journal that is not yet writing (see start).
func newJournal(opts Options, log *logrus.Entry) *Journal {
	j := &Journal{
		dir:       opts.Dir,
		segSize:   opts.SegmentSize,
		fence:     opts.Fence,
		verify:    opts.Verify,
		log:       log,
		prealloc:  opts.prealloc,
		maxBytes:  opts.MaxBytes,
		reserve:   opts.Reserve,
		space:     opts.space,
		earlyRoll: !opts.noEarlyRoll,
		noCarry:   opts.noCarry,
		tryDirect: !opts.buffered && opts.hooks == nil,
		exited:    make(chan struct{}),
		rfiles:    make(map[uint64]*os.File),
		ahead:     make(map[uint64]int64),
		cache:     newBlockCache(readCacheBytes),
		token:     strconv.FormatUint(rand.Uint64(), 36),
	}
	j.cond.L = &j.mu
	if j.segSize <= 0 {
		j.segSize = DefaultSegmentSize
	}
	if j.prealloc == preallocDefault {
		j.prealloc = defaultPrealloc
	}
	if j.space == nil {
		j.space = func() (int64, int64, error) { return diskSpace(j.dir) }
	}
	j.hooks = hooks{
		writeAt:   (*os.File).WriteAt,
		sync:      datasync,
		writeSync: writeDsync,
		truncate:  (*os.File).Truncate,
	}
	if h := opts.hooks; h != nil {
		if h.writeAt != nil || h.sync != nil {
			j.hooks.writeSync = func(f *os.File, b []byte, off int64) error {
				_, err := j.hooks.writeAt(f, b, off)
				if err == nil {
					err = j.hooks.sync(f)
				}
				return err
			}
		}
		if h.writeAt != nil {
			j.hooks.writeAt = h.writeAt
		}
		if h.sync != nil {
			j.hooks.sync = h.sync
		}
		if h.truncate != nil {
			j.hooks.truncate = h.truncate
		}
	}
	return j
}

// start takes over the state a Standby built and starts writing in a new
// segment after the last one.
func (j *Journal) start(st *state) error {
	j.st = st
	switch {
	case j.reserve < 0:
		j.reserve = 0
	case j.reserve == 0:
		if _, total, err := j.space(); err == nil {
			j.reserve = DefaultReserve(j.segSize, total)
		}
	}
	next := uint64(1)
	if n := len(st.order); n > 0 {
		next = st.order[n-1] + 1
	}
	seg, f, err := j.createSegment(next)
	for tries := 0; errors.Is(err, fs.ErrExist) && tries < 10; tries++ {
		// A deposed writer that has not noticed yet made that segment
		// since the listing. What it writes there was never acknowledged
		// (it checks its lease after each write), so the next number
		// will do; the next replay reads that file as an older one.
		j.log.WithField("segment", segName(next)).Warn("journal: segment appeared after the listing; another writer is still running")
		next++
		seg, f, err = j.createSegment(next)
	}
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	j.f, j.active = f, seg
	j.activeSeq.Store(seg.seq)
	st.addSegment(seg)
	j.startDirect()
	// Compaction deletes files, which takes time a new master should spend
	// serving: it runs after the first batch (or at Close).
	st.compactDue = true
	j.log.WithFields(logrus.Fields{
		"segment": seg.name, "segments": len(st.segs), "live": st.nLive.Load(),
	}).Info("journal: opened")

	j.trash = make(chan struct{}, 1)
	j.trashDone = make(chan struct{})
	go j.removeTrash()
	j.trash <- struct{}{} // what setAsideLeftovers set aside
	go j.run()
	return nil
}

// trashSuffix marks files that replay ignores and the background remover
// deletes: segments compaction retired and leftovers of a crash. Renaming
// (then fsyncing the directory) retires a file as durably as unlinking it,
// at once; the slow part, freeing its blocks, happens off the write path.
const trashSuffix = ".trash"

// removeTrash deletes trash files whenever signalled, until Close.
func (j *Journal) removeTrash() {
	defer close(j.trashDone)
	for range j.trash {
		ents, err := os.ReadDir(j.dir)
		if err != nil {
			j.log.WithError(err).Warn("journal: listing trash")
			continue
		}
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), trashSuffix) {
				if err := os.Remove(filepath.Join(j.dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
					j.log.WithError(err).WithField("file", e.Name()).Warn("journal: deleting retired file")
				}
			}
		}
	}
}

func (j *Journal) signalTrash() {
	select {
	case j.trash <- struct{}{}:
	default:
	}
}

// Append queues recs to be written and fsync'd, then calls done exactly once.
// done runs on the goroutine doing the commit (the journal's own, or an
// AppendNow caller's), in Append order, one at a time, after the records
// are durable (err == nil) or have failed as a whole (err != nil); it must
// not block, since it holds up every later commit, and so must not call
// Write, AppendNow or Close, whoever appended (Append is fine). The records
// of one Append are committed atomically: after a crash replay sees all of
// them or none. An Append of no records writes nothing; its done runs once
// every earlier Append's has.
// recs and the Data they reference must not be modified until done is called.
// After Close, done(ErrClosed) is called before Append returns.
func (j *Journal) Append(recs []Record, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		done(ErrClosed)
		return
	}
	j.pending = append(j.pending, request{recs: recs, done: done})
	j.mu.Unlock()
	j.cond.Signal()
}

// AppendNow is Append for a caller that would otherwise wait for done
// anyway: when no commit is in progress or queued it commits recs on the
// calling goroutine, calling done before it returns; otherwise it queues
// them as Append does. One producer waiting for each receipt saves the
// hand-off to the writer goroutine and back: 1-2 % more receipted SENDs per
// second through brokerd, consistently over an interleaved A/B of five runs.
// The caller also takes on whatever that commit brings: a segment roll
// (which may wait for the next zero-filled file) and compaction.
// done must not call AppendNow or Write.
func (j *Journal) AppendNow(recs []Record, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	j.mu.Lock()
	if j.closed || j.busy || len(j.pending) > 0 {
		j.mu.Unlock()
		j.Append(recs, done)
		return
	}
	j.busy = true
	j.mu.Unlock()

	j.now[0] = request{recs: recs, done: done}
	j.process(j.now[:])
	j.now[0] = request{}

	j.mu.Lock()
	j.busy = false
	more := len(j.pending) > 0 || j.closed
	j.mu.Unlock()
	if more {
		j.cond.Signal() // the writer takes what queued up meanwhile
	}
}

// Write appends recs and waits until they are durable or have failed.
func (j *Journal) Write(recs ...Record) error {
	ch := make(chan error, 1)
	j.Append(recs, func(err error) { ch <- err })
	return <-ch
}

// Close writes and fsyncs every Append queued before it, stops the writer
// goroutine and closes the segment file. It is idempotent: later calls wait
// for the first to finish and return the same error. If the journal is
// broken, Close returns that error.
func (j *Journal) Close() error {
	j.mu.Lock()
	j.closed = true
	j.mu.Unlock()
	j.cond.Signal()
	<-j.exited
	j.closeOnce.Do(func() {
		close(j.trash)
		<-j.trashDone
		j.closeReaders()
	})
	return j.closeErr
}

// Stats returns the journal's counters. It is cheap and safe to call often.
func (j *Journal) Stats() Stats {
	return Stats{
		Segments:  int(j.st.nSegments.Load()),
		Bytes:     j.st.nBytes.Load(),
		Live:      int(j.st.nLive.Load()),
		LiveBytes: j.st.nLiveBytes.Load(),
		Syncs:     j.nSyncs.Load(),
		Records:   j.nRecords.Load(),
	}
}

// run is the writer goroutine: it commits whatever is pending, batch by
// batch, until Close has been called and nothing is pending.
func (j *Journal) run() {
	defer close(j.exited)
	var work []request
	for {
		j.mu.Lock()
		for j.busy || (len(j.pending) == 0 && !j.closed) {
			j.cond.Wait()
		}
		if len(j.pending) == 0 {
			j.mu.Unlock()
			break
		}
		j.busy = true
		work, j.pending = j.pending, work[:0]
		j.mu.Unlock()

		j.process(work)
		clear(work) // drop references to callers' records
		j.mu.Lock()
		j.busy = false
		j.mu.Unlock()
	}
	j.dropSpare()
	j.closeErr = j.closeSegment()
}

// closeSegment fsyncs and closes the segment being written. It leaves the
// unused preallocated space in place: a standby may be reading the file
// through a mapping, and a page cut off under it would kill it (SIGBUS);
// replay reads zeros as the end of the data.
func (j *Journal) closeSegment() error {
	if j.f == nil {
		return j.broken
	}
	j.stopDirect()
	err := j.f.Sync()
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	j.f = nil
	if j.broken != nil {
		return j.broken
	}
	if err != nil {
		return fmt.Errorf("journal: close segment %s: %w", j.active.name, err)
	}
	return nil
}

// process commits work in batches of at most about maxBatchBytes.
func (j *Journal) process(work []request) {
	j.fullErr = j.spaceLeft()
	for len(work) > 0 {
		j.buf = append(j.buf[:0], make([]byte, batchHeaderSize)...)
		j.offs = j.offs[:0]
		j.errs = j.errs[:0]
		n, count := 0, 0
		for n < len(work) && (n == 0 || len(j.buf) < maxBatchBytes) {
			mark, marko := len(j.buf), len(j.offs)
			err := j.encode(&work[n])
			if err != nil {
				j.buf, j.offs = j.buf[:mark], j.offs[:marko]
			} else {
				count += len(work[n].recs)
			}
			j.errs = append(j.errs, err)
			n++
		}
		j.commit(work[:n], count)
		work = work[n:]
	}
	if cap(j.buf) > 2*maxBatchBytes {
		j.buf = nil // one huge Append should not pin its buffer forever
	}
}

// encode validates and appends the records of one Append to j.buf.
func (j *Journal) encode(req *request) error {
	size := 0
	for i := range req.recs {
		if !req.internal {
			if err := validate(&req.recs[i]); err != nil {
				return err
			}
			if j.fullErr != nil && req.recs[i].Kind == KindPut {
				return j.fullErr
			}
		}
		size += encodedLen(&req.recs[i])
	}
	if size > maxAppendBytes {
		return fmt.Errorf("%w: one Append of %d bytes, max %d", ErrInvalid, size, maxAppendBytes)
	}
	for i := range req.recs {
		j.offs = append(j.offs, len(j.buf))
		j.buf = appendRecord(j.buf, &req.recs[i])
	}
	return nil
}

// commit writes the encoded batch, updates the live set and calls the dones.
func (j *Journal) commit(reqs []request, count int) {
	var batchErr error
	var off int64
	if count > 0 {
		off, batchErr = j.writeBatch(count)
	}
	if batchErr == nil {
		k := 0
		for i := range reqs {
			if j.errs[i] != nil {
				continue
			}
			for r := range reqs[i].recs {
				rec := &reqs[i].recs[r]
				l := loc{seg: j.active.seq, off: uint32(off + int64(j.offs[k])), n: uint32(encodedLen(rec))}
				j.st.applyWritten(rec, l)
				k++
			}
		}
	}
	for i := range reqs {
		err := j.errs[i]
		if err == nil {
			err = batchErr
		}
		reqs[i].done(err)
	}
	if !j.carrying && j.st.nBytes.Load() > 2*j.st.nLiveBytes.Load()+2*j.segSize {
		j.st.compactDue = true
	}
	if j.st.compactDue {
		j.compact()
	}
}

// writeBatch writes j.buf as one batch and makes it durable. On failure the
// segment is cut back to where the batch started, so the file stays
// well-formed and later batches can follow; if even that fails the journal
// is broken.
func (j *Journal) writeBatch(count int) (int64, error) {
	if j.broken != nil {
		return 0, j.broken
	}
	if err := j.fenced(); err != nil {
		return 0, fmt.Errorf("journal: fence refused batch of %d records: %w", count, err)
	}
	full := j.active.size > segHeaderSize && j.active.size+int64(len(j.buf)) > j.segSize
	if full || j.spareReady() {
		if err := j.roll(); err != nil {
			return 0, fmt.Errorf("journal: batch of %d records not written: %w", count, err)
		}
	}
	seg, off := j.active, j.active.size
	putBatchHeader(j.buf, count, off)
	err := j.writeSync(j.buf, off)
	if err != nil {
		werr := fmt.Errorf("journal: write batch of %d records (%d bytes) to segment %s at offset %d: %w",
			count, len(j.buf), seg.name, off, err)
		fields := logrus.Fields{"segment": seg.name, "offset": off, "bytes": len(j.buf), "records": count}
		j.log.WithFields(fields).WithError(err).Error("journal: batch write failed")
		if rerr := j.undo(off); rerr != nil {
			j.broken = fmt.Errorf("%w: cannot cut segment %s back to offset %d after failed write (%v): %w",
				ErrBroken, seg.name, off, err, rerr)
			j.log.WithFields(fields).WithError(rerr).Error("journal: broken, no further writes")
		}
		return 0, werr
	}
	// Checked again once the batch is durable, before anyone is told so:
	// a writer that lost its lease while writing may have had its batch
	// cut off as a torn tail by its successor, so it must not acknowledge
	// it. (A batch that lands after the takeover was never acknowledged;
	// dropping it loses nothing a client was promised.)
	if err := j.verified(); err != nil {
		return 0, fmt.Errorf("journal: batch of %d records written, but the lease was lost before it could be acknowledged: %w", count, err)
	}
	seg.size += int64(len(j.buf))
	j.st.nBytes.Add(int64(len(j.buf)))
	if j.prealloc == preallocZero && j.spare == nil && (seg.size > j.segSize/2 || !seg.zeroed) {
		j.startSpare(seg.seq + 1)
	}
	j.nSyncs.Add(1)
	j.nRecords.Add(uint64(count))
	return off, nil
}

// spaceLeft returns an ErrFull error saying why, if Puts must be refused
// now: MaxBytes reached or the file system's free space under the reserve.
func (j *Journal) spaceLeft() error {
	if j.maxBytes > 0 {
		if n := j.st.nBytes.Load(); n >= j.maxBytes {
			return fmt.Errorf("%w: %d bytes of segments, max_disk %d", ErrFull, n, j.maxBytes)
		}
	}
	if j.reserve > 0 {
		free, _, err := j.space()
		if err == nil && free < j.reserve {
			return fmt.Errorf("%w: %d bytes free on the file system, below the reserve of %d kept for acknowledgements", ErrFull, free, j.reserve)
		}
	}
	return nil
}

// fenced reports why this journal may no longer write, if it may not: the
// lease's fence refused (another process is master) or the journal was
// abandoned as a crashed process would be (tests).
func (j *Journal) fenced() error {
	if j.abandoned.Load() {
		return fmt.Errorf("%w: abandoned", store.ErrFenced)
	}
	if j.fence != nil {
		if err := j.fence(); err != nil {
			return fmt.Errorf("%w: %w", store.ErrFenced, err)
		}
	}
	return nil
}

// verified is fenced for a batch that is durable and about to be
// acknowledged: with Options.Verify it also reads the epoch back.
func (j *Journal) verified() error {
	if j.verify == nil || j.abandoned.Load() {
		return j.fenced()
	}
	if err := j.verify(); err != nil {
		return fmt.Errorf("%w: %w", store.ErrFenced, err)
	}
	return nil
}

// writeSync writes b at off in the active segment and makes it durable,
// with O_DIRECT where the file system takes it.
func (j *Journal) writeSync(b []byte, off int64) error {
	if j.direct != nil {
		err := j.direct.writeSync(b, off)
		if !directUnsupported(err) {
			return err
		}
		j.log.WithField("segment", j.active.name).WithError(err).
			Warn("journal: O_DIRECT write refused; writing through the page cache from now on")
		j.stopDirect()
		j.tryDirect = false
	}
	return j.hooks.writeSync(j.f, b, off)
}

// directUnsupported reports whether err says O_DIRECT writes with RWF_DSYNC
// cannot work here (a file system without O_DIRECT, a kernel before 4.7, a
// seccomp filter), as opposed to a failure of this one write. Falling back
// on EPERM is safe: if the file itself refuses writes, the buffered write
// fails too and reports it.
func directUnsupported(err error) bool {
	for _, e := range []error{syscall.EINVAL, syscall.EOPNOTSUPP, syscall.ENOSYS, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// startDirect opens the O_DIRECT path for the active segment, just made.
// Where the file system has no O_DIRECT, it is not tried again; a passing
// failure (no file descriptors left, say) is retried at the next segment.
func (j *Journal) startDirect() {
	if !j.tryDirect {
		return
	}
	d, err := openDirect(filepath.Join(j.dir, j.active.name), j.active.size, encodeSegHeader(j.active.seq))
	log := j.log.WithField("segment", j.active.name)
	switch {
	case err == nil:
		j.direct = d
	case directUnsupported(err) || errors.Is(err, errors.ErrUnsupported):
		log.WithError(err).Info("journal: no O_DIRECT here; writing through the page cache")
		j.tryDirect = false
	default:
		log.WithError(err).Warn("journal: O_DIRECT unavailable for this segment; writing it through the page cache")
	}
}

// stopDirect closes the active segment's O_DIRECT descriptor, if any.
func (j *Journal) stopDirect() {
	if j.direct == nil {
		return
	}
	if err := j.direct.close(); err != nil {
		j.log.WithField("segment", j.active.name).WithError(err).Warn("journal: close O_DIRECT descriptor")
	}
	j.direct = nil
}

// undo removes whatever a failed batch left after off and makes that durable.
func (j *Journal) undo(off int64) error {
	if err := j.hooks.truncate(j.f, off); err != nil {
		return err
	}
	// A full fsync, because the file size changed.
	if err := j.f.Sync(); err != nil {
		return err
	}
	if j.prealloc != preallocNone {
		// Best effort; without it later writes just extend the file.
		_ = fallocate(j.f, j.segSize)
	}
	return nil
}

// compact deletes every segment that replay no longer needs: not the one
// being written, nothing live, and nothing retiring a record of an older
// segment that still exists. Segments are visited oldest first, so
// deleting one can free newer segments that only depended on it in the
// same pass. Each removal is made durable (directory fsync) before the
// next, because a dependent segment must never outlive, on disk, the
// segment it depends on. Then, if the files hold more than twice the live
// data plus two segments, it carries the oldest segment's live records
// forward (see carry).
func (j *Journal) compact() {
	st := j.st
	st.compactDue = false
	// Deleting files is destructive: a writer that lost its lease must not,
	// since its successor may need them. So the epoch is read back first
	// (Verify), not only the lease's time checked.
	if j.verified() != nil {
		return
	}
	if j.dirDirty {
		if err := syncDir(j.dir); err != nil {
			j.log.WithError(err).Warn("journal: fsync directory failed, compaction postponed")
			st.compactDue = true
			return
		}
		j.dirDirty = false
	}
	kept := st.order[:0]
	stop := false
	for _, seq := range st.order {
		s := st.segs[seq]
		if stop || s == j.active || s.live > 0 || j.dependsOnExisting(s) {
			kept = append(kept, seq)
			continue
		}
		path := filepath.Join(j.dir, s.name)
		if err := os.Rename(path, path+trashSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			j.log.WithField("segment", s.name).WithError(err).Warn("journal: cannot delete segment")
			kept = append(kept, seq)
			stop, st.compactDue = true, true
			continue
		}
		delete(st.segs, seq)
		j.closeReader(seq)
		st.nSegments.Add(-1)
		st.nBytes.Add(-s.size)
		j.log.WithFields(logrus.Fields{"segment": s.name, "bytes": s.size}).Info("journal: deleted segment")
		if err := syncDir(j.dir); err != nil {
			j.log.WithError(err).Warn("journal: fsync directory failed, compaction postponed")
			stop, j.dirDirty, st.compactDue = true, true, true
		}
	}
	clear(st.order[len(kept):])
	st.order = kept
	j.signalTrash()
	if !stop && !j.carrying && !j.noCarry && st.nBytes.Load() > 2*st.nLiveBytes.Load()+2*j.segSize {
		j.carry()
	}
}

// dependsOnExisting reports whether s retired records of a segment that
// still exists, forgetting dependencies on segments that are gone.
func (j *Journal) dependsOnExisting(s *segment) bool {
	for seq := range s.refs {
		if _, ok := j.st.segs[seq]; ok {
			return true
		}
		delete(s.refs, seq)
	}
	return false
}

// roll moves writing to a fresh segment. The old file needs no more syncing:
// its last batch was fsync'd before the batch that triggers the roll.
func (j *Journal) roll() error {
	seg, f, err := j.createSegment(j.active.seq + 1)
	if err != nil {
		return err
	}
	j.stopDirect()
	old, oldSeg := j.f, j.active
	j.f, j.active = f, seg
	j.activeSeq.Store(seg.seq)
	j.st.addSegment(seg)
	j.startDirect()
	if err := old.Close(); err != nil {
		j.log.WithField("segment", oldSeg.name).WithError(err).Warn("journal: close segment")
	}
	j.log.WithFields(logrus.Fields{"segment": seg.name, "previous": oldSeg.name, "bytes": oldSeg.size}).
		Info("journal: rolled to new segment")
	j.st.compactDue = true
	return nil
}

// makeDir creates the journal directory, durably, if it does not exist.
func (j *Journal) makeDir() error {
	if _, err := os.Stat(j.dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(j.dir, 0o755); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := syncDir(filepath.Dir(filepath.Clean(j.dir))); err != nil {
		return fmt.Errorf("journal: fsync parent of %s: %w", j.dir, err)
	}
	return nil
}

// setAsideLeftovers renames temporaries left by a writer that died during
// createSegment (or while preparing a spare) to trash. Renaming is
// instant; unlinking a 64 MiB file is not, and this runs before a new
// master may serve.
func (j *Journal) setAsideLeftovers() error {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if isTemp(name) {
			if err := os.Rename(filepath.Join(j.dir, name), filepath.Join(j.dir, name+trashSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("journal: set aside leftover %s: %w", name, err)
			}
			j.log.WithField("segment", name).Info("journal: set aside unfinished segment file")
		}
	}
	return nil
}

// syncDir fsyncs a directory so that file creations, renames and removals
// in it survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
