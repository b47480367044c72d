package lockstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"
)

// DefaultPostgresRetry is the PostgresOptions.Retry used when it is zero: how
// often a slave asks for the lock and a master re-verifies it.
const DefaultPostgresRetry = 500 * time.Millisecond

// DefaultPostgresName is the PostgresOptions.Name used when it is empty.
const DefaultPostgresName = "brokerd"

// PostgresLockTable is the table holding one fencing-epoch row per lock
// name. Postgres creates it if missing; brokerd/pgstore reads it in every
// write transaction to fence a deposed master's writes.
const PostgresLockTable = "handover_lock"

// PostgresOptions configures a Postgres locker.
type PostgresOptions struct {
	// DSN is the database URL, postgres://USER[:PASSWORD]@HOST:PORT/DB?...
	// (anything pgx accepts, including PG* environment variables and
	// ~/.pgpass). It is never logged or shown; String shows it without
	// password or parameters.
	DSN string
	// Name names the lock; brokers using the same Name (in the same
	// database and schema) elect one master. Default DefaultPostgresName.
	Name string
	// Retry is how often a waiting slave tries to take the lock, and how
	// often the master verifies its session (each verification may take
	// up to Retry too). Default DefaultPostgresRetry. It bounds how long a
	// master whose database session is gone goes on serving, and how soon
	// a slave takes over after the master's session ended.
	Retry time.Duration
	// LeaseTimeout is how long the master's lease in PostgresLeaseTable
	// lasts without renewal (it renews every Retry). A slave that finds it
	// expired while the advisory lock is still held (the master is frozen
	// or its connection stalled, so the server keeps its session) ends
	// that session with pg_terminate_backend, which frees the lock, and
	// takes it. Expiry is judged by the database's clock alone. Default
	// DefaultLeaseTimeout; it must be at least twice Retry.
	LeaseTimeout time.Duration
	// Log receives lock events; nil discards them.
	Log *logrus.Entry
}

// PostgresLeaseTable holds each lock's lease expiry, apart from the epoch
// row so that renewing it never waits for the store's fenced writes.
const PostgresLeaseTable = "handover_lease"

// Postgres is a Locker backed by a PostgreSQL session-level advisory lock,
// with the fencing epoch in a row of PostgresLockTable.
//
// Why an advisory lock on one dedicated session: the server releases it the
// moment the session ends, whether the broker released it, crashed, was
// killed, or its connection was terminated (pg_terminate_backend, a server
// restart). A lease row with an expiry would instead make slaves wait for
// the expiry after a crash and would depend on clocks. The price: holding
// the lock means holding that connection, so loss of the connection is loss
// of the lock, and the connection must go directly to PostgreSQL or through
// a session-mode pooler (PgBouncer's transaction mode hands a session to
// other clients and would silently break the lock; the lease detects a
// changed backend and gives up).
//
// Each acquisition increments the row's epoch in the same session before
// Acquire returns (a committed, synchronous_commit=on transaction). The
// increment is ordered after every write transaction that still holds
// a row lock on it (FOR NO KEY UPDATE), which is how brokerd/pgstore fences a deposed
// master: its writes check the row under that lock and fail once the epoch
// is not theirs.
//
// The server side of a vanished client (a partitioned or powered-off host)
// is detected by TCP keepalives, which this locker sets on its session to
// about 11 s (tcp_keepalives_idle=5, interval=2, count=3, and
// tcp_user_timeout=10s) unless the DSN sets them: that, not Retry, bounds a
// takeover when the master's host disappears without closing its
// connection.
//
// It needs PostgreSQL 12 or later (tcp_user_timeout). A Postgres may be
// used for any number of Acquire calls, also concurrently; each uses its own
// connection and conflicts with all others.
type Postgres struct {
	cfg     *pgx.ConnConfig
	name    string
	retry   time.Duration
	timeout time.Duration
	log     *logrus.Entry
	desc    string
	holder  string
}

var _ Locker = (*Postgres)(nil)

