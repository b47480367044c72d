package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"handover/internal/serve"
	"handover/internal/testutil"
	"handover/proxy/proxytest"
)

// The event loops' own cases: what they hand to the goroutine path, and
// how. The rest of the suite runs on the loops too.

// needLoops skips a test of the loops when the suite runs on goroutines.
func needLoops(t *testing.T, ts *testService) {
	if ts.loops == nil {
		t.Skip("the event loops are off (HANDOVER_PROXY_GOROUTINES)")
	}
}

// TestLoopHandsOff: a client the loop can't serve itself goes to the
// goroutine path, which reaches the backend as it always did, and is held
// against Timeout from when the loop accepted it.
func TestLoopHandsOff(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for dial timeouts")
	}
	t.Run("backend named by host name", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		_, port, _ := net.SplitHostPort(be.addr)
		name := net.JoinHostPort("localhost", port)
		ts := startService(t, proxytest.NewPicker(name), nil)
		needLoops(t, ts)
		c := ts.dial(t)
		roundTrip(t, c, "by name")
		ts.mu.Lock()
		pairs := len(ts.pairs)
		ts.mu.Unlock()
		if pairs != 1 {
			t.Errorf("goroutine pairs = %d, want 1: the loop should have handed the client off", pairs)
		}
		if st := ts.Status(); st.Active != 1 || st.Backends[name] != 1 || st.Accepted != 1 {
			t.Errorf("status %+v, want one active connection to %s, one accepted", st, name)
		}
	})

	t.Run("dial timed out, then a live target", func(t *testing.T) {
		checkLeaks(t)
		be := startBackend(t, "", echo)
		picker := proxytest.NewPicker(hangingAddr(t))
		ts := startService(t, picker, func(o *Options) { o.DialTimeout = 300 * time.Millisecond })
		needLoops(t, ts)
		c := ts.dial(t)
		ts.waitStatus(t, "client held while the loop dials", func(st ServiceStatus) bool { return st.Held == 1 })
		// The loop's dial times out: counted, a re-check, and the
		// goroutine path takes over (and dials the hanging address again).
		ts.waitMetric(t, 1, "handover_proxy_dial_errors_total")
		// The loop counts the error, then asks for the re-check.
		testutil.Eventually(t, 5*time.Second, func() error {
			if n := picker.Rechecks.Load(); n < 1 {
				return fmt.Errorf("re-checks = %d after the loop's dial timed out, want at least 1", n)
			}
			return nil
		})
		ts.waitStatus(t, "held on the goroutine path", func(st ServiceStatus) bool { return st.Held == 1 })
		picker.Set(be.addr)
		roundTrip(t, c, "after the hand-off")
		ts.waitStatus(t, "proxied, none held", func(st ServiceStatus) bool {
			return st.Held == 0 && st.Active == 1 && st.Backends[be.addr] == 1
		})
	})
}

// TestLoopTimeout: a client is closed at Timeout counted from when the
// loop accepted it: the loop's own dial never outlives Timeout, whatever
// DialTimeout says, and what the loop's dial took counts against the
// goroutine path's hold.
func TestLoopTimeout(t *testing.T) {
	for _, tt := range []struct {
		name                 string
		dialTimeout, timeout time.Duration
		within               time.Duration
	}{
		// DialTimeout alone would hold the client 3s.
		{"dial cut short", 3 * time.Second, 300 * time.Millisecond, 2 * time.Second},
		// The loop's dial takes 500ms; the goroutine path has 100ms
		// left, not another 600ms.
		{"hold after the loop's dial", 500 * time.Millisecond, 600 * time.Millisecond, 950 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			ts := startService(t, proxytest.NewPicker(hangingAddr(t)), func(o *Options) {
				o.DialTimeout = tt.dialTimeout
				o.Timeout = tt.timeout
			})
			needLoops(t, ts)
			start := time.Now()
			c := ts.dial(t)
			expectClosed(t, c, 5*time.Second)
			if took := time.Since(start); took > tt.within {
				t.Errorf("client closed after %v, want about the %v Timeout", took, tt.timeout)
			}
			ts.waitMetric(t, 1, "handover_proxy_connections_failed_total", "reason", "timeout")
		})
	}
}

// TestLoopsSpreadConnections: every loop listens (SO_REUSEPORT) and serves
// what the kernel gives it; many clients at once all get through, and the
// status counts each once.
func TestLoopsSpreadConnections(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3)) // two loops
	checkLeaks(t)
	be := startBackend(t, "", echo)
	ts := startService(t, proxytest.NewPicker(be.addr), nil)
	const n = 64
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = ts.dial(t)
	}
	for i, c := range conns {
		roundTrip(t, c, strings.Repeat("x", i+1))
	}
	ts.waitStatus(t, "all proxied", func(st ServiceStatus) bool {
		return st.Active == n && st.Backends[be.addr] == n && st.Accepted == n
	})
	for _, c := range conns {
		c.Close()
	}
	ts.waitStatus(t, "all closed", func(st ServiceStatus) bool { return st.Active == 0 })
	ts.waitMetric(t, n, "handover_proxy_connections_closed_total", "reason", reasonEOF)
}

