// Package pgstore keeps brokerd's persistent messages in PostgreSQL, for the
// shared-database topology: every broker of a cluster points at one
// database, the one holding the master lock (lockstore.Postgres, in the same
// database) serves, and a slave that takes over reads the messages its
// predecessor left there. It implements handover/brokerd/store.
//
// Tables (see schema.go): a Put is a row of handover_messages and an Ack
// deletes it, so that table holds exactly the backlog; the same transaction
// appends the deleted id to handover_acks, the ack log, so that a standby
// can follow deletions; producer windows are rows of handover_producers.
//
// Memory holds only an index: a slave runs a Standby (Follow) that reads
// the id, queue and size of new rows every CatchUp, never their data, and
// at takeover Promote reads only what changed since the last CatchUp. The
// master reads a message's data back when it delivers it (Store.Read), on
// connections of its own so that reads do not queue behind commits.
//
// Group commit: one writer goroutine takes every Append queued since its
// last commit and writes them in ONE transaction, sent as one pipelined
// round trip (fence, deletes, inserts; committed at the pipeline's Sync),
// so many producers share one WAL flush.
//
// Fencing: every write transaction first calls handover_fence(lock name,
// epoch), which locks the lock's epoch row and raises an error if the
// epoch is not this store's. Because a new master's epoch increment is an
// UPDATE of that row, it waits for every write transaction that passed the
// fence, and every later one sees the new epoch and fails. So a master
// that lost its lock (its session terminated, a network partition, a long
// pause) can never commit a write after its successor has taken over, and
// the successor reads everything its predecessor ever acknowledged. (A
// master frozen in the middle of a transaction that passed the fence delays
// its successor's increment until it resumes or its connection ends; even
// then it cannot commit after the increment.)
//
// The schema is created and migrated by Promote (see migrations), versioned
// in handover_schema_version; a Standby only reads it.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"

	"handover/brokerd/store"
	"handover/lockstore"
)

// DefaultWriteTimeout is the Options.WriteTimeout used when it is zero.
const DefaultWriteTimeout = 10 * time.Second

// DefaultAckRetention is the Options.AckRetention used when it is zero: a
// standby catching up every 100 ms is never near it, and a slave stalled
// for longer pays one reload of its index, no more than a cold start.
const DefaultAckRetention = time.Minute

// DefaultReadConns is the Options.ReadConns used when it is zero.
const DefaultReadConns = 4

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

// Trimming the ack log: at most every defaultTrimEvery, in a transaction of
// its own, at most maxTrimRows rows (a long backlog of old rows is trimmed
// over several transactions rather than in one that stalls the producers
// queued behind it).
const (
	defaultTrimEvery = 10 * time.Second
	maxTrimRows      = 100000
)

// fencedCode is the SQLSTATE raised by handover_fence.
const fencedCode = "HOF01"

// Options configures Follow and Open.
type Options struct {
	// DSN is the database URL (see lockstore.PostgresOptions.DSN); it must
	// be the database holding the master lock, since fencing reads the
	// lock's epoch row.
	DSN string
	// LockName is the lock's name (lockstore.PostgresOptions.Name); default
	// lockstore.DefaultPostgresName.
	LockName string
	// WriteTimeout bounds one transaction, connecting included (default
	// DefaultWriteTimeout). A database that hangs fails the writes rather
	// than holding every producer, and Close, forever. It also bounds one
	// Read and each page of rows a Standby reads.
	WriteTimeout time.Duration
	// AckRetention is how long the master keeps acknowledgements in the ack
	// log for standbys to follow (default DefaultAckRetention). A standby
	// that has not caught up for longer reloads its index.
	AckRetention time.Duration
	// ReadConns is how many connections Read uses at most (default
	// DefaultReadConns); they are opened when first needed.
	ReadConns int
	// Log receives warnings and events; nil discards them.
	Log *logrus.Entry

	// trimEvery overrides defaultTrimEvery, for tests.
	trimEvery time.Duration
}