// NewPostgres validates opts and returns a Postgres locker. It does not
// connect: Acquire does, and keeps retrying while the database is down.
func NewPostgres(opts PostgresOptions) (*Postgres, error) {
	if opts.DSN == "" {
		return nil, errors.New("lockstore: PostgresOptions.DSN is empty")
	}
	cfg, err := PostgresConnConfig(opts.DSN, "lock")
	if err != nil {
		return nil, err
	}
	retry := opts.Retry
	switch {
	case retry < 0:
		return nil, fmt.Errorf("lockstore: negative Retry %v", retry)
	case retry == 0:
		retry = DefaultPostgresRetry
	}
	timeout := opts.LeaseTimeout
	switch {
	case timeout == 0:
		timeout = max(DefaultLeaseTimeout, 2*retry)
	case timeout < 2*retry:
		return nil, fmt.Errorf("lockstore: LeaseTimeout %v must be at least twice Retry %v (the lease is renewed every Retry)", timeout, retry)
	}
	name := opts.Name
	if name == "" {
		name = DefaultPostgresName
	}
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	host, _ := os.Hostname()
	p := &Postgres{
		cfg:     cfg,
		name:    name,
		retry:   retry,
		timeout: timeout,
		desc:    describe(&cfg.Config),
		holder:  host + "/" + strconv.Itoa(os.Getpid()),
	}
	p.log = log.WithFields(logrus.Fields{"lock": p.desc, "lock_name": name})
	return p, nil
}

// String returns "postgres://USER@HOST:PORT/DB": never the password or the
// other parameters of the DSN.
func (p *Postgres) String() string { return p.desc }

// Retry is the interval between lock attempts and lease verifications.
func (p *Postgres) Retry() time.Duration { return p.retry }

// Acquire connects, then tries the advisory lock every Retry until it holds
// it or ctx is done (then it returns ctx.Err() and holds nothing). Failures
// to reach the database are logged and retried, so a slave rides out a
// database restart; errors that retrying cannot fix (authentication, a
// missing database, missing privileges) are returned.
//
// Once it holds the lock it creates PostgresLockTable if missing and
// increments the epoch row of Name (inserting it at 1), committed before
// Acquire returns. That UPDATE waits for every in-flight write transaction
// of the previous master that holds a lock on the row, so whatever that
// master committed is committed before the new master reads anything.
func (p *Postgres) Acquire(ctx context.Context) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := time.Now()
	var (
		s        *pgSession
		lastWarn time.Time
		waiting  bool
	)
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	// fail logs a retryable failure: at Warn at most every 10 s, so a
	// slave waiting out a long database outage does not flood the log.
	fail := func(what string, err error) {
		l := p.log.WithError(err)
		if time.Since(lastWarn) >= 10*time.Second {
			lastWarn = time.Now()
			l.Warnf("%s; retrying every %v", what, p.retry)
		} else {
			l.Debug(what)
		}
	}
	wait := time.Duration(0)
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			t := time.NewTimer(wait)
			wait = p.retry
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
		}
		if s == nil {
			var err error
			s, err = p.connect(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if permanent(err) {
					return nil, fmt.Errorf("lockstore: %s: %w", p.desc, err)
				}
				fail("cannot connect to the lock database", err)
				continue
			}
		}
		ok, err := s.tryLock(ctx, p.retry)
		if err != nil {
			s.close()
			s = nil
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			fail("lost the lock database connection while waiting for the lock", err)
			continue
		}
		if !ok {
			if !waiting {
				waiting = true
				p.log.WithField("holder", s.holder(ctx, p.name, p.retry)).Info("lock held by another session; waiting")
			}
			left, ok, err := s.leaseLeft(ctx, p.name, p.retry)
			switch {
			case err != nil:
				p.log.WithError(err).Debug("reading the master's lease")
			case ok && left > 0:
				// Look again just after it runs out, not a whole Retry later.
				wait = min(p.retry, left+10*time.Millisecond)
			case ok:
				if pids, err := s.endExpired(ctx, p.name, p.retry); err != nil {
					p.log.WithError(err).Debug("ending the session of an expired lease")
				} else if len(pids) > 0 {
					p.log.WithFields(logrus.Fields{"backends": pids, "lease_timeout": p.timeout.String()}).
						Warn("the master's lease expired while its session holds the lock (frozen, or its connection stalled): ended its session")
					wait = 10 * time.Millisecond // the lock is free as soon as the backend is gone
				}
			}
			continue
		}
		bumped := time.Now()
		epoch, err := s.bump(ctx, p.name, p.holder)
		if err != nil {
			// Closing the session drops the advisory lock.
			s.close()
			s = nil
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if permanent(err) {
				return nil, fmt.Errorf("lockstore: recording the epoch in %s: %w", p.desc, err)
			}
			fail("cannot record the fencing epoch", err)
			continue
		}
		l := &pgLease{
			p:         p,
			s:         s,
			leaseCore: newLeaseCore(epoch, p.desc, bumped, validFor(p.timeout)),
		}
		renew := time.Now()
		if err := s.renew(ctx, p.name, epoch, p.timeout, max(p.retry, time.Second)); err != nil {
			s.close()
			s = nil
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			fail("cannot start the lease", err)
			continue
		}
		l.renewedAt(renew)
		s = nil // owned by the lease now
		go l.watch()
		p.log.WithFields(logrus.Fields{
			"epoch":   epoch,
			"backend": l.s.pid,
			"waited":  time.Since(start).Round(time.Millisecond).String(),
		}).Info("master lock acquired")
		return l, nil
	}
}

