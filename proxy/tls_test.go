package proxy

import (
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"

	"handover/internal/testutil"
	"handover/proxy/proxytest"
)

// TestTLSOrigination: a plaintext client reaches a TLS backend through the
// service, which verifies the backend's certificate, passes on a
// half-close and counts the bytes proxied (not those of TLS records).
func TestTLSOrigination(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	addr := proxytest.TLSEcho(t, ca, time.Now().Add(-time.Hour), 24*time.Hour)
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