// TestLoopCountsEachClientOnce: a client is counted accepted once, when a
// loop accepts it, though a failover sends it from the loop to the
// goroutine path.
func TestLoopCountsEachClientOnce(t *testing.T) {
	checkLeaks(t)
	be := startBackend(t, "", echo)
	picker := proxytest.NewPicker(be.addr)
	ts := startService(t, picker, nil)
	needLoops(t, ts)
	c := ts.dial(t)
	ts.waitStatus(t, "proxied", func(st ServiceStatus) bool { return st.Active == 1 })
	picker.Set() // untouched: dialed again, no target, handed off and held
	ts.waitStatus(t, "held", func(st ServiceStatus) bool { return st.Held == 1 })
	picker.Set(be.addr)
	roundTrip(t, c, "x")
	if st := ts.Status(); st.Accepted != 1 {
		t.Errorf("accepted = %d for one client, want 1", st.Accepted)
	}
}

// TestLoopRedialKeepsClientFIN: a client that sent its request and its FIN
// while the loop dialed a backend that stopped being a target meanwhile
// gets both to the new target: the edges its socket reported then are not
// forgotten when the dial starts over.
func TestLoopRedialKeepsClientFIN(t *testing.T) {
	checkLeaks(t)
	a, acceptA := slowAddr(t)
	got := make(chan string, 1)
	b := startBackend(t, "", func(c *net.TCPConn) {
		data, _ := io.ReadAll(c)
		got <- string(data)
	})
	picker := proxytest.NewPicker(a)
	picker.SetKept(a) // the sweep leaves the dial to A alone; the check at connect does not
	ts := startService(t, picker, func(o *Options) { o.DialTimeout = 5 * time.Second })
	needLoops(t, ts)
	// Serve reads the answer once before it accepts (Service.Serve):
	// the flip is for the loop's dial.
	testutil.Eventually(t, 5*time.Second, func() error {
		if picker.Reads.Load() == 0 {
			return fmt.Errorf("Serve has not read the targets yet")
		}
		return nil
	})
	picker.FlipAfterNextRead(b.addr)
	c := ts.dial(t)
	c.Write([]byte("hello"))
	c.CloseWrite()
	ts.waitStatus(t, "dialing A", func(st ServiceStatus) bool { return st.Held == 1 })
	time.Sleep(100 * time.Millisecond) // the scenario: the FIN arrives while the dial goes on
	acceptA()
	select {
	case s := <-got:
		if s != "hello" {
			t.Errorf("B got %q, want hello", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("B never got the client's FIN")
	}
}

// TestLoopsLeaveThePoller: while the loops are kept busy (by a backend
// and clients in another process: goroutines here would be slowed along
// with what they measure), a goroutine of this process doing I/O through
// the runtime's poller (a health check, the admin server, a STOMP session)
// still gets its wake-ups promptly. Loops that held their Ps while waiting
// for events delayed those to sysmon's next look, 10-20 ms.
func TestLoopsLeaveThePoller(t *testing.T) {
	checkLeaks(t)
	load := exec.Command(os.Args[0], "-test.run=^TestLoadHelper$")
	load.Env = append(os.Environ(), "HANDOVER_PROXY_LOAD=1")
	stdin, err := load.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := load.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	defer load.Wait()
	defer stdin.Close()
	backend, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("load helper: %v", err)
	}
	ts := startService(t, proxytest.NewPicker(strings.TrimSpace(backend)), nil)
	fmt.Fprintln(stdin, ts.Addr().String())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	probe, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	ts.waitStatus(t, "the load's clients connected", func(st ServiceStatus) bool { return st.Active == 8 })

	var rtts []time.Duration
	b := make([]byte, 8)
	for range 300 {
		start := time.Now()
		probe.SetDeadline(start.Add(5 * time.Second))
		if _, err := probe.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(probe, b); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
		time.Sleep(2 * time.Millisecond) // the probe's pace, not sync
	}
	slices.Sort(rtts)
	p50, p99 := rtts[len(rtts)/2], rtts[len(rtts)*99/100]
	t.Logf("poller round trips under load: p50 %v, p99 %v", p50, p99)
	if p50 > 5*time.Millisecond {
		t.Errorf("poller round trip p50 %v under load through the loops (p99 %v); want well under sysmon's 10 ms", p50, p99)
	}
}

// TestLoadHelper is TestLoopsLeaveThePoller's load, run in a child
// process: it serves an echo backend and prints its address, reads the
// proxy's address, then runs 8 clients through it, a 16-byte round trip
// every 2 ms each, until its stdin closes.
func TestLoadHelper(t *testing.T) {
	if os.Getenv("HANDOVER_PROXY_LOAD") == "" {
		t.Skip("the load of TestLoopsLeaveThePoller, run only as its child")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(c, c)
		}
	}()
	fmt.Println(ln.Addr())
	in := bufio.NewReader(os.Stdin)
	addr, err := in.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, in); close(done) }()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", strings.TrimSpace(addr))
			if err != nil {
				return
			}
			defer c.Close()
			b := make([]byte, 16)
			for {
				select {
				case <-done:
					return
				case <-time.After(2 * time.Millisecond):
				}
				if _, err := c.Write(b); err != nil {
					return
				}
				if _, err := io.ReadFull(c, b); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestLoopParks: with one P there is no spin slot (it would take the
// process's only P): the loop parks on the runtime's poller, and wakes
// there for its sockets and its timers alike (here, the idle timeout).
func TestLoopParks(t *testing.T) {
	t.Run("on the runtime's poller", func(t *testing.T) { testLoopParks(t) })
	// Where the poller refuses the epoll instance (out of watches), the
	// loop waits in epoll_wait as an ordinary system call instead.
	t.Run("refused", func(t *testing.T) {
		parkRefused.Store(true)
		defer parkRefused.Store(false)
		testLoopParks(t)
	})
}

func testLoopParks(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	checkLeaks(t)
	be := startBackend(t, "", echo)
	ts := startService(t, proxytest.NewPicker(be.addr), func(o *Options) { o.IdleTimeout = 300 * time.Millisecond })
	needLoops(t, ts)
	c := ts.dial(t)
	for i := range 50 {
		roundTrip(t, c, strings.Repeat("p", i+1))
	}
	if n := spinners.Load(); n != 0 {
		t.Errorf("%d loops spinning with GOMAXPROCS=1, want 0", n)
	}
	expectClosed(t, c, 5*time.Second)
	ts.waitMetric(t, 1, "handover_proxy_connections_closed_total", "reason", reasonIdle)
}

// TestLoopSpinSlotFollowsWork: with one spin slot (two Ps) and two
// services, the slot ends with the loop that has work: an idle loop gives
// it back after spinIdle.
func TestLoopSpinSlotFollowsWork(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	checkLeaks(t)
	be := startBackend(t, "", echo)
	idle := startService(t, proxytest.NewPicker(be.addr), nil)
	needLoops(t, idle)
	idleLoop := idle.loops.(*loopGroup).loops[0]
	// Work takes the free slot; then the service goes idle.
	first := idle.dial(t)
	roundTrip(t, first, "work")
	// The loop takes the slot at its next wait, after the echo.
	testutil.Eventually(t, 5*time.Second, func() error {
		if !idleLoop.spin.Load() {
			return fmt.Errorf("the first service's loop has not taken the free slot after work")
		}
		return nil
	})
	busy := startService(t, proxytest.NewPicker(be.addr), nil)
	busyLoop := busy.loops.(*loopGroup).loops[0]
	c := busy.dial(t)
	deadline := time.Now().Add(spinIdle + 5*time.Second)
	for i := 0; !busyLoop.spin.Load(); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("the busy service's loop never got the spin slot (spinners %d)", spinners.Load())
		}
		roundTrip(t, c, strconv.Itoa(i))
	}
	if idleLoop.spin.Load() {
		t.Errorf("both loops spin with one slot")
	}
}