// pgSession is one dedicated connection and the lock key it uses.
type pgSession struct {
	conn *pgx.Conn
	key  int64  // advisory lock key
	pid  uint32 // server backend pid, to detect a pooler swapping sessions
}

// connect opens a session and derives the lock key from the session's
// schema and the lock name.
func (p *Postgres) connect(ctx context.Context) (*pgSession, error) {
	cctx, cancel := context.WithTimeout(ctx, max(p.retry, 5*time.Second))
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, p.cfg)
	if err != nil {
		return nil, err
	}
	var schema *string
	var pid uint32
	if err := conn.QueryRow(cctx, "SELECT current_schema(), pg_backend_pid()").Scan(&schema, &pid); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	if schema == nil {
		conn.Close(context.Background())
		return nil, errors.New("no current schema (search_path names no existing schema)")
	}
	return &pgSession{conn: conn, key: AdvisoryKey(*schema, p.name), pid: pid}, nil
}

// AdvisoryKey is the advisory lock key of lock name in schema: FNV-1a 64 of
// "handover/lockstore", schema and name, NUL-separated. Advisory locks are
// database-wide, so the schema is part of the key: brokers of different
// clusters in one database (one schema each, via search_path) do not
// exclude each other.
func AdvisoryKey(schema, name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("handover/lockstore\x00" + schema + "\x00" + name))
	return int64(h.Sum64())
}

// tryLock asks for the advisory lock without waiting in the server (a
// blocked pg_advisory_lock would hold a backend and hide a dead connection
// until it is granted).
func (s *pgSession) tryLock(ctx context.Context, timeout time.Duration) (bool, error) {
	qctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	var ok bool
	err := s.conn.QueryRow(qctx, "SELECT pg_try_advisory_lock($1)", s.key).Scan(&ok)
	return ok, err
}

// holder says who holds the lock according to the epoch row, for the log.
func (s *pgSession) holder(ctx context.Context, name string, timeout time.Duration) string {
	qctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	var holder string
	var epoch int64
	err := s.conn.QueryRow(qctx, "SELECT holder, epoch FROM "+PostgresLockTable+" WHERE name = $1", name).Scan(&holder, &epoch)
	if err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%s (epoch %d)", holder, epoch)
}

// bump creates the epoch table if needed and increments name's epoch. The
// caller holds the advisory lock, which serializes bumps of one name.
func (s *pgSession) bump(ctx context.Context, name, holder string) (uint64, error) {
	if _, err := s.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+PostgresLockTable+` (
		name        text PRIMARY KEY,
		epoch       bigint NOT NULL CHECK (epoch > 0),
		holder      text NOT NULL,
		acquired_at timestamptz NOT NULL
	)`); err != nil {
		return 0, fmt.Errorf("creating %s: %w", PostgresLockTable, err)
	}
	if _, err := s.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+PostgresLeaseTable+` (
		name        text PRIMARY KEY,
		epoch       bigint NOT NULL,
		pid         integer NOT NULL,
		lease_until timestamptz NOT NULL
	)`); err != nil {
		return 0, fmt.Errorf("creating %s: %w", PostgresLeaseTable, err)
	}
	var epoch int64
	err := s.conn.QueryRow(ctx, `INSERT INTO `+PostgresLockTable+` AS l (name, epoch, holder, acquired_at)
		VALUES ($1, 1, $2, now())
		ON CONFLICT (name) DO UPDATE SET epoch = l.epoch + 1, holder = EXCLUDED.holder, acquired_at = EXCLUDED.acquired_at
		RETURNING epoch`, name, holder).Scan(&epoch)
	if err != nil {
		return 0, fmt.Errorf("incrementing the epoch of %q: %w", name, err)
	}
	return uint64(epoch), nil
}

