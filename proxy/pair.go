package proxy

import (
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"handover/internal/serve"
)

// Why a proxied connection ended: the reason label of
// handover_proxy_connections_closed_total and the reason field of the
// "closed" event.
const (
	reasonEOF           = "eof"            // both sides finished cleanly
	reasonClientError   = "client_error"   // the client's socket failed (reset, say)
	reasonUpstreamError = "upstream_error" // the backend's socket failed; a re-check was asked for
	reasonFailover      = "failover"       // the backend stopped being a target
	reasonIdle          = "idle"           // no bytes either way for IdleTimeout
	reasonShutdown      = "shutdown"       // ShutdownGrace ran out
)

// pair is one proxied connection: a client socket, the backend socket
// dialed for it, and two copiers between them, one per direction.
type pair struct {
	svc      *Service
	service  string
	backend  string
	client   *net.TCPConn
	upstream serve.Conn
	// upstreamTCP is upstream's socket: upstream itself, or the one under
	// its TLS. The kernel's counts on it are of TLS records, not of the
	// bytes proxied, so a TLS pair counts in user space (startMeter).
	upstreamTCP *net.TCPConn
	start       time.Time
	series      *backendSeries
	// logEntry is the pair's log entry, built on first use (logger).
	logEntry atomic.Pointer[logrus.Entry]

	// up is client to backend, down is backend to client.
	up, down flow
	// counting is set when the kernel can't count for us (meter.go): the
	// copiers then write through a countingWriter, giving up splice.
	counting bool
	// lastWrite is, in counting mode, time.Since(start) at the last write
	// either way.
	lastWrite atomic.Int64

	// finished counts the copiers that ended cleanly (lastToFinish).
	finished atomic.Int32

	closeMu     sync.Mutex
	closeReason string // the first reason given to close; "" while open
	// idle is the IdleTimeout timer (nil without one); idleOff is set
	// when run stops it. Both guarded by closeMu.
	idle    *time.Timer
	idleOff bool
}

func newPair(s *Service, client *net.TCPConn, upstream serve.Conn, backend string) *pair {
	p := &pair{
		svc:      s,
		service:  s.opts.Name,
		backend:  backend,
		client:   client,
		upstream: upstream,
		start:    time.Now(),
		series:   s.metrics.backendSeries(s.opts.Name, backend),
	}
	tc, plain := upstream.(*net.TCPConn)
	if !plain {
		tc, _ = upstream.(*tls.Conn).NetConn().(*net.TCPConn)
	}
	p.upstreamTCP = tc
	// relay (and its splice) needs two bare sockets.
	p.startMeter(s.forceCounting || !plain)
	return p
}

func (p *pair) labels() (service, backend string) { return p.service, p.backend }

// logger returns the pair's log entry, with the client and the backend. It
// is built on first use, as connLog is, and may be called from any
// goroutine.
func (p *pair) logger() *logrus.Entry {
	if e := p.logEntry.Load(); e != nil {
		return e
	}
	p.logEntry.CompareAndSwap(nil, p.svc.log.WithFields(logrus.Fields{
		"client": p.client.RemoteAddr().String(), "backend": p.backend,
	}))
	return p.logEntry.Load()
}

// run proxies until both directions have ended, or the pair was closed, and
// returns why it ended. Each direction has its copier, named for it so that
// a goroutine dump shows which side a stuck connection waits on:
// copyUpstream in a goroutine of its own, copyDownstream in the caller's
// (one goroutine fewer per connection, and one stack less to grow). run
// returns only after both copiers have.
//
// A clean EOF in one direction is a half-close (copyUpstream says how it is
// passed on) and leaves the other direction running. An error in either
// direction closes both sockets at once, from the copier that saw it: the
// other copier then fails too, and a broken TCP stream is no use to a STOMP
// client anyway, which must reconnect.
func (p *pair) run() string {
	upDone := make(chan struct{})
	go p.copyUpstream(upDone)
	p.watchIdle(true)
	p.copyDownstream()
	<-upDone
	p.watchIdle(false)
	return p.close(reasonEOF)
}

