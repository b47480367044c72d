package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"handover/brokerd/auth"
	"handover/lockstore"
)

// UsersTable is the logins table (handover_users) of a -store postgres
// database, for brokerd's users_table: brokers on different hosts then
// share one list of users, which operators edit with SQL, as the users
// file's lines (login, bcrypt hash, comma-separated groups).
//
// Refresh looks at the change counter that the table's trigger keeps (one
// row), and reads the users only when it moved, or a minute after the last
// read; both in one snapshot, so that a version is never paired with rows
// from another.
type UsersTable struct {
	dsn, desc string

	// fullEvery is how often the users are read whatever the counter
	// says: an edit made with triggers off (a restore with
	// --disable-triggers, session_replication_role = replica) does not
	// move it.
	fullEvery time.Duration

	mu      sync.Mutex // held by Refresh: conn, version, readAt and bad are its
	conn    *pgx.Conn
	version int64     // the counter the users in force were read at; -1 before
	readAt  time.Time // when they were
	bad     error     // the rows of that version skipped, if any
	users   atomic.Pointer[auth.Users]
}

// NewUsersTable returns the users table of the database at dsn, not yet
// read: nothing is connected until Refresh.
func NewUsersTable(dsn string) (*UsersTable, error) {
	desc, err := lockstore.DescribeDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("users table: %w", err)
	}
	return &UsersTable{dsn: dsn, desc: desc, version: -1, fullEvery: time.Minute}, nil
}

// String names the table and its database, without the password.
func (u *UsersTable) String() string { return "table " + usersTable + " in " + u.desc }

// Users returns the users read last: nil before the first read.
func (u *UsersTable) Users() *auth.Users { return u.users.Load() }

// Refresh reads the users again if the table changed since the last read.
// A row that is not a valid user is skipped, and the rest are used; the
// error then names the bad rows, until the table changes again. An error
// reaching the database leaves the last users read in force.
func (u *UsersTable) Refresh(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	err := u.refresh(ctx)
	if err != nil && u.conn != nil && !isBadRows(err) {
		u.closeConn() // connect afresh next time
	}
	return err
}

// closeConn closes Refresh's connection, giving a database that does not
// answer a second to take the goodbye. u.mu must be held.
func (u *UsersTable) closeConn() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := u.conn.Close(ctx)
	u.conn = nil
	return err
}

// badRows is Refresh's error for rows that are not valid users.
type badRows struct{ errs []error }

func (b *badRows) Error() string {
	return fmt.Sprintf("users table: %d rows skipped, not valid users: %v", len(b.errs), errors.Join(b.errs...))
}

func isBadRows(err error) bool {
	var b *badRows
	return errors.As(err, &b)
}

func (u *UsersTable) refresh(ctx context.Context) error {
	if u.conn == nil {
		cfg, err := lockstore.PostgresConnConfig(u.dsn, "users")
		if err != nil {
			return fmt.Errorf("users table: %w", err)
		}
		if u.conn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
			return fmt.Errorf("users table: connecting to %s: %w", u.desc, err)
		}
	}
	tx, err := u.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("users table: %w", err)
	}
	defer tx.Rollback(context.Background())
	var version int64
	if err := tx.QueryRow(ctx, "SELECT version FROM "+usersVersion).Scan(&version); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
			return fmt.Errorf("users table: %s has no %s yet: the schema is older than this brokerd, and a master migrates it when it opens the store", u.desc, usersTable)
		}
		return fmt.Errorf("users table: reading its change counter: %w", err)
	}
	if version == u.version && time.Since(u.readAt) < u.fullEvery {
		return u.bad
	}
	rows, err := tx.Query(ctx, "SELECT login, hash, groups FROM "+usersTable+" ORDER BY login")
	if err != nil {
		return fmt.Errorf("users table: %w", err)
	}
	users := auth.NewUsers()
	var bad []error
	var login, hash, groups string
	_, err = pgx.ForEachRow(rows, []any{&login, &hash, &groups}, func() error {
		if err := users.Add(login, hash, groups); err != nil {
			bad = append(bad, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("users table: %w", err)
	}
	u.version, u.readAt, u.bad = version, time.Now(), nil
	if old := u.users.Load(); old != nil && old.Equal(users) {
		users = old // nothing changed: the users in force stay the same set
	}
	u.users.Store(users)
	if len(bad) > 0 {
		u.bad = &badRows{bad}
	}
	return u.bad
}

// Close closes Refresh's connection. Refresh must not be running.
func (u *UsersTable) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conn == nil {
		return nil
	}
	return u.closeConn()
}
