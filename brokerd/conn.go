package brokerd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"handover/brokerd/auth"
	"handover/brokerd/store"
	"handover/frame"
	"handover/internal/rawsock"
)

// conn is one client connection. Its data path, top to bottom:
//
//   - readLoop (one goroutine) parses frames and turns each into a step;
//   - submit orders the steps: a step that writes the journal completes when
//     its records are fsync'd (group commit), and every step is applied in
//     the order the client sent it, so a RECEIPT never overtakes the
//     durability of what it confirms and a producer's messages keep their
//     order whether persistent or not;
//   - destinations call deliver to queue MESSAGE frames, and writeLoop (one
//     goroutine) writes queued frames out, with heart-beats;
//   - a RECEIPT is written by whoever applied its step (flush), straight
//     to the socket when the writer is idle: waking writeLoop for it would
//     add a goroutine hand-off to every receipted SEND's round trip, which
//     on a one-connection producer costs as much as a fifth of the fsync.
type conn struct {
	s   *Server
	nc  net.Conn
	log *logrus.Entry
	id  string

	version  atomic.Value // frame.Version once CONNECTED
	readIdle atomic.Int64 // read deadline in ns; 0 = none
	// connectBy is when the whole CONNECT frame must have arrived (zero
	// once connected). It is fixed at accept, not renewed by each read,
	// so a client trickling a byte at a time cannot hold a connection.
	// Only readLoop's goroutine uses it.
	connectBy time.Time

	// outMu guards the queue of frames waiting for writeLoop.
	outMu   sync.Mutex
	outq    []outFrame
	outSize int64 // bytes of the topic frames in outq (see enqueue)
	outWake chan struct{}
	closing bool // no more frames are accepted
	// released: close has let go of outq, so that nothing queued later
	// would be written or give back what it holds in the budget.
	released bool

	// wmu is held by whoever writes to the socket (writeLoop or flush), from
	// taking frames off outq until they are written, so frames keep their
	// queue order. raw is nc's file descriptor for flush's non-blocking
	// writes (nil when nc is not a socket: flush then defers to writeLoop).
	wmu       sync.Mutex
	raw       syscall.RawConn
	flushBuf  []byte
	lastWrite atomic.Int64 // unix ns of the last write, for heart-beats
	sent      atomic.Int64 // bytes handed to the socket so far
	delivered deliveries   // auto-ack deliveries the client may not have yet (delivered.go)

	// mu guards the session state.
	mu   sync.Mutex
	subs map[string]*subscription
	acks map[string]*subscription // message id -> subscription holding the delivery
	txs  map[string]*txn

	// principal is who the client logged in as (set once, at CONNECT).
	principal auth.Principal

	// fr is readLoop's frame reader; only readLoop's goroutine uses it.
	fr *frame.Reader

	// pmu guards the step pipeline.
	pmu      sync.Mutex
	steps    []*step
	draining bool

	closeOnce sync.Once
	closed    chan struct{}
	slow      atomic.Bool // dropped as a slow consumer: that is why writes fail
	reason    string      // why the connection closed, for logs and metrics
	writeHB   time.Duration
}

// outFrame is a frame queued for writeLoop. onWritten runs once the client's
// TCP stack has the frame (auto-ack uses it: see delivered.go). closeAfter
// closes the connection after flushing.
type outFrame struct {
	f          *frame.Frame
	raw        []byte // already encoded bytes (what a partial flush left)
	onWritten  func()
	closeAfter bool
	reason     string
	mem        int64 // bytes pinned in the budget until written or dropped
	// body is the bytes of a persistent queue message's body pinned in the
	// budget and in queue q until written or dropped (see deliver). Unlike
	// mem it does not count towards MaxPendingBytes: a queue bounds its
	// deliveries itself.
	body int64
	q    *queue
}

// release gives back what o holds in the budget. The queue's count goes
// first: unpinning wakes producers that look at it.
func (c *conn) release(o *outFrame) {
	if o.body != 0 {
		o.q.pinned.Add(-o.body)
		c.s.mem.unpin(o.body)
	}
	c.s.mem.unpin(o.mem)
}

// txn is an open transaction: its frames wait in memory until COMMIT, so
// their bytes are pinned in the budget and capped by MaxTransactionBytes.
type txn struct {
	frames []*frame.Frame
	bytes  int64
}

// step is one client frame's effect: records to make durable, then apply.
type step struct {
	recs  []store.Record
	apply func(error)
	done  bool
	err   error
}

func newConn(s *Server, nc net.Conn, id string) *conn {
	c := &conn{
		s:       s,
		nc:      nc,
		id:      id,
		log:     s.log.WithFields(logrus.Fields{"conn": id, "remote": nc.RemoteAddr().String()}),
		outWake: make(chan struct{}, 1),
		subs:    map[string]*subscription{},
		acks:    map[string]*subscription{},
		txs:     map[string]*txn{},
		closed:  make(chan struct{}),
	}
	c.version.Store(frame.V10)
	c.connectBy = time.Now().Add(s.opts.ConnectTimeout.D())
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	return c
}

func (c *conn) ver() frame.Version { return c.version.Load().(frame.Version) }

// Read implements io.Reader for the frame reader, renewing the read deadline
// before each read so that a client silent for longer than its heart-beat
// allowance (or that never sends CONNECT) is dropped.
func (c *conn) Read(p []byte) (int, error) {
	select {
	case <-c.s.stopping:
		// Shutdown stops reading: a frame parsed since it interrupted
		// the last read must not renew the deadline.
		c.nc.SetReadDeadline(time.Now())
		return c.nc.Read(p)
	default:
	}
	if !c.connectBy.IsZero() {
		c.nc.SetReadDeadline(c.connectBy)
	} else if d := time.Duration(c.readIdle.Load()); d > 0 {
		c.nc.SetReadDeadline(time.Now().Add(d))
	} else {
		c.nc.SetReadDeadline(time.Time{})
	}
	return c.nc.Read(p)
}

