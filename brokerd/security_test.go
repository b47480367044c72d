package brokerd

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/crypto/bcrypt"

	"handover/brokerd/auth"
	"handover/frame"
	"handover/internal/testutil"
)

func usersFile(t *testing.T, users map[string]string) string {
	t.Helper()
	var b strings.Builder
	for spec, pass := range users { // spec is "user" or "user:groups"
		name, groups, _ := strings.Cut(spec, ":")
		h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(name + ":" + string(h) + ":" + groups + "\n")
	}
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAuthentication: with a users file, CONNECT needs a right login; every
// failure gets the same ERROR, and repeated ones from one address are
// answered ever more slowly; anonymous clients only where allowed.
func TestAuthentication(t *testing.T) {
	users := usersFile(t, map[string]string{"alice:ops": "wonderland"})
	for _, anon := range []bool{false, true} {
		s := startServer(t, t.TempDir(), func(o *Options) { o.UsersFile, o.AllowAnonymous = users, anon })
		s.waitReady(t)
		for _, tt := range []struct {
			name, connect string
			ok            bool
		}{
			{"right password", "login:alice\npasscode:wonderland\n", true},
			{"wrong password", "login:alice\npasscode:builder\n", false},
			{"unknown user", "login:mallory\npasscode:wonderland\n", false},
			{"no login", "", anon},
		} {
			c := dialRaw(t, s.Addr())
			c.send("CONNECT\naccept-version:1.2\nhost:/\n" + tt.connect + "\n\x00")
			f, err := c.tryRead(10 * time.Second)
			if err != nil {
				t.Fatalf("anonymous %v, %s: %v", anon, tt.name, err)
			}
			if tt.ok != (f.Command == frame.CONNECTED) || !tt.ok && f.Value("message") != "authentication failed" {
				t.Fatalf("anonymous %v, %s: %v", anon, tt.name, f)
			}
			if !tt.ok {
				c.expectClosed()
			}
		}
		s.stop(t)
	}
	// Failures from one address slow down.
	s := startServer(t, t.TempDir(), func(o *Options) { o.UsersFile = users })
	s.waitReady(t)
	var last time.Duration
	for range 4 {
		c := dialRaw(t, s.Addr())
		start := time.Now()
		c.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:alice\npasscode:guess\n\n\x00")
		if f := c.read(); f.Command != frame.ERROR {
			t.Fatalf("a wrong password: %v", f)
		}
		last = time.Since(start)
	}
	if last < 350*time.Millisecond {
		t.Errorf("the 4th failure in a row was answered after %v, want it slowed down (400ms)", last)
	}
	if !strings.Contains(scrape(t, s.AdminAddr()), "brokerd_authentication_failures_total 4") {
		t.Error("failures are not counted")
	}
}

// TestUsersFileChanges: a users file changed under a running broker
// applies to the next logins, without a restart; a connected client keeps
// its session; a version with a typo is logged and changes nothing.
func TestUsersFileChanges(t *testing.T) {
	path := usersFile(t, map[string]string{"alice": "a"})
	var hook *logtest.Hook
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.UsersFile = path
		hook = logtest.NewLocal(o.Log.Logger)
	})
	s.waitReady(t)
	login := func(user, pass string) *raw {
		c := dialRaw(t, s.Addr())
		c.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:" + user + "\npasscode:" + pass + "\n\n\x00")
		return c
	}
	alice := login("alice", "a")
	if f := alice.read(); f.Command != frame.CONNECTED {
		t.Fatalf("alice: %v", f)
	}
	// replace swaps the file for one with these users, as an operator's
	// tool would (write aside, rename), and waits for the broker to see it.
	replace := func(users map[string]string, raw string) {
		t.Helper()
		next := usersFile(t, users)
		if raw != "" {
			os.WriteFile(next, []byte(raw), 0o600)
		}
		if err := os.Rename(next, path); err != nil {
			t.Fatal(err)
		}
	}
	replace(map[string]string{"bob": "b"}, "")
	testutil.Eventually(t, 10*time.Second, func() error {
		if _, ok := s.users.Users().Lookup("bob"); !ok {
			return errors.New("bob is not in the users in force")
		}
		return nil
	})
	if f := login("bob", "b").read(); f.Command != frame.CONNECTED {
		t.Fatalf("bob, added: %v", f)
	}
	if st := getStatus(t, s.AdminAddr()).Users; st == nil || st.Count != 1 || st.From != "file "+path || st.Error != "" {
		t.Errorf("/status users: %+v, want 1 from file %s, no error", st, path)
	}
	if m := scrape(t, s.AdminAddr()); !strings.Contains(m, "brokerd_users_current 1\n") {
		t.Error("/metrics lacks brokerd_users_current 1 with the file read in full")
	}
	c := login("alice", "a")
	if f := c.read(); f.Command != frame.ERROR {
		t.Fatalf("alice, removed: %v", f)
	}
	c.expectClosed()
	// alice's session, from before, goes on.
	alice.send("SEND\ndestination:/queue/q\nreceipt:1\n\nstill here\x00")
	if f := alice.read(); f.Command != frame.RECEIPT {
		t.Fatalf("alice's session after her removal: %v", f)
	}

	replace(nil, "carol has no hash\n")
	testutil.Eventually(t, 10*time.Second, func() error {
		s.users.Users()
		for _, e := range hook.AllEntries() {
			if e.Level == logrus.ErrorLevel && strings.HasPrefix(e.Message, "users could not all be read") {
				return nil
			}
		}
		return errors.New("the typo is not logged")
	})
	if f := login("bob", "b").read(); f.Command != frame.CONNECTED {
		t.Fatalf("bob, after a typo: %v", f)
	}
	// /status and /metrics say the users in force are not the file's.
	if st := getStatus(t, s.AdminAddr()).Users; st == nil || st.Count != 1 || !strings.Contains(st.Error, "want user:bcrypt-hash") {
		t.Errorf("/status users after the typo: %+v, want bob alone and the typo", st)
	}
	m := scrape(t, s.AdminAddr())
	for _, want := range []string{"brokerd_users 1\n", "brokerd_users_current 0\n"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics after the typo lacks %q", want)
		}
	}
}

