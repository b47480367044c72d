package auth

import (
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"time"
)

// UsersFile is a users file read again when it changes, as brokerd's TLS
// certificate is: adding a user or changing a password needs no restart,
// which for a master would be a failover. Like ActiveMQ's reloading
// properties login module, a change applies to the next login; connected
// clients keep the principal they logged in as.
//
// A version of the file that cannot be read or parsed (half written, a
// typo) leaves the last good users in force.
type UsersFile struct {
	path string

	mu    sync.Mutex
	users *Users
	stamp fileStamp // of the version looked at last
	err   error     // why that version is not in force, if it is not
}

// fileStamp tells one version of a file from another: its modification
// time, size and inode (a file replaced by rename has a new inode, whatever
// its times).
type fileStamp struct {
	mtime time.Time
	size  int64
	ino   uint64
}

func stampOf(fi os.FileInfo) fileStamp {
	s := fileStamp{mtime: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = uint64(st.Ino)
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
func (f *UsersFile) Users() *Users {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.users
}

// Refresh reads the file again if it has changed since the last look. Its
// error says why the version on disk is not the one in force (the last
// good users stay); it is returned until the file changes again.
func (f *UsersFile) Refresh(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, statErr := os.Stat(f.path)
	var st fileStamp // zero: the file is not there
	if statErr == nil {
		st = stampOf(fi)
	}
	if f.users != nil && st == f.stamp {
		return f.err // nothing changed since the last look
	}
	f.stamp = st
	if statErr != nil {
		// Gone, or between an editor's unlink and rename.
		f.err = errors.New("users file: " + statErr.Error())
		return f.err
	}
	u, err := LoadUsers(f.path)
	if err != nil {
		f.err = err
		return err
	}
	f.users, f.err = u, nil
	return nil
}