// serve runs the connection until it ends; it owns the writer goroutine.
func (c *conn) serve() {
	if tc, ok := c.nc.(*tls.Conn); ok {
		// Done here, bounded by the CONNECT deadline, so that a failed
		// handshake (an expired certificate, an unknown CA) is logged as
		// what it is.
		tc.SetDeadline(c.connectBy)
		err := tc.Handshake()
		tc.SetDeadline(time.Time{})
		if err != nil {
			c.log.WithError(err).Warn("TLS handshake failed")
			c.close("tls_handshake")
			return
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.writeLoop()
	}()
	c.readLoop()
	// Finish the client's in-flight work (journal writes, receipts) before
	// closing; closeAfter queued behind every earlier step does that. A
	// client cut off by a shutdown is told so, last, so that it knows to
	// reconnect (to the next master) rather than guess.
	select {
	case <-c.s.stopping:
		c.submit(nil, func(error) {
			e := frame.New(frame.ERROR, "message", "the broker is shutting down; reconnect to continue (another broker takes over)", "content-type", "text/plain",
				HeaderShutdown, "true")
			c.send(outFrame{f: e, closeAfter: true, reason: "shutdown"})
		})
	default:
		c.submit(nil, func(error) { c.queueClose("client_closed") })
	}
	select {
	case <-c.closed:
	case <-time.After(c.s.opts.ShutdownGrace.D() + time.Second):
		c.close("drain_timeout")
	}
	wg.Wait()
}

func (c *conn) readLoop() {
	o := c.s.opts
	r := frame.NewReader(c, frame.Limits{MaxBody: o.MaxBody, MaxHeaders: o.MaxHeaders, MaxLine: o.MaxHeaderLine})
	c.fr = r
	connected := false
	for {
		f, err := r.Read()
		if err != nil {
			c.readError(err)
			return
		}
		if h, bad := invalidHeader(f); bad {
			// STOMP 1.1+ headers are UTF-8; a name that is not would
			// reach logs, /status and /metrics as garbage.
			c.protocolError(f, fmt.Sprintf("header %q is not valid UTF-8", strings.ToValidUTF8(h, "\uFFFD")), nil)
			return
		}
		if !connected {
			if f.Command != frame.CONNECT && f.Command != frame.STOMP {
				c.protocolError(f, "the first frame must be CONNECT or STOMP, got "+f.Command, nil)
				return
			}
			if !c.handleConnect(f) {
				return
			}
			c.connectBy = time.Time{}
			r.SetVersion(c.ver())
			connected = true
			continue
		}
		if !c.handle(f) {
			return
		}
	}
}

// invalidHeader returns the first header key or value of f that is not
// valid UTF-8.
func invalidHeader(f *frame.Frame) (string, bool) {
	for _, h := range f.Headers {
		if !utf8.ValidString(h.Key) {
			return h.Key, true
		}
		if !utf8.ValidString(h.Value) {
			return h.Key, true
		}
	}
	return "", false
}

func (c *conn) readError(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		// The client went away between frames, or we closed the socket.
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		select {
		case <-c.s.stopping:
			// Shutdown interrupts reads with a past deadline.
		default:
			if !c.connectBy.IsZero() {
				c.log.WithField("connect_timeout", c.s.opts.ConnectTimeout.D().String()).Info("dropping client: no complete CONNECT frame within connect_timeout")
				c.close("connect_timeout")
				return
			}
			c.log.WithField("timeout", time.Duration(c.readIdle.Load()).String()).Info("dropping silent client: no frame or heart-beat in time")
			c.close("heartbeat_timeout")
		}
	case errors.Is(err, frame.ErrMalformed), errors.Is(err, frame.ErrBodyTooLarge),
		errors.Is(err, frame.ErrTooManyHeaders), errors.Is(err, frame.ErrLineTooLong):
		c.protocolError(nil, err.Error(), err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		c.log.Info("client closed the connection in the middle of a frame")
	default:
		c.log.WithError(err).Debug("read failed")
	}
}

// handleConnect negotiates the version and heart-beats and answers
// CONNECTED (STOMP 1.2 "Connecting").
func (c *conn) handleConnect(f *frame.Frame) bool {
	p, ok := c.authenticate(f)
	if !ok {
		return false
	}
	c.principal = p
	v, err := frame.Negotiate(f.Value("accept-version"))
	if err != nil {
		e := frame.New(frame.ERROR, "version", "1.0,1.1,1.2", "content-type", "text/plain",
			"message", "supported protocol versions are 1.0, 1.1 and 1.2")
		e.Body = []byte(err.Error())
		c.send(outFrame{f: e, closeAfter: true, reason: "no_common_version"})
		return false
	}
	c.version.Store(v)
	cx, cy, err := frame.ParseHeartBeat(f.Value("heart-beat"))
	if err != nil {
		c.protocolError(f, err.Error(), nil)
		return false
	}
	ours := c.s.opts.HeartBeat.D()
	// Client sends every cx, wants ours every cy; we can send and want
	// every `ours`. Zero on either side disables that direction.
	var readEvery, writeEvery time.Duration
	if cx > 0 && ours > 0 {
		readEvery = max(cx, ours)
	}
	if cy > 0 && ours > 0 {
		writeEvery = max(cy, ours)
	}
	// Twice the interval tolerates a late beat on a busy network, as the
	// spec suggests some tolerance; ActiveMQ allows a similar grace.
	c.readIdle.Store(int64(2 * readEvery))
	c.writeHB = writeEvery
	hb := "0,0"
	if ours > 0 && v != frame.V10 {
		ms := strconv.FormatInt(ours.Milliseconds(), 10)
		hb = ms + "," + ms
	}
	reply := frame.New(frame.CONNECTED, "version", string(v), "server", "handover-brokerd/"+Version,
		"heart-beat", hb, "session", c.id)
	c.send(outFrame{f: reply})
	c.log.WithFields(logrus.Fields{"version": v, "heart_beat_in": readEvery.String(), "heart_beat_out": writeEvery.String()}).Debug("client connected")
	return true
}

// handle processes one frame after CONNECT. It returns false when the
// connection must stop reading.
func (c *conn) handle(f *frame.Frame) bool {
	if tx := f.Value("transaction"); tx != "" && (f.Command == frame.SEND || f.Command == frame.ACK || f.Command == frame.NACK) {
		return c.transacted(f, tx)
	}
	switch f.Command {
	case frame.SEND, frame.ACK, frame.NACK:
		if f.Command == frame.SEND {
			if why := c.authorize(auth.Write, f.Value("destination")); why != "" {
				c.protocolError(f, why, nil)
				return false
			}
		}
		if f.Command == frame.SEND && !c.flowControl(f) {
			return false
		}
		recs, apply, err := c.prepare(f)
		if err == errDuplicate {
			c.duplicate(f)
			return true
		}
		if err != nil {
			c.protocolError(f, err.Error(), nil)
			return false
		}
		start := time.Now()
		c.submitFrame(f, recs, func(err error) {
			if c.applied(f, apply, err) {
				c.receiptSince(f, start)
			}
		})
	case frame.SUBSCRIBE:
		if why := c.authorize(auth.Read, f.Value("destination")); why != "" {
			c.protocolError(f, why, nil)
			return false
		}
		if err := c.subscribe(f); err != nil {
			c.protocolError(f, err.Error(), nil)
			return false
		}
		c.submit(nil, func(error) { c.receipt(f) })
	case frame.UNSUBSCRIBE:
		if err := c.unsubscribe(f); err != nil {
			c.protocolError(f, err.Error(), nil)
			return false
		}
		c.submit(nil, func(error) { c.receipt(f) })
	case frame.BEGIN, frame.COMMIT, frame.ABORT:
		return c.transaction(f)
	case frame.DISCONNECT:
		c.submit(nil, func(error) {
			if id, ok := f.Get("receipt"); ok {
				c.send(outFrame{f: frame.New(frame.RECEIPT, "receipt-id", id), closeAfter: true, reason: "client_disconnected"})
			} else {
				c.queueClose("client_disconnected")
			}
		})
		return false
	case frame.CONNECT, frame.STOMP:
		c.protocolError(f, "already connected: a second "+f.Command+" is not allowed", nil)
		return false
	default:
		c.protocolError(f, "unknown command "+f.Command, nil)
		return false
	}
	return true
}

// transacted holds f in open transaction tx until COMMIT. Its bytes are
// pinned in the memory budget, so a SEND waits for memory as a
// non-persistent one does; a transaction that grows past
// MaxTransactionBytes is refused, since waiting cannot help it.
func (c *conn) transacted(f *frame.Frame, tx string) bool {
	c.mu.Lock()
	t := c.txs[tx]
	c.mu.Unlock()
	if t == nil {
		c.protocolError(f, fmt.Sprintf("%s names transaction %q, which is not open", f.Command, tx), nil)
		return false
	}
	n := int64(frameSize(f))
	if t.bytes+n > c.s.opts.MaxTransactionBytes {
		c.log.WithFields(logrus.Fields{"transaction": tx, "bytes": t.bytes + n, "max_transaction_bytes": c.s.opts.MaxTransactionBytes}).Warn("transaction too large; refusing it")
		c.refuse(f, "max_transaction_bytes", fmt.Sprintf("transaction %q would hold %d bytes, over max_transaction_bytes (%d); it is aborted and nothing in it was accepted", tx, t.bytes+n, c.s.opts.MaxTransactionBytes), nil)
		return false
	}
	if f.Command == frame.SEND {
		if why := c.authorize(auth.Write, f.Value("destination")); why != "" {
			c.protocolError(f, why, nil)
			return false
		}
	}
	if f.Command == frame.SEND && !c.waitForMemory(f, c.s.mem.full, "max_memory") {
		return false
	}
	c.s.mem.pin(n)
	c.mu.Lock()
	if c.txs[tx] != t { // the connection closed meanwhile
		c.mu.Unlock()
		c.s.mem.unpin(n)
		return false
	}
	t.frames = append(t.frames, f)
	t.bytes += n
	c.mu.Unlock()
	c.submit(nil, func(error) { c.receipt(f) })
	return true
}

// flowControl holds a SEND whose body would be pinned in memory (a
// non-persistent or topic message) while the memory budget is spent, as
// ActiveMQ's producer flow control does: the producer's socket is not read
// meanwhile, so TCP slows it down. A SEND still held after
// FlowControlTimeout is refused with an ERROR (it has no receipt, so the
// producer knows it was not taken). Persistent queue messages never wait:
// their bodies go to the store, not to memory.
func (c *conn) flowControl(f *frame.Frame) bool {
	mem := c.s.mem
	dest := f.Value("destination")
	isQueue, err := splitDestination(dest)
	if isQueue && f.Value("persistent") == "true" || err != nil {
		return true // a bad destination is refused later, with its reason
	}
	if !isQueue {
		return c.waitForMemory(f, mem.full, "max_memory")
	}
	// A queue's own share, so that one flooded queue does not take the
	// whole budget from the others.
	limit := c.s.opts.MaxDestinationMemory
	if limit == 0 {
		limit = mem.limit / 4
	}
	q := c.s.queue(dest)
	if !mem.full() && q.pinned.Load() < limit {
		return true
	}
	what := "max_memory"
	if !mem.full() {
		what = "max_destination_memory"
	}
	return c.waitForMemory(f, func() bool { return mem.full() || q.pinned.Load() >= limit }, what)
}

// waitForMemory holds f while blocked() says memory is spent, up to
// FlowControlTimeout; past it f is refused with an ERROR naming limit.
func (c *conn) waitForMemory(f *frame.Frame, blocked func() bool, limit string) bool {
	mem := c.s.mem
	ok := mem.wait(blocked, c.s.opts.FlowControlTimeout.D(), c.closed, c.s.stopping)
	if ok {
		return true
	}
	select {
	case <-c.closed:
		return false // gone while held: nobody to tell
	case <-c.s.stopping:
		return false // the shutdown ends the connection its own way
	default:
	}
	c.refuse(f, limit, "the broker's memory for messages is full ("+limit+", still after flow_control_timeout); this message was not accepted: retry later", nil)
	return false
}

// errDuplicate marks a stamped SEND whose sequence was already accepted.
var errDuplicate = errors.New("duplicate SEND")

// duplicate answers a SEND the sidecar replayed after a failover although
// this broker had already taken it in. Its RECEIPT must not overtake the
// original's durability, which may still be on its way to the disk on
// another connection: an empty store Append is a barrier behind every
// earlier one, after which the original is either applied (receipt) or
// failed (ERROR: the client must not think it is stored).
func (c *conn) duplicate(f *frame.Frame) {
	st, _ := stampOf(f)
	c.s.metrics.duplicates.Inc()
	c.submitBarrier(func(error) {
		if c.s.dedup.isPersisted(st) {
			c.receipt(f)
			return
		}
		c.protocolError(f, "this SEND repeats one that the broker could not persist; it was not accepted", nil)
	})
}

// applied runs apply after the step's records were made durable, or reports
// the journal's failure to the client. It returns whether it succeeded.
func (c *conn) applied(f *frame.Frame, apply func(), err error) bool {
	if errors.Is(err, store.ErrFull) {
		c.s.metrics.diskFull.Inc()
		c.refuse(f, "max_disk", "the broker's disk is full (max_disk, disk_reserve); this message was not accepted: retry once consumers have drained", err)
		return false
	}
	if err != nil {
		c.log.WithError(err).WithField("command", f.Command).Error("journal write failed; the client gets an ERROR and no receipt")
		c.protocolError(f, "the broker could not persist this frame; it was not accepted", err)
		return false
	}
	if apply != nil {
		apply()
	}
	return true
}

// prepare validates a SEND, ACK or NACK and returns the journal records it
// needs and the in-memory effect to apply once they are durable. Effects on
// deliveries (ACK, NACK) happen here, at once, so the freed prefetch slot is
// refilled without waiting for the disk; only the RECEIPT waits.
func (c *conn) prepare(f *frame.Frame) ([]store.Record, func(), error) {
	switch f.Command {
	case frame.SEND:
		m, dest, err := c.s.newMessage(f)
		if err != nil {
			return nil, nil, err
		}
		st, stamped := stampOf(f)
		var recs []store.Record
		if stamped {
			fresh, evicted := c.s.dedup.accept(st)
			if !fresh {
				return nil, nil, errDuplicate
			}
			recs = append(recs, evicted...)
		}
		if m.persistent {
			recs = append(recs, putRecord(m, dest))
			if stamped {
				recs = append(recs, dedupRecord(st))
			}
		}
		return recs, func() {
			c.s.route(m, dest)
			if stamped {
				c.s.dedup.persisted(st)
			}
		}, nil
	case frame.ACK, frame.NACK:
		id := f.Value("id") // STOMP 1.2: the MESSAGE's ack header
		if id == "" {
			id = f.Value("message-id") // STOMP 1.0 and 1.1
		}
		if id == "" {
			return nil, nil, fmt.Errorf("%s has neither an id nor a message-id header", f.Command)
		}
		c.mu.Lock()
		sub := c.acks[id]
		c.mu.Unlock()
		if sub == nil {
			return nil, nil, fmt.Errorf("%s of unknown message id %q: it was not delivered on this connection, or was already acknowledged", f.Command, id)
		}
		if sub.q == nil { // topic: nothing to redeliver or journal
			c.forget([]*message{{id: id}})
			return nil, nil, nil
		}
		if f.Command == frame.NACK {
			return nil, nil, sub.q.nack(sub, id)
		}
		acked, err := sub.q.ack(sub, id, sub.ack == ackClient)
		if err != nil {
			return nil, nil, err
		}
		var recs []store.Record
		for _, m := range acked {
			if m.persistent {
				recs = append(recs, store.Record{Kind: store.KindAck, ID: m.id, Queue: sub.q.name})
			}
		}
		return recs, nil, nil
	}
	return nil, nil, fmt.Errorf("cannot prepare %s", f.Command)
}

func (c *conn) subscribe(f *frame.Frame) error {
	dest := f.Value("destination")
	isQueue, err := splitDestination(dest)
	if err != nil {
		return fmt.Errorf("SUBSCRIBE: %w", err)
	}
	id, ok := f.Get("id")
	if !ok {
		if c.ver() != frame.V10 {
			return errors.New("SUBSCRIBE has no id header (required since STOMP 1.1)")
		}
		id = dest // STOMP 1.0 subscriptions are named by destination
	}
	mode := ackMode(f.Value("ack"))
	switch mode {
	case "":
		mode = ackAuto
	case ackAuto, ackClient, ackClientIndividual:
	default:
		return fmt.Errorf("SUBSCRIBE: ack %q must be auto, client or client-individual", mode)
	}
	prefetch := c.s.opts.Prefetch
	if p := f.Value("activemq.prefetchSize"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return fmt.Errorf("SUBSCRIBE: activemq.prefetchSize %q must be a positive integer", p)
		}
		prefetch = n
	}
	sub := &subscription{id: id, dest: dest, ack: mode, prefetch: prefetch, c: c}
	c.mu.Lock()
	if _, dup := c.subs[id]; dup {
		c.mu.Unlock()
		return fmt.Errorf("SUBSCRIBE: subscription id %q is already in use on this connection", id)
	}
	if len(c.subs) >= c.s.opts.MaxSubscriptions {
		c.mu.Unlock()
		return fmt.Errorf("SUBSCRIBE: this connection already has %d subscriptions, the most allowed (max_subscriptions)", len(c.subs))
	}
	c.subs[id] = sub
	c.mu.Unlock()
	// A destination reclaimed between the lookup and the subscribe is
	// looked up again.
	if isQueue {
		for sub.q = c.s.queue(dest); !sub.q.subscribe(sub); sub.q = c.s.queue(dest) {
		}
	} else {
		for sub.t = c.s.topic(dest); !sub.t.subscribe(sub); sub.t = c.s.topic(dest) {
		}
	}
	return nil
}

