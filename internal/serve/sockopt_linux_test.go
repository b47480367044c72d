package serve

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
)

// TestProbeFree: a listen address another socket holds is refused, whether
// that socket set SO_REUSEPORT (another sidecar) or not; a free one, port
// 0, and one whose only sockets are connections left by a closed listener
// (a reload's drain) are not. (proxy's TestNewRefusesTakenAddress checks
// that New asks.)
func TestProbeFree(t *testing.T) {
	lc := ListenConfig(0) // SO_REUSEPORT, as another sidecar binds
	shared, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, addr := range []string{shared.Addr().String(), plain.Addr().String()} {
		if err := ProbeFree(addr); !errors.Is(err, ErrAddrInUse) || !strings.Contains(err.Error(), "another process") {
			t.Errorf("ProbeFree(%s) = %v, want ErrAddrInUse", addr, err)
		}
	}
	if err := ProbeFree("127.0.0.1:0"); err != nil {
		t.Errorf("port 0: %v", err)
	}

	// A listener that accepted a connection and closed: the connection
	// lives on (draining) and the port is free for the next listener.
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	ln.Close()
	if err := ProbeFree(ln.Addr().String()); err != nil {
		t.Errorf("port with a draining connection: %v", err)
	}
}
