//go:build linux

package lockstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// File is a Locker backed by an open-file-description (OFD) fcntl write lock
// on Dir/lock, with the fencing epoch kept in Dir/epoch.
//
// Why an OFD lock:
//   - flock(2) locks are not reliably shared between NFS clients (older Linux
//     kernels emulate them with local-only or whole-file POSIX locks), so
//     brokers on different hosts could both believe they are master.
//   - Classic POSIX fcntl locks (F_SETLKW) are owned by the process: two
//     lockers in one process never conflict, and closing ANY descriptor of
//     the file, e.g. one opened by a library, silently drops the lock.
//   - OFD locks (F_OFD_SETLKW) are byte-range locks that NFSv4 maps to real
//     server-side LOCK operations, yet they belong to the open file
//     description: each Acquire opens its own description, so lockers in one
//     process conflict properly, and the lock goes away exactly when our
//     descriptor is closed or the process dies.
//
// The waiting slave blocks inside the kernel, so it is woken within
// milliseconds of the master's death or release (on NFSv4 a dead master's
// host only frees the lock when its NFS lease expires on the server).
//
// A File may be used for any number of Acquire calls, also concurrently;
// each successful one is a separate holding that conflicts with all others.
type File struct {
	dir          string
	lockPath     string
	epochPath    string
	leasePath    string // the master's heartbeat
	takeoverPath string // serializes takeovers by lease among slaves
	interval     time.Duration
	timeout      time.Duration
	log          *logrus.Entry

	mu sync.Mutex
	// idle holds waiters whose Acquire was cancelled while they were still
	// blocked in F_OFD_SETLKW. They are owned by the File: the next Acquire
	// adopts one instead of starting another blocked goroutine, and a waiter
	// that is granted the lock while idle releases it at once and exits.
	idle []*waiter
	// live counts waiter goroutines that have not finished their syscall.
	live int
}

var _ Locker = (*File)(nil)

// waiter is one goroutine blocked in F_OFD_SETLKW on its own descriptor.
type waiter struct {
	fd   int
	done chan struct{} // closed once the syscall returned; err is valid then
	err  error
	// claimed (guarded by File.mu) is true while an Acquire call waits for
	// this waiter. When the syscall returns on a claimed waiter the
	// descriptor belongs to that Acquire; otherwise the waiter closes it.
	claimed bool
}

