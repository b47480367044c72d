package proxy

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"handover/proxy/proxytest"
)

// TestKeepAliveOnBothSockets: the accepted client socket (whose keepalive
// options come from the listener, see sockopt_linux.go) and the dialed
// backend socket probe alike; a negative KeepAlive turns both off.
func TestKeepAliveOnBothSockets(t *testing.T) {
	for _, tt := range []struct {
		name      string
		keepAlive time.Duration
		want      [4]int // SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT
	}{
		{"default", 0, [4]int{1, 15, 15, 9}},
		{"23s", 23 * time.Second, [4]int{1, 23, 15, 9}},
		{"off", -1, [4]int{0, -1, -1, -1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			be := startBackend(t, "", echo)
			ts := startService(t, proxytest.NewPicker(be.addr), func(o *Options) { o.KeepAlive = tt.keepAlive })
			c := ts.dial(t)
			roundTrip(t, c, "ping")
			ts.lc.Mu.Lock()
			var p *pair
			for q := range ts.pairs {
				p = q
			}
			ts.lc.Mu.Unlock()
			if p == nil {
				t.Fatal("no live pair")
			}
			for side, conn := range map[string]*net.TCPConn{"client": p.client, "backend": p.upstream} {
				if got := keepAliveOpts(t, conn); got[0] != tt.want[0] || tt.want[0] == 1 && got != tt.want {
					t.Errorf("%s socket: keepalive options %v, want %v", side, got, tt.want)
				}
			}
		})
	}
}

// keepAliveOpts reads SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and
// TCP_KEEPCNT.
func keepAliveOpts(t *testing.T, c *net.TCPConn) [4]int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got [4]int
	var gerr error
	rc.Control(func(fd uintptr) {
		for i, o := range [][2]int{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
		} {
			if got[i], gerr = unix.GetsockoptInt(int(fd), o[0], o[1]); gerr != nil {
				return
			}
		}
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	return got
}
