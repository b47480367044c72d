package sidecar

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
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
	c := &tls.Config{
		RootCAs:            pool,
		ServerName:         t.ServerName,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(0),
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
	s := fmt.Sprintf("%q %q %q %q", t.CA, t.ServerName, t.Cert, t.Key)
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