// NewFile returns a File locker for opts.Dir, which must be an existing
// directory. The lock and epoch files are created on first Acquire.
func NewFile(opts FileOptions) (*File, error) {
	if opts.Dir == "" {
		return nil, errors.New("lockstore: FileOptions.Dir is empty")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("lockstore: resolving data directory %q: %w", opts.Dir, err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("lockstore: data directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("lockstore: data directory %s is not a directory", dir)
	}
	interval := opts.CheckInterval
	switch {
	case interval < 0:
		return nil, fmt.Errorf("lockstore: negative CheckInterval %v", interval)
	case interval == 0:
		interval = DefaultCheckInterval
	}
	timeout := opts.LeaseTimeout
	switch {
	case timeout == 0:
		timeout = DefaultLeaseTimeout
	case timeout < 2*interval:
		return nil, fmt.Errorf("lockstore: LeaseTimeout %v must be at least twice CheckInterval %v (the lease is renewed every CheckInterval)", timeout, interval)
	}
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	lockPath := filepath.Join(dir, "lock")
	return &File{
		dir:          dir,
		lockPath:     lockPath,
		epochPath:    filepath.Join(dir, "epoch"),
		leasePath:    filepath.Join(dir, "lease"),
		takeoverPath: filepath.Join(dir, "takeover"),
		interval:     interval,
		timeout:      timeout,
		log:          log.WithField("lock", lockPath),
	}, nil
}

// String returns "file:" followed by the lock file's absolute path.
func (f *File) String() string { return "file:" + f.lockPath }

// Acquire blocks until this process holds the lock on Dir/lock or ctx is
// done, in which case it returns ctx.Err() and leaves the lock unheld.
//
// There are two ways to become master. The usual one is the kernel lock:
// the master's death or release frees it, and the waiting slave gets it
// within milliseconds. The other is the lease, for a master that is alive
// but frozen (SIGSTOP, a hung NFS client, a paused VM) and so keeps the
// kernel lock forever: the master rewrites Dir/lease every CheckInterval,
// and a slave that sees neither it nor Dir/epoch change for LeaseTimeout
// (on its own monotonic clock) takes over without the kernel lock, one
// slave at a time (a non-blocking lock on Dir/takeover). The frozen master,
// once it runs again, finds its lease invalid before it acts (Lease.Valid)
// and the epoch no longer its own (Lease.Verify, and its renewal), and
// stops. The new master keeps waiting for the kernel lock in the
// background and holds it too once the old one is gone.
//
// Before returning a Lease it durably records the new fencing epoch
// (previous epoch + 1) in Dir/epoch: write to a temporary file, fsync,
// rename over Dir/epoch, fsync the directory. The epoch must be on stable
// storage before the new master serves anything; otherwise a crash could
// let the next master reuse an epoch that already stamped writes, and
// fencing would no longer tell the two apart.
//
// The blocking F_OFD_SETLKW call cannot be interrupted, so it runs in a
// goroutine. If ctx ends first, that goroutine is handed to the File: it is
// adopted by the next Acquire on the same File, or, if the kernel grants it
// the lock while nobody wants it, it closes its descriptor (releasing the
// lock without touching the epoch) and exits. So at most one such goroutine
// exists per concurrently cancelled Acquire, never an ownerless one.
func (f *File) Acquire(ctx context.Context) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := time.Now()
	f.log.Debug("waiting for master lock")
	var w *waiter
	defer func() {
		if w != nil {
			f.abandon(w)
		}
	}()
	var stale staleness
	// Looked at four times per renewal, so that a takeover comes at most
	// a quarter of lease_renew after the lease ran out on this clock.
	tick := time.NewTicker(max(f.interval/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		if w == nil {
			var err error
			if w, err = f.claimWaiter(); err != nil {
				return nil, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
			stale.observe(f.mark())
			if !stale.expired(time.Now(), f.timeout) {
				continue
			}
			l, err := f.takeOverByLease(w, start, &stale)
			if err != nil {
				return nil, err
			}
			if l != nil {
				w = nil // the lease waits on for the kernel lock
				return l, nil
			}
			continue
		case <-w.done:
		}
		fd, werr := w.fd, w.err
		w = nil
		if werr != nil {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("lockstore: locking %s: %w", f.lockPath, werr)
		}
		// The file we locked may have been deleted or replaced while we
		// waited (e.g. the old master's lease noticed this and gave up).
		// Locking an orphaned inode would exclude nobody, so retry on the
		// file that is now at the path.
		st, same, err := f.sameFile(fd)
		if err != nil {
			_ = unix.Close(fd)
			return nil, err
		}
		if !same {
			_ = unix.Close(fd)
			f.log.Warn("lock file was replaced while waiting; retrying on the new file")
			continue
		}
		// Slaves taking over by lease hold the takeover lock while they
		// decide and bump the epoch: so does this one, so that two never
		// bump to the same epoch. A holder frozen in the middle is waited
		// for one lease timeout, then ignored (the epoch read back after
		// every write fences whichever of the two loses).
		tfd, terr := f.lockTakeover(ctx, f.timeout)
		if terr != nil {
			_ = unix.Close(fd)
			return nil, terr
		}
		// A master that took over by lease does not hold the kernel lock,
		// so getting it says nothing about that master: give way while
		// its heartbeat still moves.
		if alive, err := f.leaseHolderAlive(ctx); alive || err != nil {
			unlockTakeover(tfd)
			_ = unix.Close(fd)
			if err != nil {
				return nil, err
			}
			f.log.Info("got the kernel lock, but the master holds a live lease without it; waiting again")
			continue
		}
		bumped := time.Now()
		epoch, err := f.bumpEpoch()
		if err != nil {
			unlockTakeover(tfd)
			_ = unix.Close(fd)
			return nil, err
		}
		l := f.newLease(epoch, bumped, fd, &st, nil)
		unlockTakeover(tfd)
		f.log.WithFields(logrus.Fields{
			"epoch":  epoch,
			"waited": time.Since(start).Round(time.Millisecond).String(),
		}).Info("master lock acquired")
		return l, nil
	}
}

// lockTakeover takes the takeover lock, trying for up to wait; it returns
// -1 (and no error) if another process kept it that long.
func (f *File) lockTakeover(ctx context.Context, wait time.Duration) (int, error) {
	tfd, err := unix.Open(f.takeoverPath, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return -1, fmt.Errorf("lockstore: opening %s: %w", f.takeoverPath, err)
	}
	deadline := time.Now().Add(wait)
	for {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
		err := unix.FcntlFlock(uintptr(tfd), unix.F_OFD_SETLK, &lk)
		if err == nil {
			return tfd, nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			unix.Close(tfd)
			return -1, fmt.Errorf("lockstore: locking %s: %w", f.takeoverPath, err)
		}
		if time.Now().After(deadline) {
			unix.Close(tfd)
			f.log.Warn("the takeover lock is held by a process that does not let go (frozen?): going on without it")
			return -1, nil
		}
		select {
		case <-ctx.Done():
			unix.Close(tfd)
			return -1, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// unlockTakeover lets the takeover lock go (closing its descriptor).
func unlockTakeover(tfd int) {
	if tfd >= 0 {
		unix.Close(tfd)
	}
}

// takeOverByLease makes this process master without the kernel lock,
// because the master's lease expired; w keeps waiting for the kernel lock
// on the new lease's behalf. It returns nil, and no error, if another
// slave is taking over or the lease moved after all.
func (f *File) takeOverByLease(w *waiter, start time.Time, stale *staleness) (*fileLease, error) {
	tfd, err := unix.Open(f.takeoverPath, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lockstore: opening %s: %w", f.takeoverPath, err)
	}
	defer unix.Close(tfd)
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(uintptr(tfd), unix.F_OFD_SETLK, &lk); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			f.log.Info("the master's lease expired; another slave is taking over")
			return nil, nil
		}
		return nil, fmt.Errorf("lockstore: locking %s: %w", f.takeoverPath, err)
	}
	// Looked at again under the takeover lock: a slave that just took
	// over has changed the epoch.
	if stale.observe(f.mark()); !stale.expired(time.Now(), f.timeout) {
		return nil, nil
	}
	bumped := time.Now()
	epoch, err := f.bumpEpoch()
	if err != nil {
		return nil, err
	}
	l := f.newLease(epoch, bumped, -1, nil, w)
	f.log.WithFields(logrus.Fields{
		"epoch":         epoch,
		"lease_timeout": f.timeout.String(),
		"waited":        time.Since(start).Round(time.Millisecond).String(),
	}).Warn("master lock taken over by lease: the master did not renew its lease (frozen?); it keeps the kernel lock until it stops")
	return l, nil
}

// newLease starts the lease of epoch, bumped at the given time: with the
// kernel lock on fd (st its file), or without it (fd -1) and w still
// waiting for it. It writes the first heartbeat before returning; the
// lease counts as renewed when the epoch was bumped, since that is when
// other slaves' timers started again.
func (f *File) newLease(epoch uint64, bumped time.Time, fd int, st *unix.Stat_t, w *waiter) *fileLease {
	l := &fileLease{f: f, fd: fd, w: w, leaseCore: newLeaseCore(epoch, f.lockPath, bumped, validFor(f.timeout))}
	if st != nil {
		l.dev, l.ino = st.Dev, st.Ino
	}
	if err := l.beat(); err != nil {
		f.log.WithError(err).Warn("writing the first lease heartbeat")
	}
	go l.watch()
	return l
}

// mark is what a waiting slave watches for change: the heartbeat and the
// epoch, and whether they can show a frozen master at all (live): only a
// heartbeat that names the current epoch can. A heartbeat of an older
// epoch belongs to a master that is gone (or, during an upgrade, a master
// of a version that does not beat); a file that cannot be read proves
// nothing either. Neither may ever lead to a takeover by lease.
type mark struct {
	text string
	live bool
	at   time.Time
}

func (f *File) mark() mark {
	m := mark{at: time.Now()}
	hb, herr := os.ReadFile(f.leasePath)
	ep, eerr := os.ReadFile(f.epochPath)
	m.text = string(hb) + "|" + string(ep)
	if herr != nil || eerr != nil {
		return m
	}
	h, err := parseHeartbeat(hb)
	cur, perr := strconv.ParseUint(strings.TrimSpace(string(ep)), 10, 64)
	m.live = err == nil && perr == nil && h.epoch == cur
	return m
}

// leaseHolderAlive reports whether the master of the current epoch holds
// it by lease (not the kernel lock) and renews it: it watches the
// heartbeat for up to LeaseTimeout and answers as soon as it moves.
func (f *File) leaseHolderAlive(ctx context.Context) (bool, error) {
	h, err := f.readHeartbeat()
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // no master ever beat here: none holds a lease
	}
	if cur, cerr := readEpoch(f.epochPath); err == nil && cerr == nil && h.locked && h.epoch == cur {
		return false, nil // the current master held the kernel lock we now have: it is gone
	}
	// Anything else (a lease holder, a heartbeat of another epoch, one not
	// written yet, a read error) is watched for the whole lease timeout.
	first := f.mark().text
	deadline := time.Now().Add(f.timeout)
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-t.C:
		}
		if f.mark().text != first {
			return true, nil
		}
	}
	return false, nil
}

// staleness follows a mark (see File.mark) on the local monotonic clock.
type staleness struct {
	mark  string
	live  bool
	since time.Time
	seen  bool
}

// observe records m. A mark that is not live restarts the clock.
func (s *staleness) observe(m mark) {
	if !s.seen || m.text != s.mark || !m.live || !s.live {
		s.mark, s.live, s.since, s.seen = m.text, m.live, m.at, true
	}
}

// expired reports whether a live heartbeat has not changed for timeout.
func (s *staleness) expired(now time.Time, timeout time.Duration) bool {
	return s.seen && s.live && now.Sub(s.since) >= timeout
}

// heartbeat is what a master writes to Dir/lease at each renewal: its
// epoch, a counter, and whether it holds the kernel lock.
type heartbeat struct {
	epoch, seq uint64
	locked     bool
}

func (h heartbeat) String() string {
	how := "lease"
	if h.locked {
		how = "lock"
	}
	return fmt.Sprintf("%d %d %s\n", h.epoch, h.seq, how)
}

func (f *File) readHeartbeat() (heartbeat, error) {
	b, err := os.ReadFile(f.leasePath)
	if err != nil {
		return heartbeat{}, err
	}
	h, err := parseHeartbeat(b)
	if err != nil {
		return heartbeat{}, fmt.Errorf("lockstore: heartbeat %s: %w", f.leasePath, err)
	}
	return h, nil
}

func parseHeartbeat(b []byte) (heartbeat, error) {
	var h heartbeat
	var how string
	if _, err := fmt.Sscanf(string(b), "%d %d %s", &h.epoch, &h.seq, &how); err != nil {
		return heartbeat{}, fmt.Errorf("%q: %w", b, err)
	}
	if how != "lock" && how != "lease" {
		return heartbeat{}, fmt.Errorf("%q: want EPOCH SEQ lock|lease", b)
	}
	h.locked = how == "lock"
	return h, nil
}

// heartbeatSize is the fixed length of Dir/lease: each heartbeat
// overwrites the last in place, so that a master frozen in the middle of a
// write leaves a file that still reads as some heartbeat (a truncate then
// write could leave it empty).
const heartbeatSize = 64

// writeHeartbeat replaces Dir/lease's content. It is not fsync'd: a slave
// needs to see it change, not to find it after a crash. Open, write and
// close is what makes it visible to other NFS clients (close-to-open).
func (f *File) writeHeartbeat(h heartbeat) error {
	fh, err := os.OpenFile(f.leasePath, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	b := []byte(h.String())
	b = append(b, strings.Repeat(" ", max(0, heartbeatSize-len(b)))...)
	_, err = fh.WriteAt(b, 0)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	return err
}

// claimWaiter adopts an idle waiter or starts a new one, marked claimed.
func (f *File) claimWaiter() (*waiter, error) {
	f.mu.Lock()
	if n := len(f.idle); n > 0 {
		w := f.idle[n-1]
		f.idle = f.idle[:n-1]
		w.claimed = true
		f.mu.Unlock()
		return w, nil
	}
	f.mu.Unlock()

	// O_RDWR because a write lock needs a writable descriptor (NFS checks).
	// O_CLOEXEC so that a child process cannot inherit the descriptor and
	// keep the open file description, and thus the lock, alive after we die.
	fd, err := unix.Open(f.lockPath, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lockstore: opening lock file %s: %w", f.lockPath, err)
	}
	w := &waiter{fd: fd, done: make(chan struct{}), claimed: true}
	f.mu.Lock()
	f.live++
	f.mu.Unlock()
	go f.wait(w)
	return w, nil
}

// wait blocks in the kernel until w's descriptor holds the lock.
func (f *File) wait(w *waiter) {
	err := lockWait(w.fd)
	f.mu.Lock()
	defer f.mu.Unlock()
	w.err = err
	if !w.claimed {
		// Its Acquire was cancelled and nobody adopted it: closing the
		// descriptor drops the lock immediately.
		_ = unix.Close(w.fd)
		for i, x := range f.idle {
			if x == w {
				f.idle = append(f.idle[:i], f.idle[i+1:]...)
				break
			}
		}
	}
	f.live--
	close(w.done)
}

// abandon gives w back to the File after its Acquire was cancelled.
func (f *File) abandon(w *waiter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-w.done:
		// It finished while claimed, so its descriptor is ours to close.
		_ = unix.Close(w.fd)
	default:
		w.claimed = false
		f.idle = append(f.idle, w)
	}
}

// lockWait takes an exclusive OFD lock on the whole file, retrying EINTR.
func lockWait(fd int) error {
	for {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: 0, Len: 0}
		err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLKW, &lk)
		if err != unix.EINTR {
			return err
		}
	}
}