func (c *conn) unsubscribe(f *frame.Frame) error {
	id, ok := f.Get("id")
	if !ok {
		id, ok = f.Get("destination") // STOMP 1.0
	}
	if !ok {
		return errors.New("UNSUBSCRIBE has no id header")
	}
	c.mu.Lock()
	sub := c.subs[id]
	delete(c.subs, id)
	c.mu.Unlock()
	if sub == nil {
		return fmt.Errorf("UNSUBSCRIBE: no subscription with id %q", id)
	}
	c.dropSubscription(sub)
	return nil
}

func (c *conn) dropSubscription(sub *subscription) {
	if sub.q != nil {
		sub.q.unsubscribe(sub)
	} else {
		sub.t.unsubscribe(sub)
	}
}

// transaction handles BEGIN, COMMIT and ABORT. Frames in a transaction are
// held until COMMIT, then applied in order with one journal write, so their
// records share a batch.
func (c *conn) transaction(f *frame.Frame) bool {
	tx := f.Value("transaction")
	if tx == "" {
		c.protocolError(f, f.Command+" has no transaction header", nil)
		return false
	}
	c.mu.Lock()
	t, open := c.txs[tx]
	switch {
	case f.Command == frame.BEGIN && open:
		c.mu.Unlock()
		c.protocolError(f, fmt.Sprintf("transaction %q is already open", tx), nil)
		return false
	case f.Command == frame.BEGIN:
		c.txs[tx] = &txn{}
	case !open:
		c.mu.Unlock()
		c.protocolError(f, fmt.Sprintf("%s of transaction %q, which is not open", f.Command, tx), nil)
		return false
	default:
		delete(c.txs, tx)
	}
	c.mu.Unlock()
	var frames []*frame.Frame
	if t != nil {
		// Prepared below, the frames become messages that the queues
		// charge on their own.
		frames = t.frames
		c.s.mem.unpin(t.bytes)
	}
	if f.Command != frame.COMMIT {
		c.submit(nil, func(error) { c.receipt(f) })
		return true
	}
	var recs []store.Record
	var applies []func()
	for _, tf := range frames {
		r, apply, err := c.prepare(tf)
		if err == errDuplicate {
			continue // replayed by the sidecar; taken in already
		}
		if err != nil {
			c.protocolError(f, fmt.Sprintf("transaction %q aborted: %v", tx, err), nil)
			return false
		}
		recs = append(recs, r...)
		if apply != nil {
			applies = append(applies, apply)
		}
	}
	start := time.Now()
	c.submit(recs, func(err error) {
		if c.applied(f, func() {
			for _, a := range applies {
				a()
			}
		}, err) {
			c.receiptSince(f, start)
		}
	})
	return true
}

