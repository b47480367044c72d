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
	messagesTable  = "handover_messages"
	acksTable      = "handover_acks"
	ackTrimTable   = "handover_ack_trim"
	producersTable = "handover_producers"
	versionTable   = "handover_schema_version"
	usersTable     = "handover_users"
	usersVersion   = "handover_users_version"
	fenceFunc      = "handover_fence"
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
	{2, "followable changes: seq index, ack log, producer windows", `
-- A standby reads new Puts as "seq > the last it saw, in seq order".
CREATE INDEX handover_messages_seq ON ` + messagesTable + ` (seq);

-- An ACK deletes its message row, which a standby cannot see; so the same
-- transaction appends the id here. Only ids whose row it deleted are
-- logged. The master trims old rows (see ` + ackTrimTable + `).
CREATE TABLE ` + acksTable + ` (
	seq      bigserial PRIMARY KEY,          -- log order
	id       text NOT NULL,                  -- message id, or producer id if producer
	producer boolean NOT NULL DEFAULT false, -- a producer window was dropped
	at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ` + acksTable + ` IS
	'brokerd: recently deleted messages and producer windows, for standbys to follow';

-- One row: every ` + acksTable + ` row with seq <= below has been deleted.
-- A standby whose last ack seq is under it has missed some and reloads.
CREATE TABLE ` + ackTrimTable + ` (
	one   boolean PRIMARY KEY DEFAULT true CHECK (one),
	below bigint NOT NULL
);
INSERT INTO ` + ackTrimTable + ` (below) VALUES (0);

-- Producer de-duplication windows (store.KindProducer): the highest
-- sequence accepted from each producer. change orders updates for
-- standbys as seq does messages.
CREATE TABLE ` + producersTable + ` (
	id     text PRIMARY KEY,
	seq    numeric(20,0) NOT NULL CHECK (seq BETWEEN 0 AND 18446744073709551615),
	change bigserial NOT NULL,
	epoch  bigint NOT NULL
);
CREATE INDEX handover_producers_change ON ` + producersTable + ` (change);

-- brokerd used to store a producer window as a Put with id
-- "producer:PRODUCER" in a reserved queue ("\x00dedup"; PostgreSQL cannot
-- store that name, but any such row not in a /queue is taken for one)
-- whose data was the decimal sequence. Message ids never start with
-- "producer:" and destinations start with "/".
INSERT INTO ` + producersTable + ` (id, seq, epoch)
	SELECT DISTINCT ON (substr(id, 10)) substr(id, 10), encode(data, 'escape')::numeric, epoch
	FROM ` + messagesTable + `
	WHERE starts_with(id, 'producer:') AND NOT starts_with(queue, '/')
	  AND length(id) > 9 AND encode(data, 'escape') ~ '^[0-9]{1,20}$'
	  AND encode(data, 'escape')::numeric <= 18446744073709551615
	ORDER BY substr(id, 10), seq DESC;
DELETE FROM ` + messagesTable + ` m
	WHERE starts_with(m.id, 'producer:') AND EXISTS (SELECT 1 FROM ` + producersTable + ` p WHERE p.id = substr(m.id, 10))
	  AND NOT starts_with(m.queue, '/');

-- FOR NO KEY UPDATE instead of FOR SHARE: it still makes the epoch
-- increment wait, and it also makes write transactions exclude each other,
-- so that sequence numbers (taken after the fence) are assigned in commit
-- order even if a write the master gave up on (timed out, connection
-- dropped) is still running in its old backend while the master writes
-- from a new connection. Standbys rely on that order (see standby.go).
CREATE OR REPLACE FUNCTION ` + fenceFunc + `(lock_name text, want bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	cur bigint;
BEGIN
	SELECT epoch INTO cur FROM ` + lockstore.PostgresLockTable + ` WHERE name = lock_name FOR NO KEY UPDATE;
	IF cur IS DISTINCT FROM want THEN
		RAISE EXCEPTION 'fenced: lock % is at epoch %, this writer holds epoch %',
			lock_name, coalesce(cur::text, 'none'), want
			USING ERRCODE = '` + fencedCode + `',
			      HINT = 'another broker became master; this one must stop writing';
	END IF;
END
$$;
`},
	{3, "users table", `
-- Logins, when brokerd's users_table is set: as a users file's lines, so
-- that brokers on different hosts share one list. Operators edit it with
-- SQL; every broker reads it again within a second of a change.
CREATE TABLE ` + usersTable + ` (
	login  text PRIMARY KEY CHECK (login <> ''),
	hash   text NOT NULL CHECK (hash ~ '^\$2[aby]\$'),  -- bcrypt, as htpasswd -nbB makes
	groups text NOT NULL DEFAULT ''                     -- comma-separated
);
COMMENT ON TABLE ` + usersTable + ` IS
	'brokerd: logins (users_table = true); hash is bcrypt, groups comma-separated';

-- Counts the changes to the users, so that a master looks at one row once a
-- second rather than reading every user.
CREATE TABLE ` + usersVersion + ` (
	one     boolean PRIMARY KEY DEFAULT true CHECK (one),
	version bigint NOT NULL
);
INSERT INTO ` + usersVersion + ` (version) VALUES (0);
-- SET search_path FROM CURRENT: the function finds this schema's counter
-- whatever the search_path of whoever edits the users (an operator's psql
-- naming the table by schema, say), when clusters share a database.
CREATE FUNCTION handover_users_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
	UPDATE ` + usersVersion + ` SET version = version + 1;
	RETURN NULL;
END
$$;
CREATE TRIGGER handover_users_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ` + usersTable + `
	FOR EACH STATEMENT EXECUTE FUNCTION handover_users_changed();
`},
}

