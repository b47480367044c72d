// Package pgstore keeps brokerd's persistent messages in PostgreSQL, for the
// shared-database topology: every broker of a cluster points at one
// database, the one holding the master lock (lockstore.Postgres, in the same
// database) serves, and a slave that takes over reads the messages its
// predecessor left there.
//
// A Store implements brokerd.Store like the file journal does: Append makes
// records durable, then calls done; Open returns the live (unacknowledged)
// messages in the order they were appended. Puts are rows of
// handover_messages and an Ack deletes its row, so the table holds exactly
// the backlog.
//
// Group commit: one writer goroutine takes every Append queued since its
// last commit and writes them in ONE transaction, sent as one pipelined
// round trip (fence, delete, insert; committed at the pipeline's Sync), so
// many producers share one WAL flush.
//
// Fencing: every write transaction first calls handover_fence(lock name,
// epoch), which reads the lock's epoch row FOR SHARE and raises an error if
// the epoch is not this store's. Because a new master's epoch increment is
// an UPDATE of that row, it waits for every write transaction that passed
// the fence, and every later one sees the new epoch and fails. So a master
// that lost its lock (its session terminated, a network partition, a long
// pause) can never commit a write after its successor has taken over, and
// the successor reads everything its predecessor ever acknowledged. (A
// master frozen in the middle of a transaction that passed the fence delays
// its successor's increment until it resumes or its connection ends; even
// then it cannot commit after the increment.)
//
// The schema is created and migrated by Open (see migrations), versioned in
// handover_schema_version.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"

	"handover/brokerd/journal"
	"handover/lockstore"
)

// DefaultWriteTimeout is the Options.WriteTimeout used when it is zero.
const DefaultWriteTimeout = 10 * time.Second

// Limits on what one Append may hold. Text columns cannot hold NUL bytes or
// invalid UTF-8 (the database encoding is assumed to be UTF8), and a bytea
// value is limited to 1 GB; refusing such a record up front fails only its
// Append instead of the whole group-committed transaction.
const (
	maxFieldLen = 64 << 10
	maxDataLen  = 256 << 20
)

// A batch (one transaction) holds at most this many bytes of message data
// or this many records; more pending Appends go into the next one, so that
// one huge backlog does not become one huge transaction that every
// producer in it waits for.
const (
	maxBatchBytes   = 4 << 20
	maxBatchRecords = 10000
)

// fencedCode is the SQLSTATE raised by handover_fence.
const fencedCode = "HOF01"

// Options configures Open.
type Options struct {
	// DSN is the database URL (see lockstore.PostgresOptions.DSN); it must
	// be the database holding the master lock, since fencing reads the
	// lock's epoch row.
	DSN string
	// Epoch is the fencing epoch of the lease this store writes under
	// (lockstore.Lease.Epoch); it must be positive.
	Epoch uint64
	// LockName is the lock's name (lockstore.PostgresOptions.Name); default
	// lockstore.DefaultPostgresName.
	LockName string
	// Fence, if set, is called before each transaction; a non-nil error
	// fails it without writing, and the store refuses all later writes.
	// The broker passes "is my lease still held", which stops writes the
	// moment the lease watcher noticed a loss. The database-side check is
	// the authoritative one; this one is only sooner.
	Fence func() error
	// WriteTimeout bounds one transaction, connecting included (default
	// DefaultWriteTimeout). A database that hangs fails the writes rather
	// than holding every producer, and Close, forever.
	WriteTimeout time.Duration
	// Log receives warnings and events; nil discards them.
	Log *logrus.Entry
}

var (
	// ErrClosed is passed to done for an Append made after Close. It
	// wraps journal.ErrClosed, so either can be tested for.
	ErrClosed = fmt.Errorf("pgstore: closed: %w", journal.ErrClosed)
	// ErrFenced is wrapped by every Append's error once a write was refused
	// because the lock's epoch is no longer this store's (or Fence said so):
	// another broker is master, and this one must stop. It wraps
	// lockstore.ErrLost.
	ErrFenced = fmt.Errorf("pgstore: writes fenced off: %w", lockstore.ErrLost)
	// ErrInvalid is passed to done for an Append holding a record that
	// cannot be stored faithfully (unknown kind, empty ID, NUL bytes or
	// invalid UTF-8 in ID or queue, too large). Nothing of that Append is
	// written; other Appends are unaffected. It wraps journal.ErrInvalid.
	ErrInvalid = fmt.Errorf("pgstore: invalid record: %w", journal.ErrInvalid)
	// ErrSchemaTooNew is returned by Open when the database was migrated by
	// a newer brokerd than this one: running an old broker on it could
	// misread or damage data, so it refuses.
	ErrSchemaTooNew = errors.New("pgstore: database schema is newer than this brokerd")
)

