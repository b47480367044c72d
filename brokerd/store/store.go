// Package store is the contract between brokerd and the places its
// persistent messages live: the file journal (handover/brokerd/journal) and
// PostgreSQL (handover/brokerd/pgstore). The broker knows only this package;
// each backend implements it, and one conformance suite
// (handover/brokerd/store/storetest) runs every backend through the same
// cases, as nats-server runs one suite over all its stores.
//
// The life of a store in a broker process:
//
//   - While the broker is a slave it opens a Standby, which reads the store
//     without writing or locking anything, and calls CatchUp periodically:
//     the standby feeds every change since its last call into an Index, so
//     the slave's view of the backlog is never more than one interval old.
//   - Once the broker holds the master lock it calls Promote: one last
//     CatchUp (now the writer is known dead, so a torn tail is final), then
//     the Store, ready to write under the lease's epoch. A takeover thus
//     reads only what was written since the last CatchUp, whatever the
//     backlog. A cold start is Follow then Promote at once.
//   - The master appends records (group commit), reads message bodies back
//     when it delivers them (Read), and closes the store when it stops.
//
// Memory holds an index entry per live message; bodies stay in the store
// and are read back on delivery.
package store

import (
	"errors"
	"strconv"
)

// Kind says what a Record means. Backends store it so that replay can tell
// record kinds apart; they refuse kinds they do not know.
type Kind uint8

const (
	// KindPut stores a message: ID, Queue and Data. IDs are unique forever;
	// brokerd never puts an ID twice.
	KindPut Kind = 1
	// KindAck retires the live Put with the same ID; Queue and Data are
	// ignored. An Ack of an ID that is not live is a no-op.
	KindAck Kind = 2
	// KindProducer records a producer's de-duplication window: ID names the
	// producer, Data is the highest sequence accepted, in decimal. A later
	// KindProducer of the same ID supersedes it. Producer IDs are their own
	// namespace: they never collide with message IDs.
	KindProducer Kind = 3
	// KindProducerEnd forgets the producer ID (evicted from the window).
	KindProducerEnd Kind = 4
)

