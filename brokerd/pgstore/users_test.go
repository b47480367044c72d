package pgstore

import (
	"context"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// TestUsersTable: the users table is read when its change counter moves,
// and only then; a row that is not a valid user is skipped and reported
// until the table changes; the database going away leaves the last users in force; a schema
// without the table is named in the error.
func TestUsersTable(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	users, err := NewUsersTable(f.srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer users.Close()
	if err := users.Refresh(ctx); err == nil || !strings.Contains(err.Error(), "has no handover_users yet") {
		t.Fatalf("before the master created the schema: %v", err)
	}
	f.open(nil).Close() // migrates
	hash := func(pass string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return string(h)
	}
	exec := func(sql string, args ...any) error {
		_, err := f.srv.Conn().Exec(ctx, sql, args...)
		return err
	}
	steps := []struct {
		name   string
		change func() error
		want   map[string]string // users in force, and their groups
		err    string            // in Refresh's error, if any
		reread bool              // the users are read again
	}{
		{"empty", nil, map[string]string{}, "", true},
		{"a user added", func() error {
			return exec("INSERT INTO handover_users VALUES ('alice', $1, 'ops, admins')", hash("a"))
		}, map[string]string{"alice": "ops,admins"}, "", true},
		{"unchanged", nil, map[string]string{"alice": "ops,admins"}, "", false},
		{"a bad hash", func() error {
			return exec("INSERT INTO handover_users VALUES ('bob', '$2y$xx', '')")
		}, map[string]string{"alice": "ops,admins"}, `1 rows skipped, not valid users: user "bob"`, true},
		{"the bad hash, looked at again", nil, map[string]string{"alice": "ops,admins"}, `1 rows skipped`, false},
		{"mended", func() error {
			return exec("UPDATE handover_users SET hash = $1 WHERE login = 'bob'", hash("b"))
		}, map[string]string{"alice": "ops,admins", "bob": ""}, "", true},
		{"removed", func() error {
			return exec("DELETE FROM handover_users WHERE login = 'alice'")
		}, map[string]string{"bob": ""}, "", true},
	}
	last := users.Users()
	for _, st := range steps {
		if st.change != nil {
			if err := st.change(); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
		}
		err := users.Refresh(ctx)
		if st.err == "" && err != nil || st.err != "" && (err == nil || !strings.Contains(err.Error(), st.err)) {
			t.Errorf("%s: Refresh: %v, want %q", st.name, err, st.err)
		}
		u := users.Users()
		if reread := u != last; reread != st.reread {
			t.Errorf("%s: read again %v, want %v", st.name, reread, st.reread)
		}
		last = u
		if u.Len() != len(st.want) {
			t.Errorf("%s: %d users, want %v", st.name, u.Len(), st.want)
		}
		for login, groups := range st.want {
			p, ok := u.Lookup(login)
			if !ok || strings.Join(p.Groups, ",") != groups {
				t.Errorf("%s: %s: %v %v, want groups %q", st.name, login, ok, p, groups)
			}
		}
	}
	if _, err := users.Users().Authenticate("bob", "b"); err != nil {
		t.Errorf("bob's password: %v", err)
	}
	// The table's checks refuse what is plainly not a user.
	for _, bad := range []string{"INSERT INTO handover_users VALUES ('carol', 'plain', '')", "INSERT INTO handover_users VALUES ('', '$2y$10$x', '')"} {
		if err := exec(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}

	// The database goes away: the users stay; it comes back: Refresh
	// connects again.
	f.srv.Stop()
	if err := users.Refresh(ctx); err == nil {
		t.Error("Refresh with the database down: no error")
	}
	if _, ok := users.Users().Lookup("bob"); !ok {
		t.Error("the users were lost with the database")
	}
	f.srv.Start()
	if err := exec("INSERT INTO handover_users VALUES ('dave', $1, '')", hash("d")); err != nil {
		t.Fatal(err)
	}
	if err := users.Refresh(ctx); err != nil {
		t.Fatalf("Refresh with the database back: %v", err)
	}
	if users.Users().Len() != 2 {
		t.Errorf("users after the restart: %d, want bob and dave", users.Users().Len())
	}
}
