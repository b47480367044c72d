//go:build linux

package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"handover/internal/rawsock"
	"handover/internal/serve"

	"golang.org/x/sys/unix"
)

// The event loops: how most connections are served on Linux.
//
// The goroutine data path (pair.go) costs a proxied connection two
// goroutines, a trip through the runtime's poller for every message each
// way, and, to set the connection up, the system calls net makes for any
// socket (getsockname, getpeername, a second connect, TCP_NODELAY, epoll
// registration and removal). On a small host that made handover's
// connection rate and per-message latency worse than HAProxy's, which runs
// one epoll loop per thread. So here, as there, each loop owns an epoll
// instance, a listening socket of its own (SO_REUSEPORT: the kernel
// spreads new connections over the loops), and every connection it
// accepts, from accept to close, on one goroutine that makes raw system
// calls (rawsock) and blocks nowhere but where it waits for events (wait).
//
// A connection stays in its loop for as long as the common case holds:
// there is a target, given as an IP address, and the dial to it succeeds
// within DialTimeout. Anything else (no master now, a failed or slow dial,
// a backend named by host name) hands the client socket to the goroutine
// path, through serve.Lifecycle's accept loop, where serve.Connector
// holds it and retries with backoff as before. That path is rarely taken,
// and then the broker is gone anyway.
//
// Bytes move as relay.go moves them: small messages through a 16 KiB
// buffer (taken from the loop's free list only while it holds bytes), bulk
// data spliced through a pipe once a read fills the buffer. The sockets
// are edge-triggered with EPOLLRDHUP, so a short read means the socket was
// drained, unless the peer has also sent its FIN: the read that would
// only say EAGAIN is skipped, as HAProxy skips it.

const (
	// loopEvents is how many events one epoll_wait returns at most.
	loopEvents = 256
	// keepAliveAfter is how long a backend socket lives before its
	// keepalive options are set. Four setsockopt calls were a fifth of
	// the system calls of a short connection, which never needs them;
	// a long one is probed no sooner for the wait, its first probe being
	// KeepAlive (15s by default) away. Client sockets inherit theirs
	// from the listener for nothing.
	keepAliveAfter = time.Second
	// loopFreeBufs caps each loop's list of free buffers.
	loopFreeBufs = 64
	// pipeSize is the capacity asked of a splice pipe (F_SETPIPE_SZ), as
	// Go's own splice uses: fewer, larger moves for bulk data.
	pipeSize = 1 << 20
)

// Commands posted to a loop by other goroutines (loop.post).
const (
	cmdSweep         = 1 << iota // targets changed: close stale connections
	cmdCloseAll                  // shutdown grace over
	cmdStopAccepting             // close the listening socket
	cmdQuit                      // exit once every connection is gone
)

// loopGroup is a Service's event loops. It is also the Acceptor of the
// Service's Lifecycle: AcceptTCP returns the connections the loops hand
// to the goroutine path.
type loopGroup struct {
	s     *Service
	loops []*loop
	addr  net.Addr
	// backendOpts are set on every backend socket before its connect;
	// keepAlive once it has lived keepAliveAfter.
	backendOpts, keepAlive []serve.Sockopt

	// adm applies the connection caps to every connection the loops
	// accept, in the loops and handed off.
	adm *serve.Admission
	// proxied counts connections the loops are proxying to a backend.
	proxied atomic.Int64

	mu          sync.Mutex
	startCalled bool
	started     bool
	closed      bool
	queue       []*net.TCPConn // handed off, for AcceptTCP
	since       map[*net.TCPConn]time.Time
	// src is the source address of each connection handed off, as
	// admitted, until its release.
	src    map[*net.TCPConn]netip.Addr
	notify chan struct{} // wakes AcceptTCP
	wg     sync.WaitGroup

	activeMu sync.Mutex
	active   map[string]*atomic.Int64 // proxied connections by backend
}

