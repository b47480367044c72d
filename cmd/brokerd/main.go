// Command brokerd is a durable STOMP 1.0/1.1/1.2 broker with master/slave
// locking: several brokerd sharing one data directory elect one master by a
// file lock; the others wait as slaves with their STOMP port closed.
//
//	brokerd -listen 127.0.0.1:61613 -admin 127.0.0.1:8161 -data ./data
//
// Or they share one PostgreSQL database, which then holds both the lock and
// the messages (-data is not used):
//
//	brokerd -listen 127.0.0.1:61613 -admin 127.0.0.1:8161 \
//	        -store postgres://brokerd@db:5432/brokerd [-lock-retry 500ms]
//
// -lock postgres://… alone keeps the journal in -data but takes the lock in
// the database, for sites whose file system cannot be trusted with locks.
//
// Exit status: 0 after SIGTERM/SIGINT, 2 for bad flags or configuration, 3
// when the master lock was lost, 1 otherwise. After 3 the process has
// stopped writing; a supervisor may restart it at once: it comes back as a
// slave, or as master if no other broker took the lock. With PostgreSQL
// this is also how a master rides out a database restart: its lock session
// ends with the server, so it steps down rather than re-acquire in-process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"

	"handover/brokerd"
	"handover/brokerd/pgstore"
	"handover/brokerd/store"
	"handover/internal/buildinfo"
	"handover/internal/conf"
	"handover/internal/sdnotify"
	"handover/lockstore"
)

// fileConfig is brokerd's TOML config file: the broker options plus logging
// and the lock and store backends (which brokerd.Options takes as built
// objects, not as URLs).
type fileConfig struct {
	brokerd.Options
	LogLevel  string `toml:"log_level"`
	LogFormat string `toml:"log_format"`
	// StoreURL is where persistent messages live: "" for the journal in
	// Data/journal, or a postgres:// URL (then Data is not used, and the
	// lock defaults to the same database).
	StoreURL string `toml:"store"`
	// LockURL is the master lock: "" for the default (the store's database
	// if StoreURL is PostgreSQL, else the file lock in Data), or a
	// postgres:// URL. A PostgreSQL store needs its lock in the same
	// database: its writes are fenced by the lock's epoch row.
	LockURL string `toml:"lock"`
	// LockRetry is how often a slave asks a PostgreSQL lock for the lock,
	// and how often the master re-verifies it (so a master that lost its
	// database session stops within about twice this). Unused by the file
	// lock, whose slaves wait in the kernel.
	LockRetry conf.Duration `toml:"lock_retry"`
	// UsersTable checks logins against the store's handover_users table
	// instead of a users file: brokers on different hosts share one list.
	// It needs a postgres store.
	UsersTable bool `toml:"users_table"`
}

// storeOpenTimeout bounds connecting to PostgreSQL when a broker opens its
// standby reader of the store.
const storeOpenTimeout = 60 * time.Second

