//go:build linux

package proxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"handover/internal/rawsock"
	"handover/internal/serve"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// One connection in an event loop (evloop_linux.go), from its dial to its
// close: what the loop does with each event on the connection's sockets.

// young is a backend socket due its keepalive options at a time.
type young struct {
	c  *lconn
	fd int
	at time.Duration
}

// target is a backend address as a loop dials it, parsed once.
type target struct {
	addr   string
	ap     netip.AddrPort
	ok     bool // addr is an IP address and port; else the goroutine path dials it
	family int
	series *backendSeries
	active *atomic.Int64
}

// lconn is one proxied connection in a loop.
type lconn struct {
	l          *loop
	cfd, bfd   int // client and backend sockets; bfd is -1 before a dial
	t          *target
	connecting bool
	deadline   time.Duration // of the dial in progress
	// up is client to backend, down is backend to client.
	up, down half
	last     time.Duration // when data last arrived either way
	closed   bool
	// held is set while c is counted as held (looking for a backend).
	held bool
	// since is when the loop accepted c, on its clock (loop.now).
	since time.Duration
	// src is c's source address as admitted (serve.Admission.Admit): the zero
	// Addr unless the per-source cap is on.
	src netip.Addr
	// changed is the Picker's change channel as of the dial: closed when
	// the answer the dial followed is out of date.
	changed  <-chan struct{}
	logEntry *logrus.Entry
}

// noPipe is half.pipe before there is one.
var noPipe = [2]int{-1, -1}

// half is one direction of an lconn.
type half struct {
	buf      []byte // bytes read and not yet written: buf[off:end]
	off, end int
	pipe     [2]int // splice pipe, once bulk data was seen; noPipe before
	inPipe   int    // bytes in the pipe not yet written
	// more is false after a short read, until the next EPOLLIN: the
	// socket was drained then. hup is set once the peer's FIN or an error
	// was reported: from then on every read goes on to EOF or EAGAIN.
	more, hup bool
	eof       bool         // the source's EOF was passed on
	n         atomic.Int64 // bytes written to the destination
}

// started is when the loop accepted c, as a time.
func (c *lconn) started() time.Time { return loopEpoch.Add(c.since) }

// untouched reports whether no byte has been read from either side of c.
func (c *lconn) untouched() bool {
	for _, h := range []*half{&c.up, &c.down} {
		if h.n.Load() > 0 || h.pending() || h.eof {
			return false
		}
	}
	return true
}

// disconnect closes the backend socket of c, an untouched connection, and
// counts that connection ended by failover, leaving c held and ready to
// dial again.
func (l *loop) disconnect(c *lconn) {
	g := l.g
	g.proxied.Add(-1)
	c.t.active.Add(-1)
	g.s.metrics.ended(c, c.t.series, reasonFailover)
	l.conns[c.bfd] = nil
	rawsock.Close(c.bfd)
	c.bfd = -1
	// What the client's socket reported and we have not read yet: the
	// edges will not come again.
	more, hup := c.up.more, c.up.hup
	c.up, c.down = half{pipe: noPipe}, half{pipe: noPipe}
	c.up.more, c.up.hup = more, hup
	l.hold(c, true)
}

// target returns addr parsed, from the loop's cache.
func (l *loop) target(addr string) *target {
	if t := l.targets[addr]; t != nil {
		return t
	}
	t := &target{addr: addr}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		t.ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		t.ok = true
		t.family = unix.AF_INET
		if t.ap.Addr().Is6() {
			t.family = unix.AF_INET6
		}
	}
	t.series = l.g.s.metrics.backendSeries(l.g.s.opts.Name, addr)
	t.active = l.g.activeCounter(addr)
	l.targets[addr] = t
	return t
}