// loop is one event loop. Everything but mu, cmds and the listener's
// closed channel is touched by the loop's goroutine only.
type loop struct {
	g    *loopGroup
	epfd int
	// spin is set while the loop holds a spin slot (spinning); procs is
	// GOMAXPROCS as read at procsAt. Without a slot the loop waits on the
	// runtime's poller (park): epf is then a duplicate of epfd registered
	// there, eprc its RawConn, deadline its read deadline on the loop's
	// clock (-1: none). spin is atomic for tests only.
	spin     atomic.Bool
	worked   bool          // the last wait returned events
	lastWork time.Duration // when a wait last did
	procs    int32
	procsAt  time.Duration
	epf      *os.File
	eprc     syscall.RawConn
	deadline time.Duration
	noPark   bool // the runtime's poller refused the instance (waitBlocking)
	evfd     int  // eventfd: commands are waiting
	lnfd     int  // listening socket, -1 once closed
	// accepting is set while lnfd is in the epoll set; retryAt, when
	// not zero, is when to add it back after accept failed for want of
	// file descriptors, delay the pause that was.
	accepting bool
	retryAt   time.Duration
	delay     time.Duration

	conns   []*lconn // by file descriptor, both of a connection's
	n       int      // connections in the loop
	dialing []*lconn // connections whose dial is in progress
	redial  []*lconn // connections to dial again after this batch
	young   []young  // backend sockets without keepalive yet, oldest first
	// starved are clients whose dial failed for want of resources, to be
	// dialed again at starveAt; starveDelay is the pause that was.
	starved     []*lconn
	starveAt    time.Duration
	starveDelay time.Duration
	free        [][]byte
	targets     map[string]*target
	now         time.Duration // since loopEpoch, read after each wait
	sweepAt     time.Duration // next idle sweep
	quit        bool

	mu         sync.Mutex
	cmds       uint32
	lnClosed   chan struct{} // closed once lnfd is
	lnClosedMu sync.Once
}

// loopEpoch is the origin of loop.now, a monotonic clock.
var loopEpoch = time.Now()

// newLoopGroup binds n listening sockets to the service's address and
// makes a loop for each, or returns nil if this host can't run them.
func newLoopGroup(s *Service, n int) (*loopGroup, error) {
	g := &loopGroup{
		s:           s,
		adm:         serve.NewAdmission(s.opts.Settings, s.log, s.metrics.rejected),
		backendOpts: []serve.Sockopt{{Level: unix.IPPROTO_TCP, Opt: unix.TCP_NODELAY, Value: 1}},
		keepAlive:   serve.KeepAliveSockopts(s.opts.KeepAlive),
		notify:      make(chan struct{}, 1),
		since:       map[*net.TCPConn]time.Time{},
		src:         map[*net.TCPConn]netip.Addr{},
		active:      map[string]*atomic.Int64{},
	}
	// Loop 0 binds with SO_REUSEPORT, as the others beside it: first
	// make sure no other process listens there.
	if err := serve.ProbeFree(s.opts.Listen); err != nil {
		return nil, err
	}
	for i := range n {
		l, err := g.newLoop(i)
		if err != nil {
			for _, l := range g.loops {
				l.closeFDs()
			}
			return nil, err
		}
		g.loops = append(g.loops, l)
	}
	return g, nil
}

