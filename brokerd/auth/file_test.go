package auth

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUsersFileReload: the users in force follow the file's changes; a
// version that cannot be parsed, or a file gone, leaves the last good users
// in force, and Refresh says so until the file changes again.
func TestUsersFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	mtime := time.Now().Add(-time.Hour)
	// write replaces the file's content with a new modification time each
	// time: the file system's clock may not tick between two writes.
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		mtime = mtime.Add(time.Second)
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	alice := "alice:" + hash(t, "a") + ":ops\n"
	bob := "bob:" + hash(t, "b") + "\n"
	write(alice)
	f, err := OpenUsersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	last := f.Users()

	steps := []struct {
		name   string
		change func()
		want   []string // users in force
		reread bool     // they were read again
		fails  bool     // Refresh says the file on disk is not in force
	}{
		{"unchanged", func() {}, []string{"alice"}, false, false},
		{"a user added", func() { write(alice + bob) }, []string{"alice", "bob"}, true, false},
		{"a typo", func() { write(alice + "bob\n") }, []string{"alice", "bob"}, false, true},
		{"the typo looked at again", func() {}, []string{"alice", "bob"}, false, true},
		{"mended, a user removed", func() { write(bob) }, []string{"bob"}, true, false},
		{"gone", func() { os.Remove(path) }, []string{"bob"}, false, true},
		{"still gone", func() {}, []string{"bob"}, false, true},
		{"back", func() { write(alice) }, []string{"alice"}, true, false},
		{"emptied", func() { write("# nobody\n") }, []string{"alice"}, false, true},
		{"filled", func() { write(bob) }, []string{"bob"}, true, false},
		{"rewritten in place, size and times kept", func() {
			before, _ := os.Stat(path)
			os.WriteFile(path, []byte(strings.Replace(bob, "bob", "bot", 1)), 0o600)
			// Only the change time tells this version apart; the clock
			// behind it may not have ticked since the last write.
			for {
				os.Chtimes(path, before.ModTime(), before.ModTime())
				if after, _ := os.Stat(path); stampOf(after).ctime != stampOf(before).ctime {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}, []string{"bot"}, true, false},
		{"back again", func() { write(alice) }, []string{"alice"}, true, false},
		{"replaced by rename, same times", func() {
			tmp := path + ".new"
			os.WriteFile(tmp, []byte(alice+bob), 0o600)
			os.Chtimes(tmp, mtime, mtime)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}, []string{"alice", "bob"}, true, false},
	}
	for _, st := range steps {
		st.change()
		err := f.Refresh(context.Background())
		if (err != nil) != st.fails {
			t.Errorf("%s: Refresh: %v, want an error: %v", st.name, err, st.fails)
		}
		u := f.Users()
		if reread := u != last; reread != st.reread {
			t.Errorf("%s: read again %v, want %v", st.name, reread, st.reread)
		}
		last = u
		for _, name := range []string{"alice", "bob", "bot"} {
			_, in := u.Lookup(name)
			want := false
			for _, w := range st.want {
				want = want || w == name
			}
			if in != want {
				t.Errorf("%s: %s is a user: %v, want %v", st.name, name, in, want)
			}
		}
	}
}

// TestUsersFileMissing: a users file must be there at start.
func TestUsersFileMissing(t *testing.T) {
	if _, err := OpenUsersFile(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "users file") {
		t.Errorf("a missing users file: %v", err)
	}
}

// TestUsersFileRefreshBusy: while a read of the file is under way (hung,
// say, on a file system gone away), Refresh says so at once instead of
// waiting or starting another, and Users still answers.
func TestUsersFileRefreshBusy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("alice:"+hash(t, "a")+"\n"), 0o600)
	f, err := OpenUsersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock() // a read under way
	err = f.Refresh(context.Background())
	f.mu.Unlock()
	if err == nil || !strings.Contains(err.Error(), "still reading it") {
		t.Errorf("Refresh during a read: %v", err)
	}
	if f.Users().Len() != 1 {
		t.Error("Users lost the users in force")
	}
}

// TestUsersFileReadFails: a version that could not be read (out of file
// descriptors here; a stale NFS handle in life) is read again at the next
// look, not taken for a bad version until the file changes.
func TestUsersFileReadFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("alice:"+hash(t, "a")+"\n"), 0o600)
	f, err := OpenUsersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	next := path + ".new"
	os.WriteFile(next, []byte("bob:"+hash(t, "b")+"\n"), 0o600)
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	// The kernel gives a new file the lowest free descriptor, and
	// refuses it if that is not under RLIMIT_NOFILE.
	probe, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	lowest := probe.Fd()
	probe.Close()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(lowest)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	err = f.refresh()
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if err == nil || !strings.Contains(err.Error(), "too many open files") {
		t.Fatalf("reading with no descriptor left: %v", err)
	}
	if err := f.Refresh(context.Background()); err != nil {
		t.Fatalf("the next look: %v", err)
	}
	if _, ok := f.Users().Lookup("bob"); !ok {
		t.Error("the version that could not be read was not read at the next look")
	}
}
