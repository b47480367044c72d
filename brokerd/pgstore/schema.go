package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/sirupsen/logrus"

	"handover/lockstore"
)

// Table and function names. They are unqualified, so the DSN's search_path
// picks the schema: clusters sharing a database use a schema each.
const (
	messagesTable = "handover_messages"
	versionTable  = "handover_schema_version"
	fenceFunc     = "handover_fence"
)

// migration is one step of the schema. Steps are applied in order, each
// in the transaction that records its version, and are never edited once
// released: a change is a new step appended to migrations.
type migration struct {
	version     int
	description string
	sql         string
}

// migrations is the schema, oldest step first; step i has version i+1.
var migrations = []migration{
	{1, "messages table and fence function", `
CREATE TABLE ` + messagesTable + ` (
	id    text PRIMARY KEY,       -- the message id, unique forever
	seq   bigserial NOT NULL,     -- append order, for replay
	queue text NOT NULL,          -- the destination, /queue/NAME
	data  bytea NOT NULL,         -- the MESSAGE frame as STOMP 1.2
	epoch bigint NOT NULL         -- fencing epoch of the master that stored it
);
COMMENT ON TABLE ` + messagesTable + ` IS
	'brokerd: unacknowledged persistent messages; an ACK deletes the row';

-- Called first in every write transaction of a master holding epoch want.
-- FOR SHARE makes a new master''s epoch increment (an UPDATE of the row)
-- wait until this transaction has ended, and makes this transaction fail
-- if the increment came first: a deposed master can commit nothing after
-- its successor took over.
CREATE FUNCTION ` + fenceFunc + `(lock_name text, want bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	cur bigint;
BEGIN
	SELECT epoch INTO cur FROM ` + lockstore.PostgresLockTable + ` WHERE name = lock_name FOR SHARE;
	IF cur IS DISTINCT FROM want THEN
		RAISE EXCEPTION 'fenced: lock % is at epoch %, this writer holds epoch %',
			lock_name, coalesce(cur::text, 'none'), want
			USING ERRCODE = '` + fencedCode + `',
			      HINT = 'another broker became master; this one must stop writing';
	END IF;
END
$$;
`},
}

// migrate brings the schema up to the latest version in one transaction,
// then checks the fence in it, so that a deposed master migrates nothing.
// A transaction-level advisory lock serializes brokers migrating at once
// (concurrent CREATE TABLE IF NOT EXISTS can fail on catalog races). It
// returns the schema version.
func migrate(ctx context.Context, conn *pgx.Conn, lockName string, epoch uint64, log *logrus.Entry) (int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("pgstore: migrating: %w", err)
	}
	defer tx.Rollback(context.Background())
	var schema string
	if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return 0, fmt.Errorf("pgstore: migrating: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockstore.AdvisoryKey(schema, "pgstore schema")); err != nil {
		return 0, fmt.Errorf("pgstore: migrating: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+versionTable+` (
		version     int PRIMARY KEY,
		description text NOT NULL,
		applied_at  timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return 0, fmt.Errorf("pgstore: creating %s: %w", versionTable, err)
	}
	var cur int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+versionTable).Scan(&cur); err != nil {
		return 0, fmt.Errorf("pgstore: reading the schema version: %w", err)
	}
	latest := len(migrations)
	if cur > latest {
		return 0, fmt.Errorf("%w: %s in schema %s is at version %d, this brokerd knows up to %d; upgrade brokerd",
			ErrSchemaTooNew, versionTable, schema, cur, latest)
	}
	for _, m := range migrations[cur:] {
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return 0, fmt.Errorf("pgstore: schema migration %d (%s): %w", m.version, m.description, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+versionTable+" (version, description) VALUES ($1, $2)", m.version, m.description); err != nil {
			return 0, fmt.Errorf("pgstore: recording schema migration %d: %w", m.version, err)
		}
		log.WithFields(logrus.Fields{"version": m.version, "description": m.description, "schema": schema}).Info("pgstore: schema migrated")
	}
	if _, err := tx.Exec(ctx, "SELECT "+fenceFunc+"($1, $2)", lockName, int64(epoch)); err != nil {
		if isFenced(err) {
			return 0, fmt.Errorf("%w: %v", ErrFenced, err)
		}
		return 0, fmt.Errorf("pgstore: checking the epoch: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("pgstore: migrating: %w", err)
	}
	return latest, nil
}

func isFenced(err error) bool {
	var pe interface{ SQLState() string }
	return errors.As(err, &pe) && pe.SQLState() == fencedCode
}