// newLoop binds loop i's listening socket (the first to the configured
// address, the others beside it, SO_REUSEPORT) and sets up its epoll
// instance.
func (g *loopGroup) newLoop(i int) (*loop, error) {
	addr := g.s.opts.Listen
	if i > 0 {
		addr = g.addr.String()
	}
	lc := serve.ListenConfig(g.s.opts.KeepAlive)
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	if i == 0 {
		g.addr = ln.Addr()
	}
	// The loop takes a duplicate of the socket and net lets go of its
	// own, which removes it from the runtime's poller: nothing but the
	// loop is woken by a new connection.
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		ln.Close()
		return nil, err
	}
	lnfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		lnfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		derr = err
	}
	ln.Close()
	if derr != nil {
		return nil, os.NewSyscallError("dup", derr)
	}
	l := &loop{g: g, epfd: -1, evfd: -1, lnfd: lnfd, deadline: -1, targets: map[string]*target{}, lnClosed: make(chan struct{})}
	// Accepted sockets inherit TCP_NODELAY from the listener, as they do
	// keepalive: set once here rather than once per connection.
	if err := unix.SetsockoptInt(lnfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		l.closeFDs()
		return nil, os.NewSyscallError("setsockopt", err)
	}
	if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		l.closeFDs()
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if l.evfd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		l.closeFDs()
		return nil, os.NewSyscallError("eventfd", err)
	}
	// The eventfd and the listener are level-triggered: the listener
	// keeps reporting while connections wait, so a loop accepts one per
	// turn and never makes the accept that would only say EAGAIN.
	for _, fd := range []int{l.evfd, lnfd} {
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			l.closeFDs()
			return nil, os.NewSyscallError("epoll_ctl", err)
		}
	}
	l.accepting = true
	return l, nil
}

// closeFDs closes what newLoop opened, for a loop that never ran.
// It may be called more than once.
func (l *loop) closeFDs() {
	l.closeListener()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.evfd >= 0 {
		unix.Close(l.evfd)
		l.evfd = -1
	}
	l.unpark()
	if l.epfd >= 0 {
		unix.Close(l.epfd)
		l.epfd = -1
	}
}

// closeListener closes the listening socket, once.
func (l *loop) closeListener() {
	l.lnClosedMu.Do(func() {
		if l.lnfd >= 0 {
			unix.Close(l.lnfd)
			l.lnfd = -1
		}
		l.accepting = false
		close(l.lnClosed)
	})
}

// start runs the loops, unless Close came first.
// It reports whether this was the first call, whose caller owns stop.
func (g *loopGroup) start() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.startCalled {
		return false
	}
	g.startCalled = true
	if g.closed {
		return true
	}
	g.started = true
	for _, l := range g.loops {
		g.wg.Add(1)
		go l.run()
	}
	return true
}

// stop ends the loops, once every connection is gone, and waits for them.
func (g *loopGroup) stop() {
	g.mu.Lock()
	started := g.started
	g.mu.Unlock()
	if !started {
		for _, l := range g.loops {
			l.closeFDs()
		}
		return
	}
	for _, l := range g.loops {
		l.post(cmdQuit)
	}
	g.wg.Wait()
}

// Addr is the bound address.
func (g *loopGroup) Addr() net.Addr { return g.addr }

// AcceptTCP returns the next connection a loop handed to the goroutine
// path, or net.ErrClosed after Close.
func (g *loopGroup) AcceptTCP() (*net.TCPConn, error) {
	for {
		g.mu.Lock()
		if len(g.queue) > 0 {
			c := g.queue[0]
			g.queue[0] = nil
			g.queue = g.queue[1:]
			g.mu.Unlock()
			return c, nil
		}
		closed := g.closed
		g.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		<-g.notify
	}
}

// Close stops accepting: each loop closes its listening socket, and Close
// returns once they all have, so that the address is free for a
// replacement. Connections handed off and not yet taken are closed.
func (g *loopGroup) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	for _, c := range g.queue {
		delete(g.since, c)
	}
	queue := g.queue
	g.queue = nil
	started := g.started
	g.mu.Unlock()
	for _, c := range queue {
		g.refuse(c)
	}
	g.wake()
	for _, l := range g.loops {
		if started {
			l.post(cmdStopAccepting)
		} else {
			l.closeListener()
		}
	}
	for _, l := range g.loops {
		<-l.lnClosed
	}
	return nil
}

// wake wakes AcceptTCP.
func (g *loopGroup) wake() {
	select {
	case g.notify <- struct{}{}:
	default:
	}
}

