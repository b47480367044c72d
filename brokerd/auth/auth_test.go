package auth

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func hash(t testing.TB, pass string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestUsers(t *testing.T) {
	file := "# users\nalice:" + hash(t, "wonderland") + ":ops,readers\n\nbob:" + hash(t, "builder") + "\n"
	u, err := ParseUsers(strings.NewReader(file), "users")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		login, pass string
		want        string // user, or "" for a failure
		groups      int
	}{
		{"alice", "wonderland", "alice", 2},
		{"bob", "builder", "bob", 0},
		{"alice", "builder", "", 0},
		{"nosuchuser", "wrongpass", "", 0},
		{"", "", "", 0},
	} {
		p, err := u.Authenticate(tt.login, tt.pass)
		if tt.want == "" {
			if !errors.Is(err, ErrFailed) || err.Error() != "authentication failed" {
				t.Errorf("%s/%s: %v, want the one failure", tt.login, tt.pass, err)
			}
			continue
		}
		if err != nil || p.User != tt.want || len(p.Groups) != tt.groups {
			t.Errorf("%s/%s: %+v, %v", tt.login, tt.pass, p, err)
		}
	}
}

func TestUsersFileErrors(t *testing.T) {
	_, err := ParseUsers(strings.NewReader("alice:plaintext\nbob\n:x\ncarol:"+hash(t, "x")+"\ncarol:"+hash(t, "y")+"\n"), "users.txt")
	if err == nil {
		t.Fatal("a bad users file was accepted")
	}
	for _, want := range []string{"users.txt:1: user \"alice\": the password must be a bcrypt hash", "users.txt:2: want user:bcrypt-hash", "users.txt:3:", "users.txt:5: user \"carol\" appears twice"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tt := range []struct {
		pattern, dest string
		want          bool
	}{
		{"/queue/orders", "/queue/orders", true},
		{"/queue/orders", "/topic/orders", false},
		{"/queue/orders", "/queue/orders.eu", false},
		{"/queue/orders.>", "/queue/orders.eu", true},
		{"/queue/orders.>", "/queue/orders.eu.paris", true},
		{"/queue/orders.>", "/queue/orders", false},
		{"/queue/orders.*", "/queue/orders.eu", true},
		{"/queue/orders.*", "/queue/orders.eu.paris", false},
		{"/queue/*.eu", "/queue/orders.eu", true},
		{"/queue/>", "/queue/anything.at.all", true},
		{"/topic/>", "/queue/x", false},
	} {
		if got := Match(tt.pattern, tt.dest); got != tt.want {
			t.Errorf("Match(%q, %q) = %v", tt.pattern, tt.dest, got)
		}
	}
}

func TestRules(t *testing.T) {
	rs := Rules{
		{Destination: "/queue/orders.>", Read: []string{"group:ops"}, Write: []string{"bob", "group:ops"}, Admin: []string{"group:admins"}},
		{Destination: "/topic/news", Read: []string{"*"}},
	}
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	alice := Principal{User: "alice", Groups: []string{"ops"}}
	bob := Principal{User: "bob"}
	for _, tt := range []struct {
		p    Principal
		dest string
		op   Op
		want bool
	}{
		{alice, "/queue/orders.eu", Read, true},
		{alice, "/queue/orders.eu", Write, true},
		{alice, "/queue/orders.eu", Admin, false},
		{bob, "/queue/orders.eu", Write, true},
		{bob, "/queue/orders.eu", Read, false},
		{bob, "/queue/other", Write, false},
		{bob, "/topic/news", Read, true},
		{bob, "/topic/news", Write, false},
		{Anonymous, "/topic/news", Read, true},
	} {
		if got := rs.Allowed(tt.p, tt.dest, tt.op); got != tt.want {
			t.Errorf("%s %s %s: %v, want %v", tt.p.User, tt.op, tt.dest, got, tt.want)
		}
	}
	if !(Rules{}).Allowed(bob, "/queue/x", Admin) {
		t.Error("with no rules, everything is allowed")
	}
	bad := Rules{{Destination: "/queue/a.>.b"}, {Destination: "orders"}, {Destination: "/queue/x*", Read: []string{""}}}
	if err := bad.Validate(); err == nil || strings.Count(err.Error(), "authorization rule") != 4 {
		t.Errorf("Validate of bad rules: %v", err)
	}
}

func FuzzParseUsers(f *testing.F) {
	f.Add("alice:$2a$04$abcdefghijklmnopqrstuu5Jq8Zq7y6lL1mJwJcFJt4QY3pU7hZ1O:ops\n# c\n")
	f.Add("bob\n:x\n")
	f.Fuzz(func(t *testing.T, s string) {
		// Parsing alone: Authenticate is bcrypt, deliberately slow.
		if u, err := ParseUsers(strings.NewReader(s), "fuzz"); err == nil && u.Len() < 0 {
			t.Fatal("negative length")
		}
	})
}

func FuzzMatch(f *testing.F) {
	f.Add("/queue/orders.>", "/queue/orders.eu")
	f.Add("/topic/*.x", "/topic/a.x")
	f.Fuzz(func(t *testing.T, pattern, dest string) {
		m := Match(pattern, dest)
		if pattern == dest && checkPattern(pattern) == nil && !strings.ContainsAny(pattern, "*>") && !m {
			t.Fatalf("%q does not match itself", pattern)
		}
	})
}
