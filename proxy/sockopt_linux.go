//go:build linux

package proxy

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"handover/internal/rawsock"

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
	opts := append([]sockopt{{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1}}, keepAliveSockopts(keepAlive)...)
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

// sockopt is one int socket option.
type sockopt struct{ level, opt, value int }

// keepAliveSockopts are the options that turn TCP keepalive on with a period
// of keepAlive (0: DefaultKeepAlive), or none when it is negative.
func keepAliveSockopts(keepAlive time.Duration) []sockopt {
	if keepAlive < 0 {
		return nil
	}
	if keepAlive == 0 {
		keepAlive = DefaultKeepAlive
	}
	secs := func(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }
	return []sockopt{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(keepAlive)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(keepAliveInterval)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
	}
}

// backendDialer is the Dialer for backend sockets, keepalive every
// keepAlive (negative: off). Its Control hook, run on the fresh socket
// before net connects it, does two things that save a dial most of its
// cost on a small host (BenchmarkProxyConnect's proxy-cpu-us/op):
//
//   - it sets the keepalive options itself, with raw system calls, before
//     the connect: net would set them afterwards, one may-block system call
//     each, and each re-arming the established socket's keepalive timer;
//     Linux arms it once when the handshake completes (tcp_finish_connect).
//   - it starts the non-blocking connect itself, also raw. Then net's own
//     connect(2) finds the socket connected (EISCONN: on loopback, and to
//     any backend answering within the call, the handshake is over by
//     then) and returns at once, without parking the goroutine to wait for
//     writability and reading SO_ERROR; or, still in progress, EALREADY,
//     and net waits as usual, deadline and cancellation included. A
//     connect that fails at once (ENETUNREACH, say) fails the dial here.
func backendDialer(keepAlive time.Duration) net.Dialer {
	opts := keepAliveSockopts(keepAlive)
	return net.Dialer{
		KeepAlive: -1, // set by Control
		Control: func(_, address string, c syscall.RawConn) error {
			addr, perr := netip.ParseAddrPort(address) // net passes the resolved IP
			addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
			var err error
			cerr := c.Control(func(fd uintptr) {
				for _, o := range opts {
					if err = rawsock.SetsockoptInt(fd, o.level, o.opt, o.value); err != nil {
						err = os.NewSyscallError("setsockopt", err)
						return
					}
				}
				if perr != nil {
					return // leave the connect to net
				}
				switch e := rawsock.Connect(fd, addr); e {
				case nil, syscall.EINPROGRESS:
				default:
					err = os.NewSyscallError("connect", e)
				}
			})
			if cerr != nil {
				return cerr
			}
			return err
		},
	}
}
