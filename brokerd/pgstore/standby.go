package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sirupsen/logrus"

	"handover/brokerd/store"
	"handover/lockstore"
)

// pageRows is how many rows one query of a Standby reads: each page is an
// index range scan of its own, so that no statement runs for long and the
// rows in flight stay bounded whatever the backlog.
const pageRows = 10000

// migrateTimeout bounds Promote's schema migration, which on an old
// database with a large backlog builds an index over it.
const migrateTimeout = 5 * time.Minute

// Standby follows a PostgreSQL store without writing, migrating or locking
// anything, for a slave: each CatchUp feeds an index with what changed
// since the last, and Promote turns it into the master's Store after one
// final CatchUp. Its methods must be called from one goroutine at a time.
//
// How a standby follows, and why it sees every change exactly once: each
// CatchUp reads, in one REPEATABLE READ snapshot, the ack log rows with seq
// above the last it saw, then the message rows with seq above the last it
// saw, then the producer rows with change above the last it saw. That
// "above the last seen" misses nothing only if no row can become visible
// later with a smaller number than one already seen, that is, if numbers
// are assigned in commit order. They are:
//
//   - Within one master: it writes from ONE connection, one transaction at
//     a time (the writer goroutine waits for each commit before the next),
//     so every number a transaction takes is above those of every
//     transaction committed before it, and a snapshot sees a prefix of the
//     master's transactions. Should the master give up on a transaction
//     whose backend is still running (a timeout, a dropped connection) and
//     write from a new connection, the fence keeps the order: it locks the
//     lock's epoch row FOR NO KEY UPDATE before any number is taken, so the
//     new transaction waits for the old one to end.
//   - Across masters: the new master's epoch increment waits for every
//     transaction of the old one that passed the fence, and every later one
//     fails at the fence before taking a number; so the old master is done
//     before the new one takes its first number.
//
// Applying a snapshot: acknowledgements (and dropped producer windows)
// first, then Puts in seq order, then producer windows in change order. A
// row is present exactly when the last thing done to its id set it, so
// removals first and then the present rows leave what the tables hold. An
// Ack of a message the standby never saw (put and acknowledged between two
// CatchUps) is skipped.
//
// The master trims the ack log (Options.AckRetention) and records how far
// in handover_ack_trim. A standby that finds it has not read up to there
// has missed acknowledgements and reloads: it reads the live ids, calls
// idx.Ack for every id it had fed that is gone, and Puts the new ones. For
// that, and to know the live bytes at Promote, it keeps the ids it fed and
// their sizes (not their data).
type Standby struct {
	cfg       *pgx.ConnConfig
	readCfg   *pgx.ConnConfig
	desc      string
	lockName  string
	timeout   time.Duration
	retention time.Duration
	trimEvery time.Duration
	readConns int
	log       *logrus.Entry

	conn   *pgx.Conn
	closed bool

	// loaded: the index holds the live set up to the positions below;
	// until then the next CatchUp (re)loads.
	loaded                     bool
	lastMsg, lastAck, lastProd int64
	known                      map[string]int32 // live message ids fed to idx -> data size
	producers                  map[string]struct{}
	liveBytes                  int64
	reloads                    int // reloads after falling behind the trim, for tests
}

var _ store.Standby = (*Standby)(nil)

