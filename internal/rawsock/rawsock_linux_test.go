package rawsock

import (
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// TestConnectShutdownSetsockopt: Connect reaches a listener (in progress
// or at once), SetsockoptInt sets an option, and Shutdown's FIN reaches
// the peer as EOF.
func TestConnectShutdownSetsockopt(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := SetsockoptInt(uintptr(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1); err != nil {
		t.Fatal(err)
	}
	if v, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); err != nil || v != 1 {
		t.Fatalf("SO_KEEPALIVE = %d, %v; want 1", v, err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	if err := Connect(uintptr(fd), addr); err != nil && err != syscall.EINPROGRESS {
		t.Fatalf("Connect: %v", err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := Shutdown(uintptr(fd), syscall.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("peer read after Shutdown = %d, %v; want EOF", n, err)
	}

	// A refused port: the error comes from Connect or, in progress, from
	// SO_ERROR.
	free, _ := net.Listen("tcp4", "127.0.0.1:0")
	faddr := netip.MustParseAddrPort(free.Addr().String())
	free.Close()
	fd2, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd2)
	err = Connect(uintptr(fd2), faddr)
	if err == syscall.EINPROGRESS {
		for range 500 {
			if e, _ := syscall.GetsockoptInt(fd2, syscall.SOL_SOCKET, syscall.SO_ERROR); e != 0 {
				err = syscall.Errno(e)
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err != syscall.ECONNREFUSED {
		t.Fatalf("Connect to a closed port: %v, want ECONNREFUSED", err)
	}
}
