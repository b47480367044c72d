//go:build !linux

package serve

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// ListenConfig is the ListenConfig of a service's listener: net turns TCP
// keepalive on for each accepted socket. See sockopt_linux.go.
func ListenConfig(keepAlive time.Duration) net.ListenConfig {
	return net.ListenConfig{KeepAlive: keepAlive}
}

// backendDialer is the Dialer for backend sockets, keepalive every
// keepAlive (negative: off). See sockopt_linux.go.
func backendDialer(keepAlive time.Duration) net.Dialer {
	return net.Dialer{KeepAlive: keepAlive}
}

// ErrAddrInUse means a listen address is taken by another socket.
var ErrAddrInUse = errors.New("address already in use")

// ProbeFree reports whether addr can be bound. Here listeners bind without
// SO_REUSEPORT, so their own bind fails on a taken port; the probe matters
// for one that does (the admin listener). See sockopt_linux.go.
func ProbeFree(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("listen %s: %w: another process (or another listener of this one) has it", addr, ErrAddrInUse)
		}
		return err
	}
	return ln.Close()
}