// renew extends the lease of name at epoch to timeout from now, by the
// database's clock. The write need not survive a crash of the database
// (a master without its session is no master), so it is not waited for.
func (s *pgSession) renew(ctx context.Context, name string, epoch uint64, timeout, wait time.Duration) error {
	qctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	b.Queue(`INSERT INTO `+PostgresLeaseTable+` AS l (name, epoch, pid, lease_until)
		VALUES ($1, $2, pg_backend_pid(), clock_timestamp() + make_interval(secs => $3))
		ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch, pid = EXCLUDED.pid, lease_until = EXCLUDED.lease_until`,
		name, int64(epoch), timeout.Seconds())
	b.Queue("COMMIT")
	return s.conn.SendBatch(qctx, b).Close()
}

// leaseLeft returns how long the lease of name has left by the database's
// clock (negative once expired); ok is false when there is no lease row.
func (s *pgSession) leaseLeft(ctx context.Context, name string, timeout time.Duration) (left time.Duration, ok bool, err error) {
	qctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	var secs float64
	err = s.conn.QueryRow(qctx, `SELECT extract(epoch FROM lease_until - clock_timestamp())::float8 FROM `+PostgresLeaseTable+` WHERE name = $1`, name).Scan(&secs)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, false, nil
	case err != nil:
		// The table may not exist yet (no master since this version).
		return 0, false, err
	}
	return time.Duration(secs * float64(time.Second)), true, nil
}

// endExpired ends the session of the master whose lease of name expired,
// if that session (the one the lease names) still holds the advisory lock,
// and returns its backend pid. Naming the session matters: a slave that
// has just taken the lock, and not yet renewed the lease, is not ended.
// The CTE is materialized so that pg_terminate_backend runs only on the
// rows that qualify, whatever order the planner picks.
func (s *pgSession) endExpired(ctx context.Context, name string, timeout time.Duration) ([]uint32, error) {
	qctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	var out []uint32
	err := pgx.BeginFunc(qctx, s.conn, func(tx pgx.Tx) error {
		// The lease row is locked first: a renewal committing meanwhile is
		// waited for, and the expiry is then judged on the renewed row
		// (READ COMMITTED re-checks it), so a master that just renewed is
		// never ended.
		var pid int64
		err := tx.QueryRow(qctx, `SELECT pid FROM `+PostgresLeaseTable+`
			WHERE name = $1 AND lease_until < clock_timestamp() AND pid <> pg_backend_pid() FOR UPDATE`, name).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(qctx, `WITH holder AS MATERIALIZED (
				SELECT k.pid FROM pg_locks k
				WHERE k.pid = $1 AND k.locktype = 'advisory' AND k.granted
				  AND k.classid = $2 AND k.objid = $3 AND k.objsubid = 1)
			SELECT pid::bigint FROM holder WHERE pg_terminate_backend(pid)`,
			pid, uint32(uint64(s.key)>>32), uint32(uint64(s.key)))
		if err != nil {
			return err
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		for _, p := range pids {
			out = append(out, uint32(p))
		}
		return err
	})
	return out, err
}

// check returns why the session no longer proves we are master, or "".
// Any failure to verify counts: a master that cannot reach its database has
// lost its lock as far as everybody else can tell.
func (s *pgSession) check(ctx context.Context, name string, epoch uint64, timeout time.Duration) string {
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		cur  int64
		pid  uint32
		held bool
	)
	// A bigint advisory key shows in pg_locks as classid = high 32 bits,
	// objid = low 32 bits, objsubid = 1.
	err := s.conn.QueryRow(qctx, `SELECT l.epoch, pg_backend_pid(), EXISTS (
			SELECT 1 FROM pg_locks k
			WHERE k.locktype = 'advisory' AND k.pid = pg_backend_pid() AND k.granted
			  AND k.classid = $2 AND k.objid = $3 AND k.objsubid = 1)
		FROM `+PostgresLockTable+` l WHERE l.name = $1`,
		name, uint32(uint64(s.key)>>32), uint32(uint64(s.key))).Scan(&cur, &pid, &held)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Sprintf("the epoch row of %q in %s was deleted", name, PostgresLockTable)
	case err != nil:
		return "lock session failed: " + err.Error()
	case pid != s.pid:
		return fmt.Sprintf("the connection now reaches backend %d, not %d (a transaction-mode pooler?); the advisory lock is not ours", pid, s.pid)
	case !held:
		return "the advisory lock is no longer held by this session"
	case uint64(cur) != epoch:
		return fmt.Sprintf("the epoch is now %d, ours is %d (another broker acquired the lock)", cur, epoch)
	}
	return ""
}

// close ends the session, which releases the advisory lock if it is held.
// The short timeout is for a dead network: then there is nobody to say
// goodbye to, and the server frees the session on its own.
func (s *pgSession) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return s.conn.Close(ctx)
}

