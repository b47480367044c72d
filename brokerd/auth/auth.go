// Package auth decides who may connect to brokerd and what each may do:
// a users file of bcrypt hashes with groups (as ActiveMQ's simple
// authentication plugin), and per-destination rules (as its authorization
// map) of who may read (SUBSCRIBE), write (SEND) or administer a
// destination pattern.
package auth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// Principal is an authenticated client: its user and groups.
type Principal struct {
	User   string
	Groups []string
}

// Anonymous is the principal of a client without a login, where the
// config allows it; rules name it as "anonymous" (user) or
// "group:anonymous".
var Anonymous = Principal{User: "anonymous", Groups: []string{"anonymous"}}

// ErrFailed is the one error of a failed authentication, whatever part was
// wrong: a client learns nothing about which users exist.
var ErrFailed = errors.New("authentication failed")

// Users is a set of users: a loaded users file, or the PostgreSQL users
// table (package pgstore). A nil *Users has no users: every login fails.
type Users struct {
	users map[string]user
}

type user struct {
	hash   []byte
	groups []string
}

// dummyHash is compared against for unknown users, so that a failure
// takes as long whether or not the user exists.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("no such user"), bcrypt.DefaultCost)

// ParseUsers reads users from r, one "user:bcrypt-hash[:group,group...]"
// per line; blank lines and lines starting with # are skipped. Errors name
// the file and line; every bad line is reported, not the first alone.
func ParseUsers(r io.Reader, name string) (*Users, error) {
	u := NewUsers()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	var errs []error
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s:%d: %s", name, n, fmt.Sprintf(format, args...)))
		}
		parts := strings.SplitN(line, ":", 3)
		if len(parts) < 2 || parts[0] == "" {
			bad("want user:bcrypt-hash[:group,...]")
			continue
		}
		groups := ""
		if len(parts) == 3 {
			groups = parts[2]
		}
		if err := u.Add(parts[0], parts[1], groups); err != nil {
			bad("%v", err)
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return u, nil
}

// NewUsers returns an empty set of users, for Add.
func NewUsers() *Users { return &Users{users: map[string]user{}} }

// Add adds a user as a users file's line does: login, a bcrypt hash of the
// password, and groups separated by commas.
func (u *Users) Add(login, hash, groups string) error {
	if login == "" {
		return errors.New("a user without a name")
	}
	if _, err := bcrypt.Cost([]byte(hash)); err != nil {
		return fmt.Errorf("user %q: the password must be a bcrypt hash ($2a$, $2b$ or $2y$), e.g. from `htpasswd -nbB user pass`: %v", login, err)
	}
	if _, dup := u.users[login]; dup {
		return fmt.Errorf("user %q appears twice", login)
	}
	var gs []string
	for _, g := range strings.Split(groups, ",") {
		if g = strings.TrimSpace(g); g != "" {
			gs = append(gs, g)
		}
	}
	u.users[login] = user{hash: []byte(hash), groups: gs}
	return nil
}

// Equal reports whether u and v hold the same users, passwords and groups.
func (u *Users) Equal(v *Users) bool {
	if u.Len() != v.Len() {
		return false
	}
	if u.Len() == 0 {
		return true
	}
	for login, a := range u.users {
		b, ok := v.users[login]
		if !ok || string(a.hash) != string(b.hash) || !slices.Equal(a.groups, b.groups) {
			return false
		}
	}
	return true
}

// Lookup returns user's principal without a password: for a client that
// proved who it is another way (a TLS client certificate).
func (u *Users) Lookup(login string) (Principal, bool) {
	if u == nil {
		return Principal{}, false
	}
	usr, ok := u.users[login]
	if !ok {
		return Principal{}, false
	}
	return Principal{User: login, Groups: slices.Clone(usr.groups)}, true
}

// Len is how many users there are.
func (u *Users) Len() int {
	if u == nil {
		return 0
	}
	return len(u.users)
}

