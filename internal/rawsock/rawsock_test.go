package rawsock

import (
	"bytes"
	"errors"
	"syscall"
	"testing"
)

// socketpair returns two connected non-blocking stream sockets.
func socketpair(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if err := syscall.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { syscall.Close(fds[0]); syscall.Close(fds[1]) })
	return fds[0], fds[1]
}

func TestReadSend(t *testing.T) {
	a, b := socketpair(t)
	buf := make([]byte, 64)

	if n, err := Read(uintptr(a), buf); n != 0 || err != ErrWouldBlock {
		t.Fatalf("Read of an empty socket = %d, %v; want 0, ErrWouldBlock", n, err)
	}
	if n, err := Read(uintptr(a), nil); n != 0 || err != nil {
		t.Fatalf("Read into an empty buffer = %d, %v; want 0, nil", n, err)
	}
	if n, err := Send(uintptr(b), []byte("hello")); n != 5 || err != nil {
		t.Fatalf("Send = %d, %v; want 5, nil", n, err)
	}
	if n, err := Read(uintptr(a), buf); n != 5 || err != nil || !bytes.Equal(buf[:n], []byte("hello")) {
		t.Fatalf("Read = %d %q, %v; want hello", n, buf[:n], err)
	}

	// Fill b's send buffer (and a's receive buffer): Send never blocks.
	chunk := make([]byte, 64<<10)
	total := 0
	for {
		n, err := Send(uintptr(b), chunk)
		total += n
		if err == ErrWouldBlock {
			break
		}
		if err != nil {
			t.Fatalf("Send after %d bytes: %v", total, err)
		}
		if total > 64<<20 {
			t.Fatal("Send never reported a full buffer")
		}
	}
	if total == 0 {
		t.Fatal("nothing was sent before the buffer was full")
	}

	// EOF, and a peer that is gone: EPIPE, not a SIGPIPE that kills us.
	if err := syscall.Shutdown(a, syscall.SHUT_RDWR); err != nil {
		t.Fatal(err)
	}
	if _, err := Send(uintptr(b), []byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("Send to a closed peer: %v, want EPIPE", err)
	}
	c, d := socketpair(t)
	if err := syscall.Shutdown(d, syscall.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	if n, err := Read(uintptr(c), buf); n != 0 || err != nil {
		t.Fatalf("Read at EOF = %d, %v; want 0, nil", n, err)
	}
}
