package stompproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"handover/frame"
	"handover/internal/rawsock"
	"handover/internal/serve"
)

// Why a session ended: the reason label of
// handover_stomp_sessions_closed_total and the reason field of the "closed"
// event. The first six are also the reason label of
// handover_stomp_sessions_unresumable_total.
const (
	reasonOverLimit     = "over_limit"           // MaxReplayBytes exceeded, then the upstream was lost
	reasonCommitUnknown = "commit_unknown"       // a COMMIT was in flight when the upstream was lost
	reasonNoMaster      = "no_master"            // no backend reached within Timeout
	reasonVersion       = "version_mismatch"     // the new master negotiated another STOMP version
	reasonRejected      = "connect_rejected"     // a broker answered CONNECT with ERROR
	reasonCredentials   = "credentials"          // the sidecar's passcode could not be read (Options.Credentials)
	reasonClientClosed  = "client_closed"        // the client closed its connection
	reasonClientError   = "client_error"         // the client's socket failed
	reasonClientTimeout = "client_timeout"       // the client sent nothing, not even a heart-beat, in time
	reasonWriteTimeout  = "client_write_timeout" // the client took nothing we wrote for ClientWriteTimeout
	reasonConnectLate   = "connect_timeout"      // the client's CONNECT was not all there within ConnectTimeout
	reasonProtocol      = "protocol_error"       // the client broke the protocol (or the frame limits)
	reasonBrokerError   = "broker_error"         // the broker sent ERROR, which ends a STOMP connection
	reasonDisconnect    = "disconnect"           // the client said DISCONNECT and the broker hung up
	reasonShutdown      = "shutdown"             // the service shut down
)

// writeTimeout bounds one write to a broker: one that stops reading for
// this long is treated as dead, and the session resumes elsewhere.
const writeTimeout = 30 * time.Second

// maxKeeperTick bounds the keeper's sleep, which is how late an expired
// hold (see tracker.expire) can be noticed.
const maxKeeperTick = 500 * time.Millisecond

// session is one client connection in STOMP mode. Its goroutines:
//
//   - run (the session's own) reads the broker: it passes frames to the
//     client and, when the broker connection is lost, resumes on a new
//     master before reading on;
//   - clientLoop reads the client and forwards its frames, or buffers them
//     while the session is paused;
//   - keeper sends heart-beats both ways and expires holds.
//
// mu guards the tracker and the upstream state. Frames go to the broker in
// the order the tracker produced them: whoever has frames to send locks the
// upstream's write lock before releasing mu (mu, then wmu; never the other
// way), because brokerd takes a SEND stamped with a sequence lower than one
// it already saw for a replay.
type session struct {
	svc    *Service
	id     string
	log    *logrus.Entry
	start  time.Time // when the client was accepted
	client *net.TCPConn
	cdr    *deadlineReader
	cr     *frame.Reader // read by run until CONNECTED, then by clientLoop only

	// What pickPlain (clientLoop's) and pickReceipt (run's) chose in the
	// current PeekPlain; each is reset before it.
	plain, rcpt picked

	cmu       sync.Mutex
	cw        *frame.Writer // writes through cwr
	cwr       *clientWriter
	lastWrite atomic.Int64 // unix nanos of the last flush to the client

	// Fixed by the first CONNECTED: the client keeps these for its life.
	clientHB time.Duration // how often we must send the client something

	ctx    context.Context // ends with the session: aborts a wait for a master
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	cond      *sync.Cond // signalled when a pause ends or the session closes
	t         *tracker
	up        *upstream // nil while paused
	paused    bool
	buf       []*frame.Frame // client frames received during a pause
	bufBytes  int
	clientEOF bool
	closing   bool
	reason    string
	closeOnce sync.Once
}

// newSession makes an accepted connection a session: the Lifecycle's
// Admit, run under its lock, so it only builds (the session's goroutines
// start in run).
func (s *Service) newSession(c *net.TCPConn) *session {
	id := s.newSessionID()
	ctx, cancel := context.WithCancel(s.lc.Context())
	cs := stream(c)
	cwr := &clientWriter{nc: c, w: cs, timeout: s.opts.ClientWriteTimeout}
	ss := &session{
		svc:    s,
		id:     id,
		log:    s.log.WithFields(logrus.Fields{"session": id, "client": c.RemoteAddr().String()}),
		start:  time.Now(),
		client: c,
		cdr:    &deadlineReader{nc: c, r: cs},
		cw:     frame.NewWriter(cwr),
		cwr:    cwr,
		ctx:    ctx,
		cancel: cancel,
		t:      newTracker(id, s.opts.MaxReplayBytes, s.opts.holdTimeout()),
	}
	ss.cdr.beforeRead = ss.flushUpstream
	// The size of a TCP-mode copier's buffer (proxy's relayBufSize,
	// HAProxy's bufsize): a producer's burst takes as few reads as there.
	ss.cr = frame.NewReaderSize(ss.cdr, s.opts.Limits, 16<<10)
	ss.cond = sync.NewCond(&ss.mu)
	return ss
}