// watchIdle starts (on) or stops the IdleTimeout timer, if there is one. It
// fires when the pair would be idle had nothing moved since the last look;
// each look (checkIdle) re-arms it for the rest. Nothing runs in between.
func (p *pair) watchIdle(on bool) {
	limit := p.svc.opts.IdleTimeout
	if limit <= 0 {
		return
	}
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if on {
		p.idle = time.AfterFunc(limit, p.checkIdle)
		return
	}
	p.idleOff = true
	p.idle.Stop()
}

// checkIdle, run by the idle timer, closes the pair if nothing has moved
// for IdleTimeout, and otherwise re-arms the timer for when that would be
// so. Once watchIdle has stopped the timer it does nothing, so a check
// running at that moment cannot re-arm it.
func (p *pair) checkIdle() {
	limit := p.svc.opts.IdleTimeout
	d := p.idleFor()
	p.closeMu.Lock()
	if p.idleOff || p.closeReason != "" {
		p.closeMu.Unlock()
		return
	}
	if d < limit {
		p.idle.Reset(limit - d)
		p.closeMu.Unlock()
		return
	}
	p.closeMu.Unlock()
	p.logger().WithField("idle_timeout", limit).Debug("closing: idle")
	p.close(reasonIdle)
}

// copyEnded handles a copier's end: a failure not caused by our own close
// is attributed to one side and ends the pair. dir is "up" or "down"; err
// is nil for a clean EOF passed on as a half-close. Both copiers may call
// it at once: close keeps the first reason.
func (p *pair) copyEnded(dir string, err error) {
	if err == nil || p.closed() {
		return
	}
	if p.upstreamBroken() {
		// Passive health: the backend reset or vanished under a live
		// connection, which the periodic checks may not know yet.
		p.logger().WithError(err).WithField("dir", dir).Info("backend connection failed while proxying: asking for a health re-check")
		p.svc.picker.Recheck()
		p.close(reasonUpstreamError)
		return
	}
	if p.svc.debugging() {
		p.logger().WithError(err).WithField("dir", dir).Debug("client connection failed")
	}
	p.close(reasonClientError)
}

// copyUpstream copies the client's bytes to the backend until the client
// stops sending (relay.go says how), then closes done.
//
// A clean EOF means the client half-closed (shutdown(SHUT_WR)); CloseWrite
// passes that on, so a backend reading "until EOF" gets its EOF and can
// still answer on the other direction, which keeps running.
func (p *pair) copyUpstream(done chan<- struct{}) {
	defer close(done)
	n, err := p.copy(p.upstream, p.client, &p.up)
	// Stored before CloseWrite: see flow.current for why the order matters.
	p.up.final.Store(n)
	if err == nil && !p.lastToFinish() {
		if p.upstream == serve.Conn(p.upstreamTCP) {
			err = closeWrite(p.upstreamTCP)
		} else {
			err = p.upstream.CloseWrite() // close_notify, then the FIN
		}
	}
	p.copyEnded("up", err)
}

// copyDownstream copies the backend's bytes to the client until the backend
// stops sending, then half-closes the client's side; see copyUpstream.
func (p *pair) copyDownstream() {
	n, err := p.copy(p.client, p.upstream, &p.down)
	p.down.final.Store(n)
	if err == nil && !p.lastToFinish() {
		err = closeWrite(p.client)
	}
	p.copyEnded("down", err)
}

// lastToFinish counts a copier's clean end and reports whether the other
// copier has ended already. The last one skips its CloseWrite: run closes
// both sockets at once, and close sends the same FIN (both directions have
// read to EOF, so no unread byte turns it into a reset). That saves a
// shutdown(2) per connection and the wake-up it causes on the socket.
func (p *pair) lastToFinish() bool {
	return p.finished.Add(1) == 2
}

// close closes both sockets, which ends both copiers, and records reason if
// it is the first. It returns the first reason given, the one that counts.
// Safe from any goroutine, any number of times.
func (p *pair) close(reason string) string {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closeReason == "" {
		p.closeReason = reason
		p.client.Close()
		p.upstream.Close()
	}
	return p.closeReason
}

// closed reports whether close has been called.
func (p *pair) closed() bool {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	return p.closeReason != ""
}