// dial starts connecting c to the first target (the preferred one: the
// master), or hands c to the goroutine path, which tries them all.
//
// A connect refused at once (as on loopback) is not counted or logged: the
// goroutine path tries again at once, and counts its attempts (dial
// errors, re-checks, MaxReconnectAttempts) as it always has.
//
// Out of file descriptors (or kernel memory) the client can't be handed
// off either, which takes a descriptor: it waits in the loop instead
// (starve), as held as on the goroutine path. Once shutdown has begun,
// a client still without a backend is closed, as there.
func (l *loop) dial(c *lconn) {
	if l.lnfd < 0 {
		l.g.s.metrics.failed.WithLabelValues(l.g.s.opts.Name, failReason(serve.ErrShutdown)).Inc()
		l.close(c, reasonShutdown)
		return
	}
	targets, changed := l.g.s.picker.Targets()
	c.changed = changed
	if len(targets) > 0 {
		if t := l.target(targets[0]); t.ok {
			err := l.connect(c, t)
			if err == nil {
				return
			}
			if resourceShortage(err) {
				l.starve(c, err)
				return
			}
		}
	}
	l.handoff(c)
}

// resourceShortage reports whether err says the process or the kernel is
// out of something that time may bring back.
func resourceShortage(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ENOSPC} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// starve keeps c, whose dial failed for want of resources, to be dialed
// again after a pause that grows as accept's does; the client gives up at
// Timeout (failed, reason timeout).
func (l *loop) starve(c *lconn, err error) {
	if len(l.starved) == 0 {
		l.starveDelay = min(max(2*l.starveDelay, 5*time.Millisecond), time.Second)
		l.starveAt = l.now + l.starveDelay
		l.g.s.log.WithError(err).WithField("retry_in", l.starveDelay).Warn("cannot dial a backend: holding clients until resources free up")
	}
	l.starved = append(l.starved, c)
}

// connect opens c's backend socket and starts its connect to t.
func (l *loop) connect(c *lconn, t *target) error {
	fd, err := rawsock.Socket(t.family)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	for _, o := range l.g.backendOpts {
		if err := rawsock.SetsockoptInt(uintptr(fd), o.Level, o.Opt, o.Value); err != nil {
			rawsock.Close(fd)
			return os.NewSyscallError("setsockopt", err)
		}
	}
	err = rawsock.Connect(uintptr(fd), t.ap)
	if err != nil && err != syscall.EINPROGRESS {
		rawsock.Close(fd)
		return os.NewSyscallError("connect", err)
	}
	c.bfd, c.t = fd, t
	c.logEntry = nil // built again with this backend
	err2 := l.track(c, fd)
	if err2 == nil && (c.cfd >= len(l.conns) || l.conns[c.cfd] != c) {
		err2 = l.track(c, c.cfd)
	}
	if err2 != nil {
		l.conns[fd] = nil
		rawsock.Close(fd)
		c.bfd = -1
		return os.NewSyscallError("epoll_ctl", err2)
	}
	if err != nil {
		c.connecting = true
		// A dial never outlives Timeout either (serve.Connector's dial).
		c.deadline = l.now + l.g.s.opts.DialTimeout
		if to := l.g.s.opts.Timeout; to > 0 {
			c.deadline = min(c.deadline, c.since+to)
		}
		l.dialing = append(l.dialing, c)
		return nil
	}
	l.connected(c)
	return nil
}

// track registers fd, one of c's sockets, with the loop and its epoll set.
func (l *loop) track(c *lconn, fd int) error {
	for fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*lconn, len(l.conns)+64)...)
	}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}); err != nil {
		return err
	}
	l.conns[fd] = c
	return nil
}