// deadlineReader renews the read deadline before each read from the
// network, so a peer silent for longer than its heart-beat allowance is
// noticed. bufio calls it only when it has no whole frame buffered, that
// is, when the reader is about to wait: beforeRead then flushes what the
// frames read so far produced for the other side. Flushing there, rather
// than after each frame, costs one write per burst, and never leaves a
// frame unflushed behind a partial one (or behind the EOL many clients put
// after each frame's NUL).
type deadlineReader struct {
	nc         net.Conn     // for deadlines
	r          io.Reader    // nc, or a rawsock.Stream over it
	timeout    atomic.Int64 // time.Duration; zero leaves the deadline alone
	beforeRead func()       // set before the reader's first use
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.beforeRead != nil {
		d.beforeRead()
	}
	if t := time.Duration(d.timeout.Load()); t > 0 {
		d.nc.SetReadDeadline(time.Now().Add(t))
	}
	return d.r.Read(p)
}

// stream returns what a session reads and writes c through: a
// rawsock.Stream, whose raw system calls spare each frame the scheduler's
// hand-offs around an ordinary read or write (about a fifth of the
// sidecar's CPU per receipted SEND), or c itself if it has no RawConn.
func stream(c *net.TCPConn) io.ReadWriter {
	if s, err := rawsock.NewStream(c); err == nil {
		return s
	}
	return c
}

func (d *deadlineReader) setTimeout(t time.Duration) {
	d.timeout.Store(int64(t))
	if t <= 0 {
		d.nc.SetReadDeadline(time.Time{})
	}
}

// clientWriter is what a session writes to its client through: each write
// to the socket (clientChunk at most) must be done within timeout
// (Options.ClientWriteTimeout), so a client that stops reading its socket
// ends its session (clientWriteFailed) instead of holding it, its broker
// connection and its memory for ever (issue 14). brokerd bounds a write to
// its own clients the same way.
//
// The deadline is the only bound the client's direction needs: run reads
// the broker's next frame only once the client's writer has taken the last
// one, so what waits for the client is that writer's buffer, and TCP
// pushes back on the broker. The fields are guarded by the session's cmu,
// as every write to the client is.
type clientWriter struct {
	nc      net.Conn  // for deadlines
	w       io.Writer // nc, or a rawsock.Stream over it
	timeout time.Duration
	renewAt time.Time // when to move the deadline on
}

// clientChunk is the most a clientWriter hands the socket at once. A frame
// bigger than the frame.Writer's buffer comes through whole; in pieces,
// each with the deadline renewed, a client that reads slowly but reads is
// not held to taking a whole large MESSAGE within timeout.
const clientChunk = 64 << 10

func (c *clientWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c.renew()
		m, err := c.w.Write(p[:min(len(p), clientChunk)])
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

// renew moves the write deadline on. Moving it costs a timer update, so it
// moves at most once a second (or every tenth of a shorter timeout): a
// write then has between nine tenths of timeout and timeout, or at least
// timeout less a second.
func (c *clientWriter) renew() {
	if now := time.Now(); now.After(c.renewAt) {
		c.nc.SetWriteDeadline(now.Add(c.timeout))
		c.renewAt = now.Add(min(time.Second, c.timeout/10))
	}
}

// setTimeout changes the bound from the next write on.
func (c *clientWriter) setTimeout(t time.Duration) {
	c.timeout, c.renewAt = t, time.Time{}
}

// upstream is one connection to a broker, CONNECTED.
type upstream struct {
	nc        serve.Conn // a *net.TCPConn, or a *tls.Conn over one
	backend   string
	dr        *deadlineReader
	r         *frame.Reader // read by run only
	sendHB    time.Duration
	wmu       sync.Mutex
	w         *frame.Writer
	renewAt   time.Time    // when to move the write deadline on; guarded by wmu
	lastWrite atomic.Int64 // unix nanos of the last flush
}

func newUpstream(nc serve.Conn, backend string, lim frame.Limits) *upstream {
	var us io.ReadWriter = nc // TLS: the raw system calls of stream cannot encrypt
	if tc, ok := nc.(*net.TCPConn); ok {
		us = stream(tc)
	}
	u := &upstream{nc: nc, backend: backend, dr: &deadlineReader{nc: nc, r: us}, w: frame.NewWriter(us)}
	u.r = frame.NewReader(u.dr, lim)
	return u
}

// handshake sends CONNECT and returns the broker's reply.
func (u *upstream) handshake(connect *frame.Frame, timeout time.Duration) (*frame.Frame, error) {
	u.nc.SetDeadline(time.Now().Add(timeout))
	err := u.w.Write(connect)
	if err == nil {
		err = u.w.Flush()
	}
	var reply *frame.Frame
	if err == nil {
		reply, err = u.r.Read()
	}
	if err != nil {
		return nil, fmt.Errorf("CONNECT: %w", err)
	}
	u.nc.SetDeadline(time.Time{})
	return reply, nil
}

// broken is how a writer reports a failed write to the broker: pump's
// read must end, so that the session resumes or closes, but only after it
// has read what the broker sent before it went. A broker that ends a
// session on purpose sends ERROR, then closes (STOMP 1.2 "ERROR"); if the
// client wrote on meanwhile, that close resets the connection, and our
// next write fails at once, often before pump has read the ERROR. Closing
// the socket then would discard the ERROR with the kernel's receive buffer,
// and the session would be resumed as if the broker had died (issue 14).
// So after a reset or a broken pipe the socket is left open: its read side
// yields the broker's last bytes, then ends by itself. Any other failure (a
// broker that stopped reading for writeTimeout) closes the socket, which
// ends pump's read at once.
func (u *upstream) broken(err error) {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return
	}
	u.nc.Close()
}