var (
	// ErrClosed is passed to done for an Append made after Close, and
	// returned by Read after Close and by a Standby used after Close or
	// Promote. It wraps store.ErrClosed.
	ErrClosed = fmt.Errorf("pgstore: closed: %w", store.ErrClosed)
	// ErrFenced is wrapped by every Append's error once a write was refused
	// because the lock's epoch is no longer this store's (or Fence said so):
	// another broker is master, and this one must stop. It wraps
	// store.ErrFenced and lockstore.ErrLost.
	ErrFenced = fmt.Errorf("pgstore: writes fenced off: %w (%w)", store.ErrFenced, lockstore.ErrLost)
	// ErrInvalid is passed to done for an Append holding a record that
	// cannot be stored faithfully (unknown kind, empty ID, NUL bytes or
	// invalid UTF-8 in ID or queue, a producer sequence that is not a
	// decimal uint64, too large). Nothing of that Append is written; other
	// Appends are unaffected. It wraps store.ErrInvalid.
	ErrInvalid = fmt.Errorf("pgstore: invalid record: %w", store.ErrInvalid)
	// ErrSchemaTooNew is returned by CatchUp and Promote when the database
	// was migrated by a newer brokerd than this one: running an old broker
	// on it could misread or damage data, so it refuses.
	ErrSchemaTooNew = errors.New("pgstore: database schema is newer than this brokerd")
)

// Store is an open PostgreSQL store, written by the master; Promote returns
// it. Its methods are safe for concurrent use.
type Store struct {
	cfg       *pgx.ConnConfig
	readCfg   *pgx.ConnConfig
	desc      string // the DSN without secrets, for logs and errors
	epoch     uint64
	lockName  string
	fence     func() error
	timeout   time.Duration
	retention time.Duration
	trimEvery time.Duration
	log       *logrus.Entry

	mu      sync.Mutex
	cond    sync.Cond
	pending []request
	closed  bool
	exited  chan struct{}

	// Owned by the writer goroutine once Promote has returned.
	conn     *pgx.Conn
	fenced   error // set once a write was fenced; every later write fails
	closeErr error // set before exited is closed
	lastTrim time.Time

	// Read's connections: readSlots holds one entry per connection Read
	// may use, nil until it is opened; readDone is closed once Close has
	// taken them all back.
	readSlots chan *pgx.Conn
	readDone  chan struct{}

	nLive    atomic.Int64
	nBytes   atomic.Int64
	nSyncs   atomic.Uint64
	nRecords atomic.Uint64

	// promoted is what Promote's final catch-up read, for tests.
	promoted store.Progress
}

var _ store.Store = (*Store)(nil)