// submit queues a step behind this connection's earlier steps; see conn.
func (c *conn) submit(recs []store.Record, apply func(error)) {
	st := &step{recs: recs, apply: apply}
	c.pmu.Lock()
	if len(c.steps) == 0 && len(recs) == 0 && !c.draining {
		c.pmu.Unlock()
		apply(nil)
		c.flush()
		return
	}
	c.steps = append(c.steps, st)
	c.pmu.Unlock()
	if len(recs) == 0 {
		c.complete(st, nil)
		return
	}
	start := time.Now()
	c.s.st.Append(recs, func(err error) {
		c.s.metrics.storeAppend.Observe(time.Since(start).Seconds())
		c.complete(st, err)
	})
}

// submitFrame is submit for f's records. When the client waits for f's
// receipt and has sent nothing more yet, the reader has nothing better to
// do than the commit itself, so it commits on this goroutine if the store
// is idle: a producer that waits for each receipt is then spared two
// goroutine hand-offs per message. With more input buffered the frames are
// queued instead, so that they share one commit.
func (c *conn) submitFrame(f *frame.Frame, recs []store.Record, apply func(error)) {
	na, ok := c.s.st.(nowAppender)
	if _, receipt := f.Get("receipt"); !ok || !receipt || len(recs) == 0 || c.fr.Buffered() > 0 {
		c.submit(recs, apply)
		return
	}
	st := &step{recs: recs, apply: apply}
	c.pmu.Lock()
	c.steps = append(c.steps, st)
	c.pmu.Unlock()
	start := time.Now()
	na.AppendNow(recs, func(err error) {
		c.s.metrics.storeAppend.Observe(time.Since(start).Seconds())
		c.complete(st, err)
	})
}

