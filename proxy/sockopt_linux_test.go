package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"handover/internal/serve"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
)

// TestKeepAliveOnBothSockets: the accepted client socket (whose keepalive
// options come from the listener, see sockopt_linux.go) and the dialed
// backend socket probe alike (the loops' backend sockets from
// keepAliveAfter on), and have TCP_NODELAY; a negative KeepAlive turns
// keepalive off on both. Both data paths.
func TestKeepAliveOnBothSockets(t *testing.T) {
	for _, path := range []struct {
		name       string
		goroutines bool
	}{{"loops", false}, {"goroutines", true}} {
		for _, tt := range []struct {
			name      string
			keepAlive time.Duration
			want      [5]int // SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_NODELAY
		}{
			{"default", 0, [5]int{1, 15, 15, 9, 1}},
			{"23s", 23 * time.Second, [5]int{1, 23, 15, 9, 1}},
			{"off", -1, [5]int{0, -1, -1, -1, 1}},
		} {
			t.Run(path.name+"/"+tt.name, func(t *testing.T) {
				be := startBackend(t, "", echo)
				ts := startServiceOpts(t, proxytest.NewPicker(be.addr),
					Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0", KeepAlive: tt.keepAlive}, goroutines: path.goroutines}, false)
				c := ts.dial(t)
				roundTrip(t, c, "ping")
				sides := map[string]int{
					"client":  findSocket(t, ts.Addr().String(), c.LocalAddr().String()),
					"backend": findSocket(t, "", be.addr),
				}
				// The loops set a backend socket's keepalive once it
				// has lived keepAliveAfter.
				testutil.Eventually(t, keepAliveAfter+5*time.Second, func() error {
					for side, fd := range sides {
						got := sockOpts(t, fd)
						if got[0] != tt.want[0] || got[4] != tt.want[4] || tt.want[0] == 1 && got != tt.want {
							return fmt.Errorf("%s socket: options %v, want %v", side, got, tt.want)
						}
					}
					return nil
				})
			})
		}
	}
}

// findSocket returns this process's TCP socket with the given peer and,
// unless "", local address: the proxy's own sockets, whichever data path
// made them.
func findSocket(t *testing.T, local, peer string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); !strings.HasPrefix(l, "socket:") {
			continue
		}
		p, err := unix.Getpeername(fd)
		if err != nil || sockaddr(p) != peer {
			continue
		}
		if local != "" {
			if l, err := unix.Getsockname(fd); err != nil || sockaddr(l) != local {
				continue
			}
		}
		return fd
	}
	t.Fatalf("no socket %s -> %s", local, peer)
	return -1
}

func sockaddr(sa unix.Sockaddr) string {
	if a, ok := sa.(*unix.SockaddrInet4); ok {
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	}
	return fmt.Sprint(sa)
}

// sockOpts reads SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT and
// TCP_NODELAY of fd.
func sockOpts(t *testing.T, fd int) [5]int {
	t.Helper()
	var got [5]int
	for i, o := range [][2]int{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
		{unix.IPPROTO_TCP, unix.TCP_NODELAY},
	} {
		v, err := unix.GetsockoptInt(fd, o[0], o[1])
		if err != nil {
			t.Fatal(err)
		}
		got[i] = v
	}
	return got
}

// TestNewRefusesTakenAddress: New refuses a listen address another socket
// holds (serve.ProbeFree), whether that socket set SO_REUSEPORT (another
// sidecar) or not, on both data paths.
func TestNewRefusesTakenAddress(t *testing.T) {
	lc := serve.ListenConfig(0) // SO_REUSEPORT, as another sidecar binds
	shared, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, addr := range []string{shared.Addr().String(), plain.Addr().String()} {
		for _, goroutines := range []bool{false, true} {
			o := Options{Settings: serve.Settings{Name: "x", Listen: addr}, goroutines: goroutines}
			if s, err := New(o, proxytest.NewPicker(), nil, nil); !errors.Is(err, serve.ErrAddrInUse) {
				if s != nil {
					s.Shutdown(context.Background())
				}
				t.Errorf("New on %s (goroutines %v): %v, want ErrAddrInUse", addr, goroutines, err)
			}
		}
	}
}
