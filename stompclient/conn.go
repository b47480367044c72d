// Package stompclient is a small STOMP 1.0/1.1/1.2 client built on the frame
// codec.
//
// It is the instrument the broker's tests, the chaos workloads, the
// benchmarks and the sidecar's health check use to prove that no message is
// lost, so it favours being exact over being clever: one reader goroutine per
// connection delivers frames in wire order, every write is serialized, and
// every wait ends promptly when its context is done or the connection dies.
//
// A Conn is safe for concurrent use by multiple goroutines.
package stompclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"handover/frame"
)

// Defaults for zero Options fields.
const (
	DefaultAcceptVersion  = "1.0,1.1,1.2"
	DefaultHost           = "localhost"
	DefaultConnectTimeout = 10 * time.Second
	// DefaultBuffer is the MESSAGE channel capacity of a subscription: deep
	// enough that a consumer doing a little work per message does not stall
	// the reader at benchmark rates, shallow enough to keep TCP backpressure
	// meaningful.
	DefaultBuffer = 4096
)

// Errors describing why a connection ended, for errors.Is.
var (
	// ErrClosed means the connection was ended locally, by Close or by a
	// completed Disconnect.
	ErrClosed = errors.New("stompclient: connection closed")
	// ErrHeartbeatTimeout means the server sent nothing, not even a
	// heart-beat, for twice its negotiated heart-beat interval.
	ErrHeartbeatTimeout = errors.New("stompclient: heart-beat timeout: server silent")
	// ErrProtocol means the server broke the protocol (an unexpected
	// command, a bad CONNECTED); the stream cannot be trusted any more.
	ErrProtocol = errors.New("stompclient: protocol error")
)

// Options configures a connection. The zero value connects as an anonymous
// client offering every version and no heart-beats.
type Options struct {
	// Login and Passcode are sent in CONNECT when non-empty.
	Login, Passcode string
	// Host is the CONNECT host header (the virtual host), mandatory from
	// STOMP 1.1 on. Empty means DefaultHost: a fixed value rather than the
	// dialled address, so a client reaches the same virtual host whether it
	// dials a name, an IP or a proxy.
	Host string
	// AcceptVersion is the accept-version header. Empty means
	// DefaultAcceptVersion.
	AcceptVersion string
	// HeartBeat is what we offer in CONNECT: [0] is how often we can send
	// heart-beats (cx), [1] how often we want them (cy). Zero disables that
	// direction. Both are rounded up to whole milliseconds.
	HeartBeat [2]time.Duration
	// ConnectTimeout bounds dialling plus the CONNECT→CONNECTED exchange.
	// Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Headers are extra CONNECT headers, appended after ours. A repeated
	// header loses to ours (the first occurrence wins), so use the fields
	// above for host, login and the like.
	Headers []frame.Header
	// Limits bound frames read from the server; zero fields take
	// frame.DefaultLimits, which match the broker's own limits.
	Limits frame.Limits
	// Buffer is each subscription's MESSAGE channel capacity. Zero means
	// DefaultBuffer.
	Buffer int
}

// ServerError is an ERROR frame sent by the server. The server closes the
// connection after an ERROR (STOMP 1.2 "ERROR"), so it is also the reason the
// connection ended, as reported by Err.
type ServerError struct {
	// Message is the ERROR frame's message header: a short description.
	Message string
	// Body is the ERROR frame's body, often a longer description.
	Body string
	// Frame is the whole ERROR frame, for headers such as receipt-id.
	Frame *frame.Frame
}

func newServerError(f *frame.Frame) *ServerError {
	return &ServerError{Message: f.Value("message"), Body: string(f.Body), Frame: f}
}

// Error renders the message header and, when short enough to be a sentence
// rather than a dump, the body.
func (e *ServerError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "(no message header)"
	}
	body := strings.TrimSpace(e.Body)
	if body == "" || body == msg {
		return "stomp server error: " + msg
	}
	if len(body) > 200 {
		body = body[:200] + "…"
	}
	return "stomp server error: " + msg + ": " + body
}

// running counts this package's live goroutines so tests can prove a closed
// Conn leaves none behind.
var running atomic.Int64

// aLongTimeAgo is a deadline in the past: setting it wakes blocked I/O now.
var aLongTimeAgo = time.Unix(1, 0)

