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
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

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

// SetsockoptInt sets an int socket option on fd without the scheduler's
// may-block path: setting an option never blocks.
func SetsockoptInt(fd uintptr, level, opt, value int) error {
	v := int32(value)
	_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&v)), unsafe.Sizeof(v), 0)
	if e != 0 {
		return e
	}
	return nil
}

// Connect starts connecting the non-blocking socket fd to addr:
// syscall.EINPROGRESS while the handshake goes on, nil once connected. On
// loopback the kernel runs the whole handshake inside this call, the
// costliest system call a dial makes, so it is worth keeping off the
// scheduler's may-block path (whose monitor hands the P to another thread
// when a call takes more than 20 µs).
func Connect(fd uintptr, addr netip.AddrPort) error {
	var sa unsafe.Pointer
	var n uintptr
	var sa4 syscall.RawSockaddrInet4
	var sa6 syscall.RawSockaddrInet6
	ip := addr.Addr()
	port := addr.Port()
	if ip.Is4() {
		sa4.Family = syscall.AF_INET
		sa4.Port = port<<8 | port>>8 // network byte order
		sa4.Addr = ip.As4()
		sa, n = unsafe.Pointer(&sa4), syscall.SizeofSockaddrInet4
	} else {
		sa6.Family = syscall.AF_INET6
		sa6.Port = port<<8 | port>>8
		sa6.Addr = ip.As16()
		if z := ip.Zone(); z != "" {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return err
			}
			sa6.Scope_id = uint32(ifi.Index)
		}
		sa, n = unsafe.Pointer(&sa6), syscall.SizeofSockaddrInet6
	}
	for {
		_, _, e := syscall.RawSyscall(syscall.SYS_CONNECT, fd, uintptr(sa), n)
		switch e {
		case 0:
			return nil
		case syscall.EINTR:
			continue
		}
		return e
	}
}

// Shutdown shuts down part of a full-duplex connection on fd (how is
// syscall.SHUT_RD, SHUT_WR or SHUT_RDWR). Shutting the write side down
// sends the FIN, which on loopback the peer processes inside this call.
func Shutdown(fd uintptr, how int) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_SHUTDOWN, fd, uintptr(how), 0)
	if e != 0 {
		return e
	}
	return nil
}
