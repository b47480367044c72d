package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/crypto/bcrypt"

	"handover/brokerd"
	"handover/frame"
	"handover/internal/testutil"
)

// passcode returns a CheckOptions.Passcode answering p.
func fixedPasscode(p string) func() (string, error) { return func() (string, error) { return p, nil } }

// startAuthBroker runs brokerd as master with a users file holding the
// user "checker", passcode "s3cret", and no anonymous access.
func startAuthBroker(t *testing.T) *brokerd.Server {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(users, []byte("checker:"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startBrokerWith(t, t.TempDir(), "127.0.0.1:0", func(o *brokerd.Options) { o.UsersFile = users })
	s.WaitReady(t)
	return s.Server
}

// TestSTOMPCheckerCredentials: against brokerd with a users file, the
// "stomp" check passes with the right login, and a wrong or missing one is
// a CredentialsRefused result with brokerd's message: alive, refusing us,
// never Definitive. A passcode that cannot be read fails the check before
// any dial.
func TestSTOMPCheckerCredentials(t *testing.T) {
	s := startAuthBroker(t)
	for _, tt := range []struct {
		name    string
		opts    CheckOptions
		ok      bool
		refused bool
		err     string // in the error
	}{
		{"right login", CheckOptions{Login: "checker", Passcode: fixedPasscode("s3cret")}, true, false, ""},
		{"wrong passcode", CheckOptions{Login: "checker", Passcode: fixedPasscode("guess")}, false, true, "check credentials refused: authentication failed"},
		{"no login", CheckOptions{}, false, true, "check credentials refused: authentication failed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			chk, err := NewCheckerWith(KindSTOMP, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			r := chk.Check(ctx, Backend{Addr: s.Addr()})
			if r.OK != tt.ok || r.CredentialsRefused != tt.refused || r.Definitive || r.Standby ||
				errors.Is(r.Err, ErrCredentialsRefused) != tt.refused {
				t.Fatalf("Check = %+v, want OK %v, CredentialsRefused %v, not Definitive", r, tt.ok, tt.refused)
			}
			if tt.err != "" && (r.Err == nil || r.Err.Error() != tt.err) {
				t.Fatalf("error %v, want %q", r.Err, tt.err)
			}
			if r.Err != nil && strings.Contains(r.Err.Error(), "guess") {
				t.Fatalf("the error shows the passcode: %v", r.Err)
			}
		})
	}

	t.Run("passcode unreadable", func(t *testing.T) {
		var fail atomic.Bool
		chk, err := NewCheckerWith(KindSTOMP, CheckOptions{Login: "checker", Passcode: func() (string, error) {
			if fail.Load() {
				return "", errors.New("open /run/secrets/check: no such file or directory")
			}
			return "s3cret", nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		fail.Store(true) // gone after start: a rotation gone wrong
		r := chk.Check(context.Background(), Backend{Addr: closedAddr(t)})
		if r.OK || r.CredentialsRefused || r.Definitive || r.Latency != 0 ||
			r.Err == nil || !strings.Contains(r.Err.Error(), "check passcode: open /run/secrets/check") {
			t.Fatalf("Check = %+v, want a failure naming the passcode, before any dial", r)
		}
	})
}

// fakeSTOMP is a STOMP server that answers every CONNECT with reply
// (CONNECTED, or an ERROR after which it closes) and hands the test each
// CONNECT it got. It answers a DISCONNECT's receipt, as a check ends with
// one.
func fakeSTOMP(t *testing.T, reply *frame.Frame) (string, <-chan *frame.Frame) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	connects := make(chan *frame.Frame, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				r, w := frame.NewReader(nc, frame.Limits{}), frame.NewWriter(nc)
				f, err := r.Read()
				if err != nil {
					return
				}
				connects <- f
				if w.Write(reply) != nil || w.Flush() != nil || reply.Command == frame.ERROR {
					return
				}
				r.SetVersion(frame.V12)
				w.SetVersion(frame.V12)
				for {
					f, err := r.Read()
					if err != nil {
						return
					}
					if id, ok := f.Get("receipt"); ok {
						w.Write(frame.New(frame.RECEIPT, "receipt-id", id))
						w.Flush()
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String(), connects
}

// TestSTOMPCheckerHeaders: the check's CONNECT carries the host header
// asked for (RabbitMQ's virtual host), "localhost" by default as before,
// and the login and passcode only when set. A RabbitMQ-style refusal,
// reason in the body, is reported whole.
func TestSTOMPCheckerHeaders(t *testing.T) {
	connected := frame.New(frame.CONNECTED, "version", "1.2")
	for _, tt := range []struct {
		name                  string
		opts                  CheckOptions
		host, login, passcode string // "" for no such header
	}{
		{"defaults", CheckOptions{}, "localhost", "", ""},
		{"virtual host and login", CheckOptions{Host: "/", Login: "checker", Passcode: fixedPasscode("pa:ss")}, "/", "checker", "pa:ss"},
		{"login without passcode", CheckOptions{Host: "vh1", Login: "checker"}, "vh1", "checker", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, connects := fakeSTOMP(t, connected)
			chk, err := NewCheckerWith(KindSTOMP, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if r := chk.Check(ctx, Backend{Addr: addr}); !r.OK {
				t.Fatalf("Check = %+v", r)
			}
			f := <-connects
			for _, h := range []struct{ key, want string }{{"host", tt.host}, {"login", tt.login}, {"passcode", tt.passcode}} {
				if got, ok := f.Get(h.key); got != h.want || ok != (h.want != "") {
					t.Errorf("CONNECT %s: %q (present %v), want %q", h.key, got, ok, h.want)
				}
			}
		})
	}

	t.Run("refused in the body", func(t *testing.T) {
		refusal := frame.New(frame.ERROR, "message", "Bad CONNECT")
		refusal.Body = []byte("Virtual host 'localhost' access denied\n")
		addr, _ := fakeSTOMP(t, refusal)
		chk, err := NewChecker(KindSTOMP)
		if err != nil {
			t.Fatal(err)
		}
		r := chk.Check(context.Background(), Backend{Addr: addr})
		want := "check credentials refused: Bad CONNECT: Virtual host 'localhost' access denied"
		if !r.CredentialsRefused || r.Definitive || r.Err == nil || r.Err.Error() != want {
			t.Fatalf("Check = %+v, want CredentialsRefused with %q", r, want)
		}
	})
}

func TestNewCheckerWithCredentials(t *testing.T) {
	for _, tt := range []struct {
		name string
		kind string
		opts CheckOptions
		want string // in the error; "" for none
	}{
		{"stomp with everything", KindSTOMP, CheckOptions{Login: "c", Passcode: fixedPasscode("p"), Host: "/"}, ""},
		{"login for tcp", KindTCP, CheckOptions{Login: "c"}, `for the "stomp" kind only`},
		{"host for http", KindHTTP, CheckOptions{Host: "/"}, `for the "stomp" kind only`},
		{"passcode without login", KindSTOMP, CheckOptions{Passcode: fixedPasscode("p")}, "needs a login"},
		{"unreadable passcode", KindSTOMP, CheckOptions{Login: "c", Passcode: func() (string, error) { return "", os.ErrNotExist }}, "check passcode: file does not exist"},
		{"empty passcode", KindSTOMP, CheckOptions{Login: "c", Passcode: fixedPasscode("")}, "check passcode: the passcode is empty"},
		{"passcode on two lines", KindSTOMP, CheckOptions{Login: "c", Passcode: fixedPasscode("p\nq")}, "line break"},
		{"host with a line break", KindSTOMP, CheckOptions{Host: "/\nlogin:x"}, "line break"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewCheckerWith(tt.kind, tt.opts)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("NewCheckerWith: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("NewCheckerWith = %v, want an error about %q", err, tt.want)
			}
		})
	}
}

// refusalLines returns the "check credentials refused" and "check
// credentials accepted" log lines so far.
func refusalLines(hook *test.Hook) (refused, accepted []*logrus.Entry) {
	for _, e := range hook.AllEntries() {
		switch {
		case strings.HasPrefix(e.Message, "check credentials refused"):
			refused = append(refused, e)
		case e.Message == "check credentials accepted":
			accepted = append(accepted, e)
		}
	}
	return refused, accepted
}

// TestCredentialsRefusedIsNotDead: a master that starts refusing the
// check's credentials is not taken down at once (the refusal is not
// definitive) but after Fall failed checks, like any failing backend; the
// refusal is one error line, not one per check, with "check credentials
// refused" as its reason, in Status and in the check metric; a check that
// passes again says so once.
func TestCredentialsRefusedIsNotDead(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, Config{}, backends("a", "b"), NewMetrics(reg))
	hook := test.NewLocal(h.mon.log.Logger)
	h.chk.set(t, "a=ok:2 b=ok:1")
	h.start()
	if got := h.states(); got != "a=master b=standby" {
		t.Fatalf("states %q", got)
	}

	h.chk.set(t, "a=denied")
	h.tick()
	h.tick()
	if got := h.states(); got != "a=master b=standby" {
		t.Fatalf("after 2 refused checks: %q, want a still master (fall is 3)", got)
	}
	a := h.mon.Status().Backends[0]
	if !a.CredentialsRefused || a.LastError != "check credentials refused: authentication failed" || a.Failures != 2 {
		t.Fatalf("a: %+v, want its refusal in Status", a)
	}
	h.tick()
	if got, ts := h.states(), h.targets(); got != "a=down b=master" || ts != "b" {
		t.Fatalf("after 3 refused checks: %q, targets %q; want b master", got, ts)
	}
	for range 5 {
		h.tick()
	}
	refused, _ := refusalLines(hook)
	if len(refused) != 1 {
		t.Fatalf("%d refusal lines after 8 refused checks, want 1", len(refused))
	}
	if e := refused[0]; e.Level != logrus.ErrorLevel || e.Data["backend"] != "a" ||
		e.Data["reason"] != "check credentials refused: authentication failed" {
		t.Errorf("refusal logged as %v %q %v", e.Level, e.Message, e.Data)
	}
	for _, e := range hook.AllEntries() {
		if e.Message == "backend down" && e.Data["backend"] == "a" &&
			!strings.Contains(fmt.Sprint(e.Data["reason"]), "check credentials refused: authentication failed") {
			t.Errorf("backend down with reason %q, want it to say the credentials were refused", e.Data["reason"])
		}
	}
	if got := metricValue(t, reg, "handover_health_check_duration_seconds",
		map[string]string{"service": "svc", "backend": "a", "result": "credentials_refused"}); got != 8 {
		t.Errorf("%v checks counted as credentials_refused, want 8", got)
	}

	// A refusal that the broker answers ever more slowly (brokerd slows
	// its answers to repeated failed logins) is still a refusal.
	h.chk.set(t, "a=silent")
	h.tick()
	if !h.mon.Status().Backends[0].CredentialsRefused {
		t.Error("a refused check answered too late is no longer shown as refused")
	}
	h.chk.set(t, "a=denied")
	h.tick()

	// A failure of another kind ends the refusal in Status, but does not
	// make the next refusal news.
	h.chk.set(t, "a=fail")
	h.tick()
	if h.mon.Status().Backends[0].CredentialsRefused {
		t.Error("a plain failure still shown as refused credentials")
	}
	h.chk.set(t, "a=silent")
	h.tick()
	if h.mon.Status().Backends[0].CredentialsRefused {
		t.Error("an unanswered check with no refusal before it shown as refused credentials")
	}
	h.chk.set(t, "a=denied")
	h.tick()
	if refused, _ := refusalLines(hook); len(refused) != 1 {
		t.Fatalf("%d refusal lines, want still 1", len(refused))
	}

	// Put right: said once; refused again later: said again.
	h.chk.set(t, "a=ok:2")
	h.tick()
	h.tick()
	if got := h.states(); got != "a=master b=standby" {
		t.Fatalf("after the credentials were put right: %q", got)
	}
	h.chk.set(t, "a=denied")
	h.tick()
	refused, accepted := refusalLines(hook)
	if len(accepted) != 1 || len(refused) != 2 || h.mon.Status().Backends[0].CredentialsRefused != true {
		t.Fatalf("%d accepted and %d refused lines, want 1 and 2", len(accepted), len(refused))
	}
}

// TestMonitorCheckCredentials: a real Monitor and "stomp" check against
// brokerd requiring a login: with the right credentials it elects the
// broker; with wrong ones the broker stays out, Status and the error line
// saying the check's credentials were refused.
func TestMonitorCheckCredentials(t *testing.T) {
	s := startAuthBroker(t)
	run := func(o CheckOptions) (*Monitor, *test.Hook) {
		chk, err := NewCheckerWith(KindSTOMP, o)
		if err != nil {
			t.Fatal(err)
		}
		// A slow schedule: brokerd answers repeated failures ever more
		// slowly, and the test reads the first.
		mon := NewMonitor("svc", Config{Interval: 5 * time.Second, NoMasterInterval: 5 * time.Second},
			[]Backend{{Addr: s.Addr()}}, chk, nil, testLog(t), nil)
		hook := test.NewLocal(mon.log.Logger)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { mon.Run(ctx) })
		t.Cleanup(func() {
			cancel()
			wg.Wait()
		})
		return mon, hook
	}

	good, _ := run(CheckOptions{Login: "checker", Passcode: fixedPasscode("s3cret"), Host: "/"})
	waitTargets(t, good, []string{s.Addr()}, 10*time.Second)

	bad, hook := run(CheckOptions{Login: "checker", Passcode: fixedPasscode("guess"), Host: "/"})
	testutil.Eventually(t, 10*time.Second, func() error {
		if b := bad.Status().Backends[0]; b.Checks == 0 {
			return errors.New("not checked yet")
		}
		return nil
	})
	b := bad.Status().Backends[0]
	if !b.CredentialsRefused || b.State != StateDown || b.LastError != "check credentials refused: authentication failed" {
		t.Fatalf("backend %+v, want down with its check credentials refused", b)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if refused, _ := refusalLines(hook); len(refused) != 1 {
			return fmt.Errorf("%d refusal lines", len(refused))
		}
		return nil
	})
	for _, e := range hook.AllEntries() {
		if e.Message == "first check failed: backend down" {
			t.Errorf("the refusal is also logged as %q", e.Message)
		}
	}
}
