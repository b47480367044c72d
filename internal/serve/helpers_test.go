package serve

import (
	"net"
	"testing"

	"handover/internal/testutil"
)

// startEcho serves echo on addr ("" for any loopback port) until test
// cleanup, and returns the address bound.
func startEcho(t testing.TB, addr string) string {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return testutil.ServeEcho(t, ln)
}

// roundTrip writes msg and expects it echoed.
func roundTrip(t testing.TB, c net.Conn, msg string) { testutil.RoundTrip(t, c, msg) }
