//go:build linux

package serve

import (
	"errors"
	"fmt"
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

// ListenConfig is the ListenConfig of a service's listener (either data
// path's, and each of proxy's event loops'), with TCP keepalive every
// keepAlive (negative: off) and SO_REUSEPORT, so that a replacement
// sidecar, or a reload that changes a service's options, binds the address
// while the old listener still accepts and then drains: a restart refuses
// no client. Linux copies the listening socket's SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT into
// every socket it accepts (and starts the keepalive timer then), so they
// are set once here, rather than with four setsockopt calls per accepted
// connection as net.ListenConfig.KeepAlive would.
func ListenConfig(keepAlive time.Duration) net.ListenConfig {
	opts := append([]Sockopt{{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1}}, KeepAliveSockopts(keepAlive)...)
	return net.ListenConfig{
		KeepAlive: -1, // inherited from the listener instead
		Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			cerr := c.Control(func(fd uintptr) {
				for _, o := range opts {
					if err = unix.SetsockoptInt(int(fd), o.Level, o.Opt, o.Value); err != nil {
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

// Sockopt is one int socket option, as setsockopt(2) takes it.
type Sockopt struct{ Level, Opt, Value int }

// KeepAliveSockopts are the options that turn TCP keepalive on with a
// period of keepAlive (0: DefaultKeepAlive), or none when it is negative:
// what ListenConfig and the backend Dialer set, and what proxy's event
// loops set on the backend sockets they dial themselves, so that every
// socket probes alike.
func KeepAliveSockopts(keepAlive time.Duration) []Sockopt {
	if keepAlive < 0 {
		return nil
	}
	if keepAlive == 0 {
		keepAlive = DefaultKeepAlive
	}
	secs := func(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }
	return []Sockopt{
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
	opts := KeepAliveSockopts(keepAlive)
	return net.Dialer{
		KeepAlive: -1, // set by Control
		Control: func(_, address string, c syscall.RawConn) error {
			addr, perr := netip.ParseAddrPort(address) // net passes the resolved IP
			addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
			var err error
			cerr := c.Control(func(fd uintptr) {
				for _, o := range opts {
					if err = rawsock.SetsockoptInt(fd, o.Level, o.Opt, o.Value); err != nil {
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

// ErrAddrInUse means a listen address is taken by another socket: another
// process's listener, or a listener of this process outside the service.
var ErrAddrInUse = errors.New("address already in use")

// ProbeFree returns an error wrapping ErrAddrInUse if another socket holds
// addr. Listeners bind with SO_REUSEPORT (ListenConfig), and with it the
// kernel lets every socket of the same user that sets it share a port and
// spreads clients over them: a second sidecar on the same port would start
// without error and take half the clients, a misconfiguration nobody
// notices. So before binding, this binds a socket without SO_REUSEPORT,
// which fails beside any listener, and closes it. It sets SO_REUSEADDR,
// as every Go listener does, so that connections of an earlier listener
// lingering in TIME_WAIT or draining do not count; it never listens, so no
// client can reach it. Port 0 (the kernel picks) is always free. A process
// binding the port between the probe and the bind that follows is not
// caught: the probe is for configuration mistakes, not a lock.
func ProbeFree(addr string) error {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return err
	}
	if ta.Port == 0 {
		return nil
	}
	err = probeBind(ta)
	if errors.Is(err, unix.EADDRINUSE) {
		return fmt.Errorf("listen %s: %w: another process (or another listener of this one) has it; "+
			"handover shares a port only between the listeners of one service", addr, ErrAddrInUse)
	}
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	return nil
}

// probeBind binds and closes a socket as net would bind a listener on ta:
// a wildcard address dual-stack on IPv6 when the host has it.
func probeBind(ta *net.TCPAddr) error {
	wildcard := ta.IP == nil || ta.IP.IsUnspecified()
	if ip4 := ta.IP.To4(); ip4 != nil && !wildcard {
		sa := &unix.SockaddrInet4{Port: ta.Port}
		copy(sa.Addr[:], ip4)
		return bindOnce(unix.AF_INET, sa, -1)
	}
	sa6 := &unix.SockaddrInet6{Port: ta.Port}
	v6only := 1
	if wildcard {
		v6only = 0
	} else {
		copy(sa6.Addr[:], ta.IP.To16())
		if ta.Zone != "" {
			if ifi, err := net.InterfaceByName(ta.Zone); err == nil {
				sa6.ZoneId = uint32(ifi.Index)
			}
		}
	}
	err := bindOnce(unix.AF_INET6, sa6, v6only)
	if wildcard && (errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL)) {
		return bindOnce(unix.AF_INET, &unix.SockaddrInet4{Port: ta.Port}, -1) // no IPv6 here
	}
	return err
}

// bindOnce binds a fresh TCP socket of family to sa, with SO_REUSEADDR
// and, unless v6only is negative, IPV6_V6ONLY set to it, then closes it.
func bindOnce(family int, sa unix.Sockaddr, v6only int) error {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return os.NewSyscallError("setsockopt", err)
	}
	if v6only >= 0 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return os.NewSyscallError("bind", unix.Bind(fd, sa))
}
