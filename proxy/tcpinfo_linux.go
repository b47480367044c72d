//go:build linux

package proxy

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// kernelInfoOf reads c's TCP_INFO. It fails once c is closed. On kernels
// before 4.1, which lack tcpi_bytes_acked, acked reads 0: live byte counts
// then stay at 0 until each connection ends.
func kernelInfoOf(c *net.TCPConn) (kernelInfo, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return kernelInfo{}, false
	}
	var ti *unix.TCPInfo
	var serr error
	err = rc.Control(func(fd uintptr) {
		ti, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if err != nil || serr != nil {
		return kernelInfo{}, false
	}
	return kernelInfo{
		// TCP_CLOSE (include/net/tcp_states.h); x/sys/unix names it only
		// as BPF_TCP_CLOSE.
		closed:   ti.State == unix.BPF_TCP_CLOSE,
		acked:    ti.Bytes_acked,
		lastRecv: time.Duration(ti.Last_data_recv) * time.Millisecond,
	}, true
}
