//go:build linux

// Package rawsock reads and writes non-blocking sockets with raw system
// calls, for data paths that do their own waiting through a
// syscall.RawConn.
//
// A plain syscall.Read or Write tells the Go scheduler that the call may
// block: after an idle spell the first such call wakes the runtime's monitor
// thread, which then polls every 20 µs and hands the goroutine's P to
// another thread whenever a call looks slow. On a non-blocking socket the
// call cannot block, so that churn (a futex wake and a context switch or two
// per message on a small host) buys nothing; RawSyscall skips it.
package rawsock

import (
	"errors"
	"syscall"
	"unsafe"
)

// ErrWouldBlock is EAGAIN: nothing to read yet, or the send buffer is full.
var ErrWouldBlock = errors.New("operation would block")

// Read reads once from the non-blocking socket fd: ErrWouldBlock when there
// is nothing to read yet, (0, nil) at EOF.
func Read(fd uintptr, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e != syscall.EINTR {
			return outcome(n, e)
		}
	}
}

// Send writes b to the socket fd once, as far as its send buffer takes it,
// without blocking: ErrWouldBlock when the buffer is full. A peer that is
// gone is EPIPE (MSG_NOSIGNAL), without a SIGPIPE for the runtime to field.
func Send(fd uintptr, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			syscall.MSG_NOSIGNAL|syscall.MSG_DONTWAIT, 0, 0)
		if e != syscall.EINTR {
			return outcome(n, e)
		}
	}
}

// outcome is Read's and Send's result for a call that returned n and e.
func outcome(n uintptr, e syscall.Errno) (int, error) {
	switch e {
	case 0:
		return int(n), nil
	case syscall.EAGAIN:
		return 0, ErrWouldBlock
	}
	return 0, e
}
