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
		if err != syscall.EINTR {
			return outcome(n, err)
		}
	}
}

// Send writes b to the socket fd once, as far as its send buffer takes it,
// without blocking: ErrWouldBlock when the buffer is full.
func Send(fd uintptr, b []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), b)
		if err != syscall.EINTR {
			return outcome(n, err)
		}
	}
}

// outcome is Read's and Send's result for a call that returned n and err.
func outcome(n int, err error) (int, error) {
	switch err {
	case nil:
		return n, nil
	case syscall.EAGAIN:
		return 0, ErrWouldBlock
	}
	return 0, err
}
