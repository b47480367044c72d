package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/internal/testutil"
	"handover/proxy/proxytest"
)

// startTLSEcho serves echo over TLS with a certificate of ca (for 127.0.0.1)
// until test cleanup, and returns its address.
func startTLSEcho(t *testing.T, ca *testutil.CA, notBefore time.Time, validity time.Duration) string {
	t.Helper()
	_, _, cert := ca.Issue(t, "broker", notBefore, validity)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(c, c)
				c.(*tls.Conn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// TestTLSOrigination: a plaintext client reaches a TLS backend through the
// service, which verifies the backend's certificate, passes on a
// half-close and counts the bytes proxied (not those of TLS records).
func TestTLSOrigination(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	addr := startTLSEcho(t, ca, time.Now().Add(-time.Hour), 24*time.Hour)
	ts := startService(t, proxytest.NewPicker(addr), func(o *Options) {
		o.TLS = &tls.Config{RootCAs: ca.Pool()}
	})
	if ts.loops != nil {
		t.Fatal("a TLS service must not use the event loops")
	}
	c := ts.dial(t)
	roundTrip(t, c, "hello over TLS")
	roundTrip(t, c, strings.Repeat("x", 3*relayBufSize)) // past a buffer's worth
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("after the half-close: read %d bytes, %v; want EOF", len(b), err)
	}
	want := float64(len("hello over TLS") + 3*relayBufSize)
	ts.waitMetric(t, want, "handover_proxy_bytes_total", "direction", "up")
}

// TestTLSOriginationRefusesBadCertificates: a backend whose certificate
// the service cannot verify is never proxied to, and the error says why.
func TestTLSOriginationRefusesBadCertificates(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	now := time.Now()
	for _, tc := range []struct {
		name string
		addr string
		conf *tls.Config
		want string
	}{
		{"wrong CA", startTLSEcho(t, testutil.NewCA(t, "other CA"), now.Add(-time.Hour), 24*time.Hour),
			&tls.Config{RootCAs: ca.Pool()}, "certificate signed by unknown authority"},
		{"expired", startTLSEcho(t, ca, now.Add(-48*time.Hour), 24*time.Hour),
			&tls.Config{RootCAs: ca.Pool()}, "expired"},
		{"wrong name", startTLSEcho(t, ca, now.Add(-time.Hour), 24*time.Hour),
			&tls.Config{RootCAs: ca.Pool(), ServerName: "broker.example"}, "broker.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := Connector{Picker: proxytest.NewPicker(tc.addr), TLS: tc.conf,
				Settings: Options{Name: "test"}.withDefaults(), DialErrors: NewMetrics(nil).dialErrors}
			_, _, err := conn.Connect(t.Context(), time.Time{}, nil, nil)
			if err == nil || !strings.Contains(err.Error(), "TLS handshake with "+tc.addr) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Connect: %v; want a TLS handshake error with %q", err, tc.want)
			}
		})
	}
}

var _ Conn = (*net.TCPConn)(nil)
var _ Conn = (*tls.Conn)(nil)