// sameFile reports whether fd is still the file at f.lockPath, and fd's stat.
func (f *File) sameFile(fd int) (unix.Stat_t, bool, error) {
	var fst, pst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil {
		return fst, false, fmt.Errorf("lockstore: stat of locked file %s: %w", f.lockPath, err)
	}
	if err := unix.Stat(f.lockPath, &pst); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fst, false, nil
		}
		return fst, false, fmt.Errorf("lockstore: stat %s: %w", f.lockPath, err)
	}
	return fst, fst.Dev == pst.Dev && fst.Ino == pst.Ino, nil
}

// bumpEpoch durably replaces Dir/epoch with its value plus one, and returns
// the new value. Callers must hold the lock.
func (f *File) bumpEpoch() (uint64, error) {
	cur, err := readEpoch(f.epochPath)
	if errors.Is(err, fs.ErrNotExist) {
		cur = 0
	} else if err != nil {
		return 0, err
	}
	if cur == math.MaxUint64 {
		return 0, fmt.Errorf("lockstore: epoch file %s is at the maximum value %d and cannot be incremented", f.epochPath, cur)
	}
	next := cur + 1
	if err := writeFileDurable(f.dir, f.epochPath, []byte(strconv.FormatUint(next, 10)+"\n")); err != nil {
		return 0, fmt.Errorf("lockstore: recording epoch %d: %w", next, err)
	}
	return next, nil
}