// Follow validates opts, connects, and returns a Standby. It writes
// nothing, migrates nothing and takes no lock: the database may be fresh
// (no schema yet) or at an older schema, in which case CatchUp says so in
// Progress.Waiting and Promote migrates. ctx bounds Follow only.
func Follow(ctx context.Context, opts Options) (*Standby, error) {
	if opts.DSN == "" {
		return nil, errors.New("pgstore: Options.DSN is empty")
	}
	switch {
	case opts.WriteTimeout < 0:
		return nil, fmt.Errorf("pgstore: negative WriteTimeout %v", opts.WriteTimeout)
	case opts.AckRetention < 0:
		return nil, fmt.Errorf("pgstore: negative AckRetention %v", opts.AckRetention)
	case opts.ReadConns < 0:
		return nil, fmt.Errorf("pgstore: negative ReadConns %d", opts.ReadConns)
	}
	cfg, err := lockstore.PostgresConnConfig(opts.DSN, "store")
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	// Read connections are told apart from the writer's in
	// pg_stat_activity (an operator terminating "the store's session"
	// means the writer).
	readCfg, err := lockstore.PostgresConnConfig(opts.DSN, "store-read")
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	s := &Standby{
		cfg:       cfg,
		readCfg:   readCfg,
		lockName:  opts.LockName,
		timeout:   opts.WriteTimeout,
		retention: opts.AckRetention,
		trimEvery: opts.trimEvery,
		readConns: opts.ReadConns,
		log:       opts.Log,
		known:     make(map[string]int32),
		producers: make(map[string]struct{}),
	}
	if s.lockName == "" {
		s.lockName = lockstore.DefaultPostgresName
	}
	if s.timeout == 0 {
		s.timeout = DefaultWriteTimeout
	}
	if s.retention == 0 {
		s.retention = DefaultAckRetention
	}
	if s.trimEvery == 0 {
		s.trimEvery = defaultTrimEvery
	}
	if s.readConns == 0 {
		s.readConns = DefaultReadConns
	}
	if s.log == nil {
		l := logrus.New()
		l.Out = io.Discard
		s.log = logrus.NewEntry(l)
	}
	if s.desc, err = lockstore.DescribeDSN(opts.DSN); err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	s.log = s.log.WithField("store", s.desc)
	if s.conn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("pgstore: connecting to %s: %w", s.desc, err)
	}
	return s, nil
}

// Open is Follow then Promote at once: a cold start of a master. ctx
// bounds Follow only.
func Open(ctx context.Context, opts Options, p store.Promotion, idx store.Index) (*Store, error) {
	sb, err := Follow(ctx, opts)
	if err != nil {
		return nil, err
	}
	return sb.promote(p, idx)
}

// CatchUp feeds idx every change committed since the last call, reading
// ids, queues and sizes, never message data. The first call (or one after
// the standby fell behind the ack log's trim) loads the whole live set. A
// database without the schema, or at an older one, is not an error: the
// call feeds nothing and Progress.Waiting says why. A failed call may have
// fed part of the changes; the next one goes on from there. A broken
// connection is reopened by the next call.
func (s *Standby) CatchUp(idx store.Index) (store.Progress, error) {
	if s.closed {
		return store.Progress{}, ErrClosed
	}
	return s.catchUp(idx)
}

// Close closes the standby's connection; idempotent. After Promote the
// connection is the Store's, and Close does nothing.
func (s *Standby) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	s.known, s.producers = nil, nil
	if s.conn == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.conn.Close(ctx)
	s.conn = nil
	if err != nil {
		return fmt.Errorf("pgstore: closing the standby's connection: %w", err)
	}
	return nil
}

// Promote migrates the schema if needed and checks p.Epoch in the same
// transaction (a deposed master migrates nothing; a stale epoch gives
// ErrFenced), catches up one final time (all of it, if the standby was
// waiting for the schema), and returns the Store, writing under p. After
// the epoch check nothing of an earlier master can still commit, so the
// final CatchUp reads everything it left. Only what changed since the
// last CatchUp is read. The Standby must not be used afterwards; on error
// it is closed.
func (s *Standby) Promote(p store.Promotion, idx store.Index) (store.Store, error) {
	st, err := s.promote(p, idx)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return st, nil
}