// Store is an open PostgreSQL store. Its methods are safe for concurrent
// use.
type Store struct {
	cfg      *pgx.ConnConfig
	desc     string // the DSN without secrets, for logs and errors
	epoch    uint64
	lockName string
	fence    func() error
	timeout  time.Duration
	log      *logrus.Entry

	mu      sync.Mutex
	cond    sync.Cond
	pending []request
	closed  bool
	exited  chan struct{}

	// Owned by the writer goroutine once Open has returned.
	conn     *pgx.Conn
	fenced   error // set once a write was fenced; every later write fails
	closeErr error // set before exited is closed

	nLive    atomic.Int64
	nBytes   atomic.Int64
	nSyncs   atomic.Uint64
	nRecords atomic.Uint64
}

// request is one Append waiting for the writer.
type request struct {
	recs []journal.Record
	done func(error)
}

// Open connects, creates or migrates the schema, checks that opts.Epoch is
// still the lock's epoch, and returns the store with the live Puts in
// append order. ctx bounds Open only.
func Open(ctx context.Context, opts Options) (*Store, []journal.Record, error) {
	if opts.DSN == "" {
		return nil, nil, errors.New("pgstore: Options.DSN is empty")
	}
	if opts.Epoch == 0 || opts.Epoch > 1<<63-1 {
		return nil, nil, fmt.Errorf("pgstore: Options.Epoch %d is not a lease's epoch", opts.Epoch)
	}
	if opts.WriteTimeout < 0 {
		return nil, nil, fmt.Errorf("pgstore: negative WriteTimeout %v", opts.WriteTimeout)
	}
	cfg, err := lockstore.PostgresConnConfig(opts.DSN, "store")
	if err != nil {
		return nil, nil, fmt.Errorf("pgstore: %w", err)
	}
	s := &Store{
		cfg:      cfg,
		epoch:    opts.Epoch,
		lockName: opts.LockName,
		fence:    opts.Fence,
		timeout:  opts.WriteTimeout,
		log:      opts.Log,
		exited:   make(chan struct{}),
	}
	s.cond.L = &s.mu
	if s.lockName == "" {
		s.lockName = lockstore.DefaultPostgresName
	}
	if s.timeout == 0 {
		s.timeout = DefaultWriteTimeout
	}
	if s.log == nil {
		l := logrus.New()
		l.Out = io.Discard
		s.log = logrus.NewEntry(l)
	}
	if s.desc, err = lockstore.DescribeDSN(opts.DSN); err != nil {
		return nil, nil, fmt.Errorf("pgstore: %w", err)
	}
	s.log = s.log.WithFields(logrus.Fields{"store": s.desc, "epoch": s.epoch})

	start := time.Now()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("pgstore: connecting to %s: %w", s.desc, err)
	}
	version, err := migrate(ctx, conn, s.lockName, s.epoch, s.log)
	if err != nil {
		conn.Close(context.Background())
		return nil, nil, err
	}
	live, bytes, err := load(ctx, conn)
	if err != nil {
		conn.Close(context.Background())
		return nil, nil, err
	}
	s.conn = conn
	s.nLive.Store(int64(len(live)))
	s.nBytes.Store(bytes)
	s.log.WithFields(logrus.Fields{
		"schema_version": version,
		"live":           len(live),
		"bytes":          bytes,
		"took":           time.Since(start).Round(time.Millisecond).String(),
	}).Info("pgstore: opened")
	go s.run()
	return s, live, nil
}

// load reads the live messages in append order.
func load(ctx context.Context, conn *pgx.Conn) ([]journal.Record, int64, error) {
	rows, err := conn.Query(ctx, "SELECT id, queue, data FROM "+messagesTable+" ORDER BY seq")
	if err != nil {
		return nil, 0, fmt.Errorf("pgstore: reading messages: %w", err)
	}
	var (
		live  []journal.Record
		bytes int64
	)
	for rows.Next() {
		r := journal.Record{Kind: journal.KindPut}
		if err := rows.Scan(&r.ID, &r.Queue, &r.Data); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("pgstore: reading messages: %w", err)
		}
		bytes += int64(len(r.Data))
		live = append(live, r)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("pgstore: reading messages: %w", err)
	}
	return live, bytes, nil
}

// Append queues recs to be committed, then calls done exactly once: on the
// writer goroutine, in Append order, after the records are committed
// (err == nil) or have failed (err != nil). done must not block. The
// records of one Append are committed atomically. An Append of no records
// writes nothing; its done runs once every earlier Append's has. recs and
// their Data must not be modified until done is called. After Close,
// done(ErrClosed) is called before Append returns.
//
// A write that failed because the connection broke mid-commit may still
// have been committed (the outcome of a COMMIT whose answer was lost is
// unknown); its done reports the error, so at worst a message without a
// RECEIPT is delivered, never a receipted one lost.
func (s *Store) Append(recs []journal.Record, done func(error)) {
	if done == nil {
		done = func(error) {}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		done(ErrClosed)
		return
	}
	s.pending = append(s.pending, request{recs: recs, done: done})
	s.mu.Unlock()
	s.cond.Signal()
}