// TestUsersFileSlave: a slave follows the users file too, so that one
// that takes over after a user was added, and the file then broken, serves
// the last good users rather than those it started with.
func TestUsersFileSlave(t *testing.T) {
	path := usersFile(t, map[string]string{"alice": "a"})
	dir := t.TempDir()
	m := startServer(t, dir, func(o *Options) { o.UsersFile = path })
	m.waitReady(t)
	var hook *logtest.Hook
	sl := startServer(t, dir, func(o *Options) {
		o.UsersFile = path
		hook = logtest.NewLocal(o.Log.Logger)
	})
	waitUntil(t, 10*time.Second, "the second broker is not a slave", func() bool { return getStatus(t, sl.AdminAddr()).Role == RoleSlave })

	if err := os.Rename(usersFile(t, map[string]string{"bob": "b"}), path); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the slave did not read the new users", func() bool {
		_, ok := sl.users.Users().Lookup("bob")
		return ok
	})
	broken := filepath.Join(t.TempDir(), "broken")
	os.WriteFile(broken, []byte("carol has no hash\n"), 0o600)
	if err := os.Rename(broken, path); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the slave did not look at the broken file", func() bool {
		sl.usersSt.turn <- struct{}{}
		defer func() { <-sl.usersSt.turn }()
		return sl.usersSt.err != nil
	})
	m.stop(t)
	sl.waitReady(t)
	c := dialRaw(t, sl.Addr())
	c.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:bob\npasscode:b\n\n\x00")
	if f := c.read(); f.Command != frame.CONNECTED {
		t.Fatalf("bob on the new master: %v", f)
	}
	if st := getStatus(t, sl.AdminAddr()).Users; st == nil || st.Count != 1 {
		t.Errorf("/status users on the new master: %+v, want 1 (bob)", st)
	}
	// The broken file, a warning while a slave, is an error once master.
	levels := map[logrus.Level]int{}
	for _, e := range hook.AllEntries() {
		if strings.HasPrefix(e.Message, "users could not all be read") {
			levels[e.Level]++
		}
	}
	if levels[logrus.WarnLevel] != 1 || levels[logrus.ErrorLevel] != 1 {
		t.Errorf("the broken file was logged %v times by level, want one warning (slave) and one error (master)", levels)
	}
}

// TestRefreshUsersLogs: a users file that stays broken is logged once,
// not at every look, and its mending once; on a slave, as a warning.
func TestRefreshUsersLogs(t *testing.T) {
	path := usersFile(t, map[string]string{"alice": "a"})
	o := NewOptions()
	o.Listen, o.Admin, o.Data, o.UsersFile = "127.0.0.1:0", "127.0.0.1:0", t.TempDir(), path
	o.Log = testLog(t)
	hook := logtest.NewLocal(o.Log.Logger)
	initData(t, o.Data)
	s, err := New(o) // not run: no master's loop refreshes meanwhile
	if err != nil {
		t.Fatal(err)
	}
	defer s.adminLn.Close()
	count := func(msg string) int {
		n := 0
		for _, e := range hook.AllEntries() {
			if strings.HasPrefix(e.Message, msg) {
				n++
				if e.Level == logrus.ErrorLevel {
					t.Errorf("%q logged as an error by a broker that is not master", e.Message)
				}
			}
		}
		return n
	}
	var last error
	refresh := func() { last = s.refreshUsers(context.Background()) }
	os.WriteFile(path, []byte("carol has no hash\n"), 0o600)
	os.Chtimes(path, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	for range 3 {
		refresh()
	}
	if n := count("users could not all be read"); n != 1 || last == nil {
		t.Errorf("a broken file looked at 3 times: logged %d times (error %v), want once", n, last)
	}
	// Broken another way at once: not logged again before usersRepeat
	// (a database's errors differ in their details at every try).
	os.WriteFile(path, []byte("dave:not-a-hash\n"), 0o600)
	os.Chtimes(path, time.Now().Add(2*time.Hour), time.Now().Add(2*time.Hour))
	refresh()
	if n := count("users could not all be read"); n != 1 || last == nil || !strings.Contains(last.Error(), "dave") {
		t.Errorf("broken another way: logged %d times (error %v), want still once", n, last)
	}
	replace := usersFile(t, map[string]string{"bob": "b"})
	if err := os.Rename(replace, path); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		refresh()
	}
	if a, b := count("users read again"), count("users read in full again"); a != 1 || b != 1 || last != nil {
		t.Errorf("mended: %d 'read again' and %d 'in full again' lines (error %v), want one each", a, b, last)
	}
}

