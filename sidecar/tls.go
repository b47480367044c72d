package sidecar

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// TLSConfig is a service's [service.tls] table: TLS from the sidecar to
// its brokers (TLS origination), so that a client that speaks only plain
// TCP to localhost gets an encrypted, authenticated link to the broker.
// An empty table (every field "") means plain TCP.
type TLSConfig struct {
	// CA is the PEM file of the certificate authorities the brokers'
	// certificates must chain to. Required: the broker's certificate is
	// always verified, there is no insecure mode.
	CA string `toml:"ca"`
	// ServerName is the name the broker's certificate must hold; "" means
	// each backend's own host (a name, or an IP address in the
	// certificate's IP SANs).
	ServerName string `toml:"server_name"`
	// Cert and Key are the PEM files of a client certificate, for brokers
	// that ask for one (brokerd's tls_client_ca); both or neither.
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
	// Curves are the key exchanges offered, in order of preference,
	// colon-separated as OpenSSL and HAProxy's `curves` write them:
	// X25519MLKEM768, X25519, P-256, P-384, P-521. "" is Go's default,
	// which puts the hybrid post-quantum X25519MLKEM768 first: a recorded
	// session cannot be decrypted later by a quantum computer, at a cost
	// of a fifth to a third of the sidecar's rate of new connections to
	// TLS brokers (docs/benchmarks.md). "X25519" is what HAProxy with OpenSSL 3.0
	// offers first.
	Curves string `toml:"curves"`
}

// curveIDs are the names Curves accepts.
var curveIDs = map[string]tls.CurveID{
	"X25519MLKEM768": tls.X25519MLKEM768,
	"X25519":         tls.X25519,
	"P-256":          tls.CurveP256,
	"P-384":          tls.CurveP384,
	"P-521":          tls.CurveP521,
}

// curves parses Curves: nil for "" (Go's default).
func (t TLSConfig) curves() ([]tls.CurveID, error) {
	if t.Curves == "" {
		return nil, nil
	}
	var ids []tls.CurveID
	for _, name := range strings.Split(t.Curves, ":") {
		id, ok := curveIDs[name]
		if !ok {
			return nil, fmt.Errorf("curves: unknown key exchange %q (want X25519MLKEM768, X25519, P-256, P-384 or P-521, colon-separated)", name)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// enabled reports whether the table asks for TLS at all.
func (t TLSConfig) enabled() bool { return t != TLSConfig{} }

// load reads the files and returns the client configuration, nil if TLS
// is off. TLS 1.2 at least, as brokerd requires; sessions are resumed
// across reconnects (a cache per service), which spares the brokers a
// full handshake on every failover storm.
func (t TLSConfig) load() (*tls.Config, error) {
	if !t.enabled() {
		return nil, nil
	}
	if t.CA == "" {
		return nil, errors.New("ca: required (the PEM file of the CA that signed the brokers' certificates)")
	}
	pem, err := os.ReadFile(t.CA)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca: %s holds no PEM certificate", t.CA)
	}
	curves, err := t.curves()
	if err != nil {
		return nil, err
	}
	c := &tls.Config{
		RootCAs:            pool,
		ServerName:         t.ServerName,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(0),
		CurvePreferences:   curves,
	}
	switch {
	case t.Cert != "" && t.Key != "":
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("cert, key: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	case t.Cert != "" || t.Key != "":
		return nil, errors.New("cert and key: give both or neither")
	}
	return c, nil
}

// fingerprint is what a reload compares to tell whether the TLS settings
// changed: the table and the files' contents, so that a renewed CA or
// client certificate under the same paths is picked up by SIGHUP. Files
// that cannot be read count as changed (the reload then reports why).
func (t TLSConfig) fingerprint() string {
	if !t.enabled() {
		return ""
	}
	s := fmt.Sprintf("%q %q %q %q %q", t.CA, t.ServerName, t.Cert, t.Key, t.Curves)
	for _, f := range []string{t.CA, t.Cert, t.Key} {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return s + " unreadable " + err.Error()
		}
		s += "\x00" + string(b)
	}
	return s
}
