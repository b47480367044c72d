package stompproxy

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"handover/brokerd"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
	"handover/stompclient"
)

// startTLSBroker runs brokerd with a TLS listener whose certificate ca
// signed, and returns it ready.
func startTLSBroker(t *testing.T, ca *testutil.CA) *broker {
	t.Helper()
	certFile, keyFile, _ := ca.Issue(t, "broker", time.Now().Add(-time.Hour), 24*time.Hour)
	b := startBrokerWith(t, t.TempDir(), "", func(o *brokerd.Options) {
		o.TLSListen, o.TLSCert, o.TLSKey = "127.0.0.1:0", certFile, keyFile
	})
	b.WaitReady(t)
	return b
}

// TestTLSUpstream: a plaintext STOMP client's session reaches brokerd's TLS
// listener through the sidecar, and a broker whose certificate is not
// trusted is never reached.
func TestTLSUpstream(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	b := startTLSBroker(t, ca)
	s := startService(t, proxytest.NewPicker(b.TLSAddr()), func(o *Options) {
		o.TLS = &tls.Config{RootCAs: ca.Pool()}
	})
	c := dialClient(t, s.Addr().String(), stompclient.Options{})
	sub, err := c.SubscribeReceipt(ctxT(t, 5*time.Second), "/queue/tls", stompclient.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendReceipt(ctxT(t, 5*time.Second), "/queue/tls", []byte("over TLS")); err != nil {
		t.Fatal(err)
	}
	if f := recv(t, sub); string(f.Body) != "over TLS" {
		t.Fatalf("got %q", f.Body)
	}

	t.Run("wrong CA", func(t *testing.T) {
		other := testutil.NewCA(t, "other CA")
		s := startService(t, proxytest.NewPicker(b.TLSAddr()), func(o *Options) {
			o.TLS = &tls.Config{RootCAs: other.Pool()}
			o.Timeout = -1 // one round, no holding
		})
		ctx := ctxT(t, 5*time.Second)
		if c, err := stompclient.Dial(ctx, s.Addr().String(), stompclient.Options{}); err == nil {
			c.Close()
			t.Fatal("a session reached a broker whose certificate is not trusted")
		} else if strings.Contains(err.Error(), "CONNECTED") {
			t.Fatalf("unexpected error: %v", err)
		}
	})
}
