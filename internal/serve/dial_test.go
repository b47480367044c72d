package serve

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestBackendDialer: the backend Dialer (whose Control hook starts the
// connect itself on Linux) reaches IPv4, IPv6 and named addresses, and
// reports a refused port as net would.
func TestBackendDialer(t *testing.T) {
	v4 := startEcho(t, "")
	_, port, _ := net.SplitHostPort(v4)
	for _, tt := range []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"ipv4", func(*testing.T) string { return v4 }},
		{"ipv6", func(t *testing.T) string {
			probe, err := net.Listen("tcp6", "[::1]:0")
			if err != nil {
				t.Skipf("no tcp6 loopback here: %v", err)
			}
			probe.Close()
			return startEcho(t, "[::1]:0")
		}},
		{"name", func(*testing.T) string { return net.JoinHostPort("localhost", port) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.addr(t)
			d := backendDialer(time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				if tt.name == "name" {
					t.Skipf("localhost does not resolve to 127.0.0.1 here: %v", err)
				}
				t.Fatal(err)
			}
			defer c.Close()
			roundTrip(t, c.(*net.TCPConn), "ping")
		})
	}

	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		d := backendDialer(time.Second)
		c, err := d.DialContext(context.Background(), "tcp", addr)
		if err == nil {
			c.Close()
			t.Fatal("dial to a closed port succeeded")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial to a closed port: %v, want connection refused", err)
		}
	})
}
