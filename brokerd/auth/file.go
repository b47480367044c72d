package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// UsersFile is a users file read again when it changes, as brokerd's TLS
// certificate is: adding a user or changing a password needs no restart,
// which for a master would be a failover. Like ActiveMQ's reloading
// properties login module, a change applies to the next login; connected
// clients keep the principal they logged in as.
//
// A version of the file that cannot be read or parsed (a typo, a file
// emptied or removed) leaves the last good users in force. A file being
// rewritten in place may be read half written, so replace it instead:
// write the new version aside and rename it over the old.
type UsersFile struct {
	path  string
	users atomic.Pointer[Users] // never waits on the file system

	mu    sync.Mutex // held by a refresh: stamp and err are its
	stamp fileStamp  // of the version looked at last
	err   error      // why that version is not in force, if it is not
}

// fileStamp tells one version of a file from another: its modification and
// change times, size and inode (a file replaced by rename has a new inode,
// and one rewritten in place with its old size and times restored, as
// cp -p does, a new change time).
type fileStamp struct {
	mtime, ctime time.Time
	size         int64
	ino          uint64
}

func stampOf(fi os.FileInfo) fileStamp {
	s := fileStamp{mtime: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = uint64(st.Ino)
		s.ctime = time.Unix(st.Ctim.Unix())
	}
	return s
}

// OpenUsersFile reads the users file at path.
func OpenUsersFile(path string) (*UsersFile, error) {
	f := &UsersFile{path: path}
	if err := f.Refresh(context.Background()); err != nil {
		return nil, err
	}
	return f, nil
}

// String names the file, for logs.
func (f *UsersFile) String() string { return "file " + f.path }

// Users returns the users in force.
func (f *UsersFile) Users() *Users { return f.users.Load() }

// Refresh reads the file again if it has changed since the last look. Its
// error says why the version on disk is not the one in force (the last
// good users stay); it is returned until the file changes again.
//
// The file is read on a goroutine of its own, so that a hung file system
// (an NFS server gone) holds up neither Refresh past ctx nor Users; while
// that read hangs, later calls say so instead of starting another.
func (f *UsersFile) Refresh(ctx context.Context) error {
	if !f.mu.TryLock() {
		return fmt.Errorf("users file %s: still reading it since an earlier look (a hung file system?)", f.path)
	}
	done := make(chan error, 1)
	go func() {
		err := f.refresh()
		f.mu.Unlock() // before the answer: the next look must find it free
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("users file %s: %w before it could be read", f.path, ctx.Err())
	}
}

// refresh is Refresh's work; f.mu is held.
func (f *UsersFile) refresh() error {
	fi, statErr := os.Stat(f.path)
	var st fileStamp // zero: the file is not there
	if statErr == nil {
		st = stampOf(fi)
	}
	if f.users.Load() != nil && st == f.stamp {
		return f.err // nothing changed since the last look
	}
	if statErr != nil {
		// Gone, or between an editor's unlink and rename.
		f.stamp = st
		f.err = errors.New("users file: " + statErr.Error())
		return f.err
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		// Out of descriptors, a stale NFS handle: nothing is known of
		// this version yet, so the next look reads it again.
		f.err = fmt.Errorf("users file: %w", err)
		return f.err
	}
	f.stamp = st
	u, err := ParseUsers(bytes.NewReader(data), f.path)
	if err == nil && u.Len() == 0 {
		// Emptied (truncated by a writer about to fill it, or by
		// mistake): a broker whose logins all fail is down, so this is
		// not taken for "nobody may log in".
		err = fmt.Errorf("users file %s: no users in it", f.path)
	}
	if err != nil {
		f.err = err
		return err
	}
	f.users.Store(u)
	f.err = nil
	return nil
}