// Conn is a STOMP connection.
type Conn struct {
	nc net.Conn
	r  *frame.Reader // read only by the reader goroutine once connected

	// wsem serializes writers. It is a channel rather than a mutex so that
	// waiting for a turn to write can also give up on ctx or connection end.
	wsem    chan struct{}
	w       *frame.Writer // guarded by wsem
	scratch frame.Frame   // guarded by wsem; reused by Send so a message costs no frame allocation
	wrote   atomic.Bool   // set by every write, cleared by the heart-beat sender

	version        frame.Version
	server         string
	sendHB, recvHB time.Duration // negotiated; zero means none
	buffer         int

	subSeq, receiptSeq atomic.Uint64

	mu          sync.Mutex
	err         error // why the connection ended; nil while it is up
	receipts    map[string]chan *frame.Frame
	subs        map[string]*Subscription
	discReceipt string // receipt id of our DISCONNECT, after which EOF is expected

	quit chan struct{}  // closed when the connection starts ending
	done chan struct{}  // closed once every goroutine of the connection is finished with it
	hbWG sync.WaitGroup // the heart-beat sender
}

// Dial connects to addr over TCP and performs the STOMP handshake. ctx and
// Options.ConnectTimeout bound only the connecting; the returned Conn lives
// until Close, Disconnect, a server ERROR or an I/O failure.
//
// An ERROR reply to CONNECT is returned as a *ServerError.
func Dial(ctx context.Context, addr string, opts Options) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout(opts))
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("stompclient: dial %s: %w", addr, err)
	}
	return NewConn(ctx, nc, opts)
}

// NewConn performs the STOMP handshake over an established connection (TLS,
// a pipe, a test listener) and takes ownership of nc: it is closed on failure
// and when the Conn ends. ctx and Options.ConnectTimeout bound only the
// handshake.
func NewConn(ctx context.Context, nc net.Conn, opts Options) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout(opts))
	defer cancel()
	c, err := handshake(ctx, nc, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.start()
	return c, nil
}

func connectTimeout(opts Options) time.Duration {
	if opts.ConnectTimeout > 0 {
		return opts.ConnectTimeout
	}
	return DefaultConnectTimeout
}

// deadlineReader pushes the read deadline forward before every read from the
// network, so a server that stops sending (heart-beats included) is noticed.
// Only bufio calls it, and only when its buffer is empty, so the cost is one
// SetReadDeadline per system call, not per frame.
type deadlineReader struct {
	nc      net.Conn
	timeout time.Duration // zero: leave deadlines alone
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	if d.timeout > 0 {
		if err := d.nc.SetReadDeadline(time.Now().Add(d.timeout)); err != nil {
			return 0, err
		}
	}
	return d.nc.Read(p)
}