// Authenticate checks login and passcode; its error is ErrFailed for any
// mismatch.
func (u *Users) Authenticate(login, passcode string) (Principal, error) {
	var usr user
	ok := false
	if u != nil {
		usr, ok = u.users[login]
	}
	hash := usr.hash
	if !ok {
		hash = dummyHash
	}
	if err := bcrypt.CompareHashAndPassword(hash, []byte(passcode)); err != nil || !ok {
		return Principal{}, ErrFailed
	}
	return Principal{User: login, Groups: slices.Clone(usr.groups)}, nil
}

// Op is what a client does with a destination.
type Op string

// The operations rules grant.
const (
	Read  Op = "read"  // SUBSCRIBE
	Write Op = "write" // SEND
	Admin Op = "admin" // browse, purge
)

// Rule grants operations on the destinations matching Destination to the
// principals it lists: "user", "group:name", or "*" for any authenticated
// client.
type Rule struct {
	// Destination is a pattern, /queue/NAME or /topic/NAME, where NAME's
	// dot-separated segments may be "*" (any one segment) and a last ">"
	// (any remaining segments, at least one), as ActiveMQ's wildcards.
	Destination string   `toml:"destination"`
	Read        []string `toml:"read"`
	Write       []string `toml:"write"`
	Admin       []string `toml:"admin"`
}

// Rules are the authorization rules. With none, any authenticated client
// may do anything; with some, an operation is allowed only where a rule
// that matches the destination grants it.
type Rules []Rule

// Validate reports every malformed rule.
func (rs Rules) Validate() error {
	var errs []error
	for i, r := range rs {
		if err := checkPattern(r.Destination); err != nil {
			errs = append(errs, fmt.Errorf("authorization rule %d: %w", i+1, err))
		}
		for _, p := range slices.Concat(r.Read, r.Write, r.Admin) {
			if p == "" || p == "group:" {
				errs = append(errs, fmt.Errorf("authorization rule %d (%s): an empty principal", i+1, r.Destination))
			}
		}
	}
	return errors.Join(errs...)
}

// Allowed says whether p may do op on dest.
func (rs Rules) Allowed(p Principal, dest string, op Op) bool {
	if len(rs) == 0 {
		return true
	}
	for _, r := range rs {
		if !Match(r.Destination, dest) {
			continue
		}
		var who []string
		switch op {
		case Read:
			who = r.Read
		case Write:
			who = r.Write
		case Admin:
			who = r.Admin
		}
		for _, w := range who {
			switch {
			case w == "*", w == p.User:
				return true
			case strings.HasPrefix(w, "group:") && slices.Contains(p.Groups, w[len("group:"):]):
				return true
			}
		}
	}
	return false
}

func checkPattern(pattern string) error {
	kind, name, ok := splitKind(pattern)
	if !ok || name == "" {
		return fmt.Errorf("destination %q: want /queue/NAME or /topic/NAME, NAME with * or a last >", pattern)
	}
	segs := strings.Split(name, ".")
	for i, s := range segs {
		if s == "" || s == ">" && i != len(segs)-1 || strings.ContainsAny(s, "*>") && len(s) > 1 {
			return fmt.Errorf("destination %q: segment %q: * and > stand alone, and > only last", pattern, s)
		}
	}
	_ = kind
	return nil
}

func splitKind(d string) (kind, name string, ok bool) {
	for _, k := range []string{"/queue/", "/topic/"} {
		if strings.HasPrefix(d, k) {
			return k, d[len(k):], true
		}
	}
	return "", "", false
}

// Match reports whether destination dest matches pattern.
func Match(pattern, dest string) bool {
	pk, pn, ok := splitKind(pattern)
	dk, dn, ok2 := splitKind(dest)
	if !ok || !ok2 || pk != dk {
		return false
	}
	ps, ds := strings.Split(pn, "."), strings.Split(dn, ".")
	for i, p := range ps {
		if p == ">" {
			return len(ds) > i
		}
		if i >= len(ds) || p != "*" && p != ds[i] {
			return false
		}
	}
	return len(ps) == len(ds)
}
