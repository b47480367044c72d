package brokerd

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// peerHas returns how many bytes of the connection's output stream its
// peer's TCP stack has acknowledged, given that sent bytes were handed to
// the socket before the call; ok is false if the kernel cannot tell.
// TCP_INFO's bytes_acked counts them from the start of the connection,
// including bytes of a write still in progress; where it is missing (Linux
// before 4.1), sent minus what the send queue still holds (SIOCOUTQ) is a
// lower bound.
func peerHas(raw syscall.RawConn, sent int64) (n int64, ok bool) {
	raw.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && ti.Bytes_acked > 0 {
			n, ok = int64(ti.Bytes_acked), true
		}
		if q, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n, ok = max(n, sent-int64(q)), true
		}
	})
	return n, ok
}