func handshake(ctx context.Context, nc net.Conn, opts Options) (*Conn, error) {
	accept := opts.AcceptVersion
	if accept == "" {
		accept = DefaultAcceptVersion
	}
	offered, top, err := parseAccept(accept)
	if err != nil {
		return nil, err
	}
	host := opts.Host
	if host == "" {
		host = DefaultHost
	}
	buffer := opts.Buffer
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	dr := &deadlineReader{nc: nc}
	c := &Conn{
		nc:       nc,
		r:        frame.NewReader(dr, opts.Limits),
		w:        frame.NewWriter(nc),
		wsem:     make(chan struct{}, 1),
		buffer:   buffer,
		receipts: map[string]chan *frame.Frame{},
		subs:     map[string]*Subscription{},
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	// Until CONNECTED names the version, decode as the newest version we
	// offered: that is what a server answering with ERROR most likely speaks.
	c.r.SetVersion(top)

	f := frame.New(frame.CONNECT, "accept-version", accept, "host", host)
	if opts.Login != "" {
		f.Add("login", opts.Login)
	}
	if opts.Passcode != "" {
		f.Add("passcode", opts.Passcode)
	}
	cx, cy := opts.HeartBeat[0], opts.HeartBeat[1]
	if cx > 0 || cy > 0 {
		f.Add("heart-beat", strconv.FormatInt(ceilMillis(cx), 10)+","+strconv.FormatInt(ceilMillis(cy), 10))
	}
	f.Headers = append(f.Headers, opts.Headers...)

	// The handshake runs on this goroutine, so blocking I/O is bounded by a
	// deadline (ctx's) and cut short on cancellation by moving it to the past.
	dl, _ := ctx.Deadline()
	if err := nc.SetDeadline(dl); err != nil {
		return nil, fmt.Errorf("stompclient: connect: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(aLongTimeAgo) })
	err = c.w.Write(f)
	if err == nil {
		err = c.w.Flush()
	}
	var reply *frame.Frame
	if err == nil {
		reply, err = c.r.Read()
	}
	if !stop() {
		// ctx ended while we were working; its callback may have poisoned
		// the deadline, so the connection is unusable whatever we read.
		return nil, fmt.Errorf("stompclient: connect: %w", context.Cause(ctx))
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
		}
		return nil, fmt.Errorf("stompclient: connect: %w", err)
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("stompclient: connect: %w", err)
	}

	switch reply.Command {
	case frame.CONNECTED:
	case frame.ERROR:
		return nil, newServerError(reply)
	default:
		return nil, fmt.Errorf("%w: got %s in reply to CONNECT", ErrProtocol, reply.Command)
	}
	v := frame.Version(reply.Value("version"))
	if v == "" {
		v = frame.V10 // 1.0 servers do not send a version header
	}
	if !offered[v] {
		return nil, fmt.Errorf("%w: server chose version %q, we offered %q", ErrProtocol, v, accept)
	}
	c.version = v
	c.server = reply.Value("server")
	c.r.SetVersion(v)
	c.w.SetVersion(v)

	if v != frame.V10 { // heart-beating arrived in 1.1
		sx, sy, err := frame.ParseHeartBeat(reply.Value("heart-beat"))
		if err != nil {
			return nil, fmt.Errorf("%w: CONNECTED %v", ErrProtocol, err)
		}
		// 1.2 "Heart-beating": each direction runs at the slower of what
		// the sender can do and what the receiver wants, if both want it.
		if cx > 0 && sy > 0 {
			c.sendHB = max(roundMillis(cx), sy)
		}
		if cy > 0 && sx > 0 {
			c.recvHB = max(roundMillis(cy), sx)
			// Twice the interval, as the spec suggests, so one late
			// heart-beat on a busy network is not a death sentence.
			dr.timeout = 2 * c.recvHB
		}
	}
	return c, nil
}

// parseAccept returns the known versions in an accept-version list and the
// newest of them.
func parseAccept(accept string) (map[frame.Version]bool, frame.Version, error) {
	offered := map[frame.Version]bool{}
	var top frame.Version
	for _, s := range strings.Split(accept, ",") {
		switch v := frame.Version(strings.TrimSpace(s)); v {
		case frame.V10, frame.V11, frame.V12:
			offered[v] = true
			top = max(top, v) // "1.0" < "1.1" < "1.2" as strings
		}
	}
	if top == "" {
		return nil, "", fmt.Errorf("stompclient: accept-version %q names no version this client speaks", accept)
	}
	return offered, top, nil
}

// ceilMillis renders d in whole milliseconds, rounding up so a sub-millisecond
// offer does not silently turn into "0", which means "never".
func ceilMillis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

func roundMillis(d time.Duration) time.Duration {
	return time.Duration(ceilMillis(d)) * time.Millisecond
}

func (c *Conn) start() {
	running.Add(1)
	go c.readLoop()
	if c.sendHB > 0 {
		c.hbWG.Add(1)
		running.Add(1)
		go c.heartbeatLoop()
	}
}

// Version returns the negotiated protocol version.
func (c *Conn) Version() frame.Version { return c.version }

// Server returns the CONNECTED frame's server header, e.g. "handover/1.0".
func (c *Conn) Server() string { return c.server }

// HeartBeats returns the negotiated heart-beat intervals: how often we send
// and how often the server sends. Zero means that direction is off.
func (c *Conn) HeartBeats() (send, recv time.Duration) { return c.sendHB, c.recvHB }

// Done returns a channel closed when the connection has ended and its
// goroutines have finished; subscription channels are closed by then.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is up: a
// *ServerError for an ERROR frame, ErrClosed after Close or Disconnect,
// ErrHeartbeatTimeout for a silent server, otherwise the I/O error.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection abruptly, without DISCONNECT, and waits for its
// goroutines to finish. It is idempotent and always returns nil, so it can be
// deferred without thought.
func (c *Conn) Close() error {
	c.shutdown(ErrClosed)
	<-c.done
	return nil
}

// Disconnect ends the connection gracefully: it sends DISCONNECT with a
// receipt and waits for it, which per the spec guarantees the server has
// processed every frame we sent before it. The connection is closed whatever
// happens; the error says whether the goodbye was acknowledged.
func (c *Conn) Disconnect(ctx context.Context) error {
	id := c.newReceiptID()
	c.mu.Lock()
	c.discReceipt = id
	c.mu.Unlock()
	err := c.roundTrip(ctx, frame.New(frame.DISCONNECT, "receipt", id), id)
	c.shutdown(ErrClosed)
	<-c.done
	return err
}

// shutdown starts ending the connection with err as the reason; only the
// first reason sticks. Closing nc wakes the reader and any blocked writer.
func (c *Conn) shutdown(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.quit)
	c.mu.Unlock()
	c.nc.Close()
}

// endErr is the error for an operation refused because the connection ended.
func (c *Conn) endErr() error {
	if err := c.Err(); err != nil {
		return err
	}
	return ErrClosed
}

// readLoop is the connection's only reader, which is what keeps MESSAGE and
// RECEIPT frames in wire order. It owns the teardown: when it returns, the
// connection is over.
func (c *Conn) readLoop() {
	defer running.Add(-1)
	defer c.finish()
	for {
		f, err := c.r.Read()
		if err != nil {
			c.shutdown(c.readErr(err))
			return
		}
		switch f.Command {
		case frame.MESSAGE:
			c.deliver(f)
		case frame.RECEIPT:
			if c.complete(f.Value("receipt-id"), f) {
				// The server acknowledged DISCONNECT and will now hang
				// up; end here so that is not reported as an I/O error.
				c.shutdown(ErrClosed)
				return
			}
		case frame.ERROR:
			se := newServerError(f)
			if id, ok := f.Get("receipt-id"); ok {
				c.complete(id, f)
			}
			c.shutdown(se)
			return
		default:
			c.shutdown(fmt.Errorf("%w: unexpected %s frame from server", ErrProtocol, f.Command))
			return
		}
	}
}

func (c *Conn) readErr(err error) error {
	var ne net.Error
	switch {
	case c.recvHB > 0 && errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w for %v", ErrHeartbeatTimeout, 2*c.recvHB)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("stompclient: server closed the connection: %w", err)
	default:
		return fmt.Errorf("stompclient: read: %w", err)
	}
}

// finish runs on the reader goroutine after the loop: it waits for the
// heart-beat sender, closes every subscription channel and only then closes
// done, so Done means "nothing of this connection is running".
func (c *Conn) finish() {
	c.shutdown(ErrClosed) // no-op unless the loop ended without a reason
	c.hbWG.Wait()
	c.mu.Lock()
	subs := c.subs
	c.subs = nil
	c.receipts = nil // waiters watch quit, not the map
	c.mu.Unlock()
	for _, s := range subs {
		s.close()
	}
	close(c.done)
}

// deliver hands a MESSAGE to its subscription. When the channel is full it
// blocks, which stops reading and lets TCP push back on the server; it gives
// up if the subscription or the connection goes away.
func (c *Conn) deliver(f *frame.Frame) {
	s := c.route(f)
	if s == nil {
		return // for a subscription we have already dropped
	}
	s.mu.Lock()
	if !s.closed {
		select {
		case s.ch <- f:
		case <-s.gone:
		case <-c.quit:
		}
	}
	s.mu.Unlock()
}

func (c *Conn) route(f *frame.Frame) *Subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id, ok := f.Get("subscription"); ok {
		return c.subs[id]
	}
	// Some 1.0 servers omit the subscription header; fall back to the
	// destination, which is unambiguous unless it is subscribed twice.
	dest := f.Value("destination")
	for _, s := range c.subs {
		if s.dest == dest {
			return s
		}
	}
	return nil
}

