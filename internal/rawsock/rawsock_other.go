//go:build unix && !linux

package rawsock

import (
	"errors"
	"syscall"
)

// ErrWouldBlock is EAGAIN: nothing to read yet, or the send buffer is full.
var ErrWouldBlock = errors.New("operation would block")

// Read reads once from the non-blocking socket fd: ErrWouldBlock when there
// is nothing to read yet, (0, nil) at EOF.
func Read(fd uintptr, b []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), b)
		switch err {
		case nil:
			return n, nil
		case syscall.EINTR:
		case syscall.EAGAIN:
			return 0, ErrWouldBlock
		default:
			return 0, err
		}
	}
}

// Send writes b to the socket fd once, as far as its send buffer takes it,
// without blocking: ErrWouldBlock when the buffer is full.
func Send(fd uintptr, b []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), b)
		switch err {
		case nil:
			return n, nil
		case syscall.EINTR:
		case syscall.EAGAIN:
			return 0, ErrWouldBlock
		default:
			return 0, err
		}
	}
}
