package stompproxy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/crypto/bcrypt"

	"handover/brokerd"
	"handover/brokerd/auth"
	"handover/frame"
	"handover/internal/passcode"
	"handover/internal/serve"
	"handover/proxy/proxytest"
	"handover/stompclient"
)

// usersFile writes a brokerd users file (user:bcrypt-hash per line) for
// users, by name and password, and returns its path.
func usersFile(t testing.TB, users map[string]string) string {
	t.Helper()
	var b strings.Builder
	for name, pass := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(name + ":" + string(h) + "\n")
	}
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeSecret replaces the file at path with content the way a secret is
// rotated: written aside, then renamed over it.
func writeSecret(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// withSidecarLogin gives the service the login "sidecar" with the passcode
// in the file secret.
func withSidecarLogin(secret string) func(*Options) {
	return func(o *Options) {
		o.Credentials = &Credentials{Login: "sidecar", Passcode: passcode.File(secret)}
	}
}

// authFailed reports whether err is brokerd's answer to a bad login.
func authFailed(err error) bool {
	var se *stompclient.ServerError
	return errors.As(err, &se) && se.Message == auth.ErrFailed.Error()
}

// TestSidecarCredentials: with Options.Credentials, a client logs in to
// brokerd as the sidecar whatever it sent itself: nothing, another user's
// login, or a wrong one. brokerd's rules let only "sidecar" use the queue,
// so a client passed on as itself could not send there.
func TestSidecarCredentials(t *testing.T) {
	users := usersFile(t, map[string]string{"sidecar": "s3cret", "app": "apppass"})
	b := startBrokerWith(t, t.TempDir(), "", func(o *brokerd.Options) {
		o.UsersFile = users
		o.Authorization = auth.Rules{{Destination: "/queue/creds.>", Read: []string{"sidecar"}, Write: []string{"sidecar"}}}
	})
	b.WaitReady(t)
	secret := filepath.Join(t.TempDir(), "passcode")
	writeSecret(t, secret, "s3cret\n") // as echo writes it
	svc := startService(t, proxytest.NewPicker(b.Addr()), withSidecarLogin(secret))

	if c, err := stompclient.Dial(ctxT(t, 10*time.Second), b.Addr(), stompclient.Options{Login: "app", Passcode: "apppass"}); err == nil {
		// app may log in directly, but not use the queue.
		err = c.SendReceipt(ctxT(t, 10*time.Second), "/queue/creds.direct", []byte("x"))
		c.Close()
		if err == nil {
			t.Fatal("brokerd lets app send to /queue/creds.direct: the test proves nothing")
		}
	}
	for i, tt := range []struct {
		name string
		opts stompclient.Options
	}{
		{"no credentials", stompclient.Options{}},
		{"another user's", stompclient.Options{Login: "app", Passcode: "apppass"}},
		{"wrong ones", stompclient.Options{Login: "mallory", Passcode: "guess"}},
		{"a login alone", stompclient.Options{Login: "app"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialClient(t, svc.Addr().String(), tt.opts)
			q := fmt.Sprintf("/queue/creds.%d", i)
			sub, err := c.SubscribeReceipt(ctxT(t, 10*time.Second), q, stompclient.AckAuto)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.SendReceipt(ctxT(t, 10*time.Second), q, body(i), persistent); err != nil {
				t.Fatal(err)
			}
			if msg := recv(t, sub); string(msg.Body) != string(body(i)) {
				t.Fatalf("got %q", msg.Body)
			}
		})
	}
}

// TestSidecarCredentialsWire: the CONNECT the broker gets carries the
// sidecar's login and passcode once each, in place of the client's (even
// repeated ones), and the client's other headers as it sent them.
func TestSidecarCredentialsWire(t *testing.T) {
	fb := startFake(t, "1.2", "0,0")
	svc := startService(t, proxytest.NewPicker(fb.addr()), func(o *Options) {
		o.Credentials = &Credentials{Login: "sidecar", Passcode: func() (string, error) { return "pa:ss word", nil }}
	})
	for _, tt := range []struct {
		name    string
		connect string
	}{
		{"client credentials replaced", "CONNECT\naccept-version:1.2\nhost:vh\nlogin:app\npasscode:apppass\nlogin:again\nheart-beat:0,0\n\n\x00"},
		{"none added", "STOMP\naccept-version:1.2\nhost:vh\nheart-beat:0,0\n\n\x00"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, svc.Addr().String(), "")
			if _, err := io.WriteString(c.nc, tt.connect); err != nil {
				t.Fatal(err)
			}
			if f := c.read(t, 10*time.Second); f.Command != frame.CONNECTED {
				t.Fatalf("CONNECT answered with %v", f)
			}
			got := fb.next(t).connect
			var logins, passcodes []string
			for _, h := range got.Headers {
				switch h.Key {
				case "login":
					logins = append(logins, h.Value)
				case "passcode":
					passcodes = append(passcodes, h.Value)
				}
			}
			if strings.Join(logins, ",") != "sidecar" || strings.Join(passcodes, ",") != "pa:ss word" {
				t.Fatalf("upstream CONNECT has logins %q and passcodes %q, want the sidecar's alone", logins, passcodes)
			}
			if got.Command != tt.connect[:strings.IndexByte(tt.connect, '\n')] || got.Value("host") != "vh" ||
				got.Value("accept-version") != "1.2" || got.Value("heart-beat") != "0,0" {
				t.Fatalf("upstream CONNECT %v lost the client's own headers", got)
			}
		})
	}
}