// complete hands a RECEIPT or ERROR to the waiter for receipt id and reports
// whether id was our DISCONNECT's.
func (c *Conn) complete(id string, f *frame.Frame) (disconnected bool) {
	if id == "" {
		return false
	}
	c.mu.Lock()
	ch := c.receipts[id]
	delete(c.receipts, id)
	disconnected = id == c.discReceipt && f.Command == frame.RECEIPT
	c.mu.Unlock()
	if ch != nil {
		ch <- f // buffered, and deleted above, so exactly one send
	}
	return disconnected
}

func (c *Conn) heartbeatLoop() {
	defer running.Add(-1)
	defer c.hbWG.Done()
	// Ticking at half the interval and skipping ticks after any write bounds
	// the gap between writes by one interval without a clock read per Send.
	t := time.NewTicker(max(c.sendHB/2, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-c.quit:
			return
		case <-t.C:
		}
		if c.wrote.Swap(false) {
			continue
		}
		if c.lockWrite(nil) != nil {
			return
		}
		err := c.w.WriteHeartbeat()
		if err == nil {
			err = c.w.Flush()
		}
		c.wrote.Store(true)
		c.unlockWrite()
		if err != nil {
			c.shutdown(fmt.Errorf("stompclient: write heart-beat: %w", err))
			return
		}
	}
}