// defaultGCPercent is brokerd's garbage collector target unless GOGC says
// otherwise. A deep backlog is a large, long-lived heap of index entries;
// with Go's default (100) the heap may grow to twice that before a
// collection, so a million queued messages would cost twice their index in
// RSS. 50 trades some CPU during bursts for a heap at most half again its
// live size.
const defaultGCPercent = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if len(os.Args) > 1 && os.Args[1] == "ctl" {
		os.Exit(ctl(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("brokerd", flag.ContinueOnError)
	cfg := fileConfig{
		Options:   brokerd.NewOptions(),
		LogLevel:  "info",
		LogFormat: "text",
		LockRetry: conf.Duration(lockstore.DefaultPostgresRetry),
	}
	configPath := fs.String("config", "", "TOML config file; flags given on the command line override it")
	listen := fs.String("listen", cfg.Listen, "STOMP listen address (go-sockaddr templates allowed), opened only while master")
	admin := fs.String("admin", cfg.Admin, "admin HTTP address for /status, /readyz, /healthz, /metrics")
	data := fs.String("data", cfg.Data, "data directory shared by master and slaves (journal and lock); unused with a postgres -store")
	store := fs.String("store", "", "where persistent messages live: empty for the journal in -data, or postgres://USER@HOST:PORT/DB?...")
	lock := fs.String("lock", "", "master lock: empty for the store's database with a postgres -store, else the file lock in -data; or postgres://...")
	lockRetry := fs.Duration("lock-retry", cfg.LockRetry.D(), "how often slaves poll a postgres lock and the master re-verifies it")
	level := fs.String("log-level", cfg.LogLevel, "log level: debug, info, warn, error")
	format := fs.String("log-format", cfg.LogFormat, "log format: text or json")
	pprofOn := fs.Bool("pprof", false, "serve the Go runtime's profiles on the admin port under /debug/pprof/")
	version := fs.Bool("version", false, "print the version and exit")
	initStore := fs.Bool("init", false, "initialize the storage (-data, or -store's database) with a new cluster identity, then exit; refused if it has one")
	check := fs.Bool("check", false, "validate the flags and config file (addresses, limits, URLs) without starting, then exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Println("brokerd", brokerd.Version, buildinfo.Read())
		return 0
	}
	if *configPath != "" {
		if _, err := conf.LoadFile(*configPath, &cfg); err != nil {
			fmt.Fprintln(os.Stderr, "brokerd: config:", err)
			return 2
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "listen":
			cfg.Listen = *listen
		case "admin":
			cfg.Admin = *admin
		case "data":
			cfg.Data = *data
		case "store":
			cfg.StoreURL = *store
		case "lock":
			cfg.LockURL = *lock
		case "lock-retry":
			cfg.LockRetry = conf.Duration(*lockRetry)
		case "log-level":
			cfg.LogLevel = *level
		case "log-format":
			cfg.LogFormat = *format
		case "pprof":
			cfg.Pprof = *pprofOn
		}
	})
	logger, err := conf.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		return 2
	}
	for _, a := range []*string{&cfg.Listen, &cfg.TLSListen, &cfg.Admin} {
		if *a == "" {
			continue // no plain listener (tls_listen only), or no TLS one
		}
		if *a, err = conf.ResolveAddr(*a); err != nil {
			fmt.Fprintln(os.Stderr, "brokerd:", err)
			return 2
		}
	}
	opts := cfg.Options
	opts.Log = logger.WithField("component", "brokerd")
	if *initStore {
		return initialize(&cfg)
	}
	if err := checkAddrs(&cfg); err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		return 2
	}
	if err := backends(&cfg, &opts, logger); err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		return 2
	}
	if *check {
		if err := opts.Validate(); err != nil {
			fmt.Fprintln(os.Stderr, "brokerd:", err)
			return 2
		}
		fmt.Println("brokerd: config OK")
		return 0
	}
	bi := buildinfo.Read()
	logger.WithFields(logrus.Fields{
		"version": brokerd.Version, "build": bi.String(), "listen": cfg.Listen, "admin": cfg.Admin,
		"data": cfg.Data, "store": opts.StoreName, "config": *configPath,
		"max_memory": opts.MaxMemory, "lease_timeout": opts.LeaseTimeout.D().String(),
	}).Info("brokerd starting")
	if c, ok := opts.Users.(io.Closer); ok {
		defer c.Close()
	}
	srv, err := brokerd.New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// For systemd's Type=notify: up once the admin port is bound (a slave
	// is a running service too), stopping once a signal came.
	if err := sdnotify.Notify(sdnotify.Ready); err != nil {
		logger.WithError(err).Warn("telling systemd the service is ready")
	}
	go func() {
		<-ctx.Done()
		sdnotify.Notify(sdnotify.Stopping)
	}()
	if err := srv.Run(ctx); err != nil {
		opts.Log.WithError(err).Error("exiting")
		if errors.Is(err, brokerd.ErrLeaseLost) {
			return 3
		}
		return 1
	}
	return 0
}

// initialize gives the storage a new cluster identity: the database of a
// postgres store, or the data directory.
func initialize(cfg *fileConfig) int {
	id := brokerd.NewIdentity()
	if cfg.StoreURL != "" {
		if !isPostgresURL(cfg.StoreURL) {
			fmt.Fprintln(os.Stderr, "brokerd: store: want empty (the journal in the data directory) or a postgres:// URL")
			return 2
		}
		ctx, cancel := context.WithTimeout(context.Background(), storeOpenTimeout)
		defer cancel()
		if _, err := pgstore.InitIdentity(ctx, cfg.StoreURL, id.ID, id.Created); err != nil {
			fmt.Fprintln(os.Stderr, "brokerd:", err)
			return 1
		}
		desc, _ := lockstore.DescribeDSN(cfg.StoreURL)
		fmt.Printf("brokerd: initialized %s as cluster %s\n", desc, id.ID)
		return 0
	}
	id, err := brokerd.InitData(cfg.Data)
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		return 1
	}
	fmt.Printf("brokerd: initialized %s as cluster %s\n", cfg.Data, id.ID)
	return 0
}