// maxEpochFile bounds how much of a (corrupt) epoch file is read.
const maxEpochFile = 64

// readEpoch parses the decimal epoch in path. A missing file yields an error
// matching fs.ErrNotExist; anything that is not a single unsigned decimal
// integer (surrounding whitespace allowed) is reported as corrupt rather
// than treated as 0, because resetting the epoch would break fencing.
func readEpoch(path string) (uint64, error) {
	// Opening by name each time (rather than keeping a descriptor) matters
	// on NFSv4: open revalidates the name with the server, so a rename over
	// the epoch file by another host is seen (close-to-open consistency).
	fh, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("lockstore: reading epoch: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxEpochFile+1))
	if err != nil {
		return 0, fmt.Errorf("lockstore: reading epoch file %s: %w", path, err)
	}
	s := strings.TrimSpace(string(b))
	v, perr := strconv.ParseUint(s, 10, 64)
	if len(b) > maxEpochFile || perr != nil {
		if len(b) > maxEpochFile {
			b = append(b[:maxEpochFile:maxEpochFile], "..."...)
		}
		return 0, fmt.Errorf("lockstore: epoch file %s is corrupt: content %q is not an unsigned decimal integer; "+
			"refusing to reset the fencing epoch (restore it to at least the highest epoch ever used)", path, b)
	}
	return v, nil
}

// writeFileDurable atomically replaces path (in dir) with data: temp file,
// fsync, rename, fsync of the directory so that the rename itself survives
// a crash.
func writeFileDurable(dir, path string, data []byte) (err error) {
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(0o644); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// fileLease is one holding of a File lock. Its descriptor is owned by the
// watch goroutine, which alone closes it; this avoids closing it under a
// concurrent fcntl/fstat (the number could be reused by another open).
// A lease taken over by lease starts without the kernel lock (fd -1) and
// its waiter w still blocked for it; watch adopts the descriptor once the
// kernel grants it.
type fileLease struct {
	f   *File
	fd  int
	w   *waiter
	dev uint64
	ino uint64
	seq uint64 // heartbeats written
	*leaseCore
}

// Verify is Valid and the epoch file still holding this lease's epoch.
func (l *fileLease) Verify() error {
	if err := l.Valid(); err != nil {
		return err
	}
	epoch, err := readEpoch(l.f.epochPath)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrLost, err)
	}
	if epoch != l.epoch {
		return fmt.Errorf("%w: epoch file %s holds %d, ours is %d", ErrLost, l.f.epochPath, epoch, l.epoch)
	}
	return nil
}