// String names the kind for logs and errors.
func (k Kind) String() string {
	switch k {
	case KindPut:
		return "put"
	case KindAck:
		return "ack"
	case KindProducer:
		return "producer"
	case KindProducerEnd:
		return "producer-end"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Record is one change to the store.
type Record struct {
	Kind Kind
	// ID is the message id (Put, Ack) or the producer id (Producer,
	// ProducerEnd). It must not be empty.
	ID string
	// Queue is the destination of a Put.
	Queue string
	// Data is the payload of a Put or a Producer. The store keeps a
	// reference until the Append's done is called, so it must not be
	// modified before.
	Data []byte
}

// Index receives a store's live set, in the order it was appended, as a
// Standby reads it. Its methods are called from the goroutine that called
// CatchUp or Promote, one at a time.
type Index interface {
	// Put says message id, of size bytes, is live in queue. order is the
	// message's place in the store's append order: Puts normally arrive in
	// increasing order, but one whose body the store moved (compaction)
	// before the standby saw its first Put comes late, with its original,
	// lower order, and belongs at that place in its queue. (A store does
	// not tell an index about moving a message the index already has.) A
	// Put of an id that is already live replaces it, at the new order.
	Put(id, queue string, size int, order uint64)
	// Ack says message id is no longer live. It may name an id the index
	// never saw (a message put and acknowledged before a segment the
	// standby had not read yet was compacted away); that is a no-op.
	Ack(id string)
	// Producer sets producer id's de-duplication window to seq; seq 0
	// forgets the producer.
	Producer(id string, seq uint64)
}

// Promotion is what Promote needs to write as master.
type Promotion struct {
	// Epoch is the fencing epoch of the lease (lockstore.Lease.Epoch).
	Epoch uint64
	// Fence is called before each write and before anything destructive
	// (deleting files, rows); a non-nil error refuses it. The broker passes
	// "is my lease still valid" (lockstore.Lease.Valid).
	Fence func() error
	// Verify is called after a write is durable and before it is
	// acknowledged; a non-nil error fails the write, unacknowledged. The
	// broker passes lockstore.Lease.Verify, which also reads the epoch
	// back. Nil means Fence. A store whose writes check the epoch
	// themselves, in the same transaction, may ignore it.
	Verify func() error
}

// Standby reads a store without writing to it, for a slave that keeps its
// index current so that a takeover reads only the tail. Its methods must be
// called from one goroutine at a time.
type Standby interface {
	// CatchUp feeds idx every change appended since the last call. It never
	// writes and never waits for the writer: a record the master is still
	// writing is left for the next call, never taken for corruption.
	CatchUp(idx Index) (Progress, error)
	// Promote catches up one final time, applying the rules for a dead
	// writer's torn tail, and returns the store ready to append. The
	// Standby must not be used afterwards. On error the Standby is closed.
	Promote(p Promotion, idx Index) (Store, error)
	// Close releases the Standby's files or connections; idempotent.
	Close() error
}

// Progress reports what a CatchUp did and where the standby stands.
type Progress struct {
	// Records and Bytes are what this call read and applied.
	Records int
	Bytes   int64
	// Position describes the standby's place in the store for /status
	// (for the journal, segment and offset; for PostgreSQL, row sequence).
	Position string
	// Waiting, when not empty, says why the last record seen was left for
	// the next call (a batch still being written, say).
	Waiting string
}

// Store is an open store, written by the master. Its methods are safe for
// concurrent use.
type Store interface {
	// Append makes recs durable, then calls done exactly once, in Append
	// order (group commit: concurrent Appends may share one flush). done
	// runs on the goroutine doing the commit, one at a time, and must not
	// block or call Append's synchronous relatives. The records of one
	// Append are committed atomically. An Append with no records is a
	// barrier: its done runs after every earlier Append's.
	Append(recs []Record, done func(error))
	// Read returns the Data of the live Put id. An id that is not live
	// gives an error wrapping ErrNotFound; a body that fails its checksum
	// or points outside its file gives one wrapping ErrCorrupt, naming the
	// file and offset. The returned slice is the caller's.
	Read(id string) ([]byte, error)
	// Close flushes pending Appends and releases the store; idempotent.
	Close() error
	// Stats reports the store's size and activity for /status and /metrics.
	Stats() Stats
}

// BatchReader is a Store that reads many bodies at once: the broker reads a
// queue's head this way, so that draining a backlog from the store costs a
// database round trip or a system call per batch, not per message.
type BatchReader interface {
	// ReadMany returns, for each of ids, what Read would: data[i] and
	// errs[i] are the body and error of ids[i].
	ReadMany(ids []string) (data [][]byte, errs []error)
}

// RemoteReader is a BatchReader whose reads are round trips to another
// server (pgstore): the broker reads its bodies ahead, several batches at
// once, in the background, so that a queue waits on none of them. A local
// store's reads (the journal's: the page cache, or a disk read) are made
// on the queue's dispatch path, one batch at a time, which costs less
// than handing them to another goroutine.
type RemoteReader interface {
	BatchReader
	// RemoteReads marks the store; it does nothing.
	RemoteReads()
}

// Stats is a snapshot of a store's counters.
type Stats struct {
	Segments int    // files on disk (journal); 0 for PostgreSQL
	Bytes    int64  // bytes stored (journal data on disk; message data in PostgreSQL)
	Live     int    // live Puts
	Syncs    uint64 // commits since Open; Records/Syncs is the group-commit factor
	Records  uint64 // records written since Open
	// LiveBytes is the size of the live Puts' data (journal).
	LiveBytes int64
}

var (
	// ErrClosed is passed to done for an Append made after Close.
	ErrClosed = errors.New("store: closed")
	// ErrInvalid is passed to done for an Append holding a record the store
	// cannot keep faithfully (unknown kind, empty or oversized ID, ...).
	// Nothing of such an Append is written; other Appends are unaffected.
	ErrInvalid = errors.New("store: invalid record")
	// ErrNotFound is wrapped by Read's error for an id that is not live.
	ErrNotFound = errors.New("store: no such live message")
	// ErrCorrupt is wrapped by errors about damaged stored data: at
	// Promote (data that had been made durable is unreadable, so the
	// store refuses rather than guess) and at Read (one body is damaged;
	// only that message is affected).
	ErrCorrupt = errors.New("store: corrupt")
	// ErrFenced is wrapped by write errors once the lease's fence refused
	// a write: another broker is master.
	ErrFenced = errors.New("store: writes fenced off")
	// ErrFull is passed to done for an Append holding a Put that the
	// store refused because its disk space is spent (its size limit, or
	// the free space it keeps in reserve). Nothing of that Append is
	// written; Appends without Puts (acknowledgements) still are, from
	// the reserve, so that consumers can drain what frees the space.
	ErrFull = errors.New("store: full")
)
