package pgstore

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"handover/brokerd/store"
	"handover/brokerd/store/storetest"
	"handover/internal/pgtest"
	"handover/lockstore"
)

// TestConformance runs the store contract's suite against pgstore. The
// cases share one server; each gets a schema of its own (search_path in
// the DSN), so that each starts with an empty store and its own lock row.
func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	var n atomic.Int32
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		return newSchemaHarness(t, srv.Conn(), srv, fmt.Sprintf("conformance_%d", n.Add(1)))
	})
}

// newSchemaHarness makes schema in srv's database, with the lock table
// lockstore.Postgres would create, and returns a harness whose DSN uses it.
func newSchemaHarness(t *testing.T, admin *pgx.Conn, srv *pgtest.Server, schema string) *harness {
	t.Helper()
	if _, err := admin.Exec(context.Background(), "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(context.Background(), `CREATE TABLE `+schema+`.`+lockstore.PostgresLockTable+` (
		name text PRIMARY KEY, epoch bigint NOT NULL CHECK (epoch > 0), holder text NOT NULL, acquired_at timestamptz NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return &harness{admin: admin, schema: schema, dsn: srv.DSN() + "&search_path=" + schema}
}

// harness is pgstore's side of the suite: a schema of the shared server.
type harness struct {
	admin  *pgx.Conn // used from the case's goroutine only
	schema string
	dsn    string
}

func (h *harness) Follow(t *testing.T) store.Standby {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sb, err := Follow(ctx, Options{DSN: h.dsn, Log: pgtest.Logger(t)})
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	return sb
}

// Promotion moves the lock's epoch on, as lockstore.Postgres does when a
// broker acquires the lock (without the advisory lock, which the store
// does not look at).
func (h *harness) Promotion(t *testing.T) store.Promotion {
	return store.Promotion{Epoch: h.bump(t)}
}

func (h *harness) bump(t *testing.T) uint64 {
	t.Helper()
	var epoch int64
	err := h.admin.QueryRow(context.Background(), `INSERT INTO `+h.schema+`.`+lockstore.PostgresLockTable+` AS l (name, epoch, holder, acquired_at)
		VALUES ($1, 1, 'storetest', now())
		ON CONFLICT (name) DO UPDATE SET epoch = l.epoch + 1, acquired_at = now()
		RETURNING epoch`, lockstore.DefaultPostgresName).Scan(&epoch)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(epoch)
}

// Crash ends s's writing as a lost process's does, for the database: the
// epoch moves on, which waits for a commit in flight (it is then durable,
// as if the kill came just after) and refuses every later one, so that s
// can write nothing more, ever. Its goroutine and connections live on
// until the case ends; a dead process's sessions also linger until the
// server notices.
func (h *harness) Crash(t *testing.T, s store.Store) {
	h.bump(t)
	t.Cleanup(func() { s.Close() })
}