// renew moves the write deadline on. The caller holds wmu.
func (u *upstream) renew() {
	// Moving the deadline costs a timer update; once a second is plenty
	// for a 30s bound.
	if now := time.Now(); now.After(u.renewAt) {
		u.nc.SetWriteDeadline(now.Add(writeTimeout))
		u.renewAt = now.Add(time.Second)
	}
}

// sendRaw buffers frames already in wire form; the next flushUpstream
// writes them. The caller holds wmu.
func (u *upstream) sendRaw(b []byte) error {
	u.renew()
	return u.w.WriteRaw(b)
}

// send writes frames, flushing if asked. The caller holds wmu.
func (u *upstream) send(frames []upFrame, flush bool) error {
	u.renew()
	for _, f := range frames {
		var err error
		if f.wire != nil {
			err = u.w.WriteRaw(f.wire)
		} else {
			err = u.w.Write(f.f)
		}
		if err != nil {
			return err
		}
	}
	if !flush {
		return nil
	}
	if err := u.w.Flush(); err != nil {
		return err
	}
	u.lastWrite.Store(time.Now().UnixNano())
	return nil
}

// run owns the session from accept to close and returns why it ended.
func (s *session) run() string {
	s.log.Debug("accepted")
	s.serve()
	s.wg.Wait()
	s.mu.Lock()
	reason := s.reason
	s.mu.Unlock()
	s.log.WithField("reason", reason).Debug("closed")
	return reason
}

// serve runs the session until it closes.
func (s *session) serve() {
	// The client speaks first (STOMP 1.2 "Connecting"), and its whole
	// CONNECT must be in by ConnectTimeout after accept, as brokerd wants
	// it. A deadline, not a timeout per read (cdr's is off until
	// CONNECTED): a client trickling a byte every few seconds must not
	// hold its connection for ever (issue 14).
	s.client.SetReadDeadline(s.start.Add(s.svc.opts.ConnectTimeout))
	f, err := s.cr.Read()
	if err != nil {
		if isTimeout(err) && !s.isClosed() {
			msg := fmt.Sprintf("no whole CONNECT frame within %v of connecting", s.svc.opts.ConnectTimeout)
			s.log.WithField("connect_timeout", s.svc.opts.ConnectTimeout).Info("closing the client: " + msg)
			// A client that sends nothing may read nothing either: its
			// ERROR gets as long as a refused connection's.
			s.cmu.Lock()
			s.cwr.setTimeout(rejectWriteTimeout)
			s.cmu.Unlock()
			s.toClient([]*frame.Frame{errorFrame(msg)}, true)
			s.close(reasonConnectLate)
			return
		}
		s.clientReadFailed(err)
		s.close(reasonClientError) // no-op unless the failure closed nothing
		return
	}
	if f.Command != frame.CONNECT && f.Command != frame.STOMP {
		s.protocolError("the first frame must be CONNECT or STOMP, got " + f.Command)
		return
	}
	s.cdr.setTimeout(0)
	s.t.fromClient(f, time.Now()) // no goroutine shares t yet

	var end time.Time
	if s.svc.opts.Timeout > 0 {
		end = time.Now().Add(s.svc.opts.Timeout)
	}
	u, reply, err := s.establish(end)
	if err != nil {
		s.gaveUp(err, reply, false)
		return
	}
	s.mu.Lock()
	s.t.fromBroker(reply, time.Now())
	v := s.t.version
	s.mu.Unlock()
	s.setupClient(v, reply)
	s.setupUpstream(u, reply)
	if err := s.toClient([]*frame.Frame{reply}, true); err != nil {
		u.nc.Close()
		s.clientWriteFailed(err, u.backend)
		return
	}
	if !s.install(u) {
		return
	}
	s.log.WithFields(logrus.Fields{"backend": u.backend, "version": v}).Debug("connected")

	s.wg.Add(2)
	go s.clientLoop()
	go s.keeper()
	for {
		err := s.pump(u)
		if s.ended() {
			return
		}
		if u = s.resume(u, err); u == nil {
			return
		}
	}
}

// establish finds a master and completes the CONNECT handshake with it,
// sending the client's own CONNECT frame, with the sidecar's login and
// passcode if it has them (Options.Credentials, read for each call, so a
// resume uses the current passcode). It returns the broker's reply:
// CONNECTED, or (with an error) the ERROR a broker refused it with.
func (s *session) establish(end time.Time) (*upstream, *frame.Frame, error) {
	// s.t.connect is set once, before any goroutine starts.
	connect, err := withCredentials(s.t.connect, s.svc.opts.Credentials)
	if err != nil {
		return nil, nil, err
	}
	var u *upstream
	var reply *frame.Frame
	_, _, err = s.svc.conn.Connect(s.ctx, end, func(nc serve.Conn, backend string) error {
		c := newUpstream(nc, backend, s.svc.opts.Limits)
		c.dr.beforeRead = s.flushClient
		r, err := c.handshake(connect, s.svc.opts.DialTimeout)
		switch {
		case err != nil:
			return err
		case r.Command == frame.ERROR:
			reply = r
			return fmt.Errorf("%w: the broker refused CONNECT: %s", serve.ErrFinal, r.Value("message"))
		case r.Command != frame.CONNECTED:
			return fmt.Errorf("%s in reply to CONNECT", r.Command)
		}
		u, reply = c, r
		return nil
	}, s.noteFailure)
	if err != nil {
		return nil, reply, err
	}
	return u, reply, nil
}