// request is one Append waiting for the writer.
type request struct {
	recs []store.Record
	done func(error)
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
func (s *Store) Append(recs []store.Record, done func(error)) {
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
func (s *Store) Write(recs ...store.Record) error {
	ch := make(chan error, 1)
	s.Append(recs, func(err error) { ch <- err })
	return <-ch
}

// readSQL reads one body. An acknowledged message's row is gone, so "not
// live" is "no row".
const readSQL = "SELECT data FROM " + messagesTable + " WHERE id = $1"

// Read returns the data of the live message id, read on one of the
// store's read connections (never the writer's: a delivery must not wait
// for a group commit); at most Options.ReadConns Reads run at once, the
// others wait for a connection. An id that is not live gives an error wrapping
// store.ErrNotFound. Reads are not fenced: reading is harmless, and a
// deposed master's deliveries are stopped by the broker, not the store.
func (s *Store) Read(id string) ([]byte, error) {
	if !textOK(id) || id == "" || len(id) > maxFieldLen {
		return nil, fmt.Errorf("pgstore: reading message %.64q: %w", id, store.ErrNotFound)
	}
	var data []byte
	err := s.withReadConn(func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, readSQL, id).Scan(&data)
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("pgstore: reading message %.64q: %w", id, store.ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("pgstore: reading message %.64q: %w", id, err)
	}
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

// withReadConn runs fn on one of the read connections. A connection found
// broken (the server restarted, an administrator ended the session) is
// reopened and fn tried once more: reads are idempotent, and a delivery
// should not fail for a stale socket.
func (s *Store) withReadConn(fn func(ctx context.Context, conn *pgx.Conn) error) error {
	var conn *pgx.Conn
	select {
	case conn = <-s.readSlots:
	case <-s.readDone:
		return ErrClosed
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		s.readSlots <- conn
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if conn == nil {
			if conn, err = pgx.ConnectConfig(ctx, s.readCfg); err != nil {
				conn = nil
				err = fmt.Errorf("connecting to %s: %w", s.desc, err)
				break
			}
		}
		err = fn(ctx, conn)
		if err == nil || !conn.IsClosed() {
			break
		}
		conn = nil
	}
	s.readSlots <- conn
	return err
}

// readManySQL reads many bodies in one round trip.
const readManySQL = `SELECT id, data FROM ` + messagesTable + ` WHERE id = ANY($1::text[])`

// RemoteReads implements store.RemoteReader: every read is a query.
func (s *Store) RemoteReads() {}

// ReadMany implements store.BatchReader with one query.
func (s *Store) ReadMany(ids []string) ([][]byte, []error) {
	data := make([][]byte, len(ids))
	errs := make([]error, len(ids))
	valid := make([]string, 0, len(ids))
	for _, id := range ids {
		if textOK(id) && id != "" && len(id) <= maxFieldLen {
			valid = append(valid, id)
		}
	}
	found := make(map[string][]byte, len(valid))
	err := s.withReadConn(func(ctx context.Context, conn *pgx.Conn) error {
		clear(found)
		rows, err := conn.Query(ctx, readManySQL, valid)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			var d []byte
			if err := rows.Scan(&id, &d); err != nil {
				rows.Close()
				return err
			}
			if d == nil {
				d = []byte{}
			}
			found[id] = d
		}
		return rows.Err()
	})
	for i, id := range ids {
		switch d, ok := found[id]; {
		case err != nil:
			errs[i] = fmt.Errorf("pgstore: reading message %.64q: %w", id, err)
		case !ok:
			errs[i] = fmt.Errorf("pgstore: reading message %.64q: %w", id, store.ErrNotFound)
		default:
			data[i] = d
		}
	}
	return data, errs
}

// Close commits every Append queued before it, stops the writer and closes
// the connections. It is idempotent: later calls wait for the first to
// finish and return the same error. A fenced store returns its ErrFenced
// error.
func (s *Store) Close() error {
	s.mu.Lock()
	first := !s.closed
	s.closed = true
	s.mu.Unlock()
	s.cond.Signal()
	<-s.exited
	if first {
		// Take every read connection back (waiting for Reads in flight,
		// each bounded by the timeout), then let blocked Reads return.
		for range cap(s.readSlots) {
			if c := <-s.readSlots; c != nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				c.Close(ctx)
				cancel()
			}
		}
		close(s.readDone)
	}
	<-s.readDone
	return s.closeErr
}

// Stats returns the store's counters: Live and Bytes = LiveBytes (message
// data, not table size) are the backlog, Syncs counts commits and Records
// the records they held (Records/Syncs is the group-commit factor).
// Segments is 0. Live and Bytes are exact at Promote and then kept by
// arithmetic, which counts a Put replacing a live ID (brokerd never sends
// one; ids are unique) as a new message.
func (s *Store) Stats() store.Stats {
	b := s.nBytes.Load()
	return store.Stats{
		Bytes:     b,
		LiveBytes: b,
		Live:      int(s.nLive.Load()),
		Syncs:     s.nSyncs.Load(),
		Records:   s.nRecords.Load(),
	}
}

// run is the writer goroutine: it commits whatever is pending, batch by
// batch, until Close has been called and nothing is pending. Between
// batches it trims the ack log when that is due.
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
		if time.Since(s.lastTrim) >= s.trimEvery {
			s.trim()
		}
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

// batch is the net effect of several Appends on messages and on producer
// windows, two separate namespaces of IDs.
type batch struct {
	msgs    lastWins // Puts and Acks
	prods   lastWins // Producers and ProducerEnds
	records int
	bytes   int
}

// lastWins is the net effect of records on one namespace: per ID the last
// record wins. IDs whose last record removes them are deleted, the other
// IDs' last records are upserted in the order of those records (a second
// Put of a live ID replaces it, as in the journal). A record removed
// within the same batch is never written at all. Records of distinct IDs
// commute, so this is what applying the records one by one would leave.
type lastWins struct {
	last map[string]int // ID -> index in recs of its last set, or -1 after a removal
	recs []store.Record
	gone []string // IDs whose last record removes them (filled by finish)
}

func (l *lastWins) add(r *store.Record, set bool) {
	if l.last == nil {
		l.last = make(map[string]int)
	}
	if prev, ok := l.last[r.ID]; ok && prev >= 0 {
		l.recs[prev].ID = "" // superseded
	}
	if set {
		l.last[r.ID] = len(l.recs)
		l.recs = append(l.recs, *r)
	} else {
		l.last[r.ID] = -1
	}
}

// finish collects the IDs to delete and drops superseded records.
func (l *lastWins) finish() {
	live := l.recs[:0]
	for _, r := range l.recs {
		if r.ID != "" {
			live = append(live, r)
		}
	}
	clear(l.recs[len(live):])
	l.recs = live
	for id, i := range l.last {
		if i < 0 {
			l.gone = append(l.gone, id)
		}
	}
}

func (b *batch) add(recs []store.Record) {
	for i := range recs {
		r := &recs[i]
		switch r.Kind {
		case store.KindPut, store.KindAck:
			b.msgs.add(r, r.Kind == store.KindPut)
		default:
			b.prods.add(r, r.Kind == store.KindProducer)
		}
		b.records++
		b.bytes += len(r.ID) + len(r.Queue) + len(r.Data)
	}
}

// The statements of a commit. An Ack appends the ids whose rows it deleted
// to the ack log in the same statement, so that a standby sees the one
// exactly when it sees the other; an Ack of an id that is not live (already
// acknowledged, or put and acknowledged in one batch) logs nothing.
const (
	deleteSQL = `WITH d AS (DELETE FROM ` + messagesTable + ` WHERE id = ANY($1::text[]) RETURNING id, octet_length(data) AS n),
		l AS (INSERT INTO ` + acksTable + ` (id) SELECT id FROM d)
		SELECT count(*), coalesce(sum(n), 0)::bigint FROM d`
	insertSQL = `INSERT INTO ` + messagesTable + ` (id, queue, data, epoch)
		SELECT u.id, u.queue, u.data, $4 FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS u(id, queue, data, ord)
		ORDER BY u.ord
		ON CONFLICT (id) DO UPDATE SET queue = EXCLUDED.queue, data = EXCLUDED.data, epoch = EXCLUDED.epoch, seq = EXCLUDED.seq`
	producerEndSQL = `WITH d AS (DELETE FROM ` + producersTable + ` WHERE id = ANY($1::text[]) RETURNING id)
		INSERT INTO ` + acksTable + ` (id, producer) SELECT id, true FROM d`
	producerSQL = `INSERT INTO ` + producersTable + ` (id, seq, epoch)
		SELECT u.id, u.seq::numeric, $3 FROM unnest($1::text[], $2::text[]) AS u(id, seq)
		ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, epoch = EXCLUDED.epoch, change = EXCLUDED.change`
)

// commit writes b in one transaction: one pipelined round trip whose
// statements run in the implicit transaction that the pipeline's Sync
// commits. The fence goes first; if it fails, nothing after it runs, and
// no sequence number is taken before it (standby.go says why that
// matters).
func (s *Store) commit(b *batch) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return err
	}

	b.msgs.finish()
	b.prods.finish()
	n := len(b.msgs.recs)
	ids, queues, data := make([]string, n), make([]string, n), make([][]byte, n)
	var putBytes int64
	for i, p := range b.msgs.recs {
		ids[i], queues[i], data[i] = p.ID, p.Queue, p.Data
		if data[i] == nil {
			data[i] = []byte{} // an empty body; nil would be NULL
		}
		putBytes += int64(len(p.Data))
	}
	np := len(b.prods.recs)
	pids, pseqs := make([]string, np), make([]string, np)
	for i, p := range b.prods.recs {
		pids[i], pseqs[i] = p.ID, string(p.Data)
	}
	// Only the statements the batch needs: most batches are only Puts
	// (producers) or only Acks (consumers), and an empty DELETE still
	// costs a single producer's commit about a sixth of its time.
	pb := &pgx.Batch{}
	pb.Queue("SELECT "+fenceFunc+"($1, $2)", s.lockName, int64(s.epoch))
	if len(b.msgs.gone) > 0 {
		pb.Queue(deleteSQL, b.msgs.gone)
	}
	if n > 0 {
		pb.Queue(insertSQL, ids, queues, data, int64(s.epoch))
	}
	if len(b.prods.gone) > 0 {
		pb.Queue(producerEndSQL, b.prods.gone)
	}
	if np > 0 {
		pb.Queue(producerSQL, pids, pseqs, int64(s.epoch))
	}
	start := time.Now()
	br := s.conn.SendBatch(ctx, pb)
	var delN, delBytes int64
	_, err := br.Exec()
	if err == nil && len(b.msgs.gone) > 0 {
		err = br.QueryRow().Scan(&delN, &delBytes)
	}
	if err == nil && n > 0 {
		_, err = br.Exec()
	}
	if err == nil && len(b.prods.gone) > 0 {
		_, err = br.Exec()
	}
	if err == nil && np > 0 {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return s.failed(fmt.Sprintf("committing %d records", b.records), err,
			s.log.WithFields(logrus.Fields{"records": b.records, "took": time.Since(start).Round(time.Millisecond).String()}))
	}
	s.nSyncs.Add(1)
	s.nRecords.Add(uint64(b.records))
	s.nLive.Add(int64(n) - delN)
	s.nBytes.Add(putBytes - delBytes)
	return nil
}