func (s *Standby) promote(p store.Promotion, idx store.Index) (st *Store, err error) {
	if s.closed {
		return nil, ErrClosed
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if p.Epoch == 0 || p.Epoch > 1<<63-1 {
		return nil, fmt.Errorf("pgstore: Promotion.Epoch %d is not a lease's epoch", p.Epoch)
	}
	if p.Fence != nil {
		if err := p.Fence(); err != nil {
			return nil, fmt.Errorf("%w; the lease: %v", ErrFenced, err)
		}
	}
	start := time.Now()
	log := s.log.WithField("epoch", p.Epoch)
	ctx, cancel := context.WithTimeout(context.Background(), max(s.timeout, migrateTimeout))
	defer cancel()
	if s.conn == nil || s.conn.IsClosed() {
		if err := s.connect(ctx); err != nil {
			return nil, err
		}
	}
	version, applied, err := migrate(ctx, s.conn, s.lockName, p.Epoch, log)
	if err != nil {
		return nil, err
	}
	if applied > 0 && s.loaded {
		// Cannot happen (a standby loads only at the latest version, which
		// migrates nothing), but if it did, what it read may predate the
		// migration's rewrite.
		s.loaded = false
	}
	prog, err := s.catchUp(idx)
	if err != nil {
		return nil, err
	}
	if prog.Waiting != "" {
		return nil, fmt.Errorf("pgstore: after migrating, the standby still waits: %s", prog.Waiting)
	}
	st = &Store{
		cfg:       s.cfg,
		readCfg:   s.readCfg,
		desc:      s.desc,
		epoch:     p.Epoch,
		lockName:  s.lockName,
		fence:     p.Fence,
		timeout:   s.timeout,
		retention: s.retention,
		trimEvery: s.trimEvery,
		log:       log,
		exited:    make(chan struct{}),
		conn:      s.conn,
		readSlots: make(chan *pgx.Conn, s.readConns),
		readDone:  make(chan struct{}),
		promoted:  prog,
	}
	st.cond.L = &st.mu
	for range s.readConns {
		st.readSlots <- nil
	}
	st.nLive.Store(int64(len(s.known)))
	st.nBytes.Store(s.liveBytes)
	s.conn = nil // the Store's now
	s.Close()
	log.WithFields(logrus.Fields{
		"schema_version": version,
		"live":           st.nLive.Load(),
		"bytes":          st.nBytes.Load(),
		"read":           prog.Records,
		"position":       prog.Position,
		"took":           time.Since(start).Round(time.Millisecond).String(),
	}).Info("pgstore: promoted")
	go st.run()
	return st, nil
}

// connect (re)opens the standby's connection.
func (s *Standby) connect(ctx context.Context) error {
	if s.conn != nil {
		s.conn.Close(context.Background())
		s.conn = nil
	}
	conn, err := pgx.ConnectConfig(ctx, s.cfg)
	if err != nil {
		return fmt.Errorf("pgstore: connecting to %s: %w", s.desc, err)
	}
	s.conn = conn
	return nil
}

// position describes where the standby stands, for Progress.Position.
func (s *Standby) position() string {
	return fmt.Sprintf("message seq %d, ack seq %d, producer change %d", s.lastMsg, s.lastAck, s.lastProd)
}

// catchUp is CatchUp; Promote calls it too, once the schema is current.
func (s *Standby) catchUp(idx store.Index) (p store.Progress, err error) {
	if s.conn == nil || s.conn.IsClosed() {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		err := s.connect(ctx)
		cancel()
		if err != nil {
			return p, err
		}
	}
	defer func() {
		p.Position = s.position()
		if err != nil && s.conn != nil && s.conn.IsClosed() {
			s.conn = nil // reopened by the next call
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	// One snapshot for the whole call, read-only: the ack log, the trim
	// mark and the tables must agree with each other.
	tx, err := s.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return p, fmt.Errorf("pgstore: standby: %w", err)
	}
	defer func() {
		// Nothing to commit: it only read. Bounded, for a dead network.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		tx.Rollback(ctx)
		cancel()
	}()
	version, schema, err := schemaVersion(ctx, tx)
	switch {
	case err != nil:
		return p, err
	case version == 0:
		p.Waiting = "the database has no brokerd schema yet; the master creates it"
		return p, nil
	case version > latestVersion:
		return p, tooNew(schema, version)
	case version < latestVersion:
		p.Waiting = fmt.Sprintf("the schema is at version %d, this brokerd follows version %d; it migrates when it becomes master", version, latestVersion)
		return p, nil
	}
	var below int64
	if err := tx.QueryRow(ctx, "SELECT below FROM "+ackTrimTable).Scan(&below); err != nil {
		return p, fmt.Errorf("pgstore: standby: reading the ack log's trim mark: %w", err)
	}
	switch {
	case !s.loaded:
		err = s.reload(tx, idx, below, &p)
	case s.lastAck < below:
		s.reloads++
		s.log.WithFields(logrus.Fields{"read_up_to": s.lastAck, "trimmed_up_to": below, "live": len(s.known)}).
			Warn("pgstore: the standby fell behind the ack log's trim and missed acknowledgements; reloading its index")
		s.loaded = false
		err = s.reload(tx, idx, below, &p)
	default:
		err = s.follow(tx, idx, &p)
	}
	return p, err
}

// follow applies what changed since the last call.
func (s *Standby) follow(tx pgx.Tx, idx store.Index, p *store.Progress) error {
	if err := s.readAcks(tx, idx, p); err != nil {
		return err
	}
	if err := s.readPuts(tx, idx, p); err != nil {
		return err
	}
	return s.readProducers(tx, idx, p, false)
}

// readAcks applies the ack log past lastAck, page by page.
func (s *Standby) readAcks(tx pgx.Tx, idx store.Index, p *store.Progress) error {
	for {
		n := 0
		err := s.page(tx, "SELECT seq, id, producer FROM "+acksTable+" WHERE seq > $1 ORDER BY seq LIMIT $2",
			[]any{s.lastAck, pageRows}, func(rows pgx.Rows) error {
				var (
					seq      int64
					id       string
					producer bool
				)
				if err := rows.Scan(&seq, &id, &producer); err != nil {
					return err
				}
				n++
				s.lastAck = seq
				p.Bytes += int64(len(id)) + 9
				if producer {
					if _, ok := s.producers[id]; ok {
						delete(s.producers, id)
						idx.Producer(id, 0)
						p.Records++
					}
				} else if size, ok := s.known[id]; ok {
					delete(s.known, id)
					s.liveBytes -= int64(size)
					idx.Ack(id)
					p.Records++
				}
				return nil
			})
		if err != nil {
			return fmt.Errorf("pgstore: standby: reading the ack log: %w", err)
		}
		if n < pageRows {
			return nil
		}
	}
}

// readPuts puts the messages past lastMsg, in seq order, page by page.
// Queue names are interned: a backlog has many messages and few queues,
// and the index keeps the string it is given.
func (s *Standby) readPuts(tx pgx.Tx, idx store.Index, p *store.Progress) error {
	queues := make(map[string]string)
	for {
		n := 0
		err := s.page(tx, "SELECT seq, id, queue, octet_length(data) FROM "+messagesTable+" WHERE seq > $1 ORDER BY seq LIMIT $2",
			[]any{s.lastMsg, pageRows}, func(rows pgx.Rows) error {
				var (
					seq  int64
					size int32
				)
				// Text columns arrive as their UTF-8 bytes in either wire
				// format; taking them raw saves a copy per row.
				if err := rows.Scan(&seq, nil, nil, &size); err != nil {
					return err
				}
				raw := rows.RawValues()
				if raw[1] == nil || raw[2] == nil {
					return errors.New("NULL id or queue")
				}
				id := string(raw[1])
				queue, ok := queues[string(raw[2])]
				if !ok {
					queue = string(raw[2])
					queues[queue] = queue
				}
				n++
				s.lastMsg = seq
				p.Bytes += int64(len(id)+len(queue)) + 12
				if old, ok := s.known[id]; ok {
					s.liveBytes -= int64(old) // a Put replaced it, at its new seq
				}
				s.known[id] = size
				s.liveBytes += int64(size)
				idx.Put(id, queue, int(size), uint64(seq))
				p.Records++
				return nil
			})
		if err != nil {
			return fmt.Errorf("pgstore: standby: reading messages: %w", err)
		}
		if n < pageRows {
			return nil
		}
	}
}

// readProducers applies the producer windows past lastProd (all of them
// if all, forgetting those the standby had fed that are gone).
func (s *Standby) readProducers(tx pgx.Tx, idx store.Index, p *store.Progress, all bool) error {
	var present map[string]struct{}
	after := s.lastProd
	if all {
		present = make(map[string]struct{}, len(s.producers))
		after = 0
	}
	for {
		n := 0
		err := s.page(tx, "SELECT change, id, seq::text FROM "+producersTable+" WHERE change > $1 ORDER BY change LIMIT $2",
			[]any{after, pageRows}, func(rows pgx.Rows) error {
				var (
					change  int64
					id, txt string
				)
				if err := rows.Scan(&change, &id, &txt); err != nil {
					return err
				}
				n++
				after = change
				p.Bytes += int64(len(id)+len(txt)) + 8
				seq, err := strconv.ParseUint(txt, 10, 64)
				if err != nil {
					return fmt.Errorf("%w: producer %.64q has sequence %q in %s", store.ErrCorrupt, id, txt, producersTable)
				}
				if present != nil {
					present[id] = struct{}{}
				}
				_, had := s.producers[id]
				if change > s.lastProd || !had {
					s.producers[id] = struct{}{}
					idx.Producer(id, seq)
					p.Records++
				}
				return nil
			})
		if err != nil {
			return fmt.Errorf("pgstore: standby: reading producer windows: %w", err)
		}
		if n < pageRows {
			break
		}
	}
	if present != nil {
		for id := range s.producers {
			if _, ok := present[id]; !ok {
				delete(s.producers, id)
				idx.Producer(id, 0)
				p.Records++
			}
		}
	}
	s.lastProd = max(s.lastProd, after)
	return nil
}

// reload makes idx hold the live set of the snapshot, from whatever it had
// been fed: the first load (it had nothing) or after falling behind the
// ack log's trim. Ids the standby had fed that are no longer live are
// acknowledged, still-live ones are left in place, new ones are put in seq
// order; the same for producer windows. Then the standby follows from the
// ack log's end.
func (s *Standby) reload(tx pgx.Tx, idx store.Index, below int64, p *store.Progress) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	var lastAck int64
	err := tx.QueryRow(ctx, "SELECT coalesce(max(seq), 0) FROM "+acksTable).Scan(&lastAck)
	cancel()
	if err != nil {
		return fmt.Errorf("pgstore: standby: reading the ack log: %w", err)
	}
	if len(s.known) == 0 {
		// The first load: size the map once rather than growing it
		// through every power of two (most of a large load's time), from
		// the planner's estimate, capped in case that is far off.
		var est int64
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		err := tx.QueryRow(ctx, "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass($1)", messagesTable).Scan(&est)
		cancel()
		if err == nil && est > 0 {
			s.known = make(map[string]int32, min(est, 1<<24))
		}
	} else {
		// Which of the ids fed so far (all at seq <= lastMsg) are still live.
		still := make(map[string]int32, len(s.known))
		var after int64
		for {
			n := 0
			err := s.page(tx, "SELECT seq, id FROM "+messagesTable+" WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
				[]any{after, s.lastMsg, pageRows}, func(rows pgx.Rows) error {
					var id string
					if err := rows.Scan(&after, &id); err != nil {
						return err
					}
					n++
					p.Bytes += int64(len(id)) + 8
					if size, ok := s.known[id]; ok {
						still[id] = size
					}
					return nil
				})
			if err != nil {
				return fmt.Errorf("pgstore: standby: reading messages: %w", err)
			}
			if n < pageRows {
				break
			}
		}
		for id, size := range s.known {
			if _, ok := still[id]; !ok {
				s.liveBytes -= int64(size)
				idx.Ack(id)
				p.Records++
			}
		}
		s.known = still
	}
	if err := s.readPuts(tx, idx, p); err != nil {
		return err
	}
	if err := s.readProducers(tx, idx, p, true); err != nil {
		return err
	}
	s.lastAck = max(below, lastAck)
	s.loaded = true
	return nil
}

// page runs one query of a standby's snapshot, with its own timeout, and
// calls each for its rows.
func (s *Standby) page(tx pgx.Tx, sql string, args []any, each func(pgx.Rows) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