// TestLoopOutOfDescriptors: a client accepted when the process has no
// descriptor left for its backend socket is neither dropped nor handed
// off (a hand-off needs a descriptor too): it waits in the loop, held,
// and is proxied once descriptors free up.
func TestLoopOutOfDescriptors(t *testing.T) {
	checkLeaks(t)
	be := startBackend(t, "", echo)
	log := proxytest.Log(t)
	held := make(chan struct{}, 1)
	log.Logger.AddHook(hookFunc(func(e *logrus.Entry) {
		if strings.HasPrefix(e.Message, "cannot dial a backend") {
			select {
			case held <- struct{}{}:
			default:
			}
		}
	}))
	ts := startServiceLog(t, proxytest.NewPicker(be.addr), Options{Settings: serve.Settings{Name: "test", Listen: "127.0.0.1:0"}}, false, log)
	needLoops(t, ts)

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(len(ents) + 32)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower RLIMIT_NOFILE: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	// Take every descriptor left, then give back two: the test's client
	// socket and the loop's accept; the backend socket finds none.
	var fill []*os.File
	defer func() {
		for _, f := range fill {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fill = append(fill, f)
	}
	for range 2 {
		fill[len(fill)-1].Close()
		fill = fill[:len(fill)-1]
	}
	c, err := net.Dial("tcp", ts.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop never ran out of descriptors for a backend socket")
	}
	for _, f := range fill {
		f.Close()
	}
	fill = nil
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	roundTrip(t, c, "after descriptors freed up")
	if st := ts.Status(); st.Held != 0 || st.Active != 1 {
		t.Errorf("status %+v, want one proxied, none held", st)
	}
}

// hookFunc is a logrus hook calling itself for every event.
type hookFunc func(*logrus.Entry)

func (hookFunc) Levels() []logrus.Level { return logrus.AllLevels }

func (f hookFunc) Fire(e *logrus.Entry) error { f(e); return nil }