// ready checks the fence callback and (re)connects the writer.
func (s *Store) ready(ctx context.Context) error {
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
	if s.conn == nil {
		conn, err := pgx.ConnectConfig(ctx, s.cfg)
		if err != nil {
			return fmt.Errorf("pgstore: reconnecting to %s: %w", s.desc, err)
		}
		s.log.Info("pgstore: reconnected")
		s.conn = conn
	}
	return nil
}

// trimSQL deletes the ack log's rows older than the retention ($1, in
// microseconds), at most $2 of them, and records the highest seq deleted
// in the trim table. The cut is the seq of a row that existed (not the
// first young row's seq minus one): a standby that has read up to that
// row has missed nothing even if sequence numbers skipped some values,
// and must not be sent to reload for nothing.
const trimSQL = `WITH y AS (SELECT min(seq) AS s FROM ` + acksTable + ` WHERE at >= now() - $1::bigint * interval '1 microsecond'),
	c AS (SELECT max(seq) AS w FROM (SELECT seq FROM ` + acksTable + `
		WHERE seq < coalesce((SELECT s FROM y), 9223372036854775807) ORDER BY seq LIMIT $2) o),
	d AS (DELETE FROM ` + acksTable + ` WHERE seq <= (SELECT w FROM c) RETURNING 1),
	u AS (UPDATE ` + ackTrimTable + ` SET below = (SELECT w FROM c) WHERE (SELECT w FROM c) > below)
	SELECT (SELECT count(*) FROM d), coalesce((SELECT w FROM c), 0)`

