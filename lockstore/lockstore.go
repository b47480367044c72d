// Package lockstore provides the master lock for master/slave brokers.
//
// Several brokerd processes share one data directory. Whichever process holds
// the lock is the master; the others wait in Acquire and take over when the
// master dies or releases. The API is designed around LOSING the lock rather
// than merely holding it (like etcd's concurrency.Session): a Lease's Done
// channel closes as soon as the holder can no longer prove it is master, and
// the holder must then stop serving immediately.
//
// Every acquisition also yields a fencing epoch that is strictly greater than
// any earlier acquisition's. A lock alone cannot prevent a paused or
// partitioned ex-master from issuing a few more writes after it lost the lock
// (a lock only tells you who should be master, not who still thinks it is);
// stamping writes with the epoch lets storage and peers reject the stale
// master's writes.
package lockstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Locker acquires the master lock. Implementations: File (an OFD lock
// beside the journal) and Postgres (an advisory lock held by one database
// session, with the epoch in a table).
type Locker interface {
	// Acquire blocks until this process holds the lock or ctx is done (then
	// returns ctx.Err()). On success the returned Lease is held and its
	// fencing epoch has already been durably recorded.
	Acquire(ctx context.Context) (Lease, error)
	// String describes the backend for logs and /status, never including
	// secrets, e.g. "file:/data/lock".
	String() string
}

// Lease is one holding of the lock. It is safe for concurrent use.
type Lease interface {
	// Epoch is the fencing epoch of this acquisition; it is strictly greater
	// than every earlier acquisition's (by any process sharing the backend).
	Epoch() uint64
	// Done is closed when the lease is lost or released. A master must stop
	// serving as soon as Done is closed.
	Done() <-chan struct{}
	// Err is nil while the lease is held. After Done is closed it is
	// ErrReleased if Release was called first, or otherwise the reason the
	// lease was lost, which wraps ErrLost.
	Err() error
	// Valid reports whether the holder may still act as master now: nil
	// while the lease is held and was renewed within its validity (a
	// fraction of the lease timeout, measured on this process's monotonic
	// clock), so that no other process can have taken over by lease
	// expiry yet. A process that was frozen finds its lease invalid the
	// moment it runs again, before its renewal has had a chance to notice
	// that it was replaced. It is cheap: call it before any write.
	Valid() error
	// Verify is Valid and, where the backend can tell from durable state
	// at little cost (the file lock's epoch file), that no other process
	// has taken the lock since. Call it after a write is durable and
	// before it is acknowledged.
	Verify() error
	// Release releases the lock, stops any background verification and
	// closes Done. It is idempotent and safe to call concurrently; calls
	// after the first return nil. Releasing a lease that was already lost
	// leaves Err unchanged (it still reports the loss).
	Release() error
}

// ErrLost is wrapped by Lease.Err when the lease was lost without Release
// being called: another process acquired the lock (for example an NFSv4
// lease expired while this host was partitioned), the lock or epoch file was
// deleted or replaced, or the lease could no longer be verified. Test with
// errors.Is(err, ErrLost).
var ErrLost = errors.New("lockstore: master lock lost")

// ErrExpired is wrapped by Lease.Valid's error while the lease is held but
// was not renewed recently enough to be relied on: the process was frozen
// or starved, and a slave may have taken over. Its renewal will either
// succeed (valid again) or find the lease lost.
var ErrExpired = errors.New("lockstore: master lease not renewed in time")

// ErrReleased is returned by Lease.Err after the lease was released by
// Release.
var ErrReleased = errors.New("lockstore: master lock released")

// DefaultCheckInterval is the CheckInterval used when FileOptions leaves it
// zero: how often a master renews its lease.
const DefaultCheckInterval = 250 * time.Millisecond

// DefaultLeaseTimeout is how long a master's lease lasts without renewal
// before a slave may take over by lease (FileOptions.LeaseTimeout,
// PostgresOptions.LeaseTimeout).
const DefaultLeaseTimeout = 2 * time.Second

// validFor is how long after the start of its last successful renewal a
// lease may be relied on (Lease.Valid): three quarters of the timeout, so
// that clocks running up to a quarter apart in rate cannot let the holder
// act after a slave took over.
func validFor(timeout time.Duration) time.Duration { return timeout - timeout/4 }

// FileOptions configures a File locker.
type FileOptions struct {
	// Dir is the shared data directory; it must already exist. The lock is
	// Dir/lock and the fencing epoch is Dir/epoch.
	Dir string
	// CheckInterval is how often a held lease verifies that it is still the
	// master and renews its heartbeat (lease_renew; default
	// DefaultCheckInterval). It bounds how long a deposed master can go
	// on serving before noticing.
	CheckInterval time.Duration
	// LeaseTimeout is how long a slave waits without seeing the master's
	// heartbeat change before it takes over without the kernel lock (the
	// master is frozen: SIGSTOP, a hung NFS client, a paused VM). Default
	// DefaultLeaseTimeout; it must be several CheckIntervals.
	LeaseTimeout time.Duration
	// Log receives lock events; nil discards them.
	Log *logrus.Entry
}

// leaseCore is what every backend's Lease shares: the epoch, Done and Err,
// and an idempotent Release that stops the backend's watcher goroutine and
// waits for it. The watcher alone owns the backend's handle (a descriptor,
// a database session) and, when it ends, calls finish.
type leaseCore struct {
	epoch uint64
	desc  string // names the lock in Release's error

	// base and renewed give the monotonic time of the start of the last
	// successful renewal (renewed is nanoseconds since base).
	base     time.Time
	renewed  atomic.Int64
	validFor time.Duration

	done     chan struct{} // closed by finish, after the handle was let go
	stop     chan struct{} // closed by the first Release
	stopOnce sync.Once
	exited   chan struct{} // closed when the watcher returned

	mu       sync.Mutex
	err      error // nil while held
	closeErr error // error letting the handle go on Release
}

// newLeaseCore starts a lease renewed at start (the acquisition began
// then), valid for validFor after each renewal.
func newLeaseCore(epoch uint64, desc string, start time.Time, validFor time.Duration) *leaseCore {
	l := &leaseCore{epoch: epoch, desc: desc, done: make(chan struct{}), stop: make(chan struct{}), exited: make(chan struct{}),
		base: start, validFor: validFor}
	return l
}

// renewedAt records a successful renewal that started at t.
func (l *leaseCore) renewedAt(t time.Time) {
	if d := int64(t.Sub(l.base)); d > l.renewed.Load() {
		l.renewed.Store(d)
	}
}

// Valid is nil while the lease is held and its last renewal is recent.
func (l *leaseCore) Valid() error {
	select {
	case <-l.done:
		return l.Err()
	default:
	}
	if age := time.Since(l.base) - time.Duration(l.renewed.Load()); age > l.validFor {
		return fmt.Errorf("%w: not renewed for %v (valid for %v after a renewal)", ErrExpired, age.Round(time.Millisecond), l.validFor)
	}
	return nil
}

// Epoch returns the fencing epoch recorded by this acquisition.
func (l *leaseCore) Epoch() uint64 { return l.epoch }

// Done is closed once the lease was lost or released; by then this process
// no longer holds the lock.
func (l *leaseCore) Done() <-chan struct{} { return l.done }

// Err is nil while held, then ErrReleased or an error wrapping ErrLost.
func (l *leaseCore) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Release stops the watcher, which lets the lock go and closes Done; it
// returns once that is done. Only the first call can return an error.
func (l *leaseCore) Release() error {
	first := false
	l.stopOnce.Do(func() {
		first = true
		close(l.stop)
	})
	<-l.exited
	if !first {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closeErr != nil {
		return fmt.Errorf("lockstore: releasing %s: %w", l.desc, l.closeErr)
	}
	return nil
}

// finish records why the lease ended and closes Done. The watcher calls it
// once, after letting the handle go.
func (l *leaseCore) finish(err, closeErr error) {
	l.mu.Lock()
	l.err = err
	l.closeErr = closeErr
	l.mu.Unlock()
	close(l.done)
}