// handoff queues c for the goroutine path, or closes it after Close.
// since is when the loop accepted c: the goroutine path holds it until
// Timeout after that (heldSince). src is c's source address as admitted.
func (g *loopGroup) handoff(c *net.TCPConn, since time.Time, src netip.Addr) {
	g.mu.Lock()
	g.src[c] = src
	if g.closed {
		g.mu.Unlock()
		g.refuse(c)
		return
	}
	g.queue = append(g.queue, c)
	g.since[c] = since
	g.mu.Unlock()
	g.wake()
}

// refuse closes c, a client handed off after shutdown began, and counts
// it as the goroutine path would have: failed, shutting down.
func (g *loopGroup) refuse(c *net.TCPConn) {
	c.Close()
	g.release(c)
	g.s.metrics.failed.WithLabelValues(g.s.opts.Name, failReason(serve.ErrShutdown)).Inc()
}

// heldSince returns, once, when the loop accepted c, a connection it
// handed off.
func (g *loopGroup) heldSince(c *net.TCPConn) (time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.since[c]
	delete(g.since, c)
	return t, ok
}

// release frees the place under the connection caps of c, a connection
// handed off.
func (g *loopGroup) release(c *net.TCPConn) {
	g.mu.Lock()
	src := g.src[c]
	delete(g.src, c)
	g.mu.Unlock()
	g.adm.Release(src)
}

// closeAll asks every loop to close its connections, and returns how many
// there were.
func (g *loopGroup) closeAll() int {
	// Counted before the loops are told: a loop may close them all before
	// a count taken after the posts, which then said none were closed.
	n := int(g.proxied.Load())
	for _, l := range g.loops {
		l.post(cmdCloseAll)
	}
	return n
}

// sweep asks every loop to close its connections to backends no longer
// targeted, and returns how many will sweep for it and report to
// Service.endSweep: a loop that has a sweep pending already, not yet
// started, does that one for both requests (it reads the targets when it
// runs), and a loop that has stopped does none.
func (g *loopGroup) sweep() int {
	n := 0
	for _, l := range g.loops {
		if l.postOnce(cmdSweep) {
			n++
		}
	}
	return n
}

// loopCount is how many loops there are.
func (g *loopGroup) loopCount() int { return len(g.loops) }

// status adds the loops' connections to st.
func (g *loopGroup) status(st *ServiceStatus) {
	g.activeMu.Lock()
	defer g.activeMu.Unlock()
	for addr, n := range g.active {
		if v := int(n.Load()); v > 0 {
			st.Backends[addr] += v
			st.Active += v
		}
	}
}

// activeCounter returns the count of proxied connections to addr.
func (g *loopGroup) activeCounter(addr string) *atomic.Int64 {
	g.activeMu.Lock()
	defer g.activeMu.Unlock()
	n := g.active[addr]
	if n == nil {
		n = new(atomic.Int64)
		g.active[addr] = n
	}
	return n
}

// post gives the loop a command and wakes it.
// A loop that has ended takes no more: its eventfd's number may belong
// to another file by now.
// postOnce posts cmd unless it is pending already, and reports whether it
// did.
func (l *loop) postOnce(cmd uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.evfd < 0 || l.cmds&cmd != 0 {
		return false
	}
	l.cmds |= cmd
	var one = [8]byte{1}
	unix.Write(l.evfd, one[:])
	return true
}

func (l *loop) post(cmd uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.evfd < 0 {
		return
	}
	l.cmds |= cmd
	var one = [8]byte{1}
	unix.Write(l.evfd, one[:]) // EAGAIN: the counter is full, so the loop is awake anyway
}

