package proxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
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
	upstream *net.TCPConn
	log      *logrus.Entry
	start    time.Time

	// up is client to backend, down is backend to client.
	up, down flow
	// counting is set when the kernel can't count for us (meter.go): the
	// copiers then write through a countingWriter, giving up splice.
	counting bool
	// lastWrite is, in counting mode, time.Since(start) at the last write
	// either way.
	lastWrite atomic.Int64

	closeMu     sync.Mutex
	closeReason string // the first reason given to close; "" while open
}

func newPair(s *Service, client, upstream *net.TCPConn, backend string, log *logrus.Entry) *pair {
	p := &pair{
		svc:      s,
		service:  s.opts.Name,
		backend:  backend,
		client:   client,
		upstream: upstream,
		log:      log,
		start:    time.Now(),
	}
	p.startMeter(s.forceCounting)
	return p
}

// copyResult is what a copier reports when it returns.
type copyResult struct {
	dir string // "up" or "down"
	err error  // nil for a clean EOF passed on as a half-close
}

// run proxies until both directions have ended, or the pair was closed, and
// returns why it ended. The copiers run in their own goroutines, named for
// the direction so that a goroutine dump shows which side a stuck
// connection is waiting on; run owns them and returns only after both have.
//
// A clean EOF in one direction is a half-close (copyUpstream says how it is
// passed on) and leaves the other direction running. An error in either
// direction closes both sockets: the other copier then fails at once, and a
// broken TCP stream is no use to a STOMP client anyway, which must
// reconnect.
func (p *pair) run() string {
	results := make(chan copyResult, 2)
	go p.copyUpstream(results)
	go p.copyDownstream(results)

	// With IdleTimeout, a timer fires when the pair would be idle had
	// nothing moved since the last look; each look re-arms it for the rest.
	var idle <-chan time.Time // nil, never ready, without IdleTimeout
	var timer *time.Timer
	if p.svc.opts.IdleTimeout > 0 {
		timer = time.NewTimer(p.svc.opts.IdleTimeout)
		defer timer.Stop()
		idle = timer.C
	}
	for pending := 2; pending > 0; {
		select {
		case r := <-results:
			pending--
			p.copyEnded(r)
		case <-idle:
			p.checkIdle(timer)
		}
	}
	return p.close(reasonEOF)
}

// checkIdle closes the pair if nothing has moved for IdleTimeout, and
// otherwise re-arms timer for when that would be so.
func (p *pair) checkIdle(timer *time.Timer) {
	limit := p.svc.opts.IdleTimeout
	if d := p.idleFor(); d < limit {
		timer.Reset(limit - d)
		return
	}
	p.log.WithField("idle_timeout", limit).Debug("closing: idle")
	p.close(reasonIdle)
}

// copyEnded handles a copier's result: a failure not caused by our own
// close is attributed to one side and ends the pair.
func (p *pair) copyEnded(r copyResult) {
	if r.err == nil || p.closed() {
		return
	}
	if p.upstreamBroken() {
		// Passive health: the backend reset or vanished under a live
		// connection, which the periodic checks may not know yet.
		p.log.WithError(r.err).WithField("dir", r.dir).Info("backend connection failed while proxying: asking for a health re-check")
		p.svc.picker.Recheck()
		p.close(reasonUpstreamError)
		return
	}
	p.log.WithError(r.err).WithField("dir", r.dir).Debug("client connection failed")
	p.close(reasonClientError)
}

// copyUpstream copies the client's bytes to the backend until the client
// stops sending. io.Copy between two bare *net.TCPConns splices on Linux:
// the bytes go socket to pipe to socket without entering user space.
//
// A clean EOF means the client half-closed (shutdown(SHUT_WR)); CloseWrite
// passes that on, so a backend reading "until EOF" gets its EOF and can
// still answer on the other direction, which keeps running.
func (p *pair) copyUpstream(done chan<- copyResult) {
	n, err := io.Copy(p.writer(p.upstream, &p.up), p.client)
	// Stored before CloseWrite: see flow.current for why the order matters.
	p.up.final.Store(n)
	if err == nil {
		err = p.upstream.CloseWrite()
	}
	done <- copyResult{dir: "up", err: err}
}

// copyDownstream copies the backend's bytes to the client until the backend
// stops sending, then half-closes the client's side; see copyUpstream.
func (p *pair) copyDownstream(done chan<- copyResult) {
	n, err := io.Copy(p.writer(p.client, &p.down), p.upstream)
	p.down.final.Store(n)
	if err == nil {
		err = p.client.CloseWrite()
	}
	done <- copyResult{dir: "down", err: err}
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