// latestVersion is the schema version this brokerd writes and follows.
var latestVersion = len(migrations)

// migrate brings the schema up to the latest version in one transaction,
// then checks the fence in it, so that a deposed master migrates nothing.
// A transaction-level advisory lock serializes brokers migrating at once
// (concurrent CREATE TABLE IF NOT EXISTS can fail on catalog races). It
// returns the schema version and how many steps it applied.
func migrate(ctx context.Context, conn *pgx.Conn, lockName string, epoch uint64, log *logrus.Entry) (version, applied int, err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("pgstore: migrating: %w", err)
	}
	defer tx.Rollback(context.Background())
	var schema string
	if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return 0, 0, fmt.Errorf("pgstore: migrating: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockstore.AdvisoryKey(schema, "pgstore schema")); err != nil {
		return 0, 0, fmt.Errorf("pgstore: migrating: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+versionTable+` (
		version     int PRIMARY KEY,
		description text NOT NULL,
		applied_at  timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return 0, 0, fmt.Errorf("pgstore: creating %s: %w", versionTable, err)
	}
	var cur int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+versionTable).Scan(&cur); err != nil {
		return 0, 0, fmt.Errorf("pgstore: reading the schema version: %w", err)
	}
	if cur > latestVersion {
		return 0, 0, tooNew(schema, cur)
	}
	for _, m := range migrations[cur:] {
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return 0, 0, fmt.Errorf("pgstore: schema migration %d (%s): %w", m.version, m.description, err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+versionTable+" (version, description) VALUES ($1, $2)", m.version, m.description); err != nil {
			return 0, 0, fmt.Errorf("pgstore: recording schema migration %d: %w", m.version, err)
		}
		log.WithFields(logrus.Fields{"version": m.version, "description": m.description, "schema": schema}).Info("pgstore: schema migrated")
	}
	if _, err := tx.Exec(ctx, "SELECT "+fenceFunc+"($1, $2)", lockName, int64(epoch)); err != nil {
		if isFenced(err) {
			return 0, 0, fmt.Errorf("%w: %v", ErrFenced, err)
		}
		return 0, 0, fmt.Errorf("pgstore: checking the epoch: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, 0, fmt.Errorf("pgstore: migrating: %w", err)
	}
	return latestVersion, latestVersion - cur, nil
}

// schemaVersion reads the schema version without writing or locking
// anything, for a standby: 0 when the schema has not been created. It also
// returns the schema's name, for errors.
func schemaVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (version int, schema string, err error) {
	var exists bool
	var cur *string
	if err := q.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL, current_schema()", versionTable).Scan(&exists, &cur); err != nil {
		return 0, "", fmt.Errorf("pgstore: reading the schema version: %w", err)
	}
	if cur != nil {
		schema = *cur
	}
	if !exists {
		return 0, schema, nil
	}
	if err := q.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+versionTable).Scan(&version); err != nil {
		return 0, schema, fmt.Errorf("pgstore: reading the schema version: %w", err)
	}
	return version, schema, nil
}

// tooNew is the error for a schema migrated by a newer brokerd.
func tooNew(schema string, cur int) error {
	return fmt.Errorf("%w: %s in schema %s is at version %d, this brokerd knows up to %d; upgrade brokerd",
		ErrSchemaTooNew, versionTable, schema, cur, latestVersion)
}

func isFenced(err error) bool {
	var pe interface{ SQLState() string }
	return errors.As(err, &pe) && pe.SQLState() == fencedCode
}