// connected starts proxying c.
func (l *loop) connected(c *lconn) {
	c.connecting = false
	c.last = l.now
	l.hold(c, false)
	g := l.g
	if len(g.keepAlive) > 0 {
		l.young = append(l.young, young{c: c, fd: c.bfd, at: l.now + keepAliveAfter})
	}
	g.proxied.Add(1)
	c.t.active.Add(1)
	g.s.metrics.started(c, c.t.series)
	if g.s.debugging() {
		c.logger().WithField("waited", time.Since(c.started()).Round(time.Millisecond)).Debug("proxying")
	}
	if g.s.opts.OnFailover != OnFailoverClose {
		return
	}
	select {
	case <-c.changed:
		// The targets changed while we dialed, and the sweep for that
		// change may have run already (Service.register has the same
		// check): is the backend still one?
		targets, _ := g.s.picker.Targets()
		if !slices.Contains(targets, c.t.addr) {
			if g.s.debugging() {
				c.logger().Debug("backend stopped being a target while being dialed: looking again")
			}
			l.disconnect(c)
			l.redial = append(l.redial, c)
			return
		}
	default:
	}
	if c.up.more {
		// The client's socket was readable before there was anywhere
		// to write: that EPOLLIN was noted and not acted on.
		l.pump(c, &c.up, c.cfd, c.bfd)
	}
}

// setKeepAlive turns keepalive on for c's backend socket.
func (l *loop) setKeepAlive(c *lconn) {
	for _, o := range l.g.keepAlive {
		if err := rawsock.SetsockoptInt(uintptr(c.bfd), o.Level, o.Opt, o.Value); err != nil {
			// Not worth ending a working connection for.
			c.logger().WithError(os.NewSyscallError("setsockopt", err)).Warn("could not turn keepalive on for the backend socket")
			return
		}
	}
}

// hold counts c as held (on) or no longer held: accepted and looking for
// a backend, as the goroutine path counts its clients (Service.held).
func (l *loop) hold(c *lconn, on bool) {
	if c.held == on {
		return
	}
	c.held = on
	if on {
		l.g.s.held.Add(1)
		l.g.s.series.held.Inc()
	} else {
		l.g.s.held.Add(-1)
		l.g.s.series.held.Dec()
	}
}

// noteDialError counts a failed dial of t and logs it at debug level.
func (l *loop) noteDialError(c *lconn, t *target, err error) {
	l.g.s.metrics.dialErrors.WithLabelValues(l.g.s.opts.Name, t.addr).Inc()
	if l.g.s.debugging() {
		c.logger().WithField("backend", t.addr).WithError(err).Debug("dial failed")
	}
}

// abandonDial closes c's backend socket, whose connect is in progress.
func (l *loop) abandonDial(c *lconn) {
	l.dialing = slices.DeleteFunc(l.dialing, func(d *lconn) bool { return d == c })
	l.conns[c.bfd] = nil
	rawsock.Close(c.bfd)
	c.bfd, c.connecting = -1, false
}

// dialFailed gives up the dial in progress, which took DialTimeout, and
// hands c to the goroutine path, which retries with backoff. The attempt
// is counted and asks for a re-check: the goroutine path would take as
// long again to learn as much.
func (l *loop) dialFailed(c *lconn, err error) {
	t := c.t
	l.abandonDial(c)
	l.noteDialError(c, t, err)
	l.g.s.picker.Recheck()
	l.handoff(c)
}

// handoff passes c's client socket, which has not been read, to the
// goroutine path: the Lifecycle's accept loop takes it from AcceptTCP.
func (l *loop) handoff(c *lconn) {
	if c.cfd < len(l.conns) && l.conns[c.cfd] == c {
		l.conns[c.cfd] = nil
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.cfd, nil)
	}
	c.closed = true // gone from the loop
	l.n--
	l.hold(c, false)
	l.g.s.lc.Leave()
	f := os.NewFile(uintptr(c.cfd), "client")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		l.g.adm.Release(c.src)
		l.g.s.log.WithError(err).Warn("closing client: could not pass it to a goroutine")
		return
	}
	l.g.handoff(nc.(*net.TCPConn), c.started(), c.src)
}