// submitBarrier queues a step that completes only after every store Append
// made so far, by any connection, has completed.
func (c *conn) submitBarrier(apply func(error)) {
	st := &step{apply: apply}
	c.pmu.Lock()
	c.steps = append(c.steps, st)
	c.pmu.Unlock()
	c.s.st.Append(nil, func(err error) { c.complete(st, err) })
}

// complete marks st done and applies every done step at the head of the
// pipeline. Only one goroutine drains at a time, so steps apply in order.
func (c *conn) complete(st *step, err error) {
	c.pmu.Lock()
	st.done, st.err = true, err
	if c.draining {
		c.pmu.Unlock()
		return
	}
	c.draining = true
	for len(c.steps) > 0 && c.steps[0].done {
		s := c.steps[0]
		c.steps[0] = nil
		c.steps = c.steps[1:]
		c.pmu.Unlock()
		s.apply(s.err)
		c.pmu.Lock()
	}
	c.draining = false
	c.pmu.Unlock()
	c.flush()
}

// receipt queues f's RECEIPT without waking writeLoop; it is called only by
// step appliers, and submit and complete flush after applying.
// receiptSince is receipt for a frame that wrote the store, read at start:
// the time until its RECEIPT is what a producer waits for.
func (c *conn) receiptSince(f *frame.Frame, start time.Time) {
	if _, ok := f.Get("receipt"); ok {
		c.s.metrics.receipt.WithLabelValues(f.Command).Observe(time.Since(start).Seconds())
	}
	c.receipt(f)
}

