//go:build unix && !linux

package rawsock

import (
	"net"
	"net/netip"
	"syscall"
)

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

// SetsockoptInt sets an int socket option on fd.
func SetsockoptInt(fd uintptr, level, opt, value int) error {
	return syscall.SetsockoptInt(int(fd), level, opt, value)
}

// Connect starts connecting the non-blocking socket fd to addr:
// syscall.EINPROGRESS while the handshake goes on, nil once connected.
func Connect(fd uintptr, addr netip.AddrPort) error {
	var sa syscall.Sockaddr
	if addr.Addr().Is4() {
		sa = &syscall.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	} else {
		sa6 := &syscall.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
		if z := addr.Addr().Zone(); z != "" {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return err
			}
			sa6.ZoneId = uint32(ifi.Index)
		}
		sa = sa6
	}
	for {
		err := syscall.Connect(int(fd), sa)
		if err != syscall.EINTR {
			return err
		}
	}
}

// Shutdown shuts down part of a full-duplex connection on fd.
func Shutdown(fd uintptr, how int) error { return syscall.Shutdown(int(fd), how) }
