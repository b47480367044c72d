package testutil

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// ServeEcho writes back whatever each connection ln accepts sends, then
// half-closes it (a TLS connection sends close_notify), until test
// cleanup closes ln and waits for the connections, each of which may live
// 10 s. It returns ln's address: a backend for proxy tests.
func ServeEcho(t testing.TB, ln net.Listener) string {
	t.Helper()
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
				if hc, ok := c.(interface{ CloseWrite() error }); ok {
					hc.CloseWrite()
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// RoundTrip writes msg on c and expects it echoed within 5 s.
func RoundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read echo of %q: %v", msg, err)
	}
	if string(buf) != msg {
		t.Fatalf("echo: got %q, want %q", buf, msg)
	}
}
