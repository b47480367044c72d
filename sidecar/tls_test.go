package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"handover/brokerd"
	"handover/internal/brokertest"
	"handover/internal/conf"
	"handover/internal/testutil"
	"handover/stompclient"
)

// startTLSBroker runs brokerd in-process with a TLS listener whose
// certificate ca signed, until test cleanup, and returns its TLS address.
func startTLSBroker(t *testing.T, ca *testutil.CA) string {
	t.Helper()
	certFile, keyFile, _ := ca.Issue(t, "broker", time.Now().Add(-time.Hour), 24*time.Hour)
	return startBrokerWith(t, func(o *brokerd.Options) {
		o.TLSListen, o.TLSCert, o.TLSKey = "127.0.0.1:0", certFile, keyFile
	}).TLSAddr()
}

// startBrokerWith runs brokerd in-process, as mod changes its options,
// until test cleanup, and waits for it to serve.
func startBrokerWith(t *testing.T, mod func(*brokerd.Options)) *brokerd.Server {
	t.Helper()
	b := brokertest.Start(t, "", func(o *brokerd.Options) {
		o.ShutdownGrace = conf.Duration(time.Second)
		mod(o)
	})
	b.WaitReady(t)
	return b.Server
}

// TestTLSOriginationThroughSidecar: plaintext STOMP clients reach brokerd's
// TLS listener through the sidecar in both modes, checked over TLS; a
// service whose CA did not sign the broker's certificate has its backend
// down, and the log says why.
func TestTLSOriginationThroughSidecar(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	broker := startTLSBroker(t, ca)
	other := testutil.NewCA(t, "other CA")
	service := func(name, protocol, caFile string) (string, string) {
		listen := testutil.FreePort(t)
		return listen, fmt.Sprintf(`
[[service]]
name = %q
listen = %q
backends = [%q]
protocol = %q
timeout = "2s"
[service.check]
kind = "stomp"
interval = "100ms"
[service.tls]
ca = %q
`, name, listen, broker, protocol, caFile)
	}
	tcpListen, tcpCfg := service("tcp", "tcp", ca.File(t))
	stompListen, stompCfg := service("stomp", "stomp", ca.File(t))
	_, badCfg := service("bad", "tcp", other.File(t))
	h := startSidecar(t, "[log]\nformat = \"json\"\n[admin]\nlisten = \"\"\n"+tcpCfg+stompCfg+badCfg)
	h.waitMaster("tcp", broker)
	h.waitMaster("stomp", broker)

	for _, listen := range []string{tcpListen, stompListen} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := stompclient.Dial(ctx, listen, stompclient.Options{})
		if err != nil {
			t.Fatalf("through %s: %v", listen, err)
		}
		dest := "/queue/tls-" + listen
		sub, err := c.SubscribeReceipt(ctx, dest, stompclient.AckAuto)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SendReceipt(ctx, dest, []byte("over TLS")); err != nil {
			t.Fatal(err)
		}
		if f := testutil.Recv(t, sub, 10*time.Second); string(f.Body) != "over TLS" {
			t.Fatalf("got %q", f.Body)
		}
		c.Close()
	}

	testutil.Eventually(t, 5*time.Second, func() error {
		for _, l := range h.logLines() {
			reason, _ := l["reason"].(string)
			if l["service"] == "bad" && l["backend"] == broker && l["level"] == "warning" &&
				strings.Contains(reason, "TLS handshake with "+broker) && strings.Contains(reason, "certificate signed by unknown authority") {
				return nil
			}
		}
		return fmt.Errorf("no warning that the bad service's backend fails its TLS handshake")
	})
	for _, s := range h.sc.status().Services {
		if s.Name == "bad" && s.Master != "" {
			t.Errorf("service bad has master %q, want none", s.Master)
		}
	}
}

// TestTLSCurves: [service.tls] curves is what the sidecar's ClientHello
// offers, in order; "" leaves Go's default (post-quantum hybrid first); an
// unknown name is refused with the names it takes.
func TestTLSCurves(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	_, _, cert := ca.Issue(t, "127.0.0.1", time.Now().Add(-time.Hour), 24*time.Hour)
	offered := make(chan []tls.CurveID, 1)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			offered <- h.SupportedCurves
			return nil, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	for _, tt := range []struct {
		curves string
		first  tls.CurveID
		n      int
	}{
		{"", tls.X25519MLKEM768, 0},
		{"X25519", tls.X25519, 1},
		{"X25519:P-256", tls.X25519, 2},
	} {
		conf, err := TLSConfig{CA: ca.File(t), Curves: tt.curves}.load()
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), conf)
		if err != nil {
			t.Fatalf("curves %q: %v", tt.curves, err)
		}
		c.Close()
		got := <-offered
		if len(got) == 0 || got[0] != tt.first || tt.n > 0 && len(got) != tt.n {
			t.Errorf("curves %q: offered %v, want %v first (%d in all)", tt.curves, got, tt.first, tt.n)
		}
	}
	if _, err := (TLSConfig{CA: ca.File(t), Curves: "X25519:X448"}).load(); err == nil || !strings.Contains(err.Error(), `unknown key exchange "X448"`) {
		t.Errorf("curves X448: %v", err)
	}
}
