package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"handover/lockstore"
)

// identityTable holds the cluster identity of a database (see brokerd's
// cluster.go): one row, written once by `brokerd -store … -init`.
const identityTable = "handover_cluster"

// ErrNoIdentity is wrapped by ReadIdentity's error for a database (or
// schema) that was never initialized.
var ErrNoIdentity = errors.New("not initialized")

// ReadIdentity returns the cluster identity stored in dsn's schema.
func ReadIdentity(ctx context.Context, dsn string) (id string, created time.Time, err error) {
	conn, desc, err := connectOnce(ctx, dsn)
	if err != nil {
		return "", time.Time{}, err
	}
	defer conn.Close(context.Background())
	var exists bool
	var schema *string
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL, current_schema()", identityTable).Scan(&exists, &schema); err != nil {
		return "", time.Time{}, fmt.Errorf("pgstore: %s: %w", desc, err)
	}
	where := desc
	if schema != nil {
		where += " (schema " + *schema + ")"
	}
	if exists {
		err = conn.QueryRow(ctx, "SELECT id, created FROM "+identityTable+" LIMIT 1").Scan(&id, &created)
	}
	if !exists || errors.Is(err, pgx.ErrNoRows) {
		return "", time.Time{}, fmt.Errorf("the database %s is %w (no %s table). If it is the cluster's database, check the DSN and its search_path; to start a new cluster there, run `brokerd -store … -init` once", where, ErrNoIdentity, identityTable)
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("pgstore: reading the cluster identity in %s: %w", where, err)
	}
	return id, created, nil
}

// InitIdentity stores a cluster identity in dsn's schema; it refuses a
// schema that already has one, and returns that one's id then.
func InitIdentity(ctx context.Context, dsn, id string, created time.Time) (existing string, err error) {
	conn, desc, err := connectOnce(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+identityTable+` (
			id      text PRIMARY KEY,
			created timestamptz NOT NULL
		)`); err != nil {
			return err
		}
		// One initializer at a time; the second finds the first's row.
		if _, err := tx.Exec(ctx, "LOCK TABLE "+identityTable+" IN EXCLUSIVE MODE"); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, "SELECT id FROM "+identityTable+" LIMIT 1").Scan(&existing)
		if err == nil {
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO "+identityTable+" (id, created) VALUES ($1, $2)", id, created)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("pgstore: initializing %s: %w", desc, err)
	}
	if existing != "" {
		return existing, fmt.Errorf("the database %s is already initialized (cluster %s)", desc, existing)
	}
	return "", nil
}

// connectOnce opens a short-lived connection for the identity.
func connectOnce(ctx context.Context, dsn string) (*pgx.Conn, string, error) {
	cfg, err := lockstore.PostgresConnConfig(dsn, "init")
	if err != nil {
		return nil, "", err
	}
	desc, _ := lockstore.DescribeDSN(dsn)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, "", fmt.Errorf("pgstore: connecting to %s: %w", desc, err)
	}
	return conn, desc, nil
}