// lockWrite takes the write turn, giving up when ctx (which may be nil) is
// done or the connection ends.
func (c *Conn) lockWrite(ctx context.Context) error {
	var cancel <-chan struct{}
	if ctx != nil {
		if err := ctx.Err(); err != nil {
			return err // select below might still pick the free turn
		}
		cancel = ctx.Done()
	}
	select {
	case c.wsem <- struct{}{}:
	case <-c.quit:
		return c.endErr()
	case <-cancel:
		return ctx.Err()
	}
	// select picks at random among ready cases, so we may hold the turn on
	// a connection that has ended.
	select {
	case <-c.quit:
		<-c.wsem
		return c.endErr()
	default:
		return nil
	}
}

func (c *Conn) unlockWrite() { <-c.wsem }

// writeFrame writes and flushes f.
func (c *Conn) writeFrame(ctx context.Context, f *frame.Frame) error {
	if err := c.lockWrite(ctx); err != nil {
		return err
	}
	defer c.unlockWrite()
	return c.writeLocked(ctx, f)
}

// writeLocked writes and flushes f while holding the write turn. If ctx ends
// while the write is blocked (a server not reading), the write is cut short
// via the write deadline; the frame may then be half sent, so that ends the
// connection. Any write error ends it, for the same reason.
func (c *Conn) writeLocked(ctx context.Context, f *frame.Frame) error {
	var stop func() bool
	var fired chan struct{}
	if ctx != nil && ctx.Done() != nil {
		if err := ctx.Err(); err != nil {
			// Nothing written yet: fail this call, not the connection.
			return err
		}
		fired = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			c.nc.SetWriteDeadline(aLongTimeAgo)
			close(fired)
		})
	}
	err := c.w.Write(f)
	if err == nil {
		err = c.w.Flush()
	}
	c.wrote.Store(true)
	if stop != nil && !stop() {
		<-fired // the callback ran; undo its deadline before the next writer
		if err == nil {
			if derr := c.nc.SetWriteDeadline(time.Time{}); derr != nil {
				err = derr
			}
		}
	}
	if err == nil {
		return nil
	}
	if ctx != nil && ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("stompclient: write of %s interrupted, connection closed: %w", f.Command, context.Cause(ctx))
	} else {
		err = fmt.Errorf("stompclient: write %s: %w", f.Command, err)
	}
	c.shutdown(err)
	return c.endErr() // the first reason, e.g. the ERROR that made the server hang up
}

func (c *Conn) newReceiptID() string {
	return "rcpt-" + strconv.FormatUint(c.receiptSeq.Add(1), 10)
}

// roundTrip writes f, which carries receipt header id, and waits for the
// matching RECEIPT. An ERROR, the connection ending or ctx ending fail it.
func (c *Conn) roundTrip(ctx context.Context, f *frame.Frame, id string) error {
	ch := make(chan *frame.Frame, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	if _, dup := c.receipts[id]; dup {
		c.mu.Unlock()
		return fmt.Errorf("stompclient: receipt %q is already awaited", id)
	}
	c.receipts[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.receipts, id)
		c.mu.Unlock()
	}()

	if err := c.writeFrame(ctx, f); err != nil {
		return err
	}
	select {
	case r := <-ch:
		return replyErr(r)
	case <-ctx.Done():
		// A reply that raced the cancellation still counts.
		select {
		case r := <-ch:
			return replyErr(r)
		default:
			return ctx.Err()
		}
	case <-c.quit:
		select {
		case r := <-ch:
			return replyErr(r)
		default:
			return c.endErr()
		}
	}
}

func replyErr(r *frame.Frame) error {
	if r.Command == frame.ERROR {
		return newServerError(r)
	}
	return nil
}
