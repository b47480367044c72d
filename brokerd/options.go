package brokerd

import (
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"handover/brokerd/auth"
	"handover/frame"
	"handover/internal/adminmux"
	"handover/internal/conf"
	"handover/lockstore"
)

// Options configure a Server. NewOptions returns the defaults; the zero value
// is not valid on its own. The toml tags are the keys of brokerd's config
// file; command-line flags override them.
type Options struct {
	// Listen is the STOMP address, opened only while this broker is master
	// (a slave's port stays closed, as ActiveMQ's does, so that clients and
	// TCP health checks can tell master from slave).
	Listen string `toml:"listen"`
	// Admin is the HTTP address of /status, /readyz, /healthz and /metrics.
	// It answers in every role, so a slave can be monitored.
	Admin string `toml:"admin"`
	// Data is the data directory: the journal lives in Data/journal and the
	// file lock beside it (Data/lock, Data/epoch).
	Data string `toml:"data"`

	// MaxBody, MaxHeaders and MaxHeaderLine bound each client frame.
	MaxBody       int `toml:"max_body"`
	MaxHeaders    int `toml:"max_headers"`
	MaxHeaderLine int `toml:"max_header_line"`
	// MaxConnections caps concurrent client connections; 0 means no cap.
	// A connection over it gets an ERROR frame and is closed at once, so
	// that its client knows why instead of hanging in the listen queue.
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerSource caps the concurrent connections from one IP
	// address; 0 means no cap. A sidecar funnels a whole host's clients
	// through one address, so it is a fraction of MaxConnections, not one.
	MaxConnectionsPerSource int `toml:"max_connections_per_source"`
	// MaxWatchers caps the open watch streams (GET /watch on the admin
	// port, one per sidecar); 0 means no cap. A watch over it is answered
	// 503, and its sidecar polls instead and asks again 30-60 s later. A
	// watcher gone without a word holds its place until a heartbeat
	// finds it gone (up to two, 6 s), so leave room over the fleet's
	// size. The admin port's watches need no token (as /readyz does
	// not), so the cap is what bounds the sockets and memory a stranger
	// who can reach that port can hold (about 2 KB a watcher).
	MaxWatchers int `toml:"max_watchers"`
	// MaxWatchersPerSource caps the open watch streams from one IP
	// address (0: no cap), so that one client cannot take every place
	// under MaxWatchers. A sidecar opens one per backend of each of its
	// services; many sidecars behind one NAT address share it.
	MaxWatchersPerSource int `toml:"max_watchers_per_source"`
	// InactiveDestinationTimeout is how long a destination may stay empty
	// and without subscribers before it is removed (its counters with it).
	InactiveDestinationTimeout conf.Duration `toml:"inactive_destination_timeout"`
	// MaxSubscriptions caps the subscriptions of one connection.
	MaxSubscriptions int `toml:"max_subscriptions"`
	// MaxTransactionBytes caps the bytes of frames one open transaction
	// holds until COMMIT; past it the client gets an ERROR (waiting cannot
	// help a transaction that only grows).
	MaxTransactionBytes int64 `toml:"max_transaction_bytes"`
	// MaxPendingBytes is how many bytes of frames may wait to be written to
	// one client before it is dropped as a slow consumer.
	MaxPendingBytes int64 `toml:"max_pending_bytes"`

	// HeartBeat is what the broker offers in CONNECTED: it can send every
	// HeartBeat and wants to hear from the client every HeartBeat. The
	// interval used is negotiated with the client's own offer (STOMP 1.2
	// "Heart-beating"); zero disables heart-beats from the broker side.
	HeartBeat conf.Duration `toml:"heart_beat"`
	// ConnectTimeout drops a connection that has not sent its whole CONNECT
	// frame this long after it was accepted, however it trickles bytes.
	ConnectTimeout conf.Duration `toml:"connect_timeout"`
	// Prefetch is the default number of unacknowledged messages a queue
	// subscription may hold; a SUBSCRIBE may lower or raise it with the
	// header activemq.prefetchSize, as ActiveMQ clients do.
	Prefetch int `toml:"prefetch"`
	// MaxPendingFrames is how many frames may wait to be written to one
	// client before it is dropped as a slow consumer (topics can't push back).
	MaxPendingFrames int `toml:"max_pending_frames"`
	// ShutdownGrace bounds how long SIGTERM waits for connections to finish
	// in-flight work before they are cut.
	ShutdownGrace conf.Duration `toml:"shutdown_grace"`
	// Pprof serves the Go runtime's profiles on the admin port under
	// /debug/pprof/ (off by default).
	Pprof bool `toml:"pprof"`
	// MaxDisk caps the journal's bytes on disk: past it a persistent SEND
	// gets an ERROR, while acknowledgements and compaction go on. Zero
	// means no cap but the reserve.
	MaxDisk int64 `toml:"max_disk"`
	// DiskReserve is the free space of the journal's file system that
	// persistent SENDs may not use, kept for acknowledgements and
	// compaction, so that consumers can drain a full disk. Zero means two
	// segments but at most an eighth of the file system; negative, none.
	DiskReserve int64 `toml:"disk_reserve"`
	// SegmentSize is the journal segment size in bytes.
	SegmentSize int64 `toml:"segment_size"`
	// MaxMemory is the memory budget for message bodies, in bytes (see
	// memory.go): persistent bodies beyond an eighth of it stay in the
	// store until delivered, and producers of non-persistent and topic
	// messages wait while it is spent (flow control).
	MaxMemory int64 `toml:"max_memory"`
	// MaxDestinationMemory is one queue's share of MaxMemory: producers of
	// non-persistent messages to a queue that holds this many bytes of
	// bodies wait as for the whole budget. Zero means a quarter of
	// MaxMemory.
	MaxDestinationMemory int64 `toml:"max_destination_memory"`
	// FlowControlTimeout is how long a producer waits for memory before
	// its SEND is refused with an ERROR (the connection then closes; the
	// message had no receipt, so nothing acknowledged is lost).
	FlowControlTimeout conf.Duration `toml:"flow_control_timeout"`
	// StandbyInterval is how often a slave reads what the master appended
	// to the store, keeping its index current so that a takeover reads
	// only the tail.
	StandbyInterval conf.Duration `toml:"standby_interval"`

	// LeaseRenew is how often the master renews its lease (the file lock's
	// heartbeat; PostgreSQL's lease renews every lock_retry instead).
	LeaseRenew conf.Duration `toml:"lease_renew"`
	// LeaseTimeout is how long a master's lease lasts without renewal:
	// a slave that sees none for this long takes over from a master that
	// is alive but frozen (and so never frees its lock), and a master
	// that could not renew for three quarters of it stops writing and
	// exits 3. Choose it well above the worst pause of the shared file
	// system or database (an NFS server failover, a checkpoint).
	LeaseTimeout conf.Duration `toml:"lease_timeout"`

	// AdminTokenFile, if set, holds the bearer token every admin request
	// but /healthz and /readyz must carry. An admin port bound to anything
	// but loopback needs one.
	AdminTokenFile string `toml:"admin_token_file"`

	// TLSListen, if set, is a second STOMP address that speaks TLS, with
	// the certificate TLSCert and key TLSKey (read again when they change).
	// With TLSClientCA, clients must present a certificate it signed, whose
	// subject's common name is their user. Set Listen to "" to serve TLS
	// only.
	TLSListen   string `toml:"tls_listen"`
	TLSCert     string `toml:"tls_cert"`
	TLSKey      string `toml:"tls_key"`
	TLSClientCA string `toml:"tls_client_ca"`

	// UsersFile, if set, is the users file (see package auth): clients must
	// log in (CONNECT login and passcode), unless AllowAnonymous lets those
	// without a login in as "anonymous". Without it, anyone may connect.
	// The file is read again when it changes (looked at once a second at
	// most): the change applies to the next logins, and a version that
	// cannot be parsed is logged and leaves the last good one in force.
	UsersFile      string `toml:"users_file"`
	AllowAnonymous bool   `toml:"allow_anonymous"`
	// Users overrides where logins are checked; nil means UsersFile.
	// Not settable from the config file (cmd/brokerd builds it for
	// users_table).
	Users UsersSource `toml:"-"`
	// Authorization lists who may read (SUBSCRIBE), write (SEND) or
	// administer which destinations; with no rules, everyone may do all.
	Authorization auth.Rules `toml:"authorization"`

	// ClusterID, if set, is the identity the storage must carry (see
	// cluster.go); a broker pointed at another cluster's share refuses to
	// start.
	ClusterID string `toml:"cluster_id"`
	// Identity reads the storage's identity; nil means the data
	// directory's (ReadData). Not settable from the config file
	// (cmd/brokerd sets it for -store postgres).
	Identity func() (Identity, error) `toml:"-"`

	// Locker overrides the master lock; nil means the file lock in Data.
	// Not settable from the config file (cmd/brokerd builds it from -lock).
	Locker lockstore.Locker `toml:"-"`
	// Store overrides where persistent messages live; nil means the file
	// journal in Data/journal. Not settable from the config file
	// (cmd/brokerd builds it from -store).
	Store StoreOpener `toml:"-"`
	// StoreName describes Store for /status, without secrets; "" means
	// "journal:" + Data.
	StoreName string `toml:"-"`
	// Log receives the server's events; nil discards them.
	Log *logrus.Entry `toml:"-"`
}