// event handles what epoll reported for fd.
func (l *loop) event(fd int, ev uint32) {
	if fd >= len(l.conns) {
		return
	}
	c := l.conns[fd]
	if c == nil {
		return // closed earlier in this batch
	}
	const readable = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR
	if fd == c.bfd {
		if c.connecting {
			if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
				// Refused or unreachable: the goroutine path dials
				// again at once, and counts its attempts (see dial).
				l.abandonDial(c)
				l.handoff(c)
				return
			}
			if ev&unix.EPOLLOUT == 0 {
				return
			}
			l.dialing = slices.DeleteFunc(l.dialing, func(d *lconn) bool { return d == c })
			l.connected(c)
			if c.closed || c.bfd != fd {
				return // to be dialed again
			}
		}
		if ev&readable != 0 {
			c.down.ready(ev)
			l.pump(c, &c.down, c.bfd, c.cfd)
		}
		if ev&unix.EPOLLOUT != 0 && !c.closed && c.up.pending() {
			l.pump(c, &c.up, c.cfd, c.bfd)
		}
		return
	}
	if c.connecting || c.bfd < 0 {
		if ev&readable != 0 {
			c.up.ready(ev) // read once connected
		}
		return
	}
	if ev&readable != 0 {
		c.up.ready(ev)
		l.pump(c, &c.up, c.cfd, c.bfd)
	}
	if ev&unix.EPOLLOUT != 0 && !c.closed && c.down.pending() {
		l.pump(c, &c.down, c.bfd, c.cfd)
	}
}

// ready notes an EPOLLIN (or hang-up) on the half's source.
func (h *half) ready(ev uint32) {
	h.more = true
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		h.hup = true
	}
}

// pending reports bytes read and not yet written.
func (h *half) pending() bool { return h.inPipe > 0 || h.off < h.end }

// pump moves h's bytes from src to dst until src has nothing more, dst
// takes nothing more (its EPOLLOUT resumes), or the direction ends.
func (l *loop) pump(c *lconn, h *half, src, dst int) {
	for {
		if h.inPipe > 0 {
			n, err := rawsock.Splice(h.pipe[0], dst, h.inPipe)
			if err == rawsock.ErrWouldBlock {
				return
			}
			if err != nil {
				l.fail(c, dst, "splice", err)
				return
			}
			h.inPipe -= n
			h.n.Add(int64(n))
			continue
		}
		if h.off < h.end {
			n, err := rawsock.Send(uintptr(dst), h.buf[h.off:h.end])
			if err == rawsock.ErrWouldBlock {
				return
			}
			if err != nil {
				l.fail(c, dst, "write", err)
				return
			}
			h.off += n
			h.n.Add(int64(n))
			if h.off < h.end {
				continue
			}
			l.putBuf(h.buf)
			h.buf, h.off, h.end = nil, 0, 0
		}
		if h.eof || !h.more {
			return
		}
		if h.pipe[1] >= 0 {
			n, err := rawsock.Splice(src, h.pipe[1], pipeSize)
			switch {
			case err == rawsock.ErrWouldBlock:
				return
			case err != nil:
				l.fail(c, src, "splice", err)
				return
			case n == 0:
				l.eof(c, h, dst)
				return
			}
			h.inPipe = n
			c.last = l.now
			continue
		}
		buf := l.getBuf()
		n, err := rawsock.Read(uintptr(src), buf)
		switch {
		case err == rawsock.ErrWouldBlock:
			l.putBuf(buf)
			return
		case err != nil:
			l.putBuf(buf)
			l.fail(c, src, "read", err)
			return
		case n == 0:
			l.putBuf(buf)
			l.eof(c, h, dst)
			return
		}
		h.buf, h.off, h.end = buf, 0, n
		c.last = l.now
		if n == len(buf) {
			l.startSplice(h)
		} else if !h.hup {
			h.more = false // drained: the next EPOLLIN says when to read
		}
	}
}

// startSplice moves h to splice(2) for the rest of the connection: a read
// filled the buffer, so this direction carries bulk data. Without a pipe
// (out of file descriptors) it stays with the buffer.
func (l *loop) startSplice(h *half) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return
	}
	unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, pipeSize) // a smaller pipe still works
	h.pipe = p
}