// noteFailure logs, at debug level, a backend Connect did not reach.
func (s *session) noteFailure(addr string, err error) {
	if addr != "" {
		s.log.WithField("backend", addr).WithError(err).Debug("backend not reached")
	}
}

// gaveUp ends a session that found no master, or was refused by one.
func (s *session) gaveUp(err error, reply *frame.Frame, resuming bool) {
	switch {
	case s.isClosed():
		return
	case errors.Is(err, serve.ErrShutdown):
		s.close(reasonShutdown)
	case errors.Is(err, errCredentials):
		// The sidecar's own configuration is at fault, not the client nor
		// a broker: say so loudly, and tell the client no more than that
		// the sidecar cannot log it in.
		s.log.WithError(err).Error("cannot log in to the brokers: closing the client")
		s.toClient([]*frame.Frame{errorFrame("the proxy cannot log in to the broker")}, true)
		s.closeUnresumable(reasonCredentials, resuming)
	case reply != nil:
		// The broker said why: the client hears it as if connected
		// directly (a bad login, say; with Options.Credentials, the
		// sidecar's).
		log := s.log.WithError(err)
		if c := s.svc.opts.Credentials; c != nil {
			log = log.WithField("login", c.Login)
		}
		log.Warn("broker refused the session's CONNECT: closing the client")
		s.toClient([]*frame.Frame{reply}, true)
		s.closeUnresumable(reasonRejected, resuming)
	default:
		s.log.WithError(err).Warn("no master reached: closing the client")
		s.closeUnresumable(reasonNoMaster, resuming)
	}
}

// closeUnresumable closes the session for why, counted as unresumable if
// it was resuming.
func (s *session) closeUnresumable(why string, resuming bool) {
	if resuming {
		s.svc.unresumable.Add(1)
		s.svc.metrics.unresumable.WithLabelValues(s.svc.opts.Name, why).Inc()
	}
	s.close(why)
}

// setupClient applies what the first CONNECTED negotiated to the client
// side: the version, and the heart-beats (STOMP 1.2 "Heart-beating": each
// direction runs at the slower of what the sender offers and the receiver
// wants). These stay for the session's life, whatever later masters say:
// the client negotiated once.
func (s *session) setupClient(v frame.Version, connected *frame.Frame) {
	s.cr.SetVersion(v)
	s.cmu.Lock()
	s.cw.SetVersion(v)
	s.cmu.Unlock()
	if v == frame.V10 {
		return
	}
	cx, cy, _ := frame.ParseHeartBeat(s.t.connect.Value("heart-beat"))
	sx, sy, _ := frame.ParseHeartBeat(connected.Value("heart-beat"))
	if cy > 0 && sx > 0 {
		s.clientHB = max(cy, sx)
	}
	if cx > 0 && sy > 0 {
		// Twice the interval, as brokerd and the spec's advice allow.
		s.cdr.setTimeout(2 * max(cx, sy))
	}
}

// setupUpstream applies a CONNECTED to its connection: we send heart-beats
// for the client (whose own EOLs the frame reader swallows) at the rate
// the client promised, and expect the broker's.
func (s *session) setupUpstream(u *upstream, connected *frame.Frame) {
	v := s.t.version
	u.r.SetVersion(v)
	u.w.SetVersion(v)
	u.lastWrite.Store(time.Now().UnixNano())
	if v == frame.V10 {
		return
	}
	cx, cy, _ := frame.ParseHeartBeat(s.t.connect.Value("heart-beat"))
	sx, sy, _ := frame.ParseHeartBeat(connected.Value("heart-beat"))
	if cx > 0 && sy > 0 {
		u.sendHB = max(cx, sy)
	}
	if cy > 0 && sx > 0 {
		u.dr.setTimeout(2 * max(cy, sx))
	}
}

// install makes u the session's upstream, unless the session closed
// meanwhile, then makes sure its backend is still a target (see
// checkTarget).
func (s *session) install(u *upstream) bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		u.nc.Close()
		return false
	}
	s.up = u
	s.mu.Unlock()
	s.checkTarget(u)
	return true
}

// checkTarget drops u if its backend stopped being a target while it was
// being reached. moveOff reads the targets before the sessions, and
// this reads them after setting s.up, so any change is caught by one or
// the other. Keep (see moveOff) is not asked: u is a new connection, and a
// draining backend takes none, as TCP mode's register refuses a pair on a
// backend that stopped being a target while it was dialed.
func (s *session) checkTarget(u *upstream) {
	targets, _ := s.svc.picker.Targets()
	if !slices.Contains(targets, u.backend) {
		s.dropUpstream("backend stopped being a target while being reached")
	}
}

