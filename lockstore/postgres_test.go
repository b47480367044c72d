//go:build linux

package lockstore

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"handover/internal/pgtest"
)

// pgRetry is the lock_retry of these tests: short, so that they run fast,
// and long enough for the race detector's slowdown.
const pgRetry = 150 * time.Millisecond

// pgSlack is what a takeover or a loss may take beyond its Retry bound
// (scheduling, the race detector, a commit).
const pgSlack = 500 * time.Millisecond

func newTestPostgres(t *testing.T, dsn string) *Postgres {
	t.Helper()
	p, err := NewPostgres(PostgresOptions{DSN: dsn, Retry: pgRetry, Log: pgtest.Logger(t)})
	if err != nil {
		t.Fatalf("NewPostgres: %v", err)
	}
	return p
}

// TestPostgresMasterSlave: one locker holds the lock, another waits, takes
// over within Retry of the release with the next epoch, and loses the lock
// within Retry once its session is terminated from outside.
func TestPostgresMasterSlave(t *testing.T) {
	srv := pgtest.Start(t)
	// The password is ignored by the test server's trust authentication;
	// it is here to check that it never shows.
	dsn := strings.Replace(srv.DSN(), "postgres@", "postgres:s3cret@", 1)
	a, b := newTestPostgres(t, dsn), newTestPostgres(t, dsn)
	if s := a.String(); strings.Contains(s, "s3cret") || strings.Contains(s, "sslmode") || !strings.HasPrefix(s, "postgres://postgres@127.0.0.1:") {
		t.Fatalf("String() = %q; want postgres://postgres@127.0.0.1:PORT/postgres, without password or parameters", s)
	}

	la := acquire(t, a)
	t.Cleanup(func() { la.Release() })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	waiting := acquireAsync(ctx, b)
	select {
	case r := <-waiting:
		t.Fatalf("second locker acquired while the first holds the lock: %v, %v", r.lease, r.err)
	case <-time.After(3 * pgRetry):
	}
	released := time.Now()
	release(t, la)
	if !errors.Is(la.Err(), ErrReleased) {
		t.Fatalf("Err after Release = %v", la.Err())
	}
	r := <-waiting
	if r.err != nil {
		t.Fatal(r.err)
	}
	lb := r.lease
	t.Cleanup(func() { lb.Release() })
	if took := r.at.Sub(released); took > pgRetry+pgSlack {
		t.Errorf("takeover took %v after release, want under %v", took, pgRetry+pgSlack)
	}
	if la.Epoch() != 1 || lb.Epoch() != 2 {
		t.Fatalf("epochs %d then %d, want 1 then 2", la.Epoch(), lb.Epoch())
	}

	// Terminating the holder's session from a third connection frees the
	// lock on the server at once; the lease must notice within ~Retry.
	admin := srv.Conn()
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND granted`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminating the holder's session: %d sessions, %v", n, err)
	}
	terminated := time.Now()
	select {
	case <-lb.Done():
	case <-time.After(2*pgRetry + pgSlack):
		t.Fatalf("Done not closed %v after the session was terminated", 2*pgRetry+pgSlack)
	}
	t.Logf("loss noticed %v after pg_terminate_backend", time.Since(terminated).Round(time.Millisecond))
	if err := lb.Err(); !errors.Is(err, ErrLost) {
		t.Fatalf("Err = %v, want ErrLost", err)
	}
	if err := lb.Release(); err != nil {
		t.Fatalf("Release after loss: %v", err)
	}
	if !errors.Is(lb.Err(), ErrLost) {
		t.Fatalf("Release after loss changed Err to %v", lb.Err())
	}

	// And the lock is free again: the next holder gets epoch 3.
	lc := acquire(t, a)
	defer release(t, lc)
	if lc.Epoch() != 3 {
		t.Fatalf("epoch %d, want 3", lc.Epoch())
	}
}

// TestPostgresEpochMoved: a lease whose epoch row was changed behind its
// back (another cluster misconfigured onto the same name, an operator) is
// lost, since its writes would be refused by fencing anyway.
func TestPostgresEpochMoved(t *testing.T) {
	srv := pgtest.Start(t)
	p := newTestPostgres(t, srv.DSN())
	l := acquire(t, p)
	defer l.Release()
	if _, err := srv.Conn().Exec(context.Background(), "UPDATE handover_lock SET epoch = epoch + 1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-time.After(2*pgRetry + pgSlack):
		t.Fatal("lease not lost after its epoch moved")
	}
	if err := l.Err(); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "epoch") {
		t.Fatalf("Err = %v", err)
	}
}

// TestPostgresWaitsOutDatabaseRestart: a slave asking for the lock while
// the database is down keeps retrying and becomes master once it is back;
// a master whose database goes down loses its lease.
func TestPostgresWaitsOutDatabaseRestart(t *testing.T) {
	srv := pgtest.Start(t)
	p := newTestPostgres(t, srv.DSN())
	l := acquire(t, p)
	srv.Stop()
	select {
	case <-l.Done():
	case <-time.After(2*pgRetry + pgSlack):
		t.Fatal("lease not lost after the database stopped")
	}
	if !errors.Is(l.Err(), ErrLost) {
		t.Fatalf("Err = %v", l.Err())
	}
	l.Release()

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	waiting := acquireAsync(ctx, p)
	select {
	case r := <-waiting:
		t.Fatalf("acquired with the database down: %v", r.err)
	case <-time.After(3 * pgRetry):
	}
	srv.Start()
	r := <-waiting
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer release(t, r.lease)
	if r.lease.Epoch() != 2 {
		t.Fatalf("epoch %d after the restart, want 2", r.lease.Epoch())
	}
}

// TestPostgresAcquireCancelled: a cancelled Acquire returns ctx.Err() and
// leaves nothing held.
func TestPostgresAcquireCancelled(t *testing.T) {
	srv := pgtest.Start(t)
	a, b := newTestPostgres(t, srv.DSN()), newTestPostgres(t, srv.DSN())
	la := acquire(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 2*pgRetry)
	defer cancel()
	if _, err := b.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire = %v, want DeadlineExceeded", err)
	}
	release(t, la)
	lb := acquire(t, b)
	defer release(t, lb)
	var n int
	if err := srv.Conn().QueryRow(context.Background(),
		"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d advisory locks held, want 1 (%v)", n, err)
	}
}

func TestPostgresOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    PostgresOptions
		wantErr string
	}{
		{"empty DSN", PostgresOptions{}, "DSN is empty"},
		{"negative retry", PostgresOptions{DSN: "postgres://u@h/db", Retry: -time.Second}, "negative Retry"},
		{"bad DSN", PostgresOptions{DSN: "postgres://u:pw@h:notaport/db"}, "cannot parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPostgres(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "pw@") {
				t.Fatalf("NewPostgres = %v, want an error containing %q and no password", err, tt.wantErr)
			}
		})
	}
	p, err := NewPostgres(PostgresOptions{DSN: "postgres://u:pw@db.example:6543/msgs?sslmode=require&application_name=x"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.String(), "postgres://u@db.example:6543/msgs"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	if p.Retry() != DefaultPostgresRetry || p.name != DefaultPostgresName {
		t.Fatalf("defaults: retry %v name %q", p.Retry(), p.name)
	}
}