// beat writes the next heartbeat.
func (l *fileLease) beat() error {
	l.seq++
	return l.f.writeHeartbeat(heartbeat{epoch: l.epoch, seq: l.seq, locked: l.fd >= 0})
}

// letGo closes the kernel lock's descriptor, or hands a waiter that has
// not got it yet back to the File.
func (l *fileLease) letGo() error {
	if l.w != nil {
		l.f.abandon(l.w)
		l.w = nil
	}
	if l.fd >= 0 {
		fd := l.fd
		l.fd = -1
		return unix.Close(fd)
	}
	return nil
}

// adopt takes the kernel lock a lease taken over by lease was waiting for.
func (l *fileLease) adopt() {
	w := l.w
	l.w = nil
	if w.err != nil {
		_ = unix.Close(w.fd)
		l.f.log.WithError(w.err).Warn("waiting for the kernel lock failed; holding the lease without it")
		return
	}
	st, same, err := l.f.sameFile(w.fd)
	if err != nil || !same {
		_ = unix.Close(w.fd)
		l.f.log.Warn("the lock file was replaced; holding the lease without the kernel lock")
		return
	}
	l.fd, l.dev, l.ino = w.fd, st.Dev, st.Ino
	l.f.log.WithField("epoch", l.epoch).Info("master now holds the kernel lock too")
}

