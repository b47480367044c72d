package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"handover/internal/testutil"
	"handover/stompclient"
)

// secrets are a Secure cluster's: a CA made for the test, the brokers'
// certificate (for 127.0.0.1), a users file with the sidecar's login, and
// the sidecar's passcode file.
type secrets struct {
	ca                        *testutil.CA
	caFile, certFile, keyFile string
	usersFile, passcodeFile   string
	hash                      string // the sidecar's password's, for a users table
}

// secureLogin is the login the sidecar presents to the brokers.
const secureLogin = "sidecar"

func newSecrets(t testing.TB, dir string) *secrets {
	t.Helper()
	ca := testutil.NewCA(t, "e2e CA")
	s := &secrets{ca: ca, caFile: ca.File(t)}
	s.certFile, s.keyFile, _ = ca.Issue(t, "127.0.0.1", time.Now().Add(-time.Hour), 24*time.Hour)
	const passcode = "e2e-sidecar-passcode"
	hash, err := bcrypt.GenerateFromPassword([]byte(passcode), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	s.hash = string(hash)
	s.usersFile = filepath.Join(dir, "users")
	s.passcodeFile = filepath.Join(dir, "sidecar-passcode")
	for path, text := range map[string]string{s.usersFile: secureLogin + ":" + string(hash) + "\n", s.passcodeFile: passcode + "\n"} {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// brokerConfig writes broker b's own config file: the cluster's (base),
// then TLS only on b.Listen and logins required, from the users file or,
// with table, the store's users table (see addTableUser).
func (s *secrets) brokerConfig(t testing.TB, dir string, b *Broker, base string, table bool) string {
	t.Helper()
	path := filepath.Join(dir, b.Name+".toml")
	users := fmt.Sprintf("users_file = %q", s.usersFile)
	if table {
		users = "users_table = true"
	}
	text := fmt.Sprintf("%s\ntls_listen = %q\ntls_cert = %q\ntls_key = %q\n%s\n",
		base, b.Listen, s.certFile, s.keyFile, users)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// sidecarTables are the service's TLS and credentials tables.
func (s *secrets) sidecarTables() string {
	return fmt.Sprintf("[service.tls]\nca = %q\n[service.credentials]\nlogin = %q\npasscode_file = %q\n",
		s.caFile, secureLogin, s.passcodeFile)
}

// SecureRefusals checks that broker b, of a Secure cluster, refuses what it
// must: a plain-TCP STOMP client, and over TLS a client without a login
// ("authentication failed").
func (c *Cluster) SecureRefusals(b *Broker) error {
	if c.sec == nil {
		return errors.New("not a Secure cluster")
	}
	ctx, cancel := context.WithTimeout(c.t.Context(), 10*time.Second)
	defer cancel()
	if conn, err := stompclient.Dial(ctx, b.Listen, stompclient.Options{ConnectTimeout: 5 * time.Second}); err == nil {
		conn.Close()
		return fmt.Errorf("%s let a plain-TCP client in on %s", b.Name, b.Listen)
	}
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", b.Listen, &tls.Config{RootCAs: c.sec.ca.Pool()})
	if err != nil {
		return fmt.Errorf("TLS to %s: %w", b.Name, err)
	}
	conn, err := stompclient.NewConn(ctx, nc, stompclient.Options{ConnectTimeout: 5 * time.Second})
	var refusal *stompclient.ServerError
	switch {
	case err == nil:
		conn.Close()
		return fmt.Errorf("%s let a client without a login in over TLS", b.Name)
	case !errors.As(err, &refusal) || refusal.Message != "authentication failed":
		return fmt.Errorf("%s, a client without a login over TLS: %v, want ERROR authentication failed", b.Name, err)
	}
	return nil
}

// addTableUser puts the sidecar's login in the users table of a Secure
// cluster on PostgreSQL, once master b has created the table, and waits
// for b to read it.
func (c *Cluster) addTableUser(b *Broker) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.pg.Conn().Exec(ctx, "INSERT INTO handover_users VALUES ($1, $2, '')", secureLogin, c.sec.hash); err != nil {
		return fmt.Errorf("adding the sidecar's login to the users table: %w", err)
	}
	return c.waitUsers(b, 1, 10*time.Second)
}

// waitUsers waits for broker b's /status to count n users in force.
func (c *Cluster) waitUsers(b *Broker, n int, timeout time.Duration) error {
	return poll(timeout, func() error {
		st, err := c.Status(b)
		if err != nil {
			return err
		}
		if st.Users == nil || st.Users.Count != n {
			return fmt.Errorf("%s has users %+v, want %d", b.Name, st.Users, n)
		}
		return nil
	})
}