// run is the loop's goroutine.
func (l *loop) run() {
	defer l.g.wg.Done()
	defer l.closeFDs()
	defer l.unspin()
	events := make([]syscall.EpollEvent, loopEvents)
	for !l.quit {
		n := l.wait(events)
		l.now = time.Since(loopEpoch)
		l.worked = n > 0
		if l.worked {
			l.lastWork = l.now
		}
		var accept, cmds bool
		for i := range events[:n] {
			switch fd := int(events[i].Fd); fd {
			case l.evfd:
				cmds = true
			case l.lnfd:
				accept = true
			default:
				l.event(fd, events[i].Events)
			}
		}
		// New sockets only after the batch: a descriptor closed in it
		// and reused at once would take the closed one's stale events.
		if cmds {
			l.commands()
		}
		if accept && l.accepting {
			l.accept()
		}
		for len(l.redial) > 0 {
			c := l.redial[0]
			l.redial = l.redial[1:]
			if !c.closed {
				l.dial(c)
			}
		}
		l.timers()
		if !l.spin.Load() {
			// Other goroutines may be waiting for this P, perhaps
			// the only one: a loop under load never parks.
			runtime.Gosched()
		}
	}
}

// wait returns the next events, waiting until the nearest timer at most.
//
// It looks first without waiting, with a raw system call: under load the
// next events are there already. Then it waits in one of two ways.
//
// A loop that holds one of the process's GOMAXPROCS-1 spin slots (it
// takes a free one when it is about to wait after work, and gives it back
// after spinIdle with nothing to do) waits in epoll_wait itself, as a raw
// system call: its thread sleeps in
// the kernel until the next event, and keeps its P meanwhile, which is
// cheapest (no scheduler work, no thread to wake but its own). At least
// one P is left for the rest of the process, so goroutines waiting on the
// runtime's poller (health checks, the admin server, clients on the
// goroutine path, STOMP sessions) still run as soon as they are woken,
// and the garbage collector has a P to work on; its stop-the-world pauses
// interrupt the wait (EINTR) like any other.
//
// A loop without a slot parks on the runtime's poller instead (park), so
// that it holds no P while it waits. Blocking in epoll_wait as an ordinary
// system call would keep the P until sysmon took it, and a P taken so may
// sit idle with nobody polling: goroutines waiting on the runtime's poller
// then waited for sysmon's own poll, 10 ms and more
// (TestLoopsLeaveThePoller).
func (l *loop) wait(events []syscall.EpollEvent) int {
	if n := rawsock.EpollWaitRaw(l.epfd, events, 0); n > 0 {
		return n
	}
	now := time.Since(loopEpoch)
	next := l.nextTimer()
	if next >= 0 && next <= now {
		return 0
	}
	if l.spinning(now) {
		ms := int(spinWaitMax / time.Millisecond)
		if next >= 0 {
			ms = min(ms, int((next-now+time.Millisecond-1)/time.Millisecond))
		}
		n := rawsock.EpollWaitRaw(l.epfd, events, ms)
		if n == 0 && time.Since(loopEpoch)-l.lastWork >= spinIdle {
			// Idle: the slot may serve a loop with work better. (Not
			// the length of this one wait: the runtime interrupts a
			// goroutine that looks busy for 10 ms, EINTR here.)
			l.unspin()
		}
		return n
	}
	return l.park(events, next)
}

// spinners counts the loops of the process that hold a spin slot (wait).
var spinners atomic.Int32

// spinIdle is how long a loop waits with nothing to do before it gives
// its spin slot back: a sidecar's other services' loops, or another
// loop of the same service, may be busy.
const spinIdle = time.Second

// spinWaitMax bounds one raw wait. The runtime stops the world by
// interrupting it (EINTR from its preemption signal) and interrupts it
// anyway after 10 ms of what looks like running; without that signal
// (GODEBUG=asyncpreemptoff=1) every stop-the-world pause, and every
// ReadMemStats behind /metrics, would wait for the wait to end.
const spinWaitMax = 10 * time.Millisecond