func (c *conn) receipt(f *frame.Frame) {
	if id, ok := f.Get("receipt"); ok {
		c.enqueue(outFrame{f: frame.New(frame.RECEIPT, "receipt-id", id)})
	}
}

// refuse turns a frame away because a limit of the broker's (named by its
// config key) is reached, not because the client erred: an ERROR frame as
// for a protocol error, then the connection closes, but logged as a
// warning and counted by limit, apart from bad input.
func (c *conn) refuse(f *frame.Frame, limit, msg string, cause error) {
	e := frame.New(frame.ERROR, "message", msg, "content-type", "text/plain")
	if id, ok := f.Get("receipt"); ok {
		e.Set("receipt-id", id)
	}
	e.Body = []byte(msg + "\n")
	l := c.log.WithFields(logrus.Fields{"limit": limit, "command": f.Command, "destination": f.Value("destination")})
	if cause != nil {
		l = l.WithError(cause)
	}
	l.Warn("refusing a frame: a limit is reached; closing the connection")
	c.s.metrics.refusals.WithLabelValues(limit).Inc()
	c.send(outFrame{f: e, closeAfter: true, reason: "refused"})
}

// protocolError tells the client what it did wrong in an ERROR frame (with
// the receipt-id of the offending frame, STOMP 1.2 "ERROR"), then closes.
// cause, when set, is logged but not sent: the client learns what it did,
// the log says why.
func (c *conn) protocolError(f *frame.Frame, msg string, cause error) {
	e := frame.New(frame.ERROR, "message", msg, "content-type", "text/plain")
	if f != nil {
		if id, ok := f.Get("receipt"); ok {
			e.Set("receipt-id", id)
		}
		e.Body = []byte("The frame\n-----\n" + f.String() + "\n-----\n" + msg + "\n")
	} else {
		e.Body = []byte(msg + "\n")
	}
	l := c.log.WithField("error", msg)
	if cause != nil {
		l = l.WithField("cause", cause.Error())
	}
	l.Info("protocol error; closing connection")
	c.s.metrics.protocolErrors.Inc()
	c.send(outFrame{f: e, closeAfter: true, reason: "protocol_error"})
}

// deliver queues a MESSAGE for subscription s. It is called with the
// destination's lock held, so it must not block.
func (c *conn) deliver(s *subscription, m *message) {
	f := &frame.Frame{Command: frame.MESSAGE, Body: m.frame.Body}
	f.Headers = make([]frame.Header, 0, len(m.frame.Headers)+3)
	f.Headers = append(f.Headers, frame.Header{Key: "subscription", Value: s.id})
	f.Headers = append(f.Headers, m.frame.Headers...)
	if m.redelivered {
		f.Headers = append(f.Headers, frame.Header{Key: "redelivered", Value: "true"})
	}
	var onWritten func()
	if s.ack == ackAuto {
		if s.q != nil {
			onWritten = func() { c.autoAck(s, m) }
		}
	} else {
		f.Headers = append(f.Headers, frame.Header{Key: "ack", Value: m.id})
		c.mu.Lock()
		c.acks[m.id] = s
		c.mu.Unlock()
	}
	o := outFrame{f: f, onWritten: onWritten}
	switch {
	case s.q == nil:
		// A topic message's only copy for this subscriber is this frame:
		// it counts against the budget until written (a queue message's
		// body is counted by the queue while it is in flight).
		o.mem = int64(m.size)
		c.s.mem.pin(o.mem)
	case m.persistent && m.mem == memPinned:
		// The body goes out with the frame and is not kept for a
		// redelivery, which reads it back from the store: what a
		// delivery costs memory is then the consumer's socket backlog,
		// not its whole prefetch window (a consumer of a thousand queues
		// with a prefetch of a thousand would otherwise pin a backlog of
		// a million in memory). What dispatch pinned for the message,
		// the frame holds until written.
		o.body, o.q = int64(m.size), s.q
		m.mem, m.frame = memNone, nil
	}
	if !c.send(o) {
		c.release(&o)
		return
	}
	c.s.metrics.delivered.Inc()
}

// autoAck acknowledges a message of an auto-ack subscription once written.
func (c *conn) autoAck(s *subscription, m *message) {
	acked, err := s.q.ack(s, m.id, false)
	if err != nil {
		return // the subscription ended first and requeued it
	}
	for _, a := range acked {
		if a.persistent {
			id := a.id
			c.s.st.Append([]store.Record{{Kind: store.KindAck, ID: a.id, Queue: s.q.name}}, func(err error) {
				if err != nil {
					c.log.WithError(err).WithField("message", id).Warn("auto-ack not journaled: the message will be delivered again after a restart")
				}
			})
		}
	}
}

// forget drops delivery bookkeeping for acknowledged or requeued messages.
func (c *conn) forget(ms []*message) {
	c.mu.Lock()
	for _, m := range ms {
		delete(c.acks, m.id)
	}
	c.mu.Unlock()
}

// send queues a frame for writeLoop and wakes it; false if the connection is
// closing.
func (c *conn) send(o outFrame) bool {
	if !c.enqueue(o) {
		return false
	}
	c.wake()
	return true
}

// wake tells writeLoop that frames are queued.
func (c *conn) wake() {
	select {
	case c.outWake <- struct{}{}:
	default:
	}
}