// TestSidecarCredentialsRefused: a broker refusing the sidecar's login
// sends its ERROR to the client, which is closed; the passcode file, put
// right, is used by the next client without a restart; a passcode that
// cannot be read closes the client with the sidecar's own ERROR. No log
// line ever holds a passcode.
func TestSidecarCredentialsRefused(t *testing.T) {
	b := startBrokerWith(t, t.TempDir(), "", func(o *brokerd.Options) {
		o.UsersFile = usersFile(t, map[string]string{"sidecar": "s3cret"})
	})
	b.WaitReady(t)
	secret := filepath.Join(t.TempDir(), "passcode")
	writeSecret(t, secret, "wrong-secret")
	svc := startService(t, proxytest.NewPicker(b.Addr()), withSidecarLogin(secret))
	hook := logtest.NewLocal(svc.log.Logger)
	addr := svc.Addr().String()
	closed := func(reason string) float64 {
		return proxytest.Counter(t, svc.metrics.closed.WithLabelValues("stomp", reason))
	}

	c := dialRaw(t, addr, "")
	c.send(t, frame.New(frame.CONNECT, "accept-version", "1.2", "host", "/", "login", "app", "passcode", "apppass"))
	c.expectError(t, "authentication failed", 10*time.Second)
	c.expectClosed(t, 10*time.Second)
	waitCounter(t, func() float64 { return closed(reasonRejected) }, 1)
	refusal := false
	for _, e := range hook.AllEntries() {
		if e.Message == "broker refused the session's CONNECT: closing the client" && e.Data["login"] == "sidecar" {
			refusal = true
		}
	}
	if !refusal {
		t.Error("the broker's refusal of the sidecar's login is not logged with the login")
	}

	writeSecret(t, secret, "s3cret")
	ok := dialClient(t, addr, stompclient.Options{})
	if err := ok.SendReceipt(ctxT(t, 10*time.Second), "/queue/rotated", []byte("x")); err != nil {
		t.Fatalf("after the passcode file was put right: %v", err)
	}

	if err := os.Remove(secret); err != nil {
		t.Fatal(err)
	}
	c = dialRaw(t, addr, "")
	c.send(t, frame.New(frame.CONNECT, "accept-version", "1.2", "host", "/"))
	c.expectError(t, "the proxy cannot log in to the broker", 10*time.Second)
	c.expectClosed(t, 10*time.Second)
	waitCounter(t, func() float64 { return closed(reasonCredentials) }, 1)
	unreadable := false
	for _, e := range hook.AllEntries() {
		if e.Message == "cannot log in to the brokers: closing the client" && e.Level.String() == "error" {
			unreadable = true
		}
		line, err := e.String()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(line, "s3cret") || strings.Contains(line, "wrong-secret") {
			t.Errorf("a log line holds a passcode: %s", line)
		}
	}
	if !unreadable {
		t.Error("an unreadable passcode is not logged as an error")
	}
	if err := ok.Err(); err != nil {
		t.Fatalf("a connected client was hurt: %v", err)
	}
}