// watch renews the lease every CheckInterval until it is released or lost.
func (l *fileLease) watch() {
	defer close(l.exited)
	t := time.NewTicker(l.f.interval)
	defer t.Stop()
	log := l.f.log.WithField("epoch", l.epoch)
	for {
		var granted <-chan struct{}
		if l.w != nil {
			granted = l.w.done
		}
		select {
		case <-l.stop:
			cerr := l.letGo()
			log.Info("master lock released")
			l.finish(ErrReleased, cerr)
			return
		case <-granted:
			l.adopt()
		case <-t.C:
		}
		start := time.Now()
		reason := l.check()
		if reason == "" {
			if err := l.beat(); err != nil {
				reason = "writing the lease heartbeat: " + err.Error()
			}
		}
		if reason != "" {
			// Let go first: once Done is observed, the lock is gone.
			_ = l.letGo()
			log.WithField("reason", reason).Error("master lock lost")
			l.finish(fmt.Errorf("%w: %s", ErrLost, reason), nil)
			return
		}
		l.renewedAt(start)
	}
}

// check returns why the lease is no longer valid, or "" if it still is.
// Failing to verify (e.g. EIO/ESTALE on NFS) counts as lost: a master that
// cannot prove it is master must stop serving.
func (l *fileLease) check() string {
	// The epoch is the authoritative check: any later acquisition, from
	// any host, rewrites it. This also catches the data directory being
	// replaced, and an NFSv4 lease that expired on the server while this
	// host was partitioned and was then granted to another client.
	epoch, err := readEpoch(l.f.epochPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("epoch file %s was deleted", l.f.epochPath)
	case err != nil:
		return err.Error()
	case epoch != l.epoch:
		return fmt.Sprintf("epoch file %s holds %d, ours is %d (another process acquired the lock)", l.f.epochPath, epoch, l.epoch)
	}
	if l.fd < 0 {
		return "" // held by lease: there is no kernel lock of ours to check
	}
	// A deleted or replaced lock file means a newcomer would lock a
	// different inode than ours, so our lock no longer excludes anyone.
	// (On NFS this may be seen only after the attribute cache expires.)
	var st unix.Stat_t
	if err := unix.Stat(l.f.lockPath, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Sprintf("lock file %s was deleted", l.f.lockPath)
		}
		return fmt.Sprintf("stat %s: %v", l.f.lockPath, err)
	}
	if st.Dev != l.dev || st.Ino != l.ino {
		return fmt.Sprintf("lock file %s was replaced (inode %d, ours %d)", l.f.lockPath, st.Ino, l.ino)
	}
	// Ask the lock manager (the NFS server on NFS) whether anybody else
	// holds a conflicting lock. Our own OFD lock never conflicts with us.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(uintptr(l.fd), unix.F_OFD_GETLK, &lk); err != nil {
		return fmt.Sprintf("verifying lock on %s: %v", l.f.lockPath, err)
	}
	if lk.Type != unix.F_UNLCK {
		return fmt.Sprintf("lock on %s is held by someone else", l.f.lockPath)
	}
	return ""
}