// NewOptions returns the defaults documented on each field.
func NewOptions() Options {
	return Options{
		Listen:           "127.0.0.1:61613",
		Admin:            "127.0.0.1:8161",
		Data:             "./data",
		MaxBody:          frame.DefaultLimits.MaxBody,
		MaxHeaders:       frame.DefaultLimits.MaxHeaders,
		MaxHeaderLine:    frame.DefaultLimits.MaxLine,
		HeartBeat:        conf.Duration(10 * time.Second),
		ConnectTimeout:   conf.Duration(10 * time.Second),
		Prefetch:         1000,
		MaxPendingFrames: 100000,
		MaxPendingBytes:  16 << 20,

		MaxConnections:          10000,
		MaxConnectionsPerSource: 2000,
		MaxWatchers:             20000,
		MaxWatchersPerSource:    2000,
		MaxSubscriptions:        1000,

		InactiveDestinationTimeout: conf.Duration(time.Minute),
		MaxTransactionBytes:        16 << 20,

		ShutdownGrace: conf.Duration(5 * time.Second),
		SegmentSize:   64 << 20,
		MaxMemory:     256 << 20,

		FlowControlTimeout: conf.Duration(30 * time.Second),
		StandbyInterval:    conf.Duration(100 * time.Millisecond),
		LeaseRenew:         conf.Duration(lockstore.DefaultCheckInterval),
		LeaseTimeout:       conf.Duration(lockstore.DefaultLeaseTimeout),
	}
}