// TestAuthorization: the rules decide who may SEND to and SUBSCRIBE to
// which destinations; a denied client gets an ERROR naming the
// destination and operation, and nobody else is affected.
func TestAuthorization(t *testing.T) {
	users := usersFile(t, map[string]string{"alice:ops": "a", "bob": "b"})
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.UsersFile = users
		o.Authorization = auth.Rules{
			{Destination: "/queue/orders.>", Read: []string{"group:ops"}, Write: []string{"bob", "group:ops"}},
			{Destination: "/topic/news", Read: []string{"*"}, Write: []string{"alice"}},
		}
	})
	s.waitReady(t)
	login := func(user, pass string) *raw {
		c := dialRaw(t, s.Addr())
		c.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:" + user + "\npasscode:" + pass + "\n\n\x00")
		if f := c.read(); f.Command != frame.CONNECTED {
			t.Fatalf("%s: %v", user, f)
		}
		return c
	}
	alice := login("alice", "a")
	alice.send("SUBSCRIBE\nid:1\ndestination:/queue/orders.eu\nreceipt:s\n\n\x00")
	if f := alice.read(); f.Command != frame.RECEIPT {
		t.Fatalf("alice SUBSCRIBE: %v", f)
	}
	for _, tt := range []struct {
		user, pass, frame, want string
	}{
		{"bob", "b", "SEND\ndestination:/queue/orders.eu\nreceipt:r\n\nfrom bob\x00", "RECEIPT"},
		{"bob", "b", "SUBSCRIBE\nid:1\ndestination:/queue/orders.eu\nreceipt:r\n\n\x00", `user "bob" is not authorized to read /queue/orders.eu`},
		{"bob", "b", "SEND\ndestination:/queue/other\nreceipt:r\n\nx\x00", `user "bob" is not authorized to write /queue/other`},
		{"bob", "b", "SEND\ndestination:/topic/news\nreceipt:r\n\nx\x00", `not authorized to write /topic/news`},
		{"bob", "b", "BEGIN\ntransaction:t\n\n\x00SEND\ndestination:/queue/other\ntransaction:t\nreceipt:r\n\nx\x00", `not authorized to write /queue/other`},
		{"bob", "b", "SUBSCRIBE\nid:2\ndestination:/topic/news\nreceipt:r\n\n\x00", "RECEIPT"},
	} {
		c := login(tt.user, tt.pass)
		c.send(tt.frame)
		f := c.read()
		if tt.want == "RECEIPT" {
			if f.Command != frame.RECEIPT {
				t.Errorf("%s %q: %v, want a RECEIPT", tt.user, tt.frame, f)
			}
			continue
		}
		if f.Command != frame.ERROR || !strings.Contains(f.Value("message"), tt.want) {
			t.Errorf("%s %q: %v, want an ERROR %q", tt.user, tt.frame, f, tt.want)
		}
	}
	// alice got bob's order, and nothing else happened to her.
	if f := alice.read(); f.Command != frame.MESSAGE || string(f.Body) != "from bob" {
		t.Fatalf("alice: %v", f)
	}
	if !strings.Contains(scrape(t, s.AdminAddr()), `brokerd_authorization_denials_total{op="write"} 3`) {
		t.Error("denials are not counted")
	}
}

// TestAdminToken: an admin port bound beyond loopback needs a token, and
// then every request but the health checks must carry it.
func TestAdminToken(t *testing.T) {
	o := NewOptions()
	o.Listen, o.Admin, o.Data = "127.0.0.1:0", "0.0.0.0:0", t.TempDir()
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "admin_token_file") {
		t.Fatalf("an admin port on 0.0.0.0 without a token: %v", err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600)
	s := startServer(t, t.TempDir(), func(o *Options) { o.AdminTokenFile = tokenFile })
	s.waitReady(t)
	base := "http://" + s.AdminAddr()
	if code, _ := adminCall(t, "GET", base+"/status"); code != 401 {
		t.Errorf("/status without the token: %d, want 401", code)
	}
	if code, _ := adminCall(t, "GET", base+"/healthz"); code != 200 {
		t.Errorf("/healthz without the token: %d, want 200", code)
	}
	req, _ := http.NewRequest("GET", base+"/status", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/status with the token: %v %v", resp, err)
	}
	resp.Body.Close()
}