// checkAddrs checks that the listen, tls_listen and admin addresses are
// host:port with a port that exists, and not the same. An empty listen
// (TLS only) or tls_listen is left to Options.Validate, which refuses
// both empty.
func checkAddrs(cfg *fileConfig) error {
	var errs []error
	for _, a := range []struct{ key, addr string }{{"listen", cfg.Listen}, {"tls_listen", cfg.TLSListen}, {"admin", cfg.Admin}} {
		if a.addr == "" && a.key != "admin" {
			continue
		}
		host, port, err := net.SplitHostPort(a.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q: %w", a.key, a.addr, err))
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			errs = append(errs, fmt.Errorf("%s: %q: the port must be a number from 0 to 65535", a.key, a.addr))
		}
		if host != "" && net.ParseIP(host) == nil {
			if _, err := net.LookupHost(host); err != nil {
				errs = append(errs, fmt.Errorf("%s: %q: %w", a.key, a.addr, err))
			}
		}
	}
	if cfg.Listen == cfg.Admin && !strings.HasSuffix(cfg.Listen, ":0") {
		errs = append(errs, fmt.Errorf("listen and admin are both %s", cfg.Listen))
	}
	return errors.Join(errs...)
}

// backends builds opts.Locker, opts.Store and opts.StoreName from the
// store, lock and lock_retry settings; the file lock and journal are
// brokerd's defaults and need nothing here.
func backends(cfg *fileConfig, opts *brokerd.Options, logger *logrus.Logger) error {
	if cfg.LockRetry <= 0 {
		return fmt.Errorf("lock_retry: must be positive, got %v", cfg.LockRetry)
	}
	pgStore := cfg.StoreURL != ""
	if pgStore && !isPostgresURL(cfg.StoreURL) {
		return errors.New("store: want empty (the journal in the data directory) or a postgres:// URL")
	}
	if cfg.UsersTable {
		if !pgStore {
			return errors.New("users_table: the users table is in the store's database: set store to a postgres:// URL, or use users_file")
		}
		if cfg.UsersFile != "" {
			return errors.New("users_table and users_file: choose one place for the users")
		}
		users, err := pgstore.NewUsersTable(cfg.StoreURL)
		if err != nil {
			return err
		}
		opts.Users = users
	}
	lockURL := cfg.LockURL
	if lockURL == "" && pgStore {
		lockURL = cfg.StoreURL
	}
	if lockURL == "" {
		return nil // file lock and journal in Data
	}
	if !isPostgresURL(lockURL) {
		return errors.New("lock: want empty (the default) or a postgres:// URL")
	}
	const lockName = lockstore.DefaultPostgresName
	locker, err := lockstore.NewPostgres(lockstore.PostgresOptions{
		DSN:          lockURL,
		Name:         lockName,
		Retry:        cfg.LockRetry.D(),
		LeaseTimeout: cfg.LeaseTimeout.D(),
		Log:          logger.WithField("component", "lockstore"),
	})
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	opts.Locker = locker
	if !pgStore {
		return nil
	}
	if err := sameDatabase(cfg.StoreURL, lockURL); err != nil {
		return err
	}
	name, err := lockstore.DescribeDSN(cfg.StoreURL)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	dsn := cfg.StoreURL
	opts.StoreName = name
	opts.Identity = func() (brokerd.Identity, error) {
		ctx, cancel := context.WithTimeout(context.Background(), storeOpenTimeout)
		defer cancel()
		id, created, err := pgstore.ReadIdentity(ctx, dsn)
		if err != nil {
			return brokerd.Identity{}, err
		}
		return brokerd.Identity{ID: id, Created: created}, nil
	}
	opts.Store = func(log *logrus.Entry) (store.Standby, error) {
		ctx, cancel := context.WithTimeout(context.Background(), storeOpenTimeout)
		defer cancel()
		sb, err := pgstore.Follow(ctx, pgstore.Options{
			DSN:      dsn,
			LockName: lockName,
			Log:      log.WithField("component", "pgstore"),
		})
		if err != nil {
			return nil, err // not sb: a nil *Standby in a Standby is not nil
		}
		return sb, nil
	}
	return nil
}

func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// sameDatabase checks that store and lock name one database: the store's
// writes are fenced by reading the lock's epoch row in the same
// transaction, which only works within one database.
func sameDatabase(store, lock string) error {
	s, err := pgconn.ParseConfig(store)
	if err != nil {
		_, err = lockstore.DescribeDSN(store) // an error that never quotes the password
		return fmt.Errorf("store: %w", err)
	}
	l, err := pgconn.ParseConfig(lock)
	if err != nil {
		_, err = lockstore.DescribeDSN(lock)
		return fmt.Errorf("lock: %w", err)
	}
	if s.Host != l.Host || s.Port != l.Port || s.Database != l.Database {
		sd, _ := lockstore.DescribeDSN(store)
		ld, _ := lockstore.DescribeDSN(lock)
		return fmt.Errorf("lock %s and store %s must be the same database: the store fences its writes with the lock's epoch row", ld, sd)
	}
	return nil
}
