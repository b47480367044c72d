//go:build linux

package proxy

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// What net sets when given only a keepalive period (net.KeepAliveConfig's
// zero Interval and Count): TCP_KEEPIDLE is the period, TCP_KEEPINTVL and
// TCP_KEEPCNT these. The listener sets the same, so client and backend
// sockets probe alike.
const (
	keepAliveInterval = 15 * time.Second
	keepAliveCount    = 9
)

// ListenConfig is the ListenConfig of a service's listener (stompproxy's
// too), with TCP keepalive every keepAlive (negative: off) and
// SO_REUSEPORT, so that a replacement sidecar, or a reload that changes a
// service's options, binds the address while the old listener still
// accepts and then drains: a restart refuses no client. Linux copies the listening
// socket's SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT into
// every socket it accepts (and starts the keepalive timer then), so they
// are set once here, rather than with four setsockopt calls per accepted
// connection as net.ListenConfig.KeepAlive would.
func ListenConfig(keepAlive time.Duration) net.ListenConfig {
	opts := []struct{ level, opt, value int }{{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1}}
	if keepAlive >= 0 {
		if keepAlive == 0 {
			keepAlive = DefaultKeepAlive
		}
		secs := func(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }
		opts = append(opts, []struct{ level, opt, value int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(keepAlive)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(keepAliveInterval)},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
		}...)
	}
	return net.ListenConfig{
		KeepAlive: -1, // inherited from the listener instead
		Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			cerr := c.Control(func(fd uintptr) {
				for _, o := range opts {
					if err = unix.SetsockoptInt(int(fd), o.level, o.opt, o.value); err != nil {
						return
					}
				}
			})
			if cerr != nil {
				return cerr
			}
			return err
		},
	}
}