// spinning reports whether the loop holds a spin slot, taking one if
// there is one free and the loop is about to wait after work (an idle
// loop that gave its slot back does not take it again at once), or
// giving its own back if GOMAXPROCS went down (a reload's gomaxprocs).
func (l *loop) spinning(now time.Duration) bool {
	if now >= l.procsAt {
		l.procs = int32(runtime.GOMAXPROCS(0))
		l.procsAt = now + spinIdle
		if l.spin.Load() && spinners.Load() > l.procs-1 {
			l.unspin()
		}
	}
	if !l.spin.Load() && l.worked {
		// GOMAXPROCS read afresh: a reload may have just lowered it.
		if spinners.Add(1) <= int32(runtime.GOMAXPROCS(0))-1 {
			l.spin.Store(true)
			l.unpark() // no more need to be woken by the runtime
		} else {
			spinners.Add(-1)
		}
	}
	return l.spin.Load()
}

// unspin gives the loop's spin slot back, if it holds one.
func (l *loop) unspin() {
	if l.spin.Load() {
		l.spin.Store(false)
		spinners.Add(-1)
	}
}

// park waits on the runtime's poller for the loop's epoll instance to have
// events, or the next timer (-1: none). The instance is registered there
// (a duplicate of its descriptor, non-blocking: the poller takes it as it
// takes a socket) only while the loop has no spin slot: registered, every
// event would also wake the runtime's poller.
func (l *loop) park(events []syscall.EpollEvent, next time.Duration) int {
	if l.epf == nil && !l.noPark {
		if parkRefused.Load() {
			return l.waitBlocking(events, next, errors.New("refused by the test"))
		}
		fd, err := unix.FcntlInt(uintptr(l.epfd), unix.F_DUPFD_CLOEXEC, 0)
		if err == nil {
			if err = unix.SetNonblock(fd, true); err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			return l.waitBlocking(events, next, os.NewSyscallError("dup", err))
		}
		l.epf = os.NewFile(uintptr(fd), "epoll")
		l.eprc, _ = l.epf.SyscallConn() // an *os.File's never fails
		l.deadline = -1
	}
	if l.noPark {
		return l.waitBlocking(events, next, nil)
	}
	if next != l.deadline {
		var dl time.Time // zero: none
		if next >= 0 {
			dl = loopEpoch.Add(next)
		}
		if err := l.epf.SetReadDeadline(dl); err != nil {
			// The poller did not take the instance (epoll_ctl out of
			// watches or memory): it would not wake us either.
			return l.waitBlocking(events, next, err)
		}
		l.deadline = next
	}
	n := 0
	err := l.eprc.Read(func(fd uintptr) bool {
		n = rawsock.EpollWaitRaw(int(fd), events, 0)
		return n > 0
	})
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return l.waitBlocking(events, next, err)
	}
	return n
}

// parkRefused makes park fall back to waitBlocking, as if the runtime's
// poller had refused the loop's epoll instance: for tests.
var parkRefused atomic.Bool

// waitBlocking is park's fallback where the runtime's poller can't take
// the loop's epoll instance (err says why, logged once; nil: known
// already): epoll_wait as an ordinary system call, bounded by the next
// timer and spinWaitMax, so the P goes to others once sysmon takes it.
func (l *loop) waitBlocking(events []syscall.EpollEvent, next time.Duration, err error) int {
	if err != nil {
		l.g.s.log.WithError(err).Warn("event loop cannot wait on the runtime's poller: waiting in epoll_wait instead")
		l.unpark()
		l.noPark = true
	}
	ms := int(spinWaitMax / time.Millisecond)
	if next >= 0 {
		ms = max(0, min(ms, int((next-time.Since(loopEpoch)+time.Millisecond-1)/time.Millisecond)))
	}
	n, _, e := syscall.Syscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), uintptr(ms), 0, 0)
	if e != 0 {
		return 0
	}
	return int(n)
}

// unpark takes the loop's epoll instance off the runtime's poller.
func (l *loop) unpark() {
	if l.epf != nil {
		l.epf.Close()
		l.epf, l.eprc = nil, nil
	}
}