// pump passes the broker's frames to the client until the connection
// fails or the broker ends the session.
func (s *session) pump(u *upstream) error {
	for {
		// Fill first, so that the first frame of each read can take the
		// raw path too.
		if err := u.r.Fill(); err != nil {
			return err
		}
		s.rcpt = picked{}
		if raw, _ := u.r.PeekPlain(s.pickReceipt); len(raw) > 0 {
			ok, err := s.passReceipt(raw)
			if err != nil {
				s.clientWriteFailed(err, u.backend)
				return err
			}
			if ok {
				u.r.Discard(len(raw))
				continue
			}
		}
		f, err := u.r.Read()
		if err != nil {
			return err
		}
		if f.Command == frame.ERROR && f.Value(HeaderShutdown) == "true" {
			// The broker is stopping (SIGTERM): nothing the client did.
			// What it had in flight is replayed on the next master.
			return errBrokerStopping
		}
		s.mu.Lock()
		a := s.t.fromBroker(f, time.Now())
		if len(a.up) > 0 {
			u.wmu.Lock()
		}
		s.mu.Unlock()
		if len(a.up) > 0 {
			err := u.send(a.up, true)
			u.wmu.Unlock()
			if err != nil {
				u.broken(err) // the read above will report it
			}
		}
		s.count(a)
		if a.pass != nil || len(a.client) > 0 {
			// Flushed before the next wait for the broker (flushClient).
			if err := s.passToClient(a.pass, a.client, f.Command == frame.ERROR); err != nil {
				s.clientWriteFailed(err, u.backend)
				return err
			}
		}
		if f.Command == frame.ERROR {
			// The broker ended the session on purpose (a frame it refused,
			// a slow consumer dropped, a flow control timeout): resuming it
			// elsewhere would hide that from the client, who may have lost
			// SENDs. The client has the ERROR; ended closes it.
			s.log.WithFields(logrus.Fields{"backend": u.backend, "message": f.Value("message")}).
				Warn("the broker ended the session with an ERROR: passed on to the client, which is closed, not resumed")
			return errors.New("broker sent ERROR: " + f.Value("message"))
		}
	}
}

// errBrokerStopping ends pump when the broker said it is shutting down.
var errBrokerStopping = errors.New("the broker is shutting down")

// pickReceipt picks, alone, a RECEIPT from the broker with an internal
// receipt id and nothing else, as brokerd writes them: the answer to a
// stamped SEND, most likely, which passReceipt then answers without
// parsing it.
func (s *session) pickReceipt(command, headers []byte) bool {
	if s.rcpt.n > 0 || string(command) != frame.RECEIPT ||
		!bytes.HasPrefix(headers, []byte("receipt-id:"+internalReceiptPrefix)) ||
		bytes.IndexByte(headers, '\n') != len(headers)-1 {
		return false
	}
	s.rcpt = picked{n: 1, alone: true, hdrs: headers}
	return true
}

// passReceipt answers the client's receipt for a SEND the broker confirmed
// with the RECEIPT pickReceipt picked (raw: heart-beats, then that frame),
// as tracker.receipt would. It returns false, having done nothing, when the
// frame must go through fromBroker: it has a body, or names no SEND.
func (s *session) passReceipt(raw []byte) (bool, error) {
	hdrs := s.rcpt.hdrs
	lead := len(raw) - len(bytes.TrimLeft(raw, "\n"))
	if len(raw) != lead+len(frame.RECEIPT)+1+len(hdrs)+2 {
		return false, nil // a body
	}
	s.mu.Lock()
	r := s.t.sendReceipt(hdrs[len("receipt-id:") : len(hdrs)-1])
	s.mu.Unlock()
	if r == nil {
		return false, nil
	}
	if r.replayed {
		s.count(actions{confirmed: 1})
	}
	if !r.hasClient {
		return true, nil
	}
	// Flushed before the next wait for the broker (flushClient).
	s.cmu.Lock()
	defer s.cmu.Unlock()
	return true, s.cw.Write(&frame.Frame{Command: frame.RECEIPT, Headers: []frame.Header{{Key: "receipt-id", Value: r.client}}})
}

// ended decides, after the upstream connection ended, whether the session
// ends too rather than resuming, and if so closes it.
func (s *session) ended() bool {
	s.mu.Lock()
	closing, errored, eof, disc := s.closing, s.t.errored, s.clientEOF, s.t.disconnected()
	s.mu.Unlock()
	switch {
	case closing:
	case errored:
		s.close(reasonBrokerError)
	case disc:
		s.close(reasonDisconnect)
	case eof:
		s.close(reasonClientClosed)
	default:
		return false
	}
	return true
}