// eof passes h's source's EOF on: a half-close of dst, unless the other
// direction has ended too, when closing both sockets sends the same FIN.
func (l *loop) eof(c *lconn, h *half, dst int) {
	h.eof = true
	other := &c.down
	if h == &c.down {
		other = &c.up
	}
	if other.eof {
		l.close(c, reasonEOF)
		return
	}
	if err := rawsock.Shutdown(uintptr(dst), syscall.SHUT_WR); err != nil {
		l.fail(c, dst, "shutdown", err)
	}
}

// fail ends c after a system call on fd failed, attributing the failure
// to the side fd is; a backend failing under a live connection asks for a
// health re-check (passive health).
func (l *loop) fail(c *lconn, fd int, op string, err error) {
	err = os.NewSyscallError(op, err)
	if fd == c.bfd {
		c.logger().WithError(err).Info("backend connection failed while proxying: asking for a health re-check")
		l.g.s.picker.Recheck()
		l.close(c, reasonUpstreamError)
		return
	}
	if l.g.s.debugging() {
		c.logger().WithError(err).Debug("client connection failed")
	}
	l.close(c, reasonClientError)
}

// close closes c's sockets and pipes and counts it ended for reason.
func (l *loop) close(c *lconn, reason string) {
	if c.closed {
		return
	}
	c.closed = true
	if c.connecting {
		l.abandonDial(c)
	}
	l.hold(c, false)
	debug := l.g.s.debugging()
	if debug {
		c.logger() // while getpeername still works
	}
	for _, fd := range []int{c.cfd, c.bfd} {
		if fd >= 0 {
			if fd < len(l.conns) && l.conns[fd] == c {
				l.conns[fd] = nil
			}
			rawsock.Close(fd)
		}
	}
	for _, h := range []*half{&c.up, &c.down} {
		if h.pipe[0] >= 0 {
			rawsock.Close(h.pipe[0])
			rawsock.Close(h.pipe[1])
		}
		if h.buf != nil {
			l.putBuf(h.buf)
			h.buf = nil
		}
	}
	l.n--
	g := l.g
	if c.t != nil && c.bfd >= 0 {
		g.proxied.Add(-1)
		c.t.active.Add(-1)
		g.s.metrics.ended(c, c.t.series, reason)
		if debug {
			c.logger().WithFields(logrus.Fields{
				"reason": reason, "up": c.up.n.Load(), "down": c.down.n.Load(),
				"took": time.Since(c.started()).Round(time.Millisecond),
			}).Debug("closed")
		}
	}
	g.adm.Release(c.src)
	g.s.lc.Leave()
}

// getBuf takes a buffer from the loop's free list; putBuf gives it back.
func (l *loop) getBuf() []byte {
	if n := len(l.free); n > 0 {
		b := l.free[n-1]
		l.free = l.free[:n-1]
		return b
	}
	return make([]byte, relayBufSize)
}

func (l *loop) putBuf(b []byte) {
	if len(l.free) < loopFreeBufs {
		l.free = append(l.free, b)
	}
}

func (c *lconn) labels() (service, backend string) { return c.l.g.s.opts.Name, c.t.addr }

func (c *lconn) sample() (up, down int64) { return c.up.n.Load(), c.down.n.Load() }

// logger returns c's log entry, with the client's address and the
// backend, built on first use: only debug events and failures need it.
func (c *lconn) logger() *logrus.Entry {
	if c.logEntry == nil {
		f := logrus.Fields{"client": peerName(c.cfd)}
		if c.t != nil {
			f["backend"] = c.t.addr
		}
		c.logEntry = c.l.g.s.log.WithFields(f)
	}
	return c.logEntry
}

// peerName is the address of fd's peer, for logs.
func peerName(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "?"
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return "?"
}
