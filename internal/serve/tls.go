package serve

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
)

// Conn is a connection to a backend as the data paths hold it: a
// *net.TCPConn, or a *tls.Conn over one when the service speaks TLS to its
// backends (Settings.TLS). CloseWrite passes on a client's half-close: on a
// TLS connection it sends close_notify, then the FIN.
type Conn interface {
	net.Conn
	CloseWrite() error
}

// tlsFor returns conf for a connection to addr: conf itself when it names
// its ServerName, else a copy with ServerName set to addr's host, as
// tls.Dial does. The broker's certificate must then be valid for the
// address the backend was listed by (a host name, or an IP address in the
// certificate's IP SANs).
func tlsFor(conf *tls.Config, addr string) *tls.Config {
	if conf.ServerName != "" {
		return conf
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	c := conf.Clone()
	c.ServerName = host
	return c
}

// startTLS runs the client's TLS handshake on nc, a connection just dialed
// to addr, bounded by ctx. On failure it closes nc and returns an error
// that names what failed, for the logs: the verification error (unknown
// authority, expired, a name the certificate does not hold) as Go's
// crypto/x509 words it.
func startTLS(ctx context.Context, nc *net.TCPConn, addr string, conf *tls.Config) (*tls.Conn, error) {
	c := tlsFor(conf, addr)
	tc := tls.Client(nc, c)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("TLS handshake with %s (server name %q): %w", addr, c.ServerName, err)
	}
	return tc, nil
}