// Validate reports every problem with o at once.
func (o *Options) Validate() error {
	var errs []error
	if o.Listen == "" && o.TLSListen == "" {
		errs = append(errs, errors.New("listen: must not be empty (unless tls_listen is set)"))
	}
	if o.Admin != "" && !adminmux.IsLoopback(o.Admin) && o.AdminTokenFile == "" {
		errs = append(errs, fmt.Errorf("admin: %s is not a loopback address: set admin_token_file (requests then need Authorization: Bearer TOKEN), or bind 127.0.0.1", o.Admin))
	}
	if o.TLSListen != "" && (o.TLSCert == "" || o.TLSKey == "") {
		errs = append(errs, errors.New("tls_listen: needs tls_cert and tls_key"))
	}
	if o.Admin == "" {
		errs = append(errs, errors.New("admin: must not be empty"))
	}
	if o.Data == "" {
		errs = append(errs, errors.New("data: must not be empty"))
	}
	positive := []struct {
		name string
		v    int64
	}{
		{"max_body", int64(o.MaxBody)},
		{"max_headers", int64(o.MaxHeaders)},
		{"max_header_line", int64(o.MaxHeaderLine)},
		{"prefetch", int64(o.Prefetch)},
		{"max_pending_frames", int64(o.MaxPendingFrames)},
		{"max_pending_bytes", o.MaxPendingBytes},
		{"max_subscriptions", int64(o.MaxSubscriptions)},
		{"inactive_destination_timeout", int64(o.InactiveDestinationTimeout)},
		{"max_transaction_bytes", o.MaxTransactionBytes},
		{"segment_size", o.SegmentSize},
		{"connect_timeout", int64(o.ConnectTimeout)},
		{"max_memory", o.MaxMemory},
		{"flow_control_timeout", int64(o.FlowControlTimeout)},
		{"standby_interval", int64(o.StandbyInterval)},
		{"lease_renew", int64(o.LeaseRenew)},
		{"lease_timeout", int64(o.LeaseTimeout)},
	}
	for _, p := range positive {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be positive, got %d", p.name, p.v))
		}
	}
	if o.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("max_connections: must be 0 (no cap) or positive, got %d", o.MaxConnections))
	}
	if o.LeaseRenew > 0 && o.LeaseTimeout < 2*o.LeaseRenew {
		errs = append(errs, fmt.Errorf("lease_timeout (%v) must be at least twice lease_renew (%v)", o.LeaseTimeout.D(), o.LeaseRenew.D()))
	}
	if err := o.Authorization.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.MaxDestinationMemory < 0 {
		errs = append(errs, fmt.Errorf("max_destination_memory: must be 0 (a quarter of max_memory) or positive, got %d", o.MaxDestinationMemory))
	}
	if o.MaxDisk < 0 {
		errs = append(errs, fmt.Errorf("max_disk: must be 0 (no cap) or positive, got %d", o.MaxDisk))
	}
	if o.MaxWatchers < 0 {
		errs = append(errs, fmt.Errorf("max_watchers: must be 0 (no cap) or positive, got %d", o.MaxWatchers))
	}
	if o.MaxWatchersPerSource < 0 {
		errs = append(errs, fmt.Errorf("max_watchers_per_source: must be 0 (no cap) or positive, got %d", o.MaxWatchersPerSource))
	}
	if o.MaxConnectionsPerSource < 0 {
		errs = append(errs, fmt.Errorf("max_connections_per_source: must be 0 (no cap) or positive, got %d", o.MaxConnectionsPerSource))
	}
	if o.HeartBeat < 0 || o.ShutdownGrace < 0 {
		errs = append(errs, errors.New("heart_beat and shutdown_grace must not be negative"))
	}
	return errors.Join(errs...)
}
