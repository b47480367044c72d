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
// typo) leaves the last good users in force, and is reported once, not at
// every look.
type UsersFile struct {
	path string

	mu    sync.Mutex
	users *Users
	stamp fileStamp // of the file users came from, or of the last failed attempt
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
// error says why a new version cannot be used (the last good users stay in
// force); it is returned once per version, and nil while nothing changes.
func (f *UsersFile) Refresh(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		// Gone, or between an editor's unlink and rename.
		if f.stamp == (fileStamp{}) && f.users != nil {
			return nil // said already
		}
		f.stamp = fileStamp{}
		return errors.New("users file: " + err.Error())
	}
	st := stampOf(fi)
	if st == f.stamp {
		return nil
	}
	f.stamp = st
	u, err := LoadUsers(f.path)
	if err != nil {
		return err
	}
	f.users = u
	return nil
}