// enqueue queues a frame without waking writeLoop; the caller must send,
// wake or flush afterwards. A client that lets MaxPendingFrames, or
// MaxPendingBytes of topic messages, pile up is dropped as a slow consumer
// rather than letting it grow the broker's memory without bound. Queue
// messages are not counted in bytes here: a queue delivers to a
// subscription only within its prefetch and MaxPendingBytes, so a slow
// consumer of a queue holds back its own deliveries instead.
func (c *conn) enqueue(o outFrame) bool {
	n := o.mem
	c.outMu.Lock()
	if c.closing {
		c.outMu.Unlock()
		return false
	}
	if o.closeAfter {
		c.closing = true
	}
	if len(c.outq) > 0 && (len(c.outq) >= c.s.opts.MaxPendingFrames || n > 0 && c.outSize+n > c.s.opts.MaxPendingBytes) {
		frames, bytes := len(c.outq), c.outSize
		limit := "max_pending_frames"
		if len(c.outq) < c.s.opts.MaxPendingFrames {
			limit = "max_pending_bytes"
		}
		c.dropSlowLocked(limit)
		c.outMu.Unlock()
		c.log.WithFields(logrus.Fields{"pending_frames": frames, "pending_topic_bytes": bytes}).Warn("dropping slow consumer: too much waiting to be written (max_pending_frames, max_pending_bytes)")
		c.s.metrics.slowConsumers.Inc()
		c.wake()
		return false
	}
	c.outq = append(c.outq, o)
	c.outSize += n
	c.outMu.Unlock()
	return true
}

// dropSlowLocked replaces what waits for a slow consumer with an ERROR
// that names the limit, and gives the writer a second to deliver it (a
// client that does not read at all never gets it: its connection is cut). The
// dropped MESSAGEs were never written: queue messages among them are
// still unacknowledged deliveries and go back to their queue when the
// connection closes, auto-ack ones included. outMu must be held.
func (c *conn) dropSlowLocked(limit string) {
	dropped := c.outq
	c.outq, c.outSize = nil, 0
	c.closing = true
	c.slow.Store(true)
	e := frame.New(frame.ERROR, "message", "slow consumer: more than "+limit+" waiting to be written to this connection; it is closed and its unacknowledged messages are redelivered",
		"content-type", "text/plain")
	c.outq = append(c.outq, outFrame{f: e, closeAfter: true, reason: "slow_consumer"})
	go c.abandon(dropped)
	// A writer stuck on the full socket gives up soon, then writes the
	// ERROR if the client reads at all, then closes.
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	time.AfterFunc(2*time.Second, func() { c.close("slow_consumer") })
}

// flush writes the queued frames from the calling goroutine if the socket
// takes them at once, and otherwise leaves them to writeLoop. It never
// blocks: the write is non-blocking, and if writeLoop is busy writing it
// will find the frames when it looks at the queue again. Frames with
// side effects (onWritten, closeAfter) are always left to writeLoop.
func (c *conn) flush() {
	if !c.s.leaseValid() {
		c.wake() // writeLoop closes the connection
		return
	}
	if c.raw == nil || !c.wmu.TryLock() {
		c.wake()
		return
	}
	c.outMu.Lock()
	plain := len(c.outq) > 0 && !c.closing
	size := 0 // about what the frames will take
	for _, o := range c.outq {
		if o.f == nil || o.onWritten != nil || o.closeAfter || o.mem != 0 {
			plain = false
			break
		}
		size += len(o.f.Body) + 256
	}
	if !plain {
		empty := len(c.outq) == 0
		c.outMu.Unlock()
		c.wmu.Unlock()
		if !empty {
			c.wake()
		}
		return
	}
	buf := c.flushBuf[:0]
	var pooled *[]byte
	if buf == nil && size > maxKeptFlushBuf {
		if p, ok := bigFlushBufs.Get().(*[]byte); ok {
			pooled, buf = p, (*p)[:0]
		}
	}
	v := c.ver()
	for i, o := range c.outq {
		buf = frame.Append(buf, o.f, v)
		c.release(&o) // what is left to write is a copy in buf
		c.outq[i] = outFrame{}
	}
	c.outq, c.outSize = c.outq[:0], 0
	c.outMu.Unlock()

	n, err := c.writeNow(buf)
	if n < len(buf) {
		// The socket buffer is full (or the write failed, which writeLoop
		// will discover and handle): the rest goes first in the queue,
		// pinned in the budget until it is written, as the frames it
		// came from were. A consumer that stopped reading would otherwise
		// hold up to a flush's worth of bodies outside the budget.
		rest := append([]byte(nil), buf[n:]...)
		c.outMu.Lock()
		if !c.released {
			c.s.mem.pin(int64(len(rest)))
			c.outq = append(c.outq, outFrame{})
			copy(c.outq[1:], c.outq)
			c.outq[0] = outFrame{raw: rest, mem: int64(len(rest))}
		}
		c.outMu.Unlock()
		if err != nil {
			c.log.WithError(err).Debug("direct write failed; leaving it to the writer")
		}
	}
	short := n < len(buf)
	if cap(buf) <= maxKeptFlushBuf {
		c.flushBuf = buf[:0]
	} else {
		c.flushBuf = nil
		if pooled == nil {
			pooled = new([]byte)
		}
		*pooled = buf[:0]
		bigFlushBufs.Put(pooled)
	}
	c.wmu.Unlock()
	if short {
		c.wake()
	}
}

// bigFlushBufs are flush buffers that grew past what a connection keeps
// (maxKeptFlushBuf), for the next large flush of any connection: a
// consumer draining a backlog is sent hundreds of KiB at a time, and
// growing a buffer that big for every flush was a fifth of what a drain
// allocated. A small flush never takes one.
var bigFlushBufs sync.Pool

// maxKeptFlushBuf is the largest flush buffer a connection keeps for
// itself.
const maxKeptFlushBuf = 64 << 10

