package auth

import (
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
// A file that cannot be read or parsed after a change (half written, a
// typo) leaves the last good users in force, and is reported once per
// change rather than at every login.
type UsersFile struct {
	path     string
	every    time.Duration
	onReload func(*Users, error)

	mu      sync.Mutex
	users   *Users
	stamp   fileStamp // of the file users came from, or of the last failed attempt
	checked time.Time
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

// OpenUsersFile reads the users file at path. Later, Users looks at the
// file at most once every interval and reads it again when it has changed;
// onReload (if not nil) is told of each new version: the users read, or
// why none were (the last good ones then stay in force).
func OpenUsersFile(path string, interval time.Duration, onReload func(*Users, error)) (*UsersFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, errors.New("users file: " + err.Error())
	}
	u, err := LoadUsers(path)
	if err != nil {
		return nil, err
	}
	return &UsersFile{path: path, every: interval, onReload: onReload, users: u, stamp: stampOf(fi), checked: time.Now()}, nil
}

// Users returns the users in force, reading the file again first if it is
// time to look and it has changed.
func (f *UsersFile) Users() *Users {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) < f.every {
		return f.users
	}
	f.checked = time.Now()
	fi, err := os.Stat(f.path)
	if err != nil {
		// Gone, or between an editor's unlink and rename: keep the users,
		// and say so once.
		if f.stamp != (fileStamp{}) {
			f.stamp = fileStamp{}
			f.report(nil, errors.New("users file: "+err.Error()))
		}
		return f.users
	}
	st := stampOf(fi)
	if st == f.stamp {
		return f.users
	}
	f.stamp = st
	u, err := LoadUsers(f.path)
	if err != nil {
		f.report(nil, err)
		return f.users
	}
	f.users = u
	f.report(u, nil)
	return u
}

func (f *UsersFile) report(u *Users, err error) {
	if f.onReload != nil {
		f.onReload(u, err)
	}
}