// pgLease is one holding of a Postgres lock. Its session is owned by the
// watch goroutine, which alone uses and closes it.
type pgLease struct {
	p *Postgres
	s *pgSession
	*leaseCore
}

// Verify is Valid: the store checks the epoch itself, in the transaction
// of each write.
func (l *pgLease) Verify() error { return l.Valid() }

// watch verifies the session every Retry until the lease is released or
// lost.
func (l *pgLease) watch() {
	defer close(l.exited)
	t := time.NewTicker(l.p.retry)
	defer t.Stop()
	log := l.p.log.WithField("epoch", l.epoch)
	for {
		select {
		case <-l.stop:
			// Unlock explicitly so that a slave can take over at once,
			// even if closing the connection takes the server a moment.
			ctx, cancel := context.WithTimeout(context.Background(), l.p.retry)
			_, err := l.s.conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", l.s.key)
			cancel()
			if cerr := l.s.close(); err == nil {
				err = cerr
			}
			log.Info("master lock released")
			l.finish(ErrReleased, err)
			return
		case <-t.C:
			start := time.Now()
			// Each query gets half of what is left of the lease's
			// validity after one Retry, so that a renewal that succeeds
			// comes before the lease stops being valid.
			q := max((validFor(l.p.timeout)-l.p.retry)/2, 100*time.Millisecond)
			reason := l.s.check(context.Background(), l.p.name, l.epoch, q)
			if reason == "" {
				if err := l.s.renew(context.Background(), l.p.name, l.epoch, l.p.timeout, q); err != nil {
					reason = "renewing the lease: " + err.Error()
				}
			}
			if reason != "" {
				// Close first: once Done is observed, the session is gone.
				l.s.close()
				log.WithField("reason", reason).Error("master lock lost")
				l.finish(fmt.Errorf("%w: %s", ErrLost, reason), nil)
				return
			}
			l.renewedAt(start)
		}
	}
}

// PostgresConnConfig parses dsn and applies the session settings that
// brokerd's master lock and store depend on, unless the DSN sets them:
//
//   - synchronous_commit=on, so that a commit (an epoch, a message) is on
//     disk before the broker acts on it, whatever the server's default;
//   - server-side TCP keepalives (~11 s) and tcp_user_timeout=10s, so the
//     server ends the session, freeing the advisory lock and any row
//     locks, of a client that vanished without closing its connection;
//   - idle_in_transaction_session_timeout=10s, for the same reason;
//   - application_name "handover-ROLE/PID", so that operators (and tests)
//     can tell the sessions of each broker process apart;
//   - a connect timeout of 5 s.
//
// Parse errors never quote the DSN, which may hold a password.
func PostgresConnConfig(dsn, role string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) && errors.Unwrap(pe) != nil {
			err = errors.Unwrap(pe)
		}
		return nil, fmt.Errorf("lockstore: cannot parse the PostgreSQL DSN: %v", err)
	}
	defaults := map[string]string{
		"synchronous_commit":                  "on",
		"tcp_keepalives_idle":                 "5",
		"tcp_keepalives_interval":             "2",
		"tcp_keepalives_count":                "3",
		"tcp_user_timeout":                    "10000",
		"idle_in_transaction_session_timeout": "10000",
		"application_name":                    "handover-" + role + "/" + strconv.Itoa(os.Getpid()),
	}
	for k, v := range defaults {
		if _, ok := cfg.RuntimeParams[k]; !ok {
			cfg.RuntimeParams[k] = v
		}
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	return cfg, nil
}

// DescribeDSN returns dsn as "postgres://USER@HOST:PORT/DB", for logs and
// /status: never the password or the other parameters.
func DescribeDSN(dsn string) (string, error) {
	cfg, err := PostgresConnConfig(dsn, "")
	if err != nil {
		return "", err
	}
	return describe(&cfg.Config), nil
}

func describe(c *pgconn.Config) string {
	host := c.Host
	if strings.HasPrefix(host, "/") { // a unix socket directory
		host = url.PathEscape(host)
	}
	u := url.URL{
		Scheme: "postgres",
		User:   url.User(c.User),
		Host:   net.JoinHostPort(host, strconv.Itoa(int(c.Port))),
		Path:   "/" + c.Database,
	}
	return u.String()
}

// permanent reports errors that retrying will not fix: authentication
// (class 28), a database that does not exist (3D000), missing privileges
// (42501).
func permanent(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	return strings.HasPrefix(pe.Code, "28") || pe.Code == "3D000" || pe.Code == "42501"
}
