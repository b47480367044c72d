package serve

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"handover/internal/testutil"
	"handover/proxy/proxytest"
)

// TestConnectRefusesBadCertificates: a backend whose certificate the
// Connector cannot verify is never connected to, and the error says why.
func TestConnectRefusesBadCertificates(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	now := time.Now()
	for _, tc := range []struct {
		name string
		addr string
		conf *tls.Config
		want string
	}{
		{"wrong CA", proxytest.TLSEcho(t, testutil.NewCA(t, "other CA"), now.Add(-time.Hour), 24*time.Hour),
			&tls.Config{RootCAs: ca.Pool()}, "certificate signed by unknown authority"},
		{"expired", proxytest.TLSEcho(t, ca, now.Add(-48*time.Hour), 24*time.Hour),
			&tls.Config{RootCAs: ca.Pool()}, "expired"},
		{"wrong name", proxytest.TLSEcho(t, ca, now.Add(-time.Hour), 24*time.Hour),
			&tls.Config{RootCAs: ca.Pool(), ServerName: "broker.example"}, "broker.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dialErrors := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dial_errors"}, []string{"service", "backend"})
			conn := Connector{Picker: proxytest.NewPicker(tc.addr), TLS: tc.conf,
				Settings: Settings{Name: "test"}.WithDefaults(), DialErrors: dialErrors}
			_, _, err := conn.Connect(t.Context(), time.Time{}, nil, nil)
			if err == nil || !strings.Contains(err.Error(), "TLS handshake with "+tc.addr) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Connect: %v; want a TLS handshake error with %q", err, tc.want)
			}
		})
	}
}

var _ Conn = (*net.TCPConn)(nil)
var _ Conn = (*tls.Conn)(nil)
