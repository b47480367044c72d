package brokerd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"handover/brokerd/auth"
)

// STOMP over TLS (tls_listen beside or instead of listen), with Go's TLS
// defaults from 1.2 up. With tls_client_ca, clients must present a
// certificate signed by it, and its subject's common name is their user,
// with no login needed: one of the users, with its groups, when there are
// users (see certPrincipal). The certificate and key are read again when their files
// change, so renewing them needs no restart and drops no connection.

// certReloader serves the certificate in certFile and keyFile, reading
// them again when either file's modification time changes (looked at, at
// most, once a second).
type certReloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	mtimes  [2]time.Time
	checked time.Time
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && time.Since(r.checked) < time.Second {
		return r.cert, nil
	}
	r.checked = time.Now()
	var mt [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			if r.cert != nil {
				return r.cert, nil // keep serving the last good one
			}
			return nil, fmt.Errorf("tls: %w", err)
		}
		mt[i] = st.ModTime()
	}
	if r.cert != nil && mt == r.mtimes {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		if r.cert != nil {
			return r.cert, nil // half-written files: try again later
		}
		return nil, fmt.Errorf("tls: %w", err)
	}
	r.cert, r.mtimes = &cert, mt
	return r.cert, nil
}

// tlsConfig builds the STOMP listener's TLS configuration.
func tlsConfig(o *Options) (*tls.Config, error) {
	if o.TLSCert == "" || o.TLSKey == "" {
		return nil, errors.New("tls_listen needs tls_cert and tls_key")
	}
	r, err := newCertReloader(o.TLSCert, o.TLSKey)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.get() },
	}
	if o.TLSClientCA != "" {
		pem, err := os.ReadFile(o.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls_client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls_client_ca: no certificate in %s", o.TLSClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// certPrincipal is the user a verified client certificate names, if the
// connection has one. With users (a users file or table), the name must be
// one of them, as with ActiveMQ's certificate login module, so that
// removing a user revokes the certificates issued to it; otherwise the
// client logs in as any other. Without users, the name is the user.
func (c *conn) certPrincipal() (auth.Principal, bool) {
	tc, ok := c.nc.(*tls.Conn)
	if !ok {
		return auth.Principal{}, false
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return auth.Principal{}, false
	}
	cn := st.PeerCertificates[0].Subject.CommonName
	if cn == "" {
		return auth.Principal{}, false
	}
	if c.s.users != nil {
		return c.s.users.Users().Lookup(cn)
	}
	return auth.Principal{User: cn}, true
}
