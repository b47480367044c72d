//go:build linux

package rawsock

import (
	"syscall"
	"unsafe"
)

// The calls an event loop makes for every connection, raw for the reason
// the package comment gives. None of them blocks: the sockets are
// non-blocking, and EpollWaitRaw is the one exception, kept short by its
// caller.

// Accept4 accepts one connection on the listening socket fd, non-blocking
// and close-on-exec: ErrWouldBlock when none is waiting.
func Accept4(fd int) (int, error) {
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, uintptr(fd), 0, 0,
			syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
		if e != syscall.EINTR {
			return outcome(n, e)
		}
	}
}

// Socket opens a non-blocking, close-on-exec TCP socket of family
// (syscall.AF_INET or AF_INET6).
func Socket(family int) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family),
		syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// Close closes fd. Errors are not reported: on Linux the descriptor is
// gone whatever close(2) says, and a socket has nothing left to flush
// that an error would tell about.
func Close(fd int) {
	syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
}

// SocketError reads and clears the socket's pending error (SO_ERROR): the
// outcome of a non-blocking connect.
func SocketError(fd int) error {
	var v int32
	l := uint32(unsafe.Sizeof(v))
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), syscall.SOL_SOCKET, syscall.SO_ERROR,
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	if v != 0 {
		return syscall.Errno(v)
	}
	return nil
}

// Splice moves up to n bytes from rfd to wfd, one of which is a pipe,
// without blocking on either: ErrWouldBlock when there is nothing to move
// or no room, (0, nil) at the reading side's EOF.
func Splice(rfd, wfd, n int) (int, error) {
	const flags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK
	for {
		m, _, e := syscall.RawSyscall6(syscall.SYS_SPLICE, uintptr(rfd), 0, uintptr(wfd), 0, uintptr(n), flags)
		if e != syscall.EINTR {
			return outcome(m, e)
		}
	}
}

// EpollWaitRaw waits up to msec milliseconds for events on the epoll
// instance epfd, holding the goroutine's P meanwhile: call it with 0, to
// collect what is ready without the scheduler's bookkeeping; a wait that
// held the P would keep other goroutines from running. Interrupted (EINTR,
// as the runtime's preemption signal does), it returns 0 events.
func EpollWaitRaw(epfd int, events []syscall.EpollEvent, msec int) int {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0
	}
	return int(n)
}
