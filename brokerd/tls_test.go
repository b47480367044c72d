package brokerd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"handover/brokerd/auth"
	"handover/frame"
	"handover/internal/testutil"
)

// TestTLS: clients reach brokerd over TLS; a client certificate signed by
// tls_client_ca names the user (authorization applies to it), a wrong CA
// or an expired certificate fails the handshake with a clear log line, and
// a renewed certificate is served without a restart.
func TestTLS(t *testing.T) {
	ca := testutil.NewCA(t, "handover test CA")
	certFile, keyFile, _ := ca.Issue(t, "brokerd", time.Now().Add(-time.Hour), 24*time.Hour)
	_, _, alice := ca.Issue(t, "alice", time.Now().Add(-time.Hour), 24*time.Hour)
	_, _, expired := ca.Issue(t, "alice", time.Now().Add(-48*time.Hour), time.Hour)
	other := testutil.NewCA(t, "another CA")
	_, _, stranger := other.Issue(t, "alice", time.Now().Add(-time.Hour), 24*time.Hour)

	s := startServer(t, t.TempDir(), func(o *Options) {
		o.TLSListen, o.TLSCert, o.TLSKey, o.TLSClientCA = "127.0.0.1:0", certFile, keyFile, ca.File(t)
		o.Authorization = auth.Rules{{Destination: "/queue/secure", Read: []string{"alice"}, Write: []string{"alice"}}}
	})
	s.waitReady(t)
	tlsDial := func(cert tls.Certificate) (*tls.Conn, error) {
		return tls.Dial("tcp", s.TLSAddr(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}})
	}
	c, err := tlsDial(alice)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := frame.NewReader(c, frame.Limits{MaxBody: -1})
	c.Write([]byte("CONNECT\naccept-version:1.2\nhost:/\n\n\x00SEND\ndestination:/queue/secure\nreceipt:r\n\nover tls\x00"))
	for _, want := range []string{frame.CONNECTED, frame.RECEIPT} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if f, err := r.Read(); err != nil || f.Command != want {
			t.Fatalf("over TLS as alice: %v, %v; want %s", f, err, want)
		}
	}
	for name, cert := range map[string]tls.Certificate{"expired": expired, "another CA": stranger} {
		c, err := tlsDial(cert)
		if err == nil {
			// TLS 1.3: the server's verdict on the client comes with the
			// first read.
			c.Write([]byte("CONNECT\naccept-version:1.2\n\n\x00"))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = frame.NewReader(c, frame.Limits{}).Read()
			c.Close()
		}
		if err == nil {
			t.Errorf("a client certificate from %s was accepted", name)
		}
	}
	// A client that does not trust the server's CA fails on its side.
	if _, err := tls.Dial("tcp", s.TLSAddr(), &tls.Config{RootCAs: other.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{alice}}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client trusting another CA: %v", err)
	}
	// A renewed certificate is served without a restart.
	newCert, newKey, renewed := ca.Issue(t, "brokerd", time.Now().Add(-time.Hour), 48*time.Hour)
	for _, f := range [][2]string{{newCert, certFile}, {newKey, keyFile}} {
		b, _ := os.ReadFile(f[0])
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
		later := time.Now().Add(time.Minute) // a new mtime, whatever the clock's resolution
		os.Chtimes(f[1], later, later)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		c, err := tlsDial(alice)
		if err != nil {
			return err
		}
		defer c.Close()
		if got := c.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(renewed.Leaf.SerialNumber) != 0 {
			return fmt.Errorf("serving certificate %v, want the renewed %v", got, renewed.Leaf.SerialNumber)
		}
		return nil
	})
	// The plain listener still serves, without certificate users.
	p := dial(t, s.Addr())
	if err := p.SendReceipt(ctx5(t), "/queue/secure", []byte("x")); err == nil || !strings.Contains(err.Error(), "not authorized") {
		t.Errorf("anonymous SEND to a queue only alice may write: %v", err)
	}
}

// TestTLSCertUsers: with users, a client certificate logs in only a user
// it names (with the user's groups), and removing the user revokes it; a
// certificate naming nobody leaves the client to log in with a password.
func TestTLSCertUsers(t *testing.T) {
	ca := testutil.NewCA(t, "handover test CA")
	certFile, keyFile, _ := ca.Issue(t, "brokerd", time.Now().Add(-time.Hour), 24*time.Hour)
	_, _, alice := ca.Issue(t, "alice", time.Now().Add(-time.Hour), 24*time.Hour)
	_, _, mallory := ca.Issue(t, "mallory", time.Now().Add(-time.Hour), 24*time.Hour)
	users := usersFile(t, map[string]string{"alice:ops": "a", "bob": "b"})
	s := startServer(t, t.TempDir(), func(o *Options) {
		o.TLSListen, o.TLSCert, o.TLSKey, o.TLSClientCA = "127.0.0.1:0", certFile, keyFile, ca.File(t)
		o.UsersFile = users
		o.Authorization = auth.Rules{{Destination: "/queue/ops", Write: []string{"group:ops"}}}
	})
	s.waitReady(t)
	// connect sends CONNECT (with login, if not "") and a SEND to
	// /queue/ops, and returns the commands answered.
	connect := func(cert tls.Certificate, login string) []string {
		t.Helper()
		c, err := tls.Dial("tcp", s.TLSAddr(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("CONNECT\naccept-version:1.2\nhost:/\n" + login + "\n\x00SEND\ndestination:/queue/ops\nreceipt:r\n\nx\x00"))
		r := frame.NewReader(c, frame.Limits{MaxBody: -1})
		var got []string
		for {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			f, err := r.Read()
			if err != nil {
				return got
			}
			got = append(got, f.Command)
			if f.Command != frame.CONNECTED {
				return got
			}
		}
	}
	for _, tt := range []struct {
		name  string
		cert  tls.Certificate
		login string
		want  string
	}{
		{"a user's certificate, in its group", alice, "", "CONNECTED RECEIPT"},
		{"nobody's certificate", mallory, "", "ERROR"},
		{"nobody's certificate, with a login not in the group", mallory, "login:bob\npasscode:b\n", "CONNECTED ERROR"},
	} {
		if got := strings.Join(connect(tt.cert, tt.login), " "); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
	if err := os.Rename(usersFile(t, map[string]string{"bob": "b"}), users); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if _, ok := s.users.Users().Lookup("alice"); ok {
			return errors.New("alice is still a user")
		}
		return nil
	})
	if got := strings.Join(connect(alice, ""), " "); got != "ERROR" {
		t.Errorf("alice's certificate after her removal: %s, want ERROR", got)
	}
}
