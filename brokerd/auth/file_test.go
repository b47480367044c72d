package auth

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUsersFileReload: the users in force follow the file's changes; a
// version that cannot be parsed, or a file gone, leaves the last good users
// in force and is reported once, not at every look.
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
	var reloads, failures int
	last := f.Users()

	steps := []struct {
		name     string
		change   func()
		want     []string // users in force
		reloads  int      // reloads and failures reported so far
		failures int
	}{
		{"unchanged", func() {}, []string{"alice"}, 0, 0},
		{"a user added", func() { write(alice + bob) }, []string{"alice", "bob"}, 1, 0},
		{"a typo", func() { write(alice + "bob\n") }, []string{"alice", "bob"}, 1, 1},
		{"the typo looked at again", func() {}, []string{"alice", "bob"}, 1, 1},
		{"mended, a user removed", func() { write(bob) }, []string{"bob"}, 2, 1},
		{"gone", func() { os.Remove(path) }, []string{"bob"}, 2, 2},
		{"still gone", func() {}, []string{"bob"}, 2, 2},
		{"back", func() { write(alice) }, []string{"alice"}, 3, 2},
		{"replaced by rename, same times", func() {
			tmp := path + ".new"
			os.WriteFile(tmp, []byte(alice+bob), 0o600)
			os.Chtimes(tmp, mtime, mtime)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}, []string{"alice", "bob"}, 4, 2},
	}
	for _, st := range steps {
		st.change()
		if err := f.Refresh(context.Background()); err != nil {
			failures++
		}
		u := f.Users()
		if u != last {
			reloads++
			last = u
		}
		for _, name := range []string{"alice", "bob"} {
			_, in := u.Lookup(name)
			want := false
			for _, w := range st.want {
				want = want || w == name
			}
			if in != want {
				t.Errorf("%s: %s is a user: %v, want %v", st.name, name, in, want)
			}
		}
		if reloads != st.reloads || failures != st.failures {
			t.Errorf("%s: %d reloads and %d failures reported, want %d and %d", st.name, reloads, failures, st.reloads, st.failures)
		}
	}
}

// TestUsersFileMissing: a users file must be there at start.
func TestUsersFileMissing(t *testing.T) {
	if _, err := OpenUsersFile(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "users file") {
		t.Errorf("a missing users file: %v", err)
	}
}