// Write appends recs and waits until they are committed or have failed.
func (s *Store) Write(recs ...journal.Record) error {
	ch := make(chan error, 1)
	s.Append(recs, func(err error) { ch <- err })
	return <-ch
}

// Close commits every Append queued before it, stops the writer and closes
// the connection. It is idempotent: later calls wait for the first to
// finish and return the same error. A fenced store returns its ErrFenced
// error.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cond.Signal()
	<-s.exited
	return s.closeErr
}

// Stats returns the store's counters: Live and Bytes (message data, not
// table size) are the backlog, Syncs counts commits and Records the records
// they held (Records/Syncs is the group-commit factor). Segments is 0.
// Live and Bytes are exact at Open and then kept by arithmetic, which
// counts a Put replacing a live ID (brokerd never sends one; ids are
// unique) as a new message until the next Open.
func (s *Store) Stats() journal.Stats {
	return journal.Stats{
		Bytes:   s.nBytes.Load(),
		Live:    int(s.nLive.Load()),
		Syncs:   s.nSyncs.Load(),
		Records: s.nRecords.Load(),
	}
}

// run is the writer goroutine: it commits whatever is pending, batch by
// batch, until Close has been called and nothing is pending.
func (s *Store) run() {
	defer close(s.exited)
	var work []request
	for {
		s.mu.Lock()
		for len(s.pending) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.pending) == 0 {
			s.mu.Unlock()
			break
		}
		work, s.pending = s.pending, work[:0]
		s.mu.Unlock()

		s.process(work)
		clear(work) // drop references to callers' records
	}
	if s.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := s.conn.Close(ctx); err != nil {
			s.closeErr = fmt.Errorf("pgstore: closing the connection: %w", err)
		}
		cancel()
		s.conn = nil
	}
	if s.fenced != nil {
		s.closeErr = s.fenced
	}
	s.log.Info("pgstore: closed")
}

// process commits work in batches of at most about maxBatchBytes and
// maxBatchRecords, then calls each done in order.
func (s *Store) process(work []request) {
	var errs []error
	for len(work) > 0 {
		var b batch
		errs = errs[:0]
		n := 0
		for n < len(work) && (n == 0 || (b.bytes < maxBatchBytes && b.records < maxBatchRecords)) {
			err := validate(work[n].recs)
			if err == nil {
				b.add(work[n].recs)
			}
			errs = append(errs, err)
			n++
		}
		var berr error
		if b.records > 0 {
			berr = s.commit(&b)
		}
		for i := range work[:n] {
			err := errs[i]
			if err == nil {
				err = berr
			}
			work[i].done(err)
		}
		work = work[n:]
	}
}

// batch is the net effect of several Appends, per ID the last record
// wins: IDs whose last record is an Ack are deleted, the other IDs' last
// Puts are upserted in the order of those Puts (a second Put of a live ID
// replaces it, as in the journal). A Put acknowledged within the same batch
// is never written at all. Puts and Acks of distinct IDs commute, so this
// is what applying the records one by one would leave.
type batch struct {
	last    map[string]int // ID -> index in puts of its last Put, or -1 after an Ack
	acked   []string       // IDs whose last record is an Ack (filled by finish)
	puts    []journal.Record
	records int
	bytes   int
}

func (b *batch) add(recs []journal.Record) {
	if b.last == nil {
		b.last = make(map[string]int)
	}
	for i := range recs {
		r := &recs[i]
		if prev, ok := b.last[r.ID]; ok && prev >= 0 {
			b.puts[prev].ID = "" // superseded
		}
		if r.Kind == journal.KindPut {
			b.last[r.ID] = len(b.puts)
			b.puts = append(b.puts, *r)
		} else {
			b.last[r.ID] = -1
		}
		b.records++
		b.bytes += len(r.ID) + len(r.Queue) + len(r.Data)
	}
}

// finish collects the IDs to delete and drops superseded Puts.
func (b *batch) finish() {
	live := b.puts[:0]
	for _, p := range b.puts {
		if p.ID != "" {
			live = append(live, p)
		}
	}
	clear(b.puts[len(live):])
	b.puts = live
	for id, i := range b.last {
		if i < 0 {
			b.acked = append(b.acked, id)
		}
	}
}