// resume carries the session over to a new master after old was lost, and
// returns the new upstream, or nil if the session had to close.
func (s *session) resume(old *upstream, cause error) *upstream {
	start := time.Now()
	s.mu.Lock()
	s.up, s.paused = nil, true
	fatal, why := s.t.lost(start)
	s.mu.Unlock()
	old.nc.Close()
	name := s.svc.opts.Name
	s.svc.metrics.paused.WithLabelValues(name).Inc()
	defer s.svc.metrics.paused.WithLabelValues(name).Dec()
	s.svc.held.Add(1)
	defer s.svc.held.Add(-1)
	log := s.log.WithField("backend", old.backend)
	if why != "" {
		log.WithError(cause).WithField("reason", why).Warn("upstream lost and the session cannot be resumed: closing the client")
		if fatal != nil {
			s.toClient([]*frame.Frame{fatal}, true)
		}
		s.closeUnresumable(why, true)
		return nil
	}
	// Debug: a failover is one line of the health monitor's ("master
	// changed", with how many sessions were held), not one per session.
	log.WithError(cause).Debug("upstream lost: holding the session for a master")
	s.svc.picker.Recheck()

	var end time.Time
	if s.svc.opts.Timeout > 0 {
		end = start.Add(s.svc.opts.Timeout)
	}
	u, reply, err := s.establish(end)
	if err != nil {
		s.gaveUp(err, reply, true)
		return nil
	}
	log = s.log.WithField("backend", u.backend)
	if v := versionOf(reply); v != s.t.version {
		u.nc.Close()
		msg := fmt.Sprintf("the broker connection was lost and the new master speaks STOMP %s, not %s: the session cannot go on", v, s.t.version)
		log.Warn(msg)
		s.toClient([]*frame.Frame{errorFrame(msg)}, true)
		s.closeUnresumable(reasonVersion, true)
		return nil
	}
	s.setupUpstream(u, reply)

	now := time.Now()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		u.nc.Close()
		return nil
	}
	plan := s.t.replay(now)
	for _, f := range s.buf {
		a := s.t.fromClient(f, now)
		plan.up = append(plan.up, a.up...)
		plan.client = append(plan.client, a.client...)
	}
	buffered := len(s.buf)
	s.buf, s.bufBytes = nil, 0
	u.wmu.Lock()
	s.up, s.paused = u, false
	s.cond.Broadcast()
	s.mu.Unlock()
	err = u.send(plan.up, true)
	u.wmu.Unlock()
	if err != nil {
		u.broken(err) // pump's read reports it, and we resume again
	}
	if len(plan.client) > 0 {
		if err := s.toClient(plan.client, true); err != nil {
			s.clientWriteFailed(err, u.backend)
		}
	}
	paused := time.Since(start)
	s.svc.resumed.Add(1)
	s.svc.replayed.Add(uint64(plan.replayed))
	s.svc.metrics.resumed.WithLabelValues(name).Inc()
	s.svc.metrics.replayed.WithLabelValues(name).Add(float64(plan.replayed))
	s.svc.metrics.pause.WithLabelValues(name).Observe(paused.Seconds())
	log.WithFields(logrus.Fields{"from": old.backend, "paused": paused.Round(time.Millisecond),
		"replayed": plan.replayed, "buffered": buffered}).Debug("session resumed on a new master")
	s.checkTarget(u)
	return u
}

func versionOf(connected *frame.Frame) frame.Version {
	if v := connected.Value("version"); v != "" {
		return frame.Version(v)
	}
	return frame.V10 // 1.0 brokers send no version header
}

func errorFrame(msg string) *frame.Frame {
	e := frame.New(frame.ERROR, "message", msg, "content-type", "text/plain")
	e.Body = []byte(msg + "\n")
	return e
}

// clientLoop reads the client's frames until it goes away.
func (s *session) clientLoop() {
	defer s.wg.Done()
	for {
		// Fill first, so that the first frame of each read can take the
		// raw path too.
		err := s.cr.Fill()
		if err == nil {
			s.plain = picked{}
			raw, more := s.cr.PeekPlain(s.pickPlain)
			if len(raw) > 0 && s.passPlain(raw) {
				s.cr.Discard(len(raw))
				continue
			}
			// The rest of a passable frame is on its way: wait for it
			// rather than parse the frame the slow way.
			if len(raw) == 0 && more > 0 && s.cr.FillTo(more) == nil {
				continue
			}
		}
		var f *frame.Frame
		if err == nil {
			f, err = s.cr.Read()
		}
		if err != nil {
			s.clientReadFailed(err)
			return
		}
		if !s.fromClient(f) {
			return
		}
	}
}

// picked is what a PeekPlain callback chose: how many frames, and the
// header lines of the one frame it takes alone (a SEND to stamp, a
// RECEIPT), if it did.
type picked struct {
	n     int
	alone bool
	hdrs  []byte
}

// pickPlain picks the client frames that can go on in their wire form: a
// run of SENDs the tracker would forward exactly as they are (outside a
// transaction, without a receipt: never kept, so never stamped; see
// tracker.fromClient), or one SEND outside a transaction with a receipt
// and no stamp of its own, which tracker.stampPlain stamps. A busy
// producer's frames are mostly one or the other, and taking their bytes
// spares parsing, allocating and re-encoding each. The client's own
// handover-producer or handover-seq (which fromClient replaces) and
// transactional SENDs (never stamped, kept with their transaction) take the
// Frame path.
func (s *session) pickPlain(command, headers []byte) bool {
	if string(command) != frame.SEND || s.plain.alone {
		return false
	}
	receipt := false
	for h := headers; len(h) > 0; {
		line := h[:bytes.IndexByte(h, '\n')]
		h = h[len(line)+1:]
		switch {
		case hasKey(line, "receipt"):
			receipt = true
		case hasKey(line, "transaction"), hasKey(line, HeaderProducer), hasKey(line, HeaderSeq):
			return false
		}
	}
	if receipt {
		if s.plain.n > 0 {
			return false // it starts the next run
		}
		s.plain.alone, s.plain.hdrs = true, headers
	}
	s.plain.n++
	return true
}

// hasKey reports whether a plain header line names key.
func hasKey(line []byte, key string) bool {
	return len(line) > len(key) && line[len(key)] == ':' && string(line[:len(key)]) == key
}

// passPlain forwards frames that pickPlain picked, in their wire form (a
// SEND to stamp, stamped). While the session is paused, or once it is
// unresumable, it returns false: they then go through fromClient, which
// holds them for the new master, or passes them on unstamped.
func (s *session) passPlain(raw []byte) bool {
	s.mu.Lock()
	u := s.up
	if s.paused || s.closing || u == nil {
		s.mu.Unlock()
		return false
	}
	if s.plain.alone {
		// raw is heart-beats (dropped, as Read drops them), then the SEND:
		// command, header lines, and the rest.
		hdrs := s.plain.hdrs
		lead := len(raw) - len(bytes.TrimLeft(raw, "\n"))
		if raw = s.t.stampPlain(hdrs, raw[lead+len(frame.SEND)+1+len(hdrs):]); raw == nil {
			s.mu.Unlock()
			return false
		}
	}
	u.wmu.Lock()
	s.mu.Unlock()
	// Flushed before the next wait for the client (flushUpstream).
	err := u.sendRaw(raw)
	u.wmu.Unlock()
	if err != nil {
		u.broken(err) // run's read reports it, and the session resumes
	}
	return true
}

// fromClient forwards one client frame, or buffers it during a pause.
// When the buffer is full it waits, which stops reading the client and
// lets TCP push back on it.
func (s *session) fromClient(f *frame.Frame) bool {
	s.mu.Lock()
	for s.paused && s.bufBytes >= s.svc.opts.MaxReplayBytes && !s.closing {
		s.cond.Wait()
	}
	if s.closing {
		s.mu.Unlock()
		return false
	}
	if s.paused {
		s.buf = append(s.buf, f)
		s.bufBytes += frameSize(f)
		s.mu.Unlock()
		return true
	}
	a := s.t.fromClient(f, time.Now())
	u := s.up
	if len(a.up) > 0 {
		u.wmu.Lock()
	}
	s.mu.Unlock()
	if len(a.up) > 0 {
		// Flushed before the next wait for the client (flushUpstream).
		err := u.send(a.up, false)
		u.wmu.Unlock()
		if err != nil {
			u.broken(err) // run's read reports it, and the session resumes
		}
	}
	if len(a.client) > 0 {
		if err := s.toClient(a.client, true); err != nil {
			s.clientWriteFailed(err, s.backend())
			return false
		}
	}
	return true
}

// clientReadFailed handles the end of the client's stream.
func (s *session) clientReadFailed(err error) {
	switch {
	case s.isClosed():
	case errors.Is(err, io.EOF):
		// A half-close: pass it on, as TCP mode does, so the broker
		// finishes what it was sent (receipts included) and hangs up.
		s.mu.Lock()
		s.clientEOF = true
		u := s.up
		s.mu.Unlock()
		if u == nil {
			s.close(reasonClientClosed)
			return
		}
		u.wmu.Lock()
		u.w.Flush()
		u.nc.CloseWrite()
		u.wmu.Unlock()
		// A broker that never hangs up must not keep the session forever.
		u.dr.setTimeout(s.svc.opts.ShutdownGrace)
		u.nc.SetReadDeadline(time.Now().Add(s.svc.opts.ShutdownGrace))
	case errors.Is(err, frame.ErrMalformed), errors.Is(err, frame.ErrBodyTooLarge),
		errors.Is(err, frame.ErrTooManyHeaders), errors.Is(err, frame.ErrLineTooLong):
		s.protocolError(err.Error())
	case isTimeout(err):
		s.log.Info("dropping silent client: no frame or heart-beat in time")
		s.close(reasonClientTimeout)
	default:
		s.log.WithError(err).Debug("client connection failed")
		s.close(reasonClientError)
	}
}

// isTimeout reports whether err is a read or write deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// protocolError tells the client what it did wrong, then closes, as
// brokerd does (STOMP 1.2 "ERROR").
func (s *session) protocolError(msg string) {
	s.log.WithField("error", msg).Info("client protocol error; closing")
	s.toClient([]*frame.Frame{errorFrame(msg)}, true)
	s.close(reasonProtocol)
}

// toClient writes frames to the client.
func (s *session) toClient(frames []*frame.Frame, flush bool) error {
	return s.passToClient(nil, frames, flush)
}

// passToClient writes pass, if not nil, then frames to the client.
func (s *session) passToClient(pass *frame.Frame, frames []*frame.Frame, flush bool) error {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	if pass != nil {
		if err := s.cw.Write(pass); err != nil {
			return err
		}
	}
	for _, f := range frames {
		if err := s.cw.Write(f); err != nil {
			return err
		}
	}
	if !flush {
		return nil
	}
	if err := s.cw.Flush(); err != nil {
		return err
	}
	s.lastWrite.Store(time.Now().UnixNano())
	return nil
}

// flushUpstream pushes out what the client's frames produced for the
// broker; see deadlineReader.
func (s *session) flushUpstream() {
	s.mu.Lock()
	u := s.up
	s.mu.Unlock()
	if u == nil {
		return
	}
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if u.w.Buffered() == 0 {
		return
	}
	if err := u.w.Flush(); err != nil {
		u.broken(err) // run's read reports it, and the session resumes
		return
	}
	u.lastWrite.Store(time.Now().UnixNano())
}

// flushClient pushes out what the broker's frames produced for the client;
// see deadlineReader. A client that stopped reading is closed here, which
// ends the read that called this; any other failure shows in the client's
// read loop.
func (s *session) flushClient() {
	s.cmu.Lock()
	if s.cw.Buffered() == 0 {
		s.cmu.Unlock()
		return
	}
	err := s.cw.Flush()
	if err == nil {
		s.lastWrite.Store(time.Now().UnixNano())
	}
	s.cmu.Unlock()
	if err != nil {
		s.clientStalled(err, s.backend())
	}
}

// clientWriteFailed closes the session after a failed write to the
// client; backend is the upstream's, for the log.
func (s *session) clientWriteFailed(err error, backend string) {
	if !s.clientStalled(err, backend) {
		s.close(reasonClientError)
	}
}

// clientStalled closes the session if err is a write to the client that
// ran out of ClientWriteTimeout, and reports whether it was. Such a client
// has stopped reading (its socket still works, its read loop notices
// nothing): it is logged and counted apart from a socket that failed.
// backend is the upstream's, for the log.
func (s *session) clientStalled(err error, backend string) bool {
	if !isTimeout(err) {
		return false
	}
	if s.close(reasonWriteTimeout) {
		s.log.WithFields(logrus.Fields{"backend": backend, "client_write_timeout": s.svc.opts.ClientWriteTimeout}).
			Warn("client stopped reading: closed it and its broker session")
	}
	return true
}

// keeper sends heart-beats to the client (all through a pause, which is
// what keeps the client from timing the session out) and to the broker,
// and settles holds that waited too long for a redelivery.
func (s *session) keeper() {
	defer s.wg.Done()
	timer := time.NewTimer(s.tick())
	defer timer.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-timer.C:
		}
		now := time.Now()
		s.mu.Lock()
		u := s.up
		var a actions
		if u != nil && s.t.waiting() {
			a = s.t.expire(now)
		}
		if len(a.up) > 0 {
			u.wmu.Lock()
		}
		s.mu.Unlock()
		if len(a.up) > 0 {
			if err := u.send(a.up, true); err != nil {
				u.broken(err)
			}
			u.wmu.Unlock()
		}
		if len(a.client) > 0 {
			if err := s.toClient(a.client, true); err != nil {
				s.clientStalled(err, u.backend)
			}
		}
		// TryLock: a writer holding the lock is sending something, which
		// serves as a heart-beat; waiting behind a blocked write would stall
		// the other direction's heart-beats.
		if u != nil && u.sendHB > 0 && now.Sub(time.Unix(0, u.lastWrite.Load())) >= u.sendHB/2 && u.wmu.TryLock() {
			u.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
			u.renewAt = time.Now().Add(time.Second)
			if err := u.w.WriteHeartbeat(); err == nil && u.w.Flush() == nil {
				u.lastWrite.Store(time.Now().UnixNano())
			}
			u.wmu.Unlock()
		}
		if hb := s.clientHB; hb > 0 && now.Sub(time.Unix(0, s.lastWrite.Load())) >= hb/2 && s.cmu.TryLock() {
			err := s.cw.WriteHeartbeat()
			if err == nil {
				err = s.cw.Flush()
			}
			if err == nil {
				s.lastWrite.Store(time.Now().UnixNano())
			}
			s.cmu.Unlock()
			if err != nil {
				s.clientStalled(err, s.backend())
			}
		}
		timer.Reset(s.tick())
	}
}

// tick is the keeper's sleep: short enough that neither side goes more
// than its interval without hearing from us.
func (s *session) tick() time.Duration {
	d := maxKeeperTick
	if s.clientHB > 0 {
		d = min(d, s.clientHB/4)
	}
	s.mu.Lock()
	if s.up != nil && s.up.sendHB > 0 {
		d = min(d, s.up.sendHB/4)
	}
	s.mu.Unlock()
	return max(d, time.Millisecond)
}

// count adds a tracker's counters to the service's.
func (s *session) count(a actions) {
	name := s.svc.opts.Name
	if a.suppressed > 0 {
		s.svc.suppressed.Add(uint64(a.suppressed))
		s.svc.metrics.suppressed.WithLabelValues(name).Add(float64(a.suppressed))
	}
	if a.confirmed > 0 {
		s.svc.duplicates.Add(uint64(a.confirmed))
		s.svc.metrics.duplicates.WithLabelValues(name).Add(float64(a.confirmed))
	}
}

// backend is the current upstream's address, "" while paused.
func (s *session) backend() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up == nil {
		return ""
	}
	return s.up.backend
}

// dropUpstream closes the current upstream connection; run notices and
// resumes on a new master.
func (s *session) dropUpstream(why string) {
	s.mu.Lock()
	u := s.up
	s.mu.Unlock()
	if u != nil {
		s.log.WithField("backend", u.backend).Info("dropping the broker connection: " + why)
		u.nc.Close()
	}
}

func (s *session) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// close ends the session: both sockets close, which ends every goroutine,
// and a wait for a master is abandoned. The first reason sticks: close
// reports whether it was this one.
func (s *session) close(reason string) (first bool) {
	s.closeOnce.Do(func() {
		first = true
		s.mu.Lock()
		s.closing, s.reason = true, reason
		u := s.up
		s.cond.Broadcast()
		s.mu.Unlock()
		s.cancel()
		s.client.Close()
		if u != nil {
			u.nc.Close()
		}
	})
	return first
}
