//go:build !linux

package proxy

import (
	"net"
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