// nextTimer is when, on the loop's clock, the nearest timer is due (-1:
// none): the next idle sweep, dial deadline, keepalive, accept retry or
// redial of starved clients.
func (l *loop) nextTimer() time.Duration {
	next := time.Duration(-1)
	at := func(t time.Duration) {
		if next < 0 || t < next {
			next = t
		}
	}
	if l.n > 0 && l.g.s.opts.IdleTimeout > 0 {
		at(l.sweepAt)
	}
	for _, c := range l.dialing {
		at(c.deadline)
	}
	if l.retryAt > 0 {
		at(l.retryAt)
	}
	if len(l.young) > 0 {
		at(l.young[0].at)
	}
	if len(l.starved) > 0 {
		at(l.starveAt)
	}
	return next
}

// timers runs what is due: dial timeouts, the idle sweep, an accept retry.
func (l *loop) timers() {
	for i := 0; i < len(l.dialing); {
		c := l.dialing[i]
		if l.now < c.deadline {
			i++
			continue
		}
		l.dialFailed(c, os.ErrDeadlineExceeded) // removes c from dialing
	}
	if limit := l.g.s.opts.IdleTimeout; limit > 0 && l.now >= l.sweepAt {
		l.sweepAt = l.now + min(limit/4, time.Second)
		for fd, c := range l.conns {
			if c != nil && fd == c.cfd && !c.connecting && l.now-c.last >= limit {
				if l.g.s.debugging() {
					c.logger().WithField("idle_timeout", limit).Debug("closing: idle")
				}
				l.close(c, reasonIdle)
			}
		}
	}
	for len(l.young) > 0 && l.now >= l.young[0].at {
		y := l.young[0]
		l.young[0] = young{}
		l.young = l.young[1:]
		if !y.c.closed && y.c.bfd == y.fd {
			l.setKeepAlive(y.c)
		}
	}
	if len(l.starved) > 0 && l.now >= l.starveAt {
		starved := l.starved
		l.starved = nil
		for _, c := range starved {
			if c.closed {
				continue
			}
			if to := l.g.s.opts.Timeout; to <= 0 || l.now >= c.since+to {
				l.g.s.metrics.failed.WithLabelValues(l.g.s.opts.Name, failReason(serve.ErrTimeout)).Inc()
				c.logger().Warn("closing client: gave up looking for a backend (out of file descriptors)")
				l.close(c, reasonShutdown)
				continue
			}
			l.dial(c)
		}
		if len(l.starved) == 0 {
			l.starveDelay = 0
		}
	}
	if l.retryAt > 0 && l.now >= l.retryAt {
		l.retryAt = 0
		l.resumeAccept()
	}
}

// commands runs the commands posted since the last look.
func (l *loop) commands() {
	var buf [8]byte
	unix.Read(l.evfd, buf[:])
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = 0
	l.mu.Unlock()
	if cmds&cmdStopAccepting != 0 {
		l.closeListener()
		l.retryAt = 0
		// As the goroutine path's held clients are: shutting down before
		// a backend was reached.
		for len(l.dialing) > 0 {
			c := l.dialing[0]
			l.g.s.metrics.failed.WithLabelValues(l.g.s.opts.Name, failReason(serve.ErrShutdown)).Inc()
			l.close(c, reasonShutdown)
		}
		for _, c := range l.starved {
			if !c.closed {
				l.g.s.metrics.failed.WithLabelValues(l.g.s.opts.Name, failReason(serve.ErrShutdown)).Inc()
				l.close(c, reasonShutdown)
			}
		}
		l.starved = nil
	}
	if cmds&cmdSweep != 0 {
		l.sweep()
	}
	if cmds&(cmdCloseAll|cmdQuit) != 0 {
		for fd, c := range l.conns {
			if c != nil && fd == c.cfd {
				l.close(c, reasonShutdown)
			}
		}
		for _, c := range l.starved {
			l.close(c, reasonShutdown)
		}
		l.starved = nil
	}
	if cmds&cmdQuit != 0 {
		l.quit = true
	}
}