// waitCounter waits until get returns want.
func waitCounter(t testing.TB, get func() float64, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for got := get(); got != want; got = get() {
		if time.Now().After(deadline) {
			t.Fatalf("counter %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSidecarCredentialsOnResume: a session resumed on a new master logs
// in as the sidecar again, with the passcode as it is at that moment. The
// slave knows only the rotated passcode, so a resume that sent none, or
// the old one, would be refused, and its client closed.
func TestSidecarCredentialsOnResume(t *testing.T) {
	dir := t.TempDir()
	m := startBrokerWith(t, dir, "", func(o *brokerd.Options) {
		o.UsersFile = usersFile(t, map[string]string{"sidecar": "old-secret"})
	})
	m.WaitReady(t)
	sl := startBrokerWith(t, dir, "", func(o *brokerd.Options) {
		o.UsersFile = usersFile(t, map[string]string{"sidecar": "new-secret"})
	})
	secret := filepath.Join(t.TempDir(), "passcode")
	writeSecret(t, secret, "old-secret\n")
	p := proxytest.NewPicker(m.Addr())
	svc := startService(t, p, withSidecarLogin(secret))

	const q = "/queue/resumed"
	c := dialClient(t, svc.Addr().String(), stompclient.Options{})
	sub, err := c.SubscribeReceipt(ctxT(t, 10*time.Second), q, stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendReceipt(ctxT(t, 10*time.Second), q, body(1), persistent); err != nil {
		t.Fatal(err)
	}
	if err := c.AckReceipt(ctxT(t, 10*time.Second), recv(t, sub)); err != nil {
		t.Fatal(err)
	}

	writeSecret(t, secret, "new-secret\n") // rotated; the live session is not touched
	m.Stop(t)
	sl.WaitReady(t)
	p.Set(sl.Addr()) // the slave's port is bound once it is master
	if err := c.SendReceipt(ctxT(t, 20*time.Second), q, body(2), persistent); err != nil {
		t.Fatalf("send after the failover: %v", err)
	}
	if msg := recv(t, sub); string(msg.Body) != string(body(2)) {
		t.Fatalf("got %q after the failover", msg.Body)
	} else if err := c.AckReceipt(ctxT(t, 10*time.Second), msg); err != nil {
		t.Fatal(err)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("the client's connection ended: %v", err)
	}
	if st := svc.Status(); st.Resumed != 1 || st.Unresumable != 0 || st.Backends[sl.Addr()] != 1 {
		t.Fatalf("status %+v, want the session resumed on the slave", st)
	}
}

func TestCredentialsValidate(t *testing.T) {
	t.Setenv("HANDOVER_TEST_PASSCODE", "from-env")
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	writeSecret(t, good, "s3cret\r\n")
	empty := filepath.Join(dir, "empty")
	writeSecret(t, empty, "\n")
	twoLines := filepath.Join(dir, "two-lines")
	writeSecret(t, twoLines, "s3cret\nmore\n")
	base := Options{Settings: serve.Settings{Name: "x", Listen: "127.0.0.1:0"}}
	for _, tt := range []struct {
		name  string
		creds *Credentials
		want  string // in the error; "" for none
	}{
		{"none", nil, ""},
		{"file", &Credentials{Login: "sidecar", Passcode: passcode.File(good)}, ""},
		{"environment", &Credentials{Login: "sidecar", Passcode: passcode.Env("HANDOVER_TEST_PASSCODE")}, ""},
		{"empty login", &Credentials{Passcode: passcode.File(good)}, "credentials.login: must not be empty"},
		{"login with a line break", &Credentials{Login: "a\nb", Passcode: passcode.File(good)}, "credentials.login: must not contain"},
		{"no passcode", &Credentials{Login: "sidecar"}, "a passcode is required"},
		{"missing file", &Credentials{Login: "sidecar", Passcode: passcode.File(filepath.Join(dir, "nope"))}, "nope: no such file"},
		{"empty file", &Credentials{Login: "sidecar", Passcode: passcode.File(empty)}, "the passcode is empty"},
		{"two lines", &Credentials{Login: "sidecar", Passcode: passcode.File(twoLines)}, "line break"},
		{"unset variable", &Credentials{Login: "sidecar", Passcode: passcode.Env("HANDOVER_TEST_NO_SUCH_VARIABLE")}, "HANDOVER_TEST_NO_SUCH_VARIABLE is not set"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			o.Credentials = tt.creds
			err := o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate = %v, want an error about %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("the error shows the passcode: %v", err)
			}
		})
	}
	if p, err := passcode.File(good)(); p != "s3cret" || err != nil {
		t.Fatalf("PasscodeFile = %q, %v; want the line without its line break", p, err)
	}
}