// trim deletes old rows of the ack log, in a fenced transaction of its
// own. Failures are logged and otherwise ignored (the next trim retries)
// unless they say the store is fenced.
func (s *Store) trim() {
	s.lastTrim = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if s.ready(ctx) != nil {
		return
	}
	pb := &pgx.Batch{}
	pb.Queue("SELECT "+fenceFunc+"($1, $2)", s.lockName, int64(s.epoch))
	pb.Queue(trimSQL, s.retention.Microseconds(), maxTrimRows)
	start := time.Now()
	br := s.conn.SendBatch(ctx, pb)
	var deleted, below int64
	_, err := br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&deleted, &below)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	log := s.log.WithField("took", time.Since(start).Round(time.Millisecond).String())
	if err != nil {
		s.failed("trimming the ack log", err, log)
		return
	}
	if deleted > 0 {
		log.WithFields(logrus.Fields{"deleted": deleted, "below": below}).Debug("pgstore: ack log trimmed")
	}
	if deleted >= maxTrimRows {
		s.lastTrim = time.Time{} // more to do: again after the next batch
	}
}

// failed classifies a failed write: fenced (permanent), a broken
// connection (dropped, reconnected for the next batch), or a statement
// error (the connection stays).
func (s *Store) failed(what string, err error, log *logrus.Entry) error {
	log = log.WithError(err)
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
		log.Errorf("pgstore: %s failed; the connection is dropped and will be reopened for the next batch", what)
	} else {
		log.Errorf("pgstore: %s failed", what)
	}
	return fmt.Errorf("pgstore: %s: %w", what, err)
}

// validate checks that every record of one Append can be stored as is.
func validate(recs []store.Record) error {
	size := 0
	for i := range recs {
		r := &recs[i]
		switch r.Kind {
		case store.KindPut, store.KindAck, store.KindProducerEnd:
		case store.KindProducer:
			if _, err := strconv.ParseUint(string(r.Data), 10, 64); err != nil {
				return fmt.Errorf("%w: producer %.64q: sequence %.32q is not a decimal uint64", ErrInvalid, r.ID, r.Data)
			}
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
