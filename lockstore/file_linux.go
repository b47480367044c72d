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
	dir       string
	lockPath  string
	epochPath string
	interval  time.Duration
	log       *logrus.Entry

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
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	lockPath := filepath.Join(dir, "lock")
	return &File{
		dir:       dir,
		lockPath:  lockPath,
		epochPath: filepath.Join(dir, "epoch"),
		interval:  interval,
		log:       log.WithField("lock", lockPath),
	}, nil
}

// String returns "file:" followed by the lock file's absolute path.
func (f *File) String() string { return "file:" + f.lockPath }

// Acquire blocks until this process holds the lock on Dir/lock or ctx is
// done, in which case it returns ctx.Err() and leaves the lock unheld.
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
	for {
		w, err := f.claimWaiter()
		if err != nil {
			return nil, err
		}
		select {
		case <-w.done:
		case <-ctx.Done():
			f.abandon(w)
			return nil, ctx.Err()
		}
		if w.err != nil {
			_ = unix.Close(w.fd)
			return nil, fmt.Errorf("lockstore: locking %s: %w", f.lockPath, w.err)
		}
		// The file we locked may have been deleted or replaced while we
		// waited (e.g. the old master's lease noticed this and gave up).
		// Locking an orphaned inode would exclude nobody, so retry on the
		// file that is now at the path.
		st, same, err := f.sameFile(w.fd)
		if err != nil {
			_ = unix.Close(w.fd)
			return nil, err
		}
		if !same {
			_ = unix.Close(w.fd)
			f.log.Warn("lock file was replaced while waiting; retrying on the new file")
			continue
		}
		epoch, err := f.bumpEpoch()
		if err != nil {
			_ = unix.Close(w.fd)
			return nil, err
		}
		l := &fileLease{
			f:         f,
			fd:        w.fd,
			dev:       st.Dev,
			ino:       st.Ino,
			leaseCore: newLeaseCore(epoch, f.lockPath),
		}
		go l.watch()
		f.log.WithFields(logrus.Fields{
			"epoch":  epoch,
			"waited": time.Since(start).Round(time.Millisecond).String(),
		}).Info("master lock acquired")
		return l, nil
	}
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
type fileLease struct {
	f   *File
	fd  int
	dev uint64
	ino uint64
	leaseCore
}

// watch verifies the lease every CheckInterval until it is released or lost.
func (l *fileLease) watch() {
	defer close(l.exited)
	t := time.NewTicker(l.f.interval)
	defer t.Stop()
	log := l.f.log.WithField("epoch", l.epoch)
	for {
		select {
		case <-l.stop:
			cerr := unix.Close(l.fd)
			log.Info("master lock released")
			l.finish(ErrReleased, cerr)
			return
		case <-t.C:
			if reason := l.check(); reason != "" {
				// Close first: once Done is observed, the lock is gone.
				_ = unix.Close(l.fd)
				log.WithField("reason", reason).Error("master lock lost")
				l.finish(fmt.Errorf("%w: %s", ErrLost, reason), nil)
				return
			}
		}
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