// writeNow makes one non-blocking send of buf and returns how much of it the
// socket took.
func (c *conn) writeNow(buf []byte) (int, error) {
	var n int
	var werr error
	err := c.raw.Write(func(fd uintptr) bool {
		n, werr = rawsock.Send(fd, buf)
		return true // never wait for the socket to become writable
	})
	if n > 0 {
		c.sent.Add(int64(n))
		c.lastWrite.Store(time.Now().UnixNano())
	}
	if err == nil && werr != nil && werr != rawsock.ErrWouldBlock {
		err = werr
	}
	return n, err
}

// queueClose closes the connection once everything queued has been written.
// If the connection is already closing, whoever set that closes it: a queued
// ERROR must still reach the client first.
func (c *conn) queueClose(reason string) {
	c.send(outFrame{closeAfter: true, reason: reason})
}

func (c *conn) writeLoop() {
	w := frame.NewWriter(countingWriter{c})
	var batch []outFrame
	var hb *time.Ticker
	var hbC <-chan time.Time
	confirm := time.NewTimer(confirmEvery)
	confirm.Stop()
	defer confirm.Stop()
	c.lastWrite.Store(time.Now().UnixNano())
	for {
		select {
		case <-confirm.C:
			if c.confirmDeliveries() {
				confirm.Reset(confirmEvery)
			}
			continue
		case <-c.outWake:
		case <-hbC:
			if time.Since(time.Unix(0, c.lastWrite.Load())) < c.writeHB {
				continue
			}
			c.wmu.Lock()
			c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := w.WriteHeartbeat(); err == nil {
				err = w.Flush()
			}
			c.wmu.Unlock()
			c.lastWrite.Store(time.Now().UnixNano())
			continue
		case <-c.closed:
			if hb != nil {
				hb.Stop()
			}
			c.abandon(batch)
			return
		}
		if !c.s.leaseValid() {
			// Replaced while frozen: say nothing more to this client.
			c.close("lease_not_valid")
			continue
		}
		c.wmu.Lock()
		c.outMu.Lock()
		batch, c.outq = c.outq, batch[:0]
		c.outSize = 0
		c.outMu.Unlock()
		var err error
		closeAfter, reason := false, ""
		w.SetVersion(c.ver())
		// Before the first Write: a big batch flushes from inside Write.
		c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		confirms := false
		for _, o := range batch {
			switch {
			case err != nil:
			case o.raw != nil:
				err = w.WriteRaw(o.raw)
			case o.f != nil:
				err = w.Write(o.f)
			}
			if err == nil && o.onWritten != nil {
				// Registered as soon as the frame's place in the stream is
				// known, so that a write that blocks (or fails) later in
				// the batch does not hide what the client already has.
				c.delivered.add(c.sent.Load()+int64(w.Buffered()), o.onWritten)
				confirms = true
			}
			if o.closeAfter {
				closeAfter, reason = true, o.reason
				break
			}
		}
		if err == nil {
			err = w.Flush()
		}
		c.wmu.Unlock()
		if err != nil {
			c.log.WithError(err).Debug("write failed")
			c.abandon(batch)
			if c.slow.Load() {
				c.close("slow_consumer")
			} else {
				c.close("write_failed")
			}
			continue
		}
		c.lastWrite.Store(time.Now().UnixNano())
		for i := range batch {
			c.release(&batch[i])
			batch[i] = outFrame{}
		}
		if confirms && c.confirmDeliveries() {
			confirm.Reset(confirmEvery)
		}
		if closeAfter {
			c.close(reason)
			continue
		}
		if hb == nil && c.writeHB > 0 {
			hb = time.NewTicker(c.writeHB / 2)
			hbC = hb.C
		}
	}
}

// countingWriter writes to the connection's socket, counting the bytes
// for the confirmation of deliveries.
type countingWriter struct{ c *conn }

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.c.nc.Write(p)
	w.c.sent.Add(int64(n))
	return n, err
}

// writeTimeout bounds one flush; a client that stops reading for this long
// is treated as dead.
const writeTimeout = 30 * time.Second

// abandon releases frames that will never be written. Nothing is lost:
// unwritten queue messages are still in their subscription's inflight list
// and go back to the queue when the connection's subscriptions are dropped.
func (c *conn) abandon(batch []outFrame) {
	for i := range batch {
		c.release(&batch[i])
		batch[i] = outFrame{}
	}
}

// close ends the connection: the socket is closed, subscriptions are dropped
// (their unacknowledged messages return to their queues) and open
// transactions are discarded. Safe to call more than once.
func (c *conn) close(reason string) {
	c.closeOnce.Do(func() {
		c.outMu.Lock()
		c.closing, c.released = true, true
		dropped := c.outq
		c.outq, c.outSize = nil, 0
		c.outMu.Unlock()
		c.abandon(dropped)
		c.reason = reason
		// What the client has is consumed; the rest of its auto-ack
		// deliveries stay unacknowledged and go back to their queues
		// below, with the subscriptions.
		c.confirmDeliveries()
		c.delivered.seal()
		if tc, ok := c.nc.(*tls.Conn); ok {
			// Not tls.Conn.Close: its close_notify may wait seconds on a
			// client that does not read, and a lost lease must stop at once.
			tc.NetConn().Close()
		} else {
			c.nc.Close()
		}
		close(c.closed)
		c.mu.Lock()
		subs := make([]*subscription, 0, len(c.subs))
		for _, s := range c.subs {
			subs = append(subs, s)
		}
		c.subs = map[string]*subscription{}
		var txBytes int64
		for _, t := range c.txs {
			txBytes += t.bytes
		}
		c.txs = map[string]*txn{}
		c.mu.Unlock()
		c.s.mem.unpin(txBytes)
		for _, s := range subs {
			c.dropSubscription(s)
		}
		c.s.metrics.closes.WithLabelValues(reason).Inc()
		c.log.WithField("reason", reason).Debug("connection closed")
	})
}