// sweep closes the connections whose backend is no longer a target (see
// Service.closeStale), and dials again for those still dialing one.
// Reading the answer here, on the loop, orders it with every dial the
// loop makes: a connection dialed before the change is swept now, one
// dialed after it saw the new answer.
func (l *loop) sweep() {
	targets, _ := l.g.s.picker.Targets()
	stale := staleness(l.g.s.picker, targets)
	var closed map[string]int
	for fd, c := range l.conns {
		if c == nil || fd != c.cfd || c.bfd < 0 || !stale(c.t.addr) {
			continue
		}
		if c.connecting {
			// Nothing has been read from the client: start over.
			l.abandonDial(c)
			l.redial = append(l.redial, c)
			continue
		}
		if c.untouched() {
			// Connected, but not a byte has moved either way: as good
			// as still dialing.
			l.disconnect(c)
			l.redial = append(l.redial, c)
			continue
		}
		if l.g.s.debugging() {
			c.logger().Debug("closing: backend is no longer a target")
		}
		if closed == nil {
			closed = map[string]int{}
		}
		closed[c.t.addr]++
		l.close(c, reasonFailover)
	}
	// One line for the change, from the last loop to sweep (failover.go).
	l.g.s.endSweep(closed)
}

// accept takes one connection from the listening socket, and closes it
// at once if it is over a connection cap (see serve.Admission).
func (l *loop) accept() {
	g := l.g
	fd, err := rawsock.Accept4(l.lnfd)
	if err != nil {
		switch err {
		case rawsock.ErrWouldBlock, syscall.ECONNABORTED:
			return
		}
		// Out of file descriptors and the like: stop accepting for a
		// while rather than spin on a listener that stays readable.
		l.delay = min(max(2*l.delay, 5*time.Millisecond), time.Second)
		g.s.log.WithError(os.NewSyscallError("accept4", err)).WithField("retry_in", l.delay).Warn("accept failed")
		l.pauseAccept()
		l.retryAt = l.now + l.delay
		return
	}
	l.delay = 0
	var src netip.Addr
	if g.adm.BySource() {
		src = peerAddr(fd).Addr()
	}
	if why := g.adm.Admit(src); why != "" {
		g.adm.Refused(why, func() string { return peerAddr(fd).String() })
		rawsock.Close(fd)
		return
	}
	if !g.s.lc.Enter() {
		rawsock.Close(fd)
		g.adm.Release(src)
		return
	}
	c := &lconn{l: l, cfd: fd, bfd: -1, src: src, since: l.now, up: half{pipe: noPipe}, down: half{pipe: noPipe}}
	g.s.lc.CountAccepted()
	l.n++
	l.hold(c, true)
	if g.s.debugging() {
		c.logger().Debug("accepted")
	}
	l.dial(c)
}

// pauseAccept takes the listener out of the epoll set; resumeAccept puts
// it back.
func (l *loop) pauseAccept() {
	if l.accepting {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, l.lnfd, nil)
		l.accepting = false
	}
}

func (l *loop) resumeAccept() {
	if !l.accepting && l.lnfd >= 0 && l.retryAt == 0 {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.lnfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.lnfd)})
		l.accepting = true
	}
}

// peerAddr is the remote address of socket fd, the zero AddrPort if it
// has none (the client has gone already). The loops learn it only when
// they need it: accept4 is called without a sockaddr to fill.
func peerAddr(fd int) netip.AddrPort {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return netip.AddrPort{}
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// newEventLoops makes a loop per P but one, each with a listening socket
// of its own: each loop can then hold a spin slot (see wait), and one P
// is left for the rest of the process.
func newEventLoops(s *Service) (eventLoops, error) {
	g, err := newLoopGroup(s, max(1, runtime.GOMAXPROCS(0)-1))
	if err != nil {
		return nil, err
	}
	return g, nil
}