const (
	deleteSQL = `WITH d AS (DELETE FROM ` + messagesTable + ` WHERE id = ANY($1::text[]) RETURNING octet_length(data) AS n)
		SELECT count(*), coalesce(sum(n), 0)::bigint FROM d`
	insertSQL = `INSERT INTO ` + messagesTable + ` (id, queue, data, epoch)
		SELECT u.id, u.queue, u.data, $4 FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS u(id, queue, data, ord)
		ORDER BY u.ord
		ON CONFLICT (id) DO UPDATE SET queue = EXCLUDED.queue, data = EXCLUDED.data, epoch = EXCLUDED.epoch, seq = EXCLUDED.seq`
)

// commit writes b in one transaction: one pipelined round trip whose
// statements run in the implicit transaction that the pipeline's Sync
// commits. The fence goes first; if it fails, nothing after it runs.
func (s *Store) commit(b *batch) error {
	if s.fenced != nil {
		return s.fenced
	}
	if s.fence != nil {
		if err := s.fence(); err != nil {
			s.fenced = fmt.Errorf("%w; the lease: %v", ErrFenced, err)
			s.log.WithError(err).Error("pgstore: the lease is gone; refusing all further writes")
			return s.fenced
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if s.conn == nil {
		conn, err := pgx.ConnectConfig(ctx, s.cfg)
		if err != nil {
			return fmt.Errorf("pgstore: reconnecting to %s: %w", s.desc, err)
		}
		s.log.Info("pgstore: reconnected")
		s.conn = conn
	}

	b.finish()
	n := len(b.puts)
	ids, queues, data := make([]string, n), make([]string, n), make([][]byte, n)
	var putBytes int64
	for i, p := range b.puts {
		ids[i], queues[i], data[i] = p.ID, p.Queue, p.Data
		putBytes += int64(len(p.Data))
	}
	// Only the statements the batch needs: most batches are only Puts
	// (producers) or only Acks (consumers), and an empty DELETE still
	// costs a single producer's commit about a sixth of its time.
	pb := &pgx.Batch{}
	pb.Queue("SELECT "+fenceFunc+"($1, $2)", s.lockName, int64(s.epoch))
	if len(b.acked) > 0 {
		pb.Queue(deleteSQL, b.acked)
	}
	if n > 0 {
		pb.Queue(insertSQL, ids, queues, data, int64(s.epoch))
	}
	start := time.Now()
	br := s.conn.SendBatch(ctx, pb)
	var delN, delBytes int64
	_, err := br.Exec()
	if err == nil && len(b.acked) > 0 {
		err = br.QueryRow().Scan(&delN, &delBytes)
	}
	if err == nil && n > 0 {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return s.failed(b, err, time.Since(start))
	}
	s.nSyncs.Add(1)
	s.nRecords.Add(uint64(b.records))
	s.nLive.Add(int64(n) - delN)
	s.nBytes.Add(putBytes - delBytes)
	return nil
}

// failed classifies a failed commit: fenced (permanent), a broken
// connection (dropped, reconnected for the next batch), or a statement
// error (the connection stays).
func (s *Store) failed(b *batch, err error, took time.Duration) error {
	log := s.log.WithFields(logrus.Fields{"records": b.records, "took": took.Round(time.Millisecond).String()}).WithError(err)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == fencedCode {
		s.fenced = fmt.Errorf("%w: %s", ErrFenced, pe.Message)
		log.Error("pgstore: write fenced off: another broker holds the lock; refusing all further writes")
		return s.fenced
	}
	if s.conn.IsClosed() || pe == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		s.conn.Close(ctx)
		cancel()
		s.conn = nil
		log.Error("pgstore: commit failed; the connection is dropped and will be reopened for the next batch")
	} else {
		log.Error("pgstore: commit failed")
	}
	return fmt.Errorf("pgstore: committing %d records: %w", b.records, err)
}

// validate checks that every record of one Append can be stored as is.
func validate(recs []journal.Record) error {
	size := 0
	for i := range recs {
		r := &recs[i]
		switch r.Kind {
		case journal.KindPut, journal.KindAck:
		default:
			return fmt.Errorf("%w: unknown kind %d (id %.64q)", ErrInvalid, r.Kind, r.ID)
		}
		switch {
		case r.ID == "":
			return fmt.Errorf("%w: empty ID", ErrInvalid)
		case len(r.ID) > maxFieldLen || len(r.Queue) > maxFieldLen:
			return fmt.Errorf("%w: ID or queue name over %d bytes (id %.64q)", ErrInvalid, maxFieldLen, r.ID)
		case !textOK(r.ID) || !textOK(r.Queue):
			return fmt.Errorf("%w: ID or queue name holds a NUL byte or invalid UTF-8 (id %.64q)", ErrInvalid, r.ID)
		}
		size += len(r.Data)
	}
	if size > maxDataLen {
		return fmt.Errorf("%w: one Append of %d bytes, max %d", ErrInvalid, size, maxDataLen)
	}
	return nil
}

func textOK(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }
