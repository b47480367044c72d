package pgstore

import (
	"context"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"handover/internal/pgtest"
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
		reread bool              // the users in force changed
	}{
		{"empty", nil, map[string]string{}, "", true},
		{"a user added", func() error {
			return exec("INSERT INTO handover_users VALUES ('alice', $1, 'ops, admins')", hash("a"))
		}, map[string]string{"alice": "ops,admins"}, "", true},
		{"unchanged", nil, map[string]string{"alice": "ops,admins"}, "", false},
		{"a bad hash", func() error {
			return exec("INSERT INTO handover_users VALUES ('bob', '$2y$xx', '')")
		}, map[string]string{"alice": "ops,admins"}, `1 rows skipped, not valid users: user "bob"`, false},
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

	// An edit with the trigger off does not move the counter: it is seen
	// at the next full read (fullEvery), which leaves unchanged users the
	// same set.
	if err := exec("ALTER TABLE handover_users DISABLE TRIGGER handover_users_changed"); err != nil {
		t.Fatal(err)
	}
	if err := exec("INSERT INTO handover_users VALUES ('erin', $1, '')", hash("e")); err != nil {
		t.Fatal(err)
	}
	users.Refresh(ctx)
	if _, ok := users.Users().Lookup("erin"); ok {
		t.Error("an edit with the trigger off was seen before a full read was due")
	}
	users.fullEvery = 0
	users.Refresh(ctx)
	same := users.Users()
	if _, ok := same.Lookup("erin"); !ok {
		t.Error("an edit with the trigger off was not seen at the full read")
	}
	users.Refresh(ctx)
	if users.Users() != same {
		t.Error("a full read of unchanged users replaced the set")
	}
}

// TestUsersTableSchemas: clusters sharing a database keep their users in a
// schema each, and an edit naming one schema's table from a session with
// another search_path moves that schema's counter, not another's.
func TestUsersTableSchemas(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	admin := srv.Conn()
	tables := map[string]*UsersTable{}
	for _, schema := range []string{"a", "b"} {
		h := newSchemaHarness(t, admin, srv, schema)
		st, err := Open(ctx, Options{DSN: h.dsn, Log: pgtest.Logger(t)}, h.Promotion(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		u, err := NewUsersTable(h.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		if err := u.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		tables[schema] = u
	}
	h, err := bcrypt.GenerateFromPassword([]byte("a"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	// admin's search_path is the default ("$user", public).
	if _, err := admin.Exec(ctx, "INSERT INTO a.handover_users VALUES ('alice', $1, '')", string(h)); err != nil {
		t.Fatalf("an insert naming schema a: %v", err)
	}
	beforeB := tables["b"].Users()
	for _, u := range tables {
		if err := u.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := tables["a"].Users().Lookup("alice"); !ok {
		t.Error("schema a's users were not read again after the insert")
	}
	if tables["b"].Users() != beforeB || tables["b"].Users().Len() != 0 {
		t.Error("schema b's users changed with schema a's table")
	}
}
