package stompclient

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"handover/frame"
)

// AckMode is a SUBSCRIBE ack header value (STOMP 1.2 "SUBSCRIBE ack Header").
type AckMode string

// The acknowledgement modes.
const (
	// AckAuto: the server considers a message acknowledged once sent.
	AckAuto AckMode = "auto"
	// AckClient: an ACK acknowledges the message and every earlier one
	// on the subscription (cumulative).
	AckClient AckMode = "client"
	// AckClientIndividual: an ACK acknowledges one message only (1.1+).
	AckClientIndividual AckMode = "client-individual"
)

// ErrUnsupported is returned for an operation the negotiated version lacks,
// such as NACK on STOMP 1.0.
var ErrUnsupported = errors.New("stompclient: not supported by the negotiated STOMP version")

// Send sends a message to dest without waiting for the server: fire and
// forget, so it only reports local failures and a dead connection. Extra
// headers replace ones of the same name (destination included). Use
// SendReceipt to know the server has the message.
//
// body is written before Send returns and is not retained.
func (c *Conn) Send(dest string, body []byte, headers ...frame.Header) error {
	if err := c.lockWrite(nil); err != nil {
		return err
	}
	defer c.unlockWrite()
	// The scratch frame is only touched under the write turn; reusing it
	// keeps the benchmark hot path free of per-message frame allocations.
	f := &c.scratch
	f.Command = frame.SEND
	f.Headers = append(f.Headers[:0], frame.Header{Key: "destination", Value: dest})
	for _, h := range headers {
		f.Set(h.Key, h.Value)
	}
	f.Body = body
	err := c.writeLocked(nil, f)
	f.Body = nil // do not pin the caller's buffer
	clear(f.Headers)
	return err
}

// SendReceipt sends a message to dest and waits for the server's RECEIPT,
// which means the broker has taken responsibility for it. It fails on an
// ERROR (a *ServerError), on connection loss and when ctx is done; after a
// ctx failure the message may or may not have been accepted.
func (c *Conn) SendReceipt(ctx context.Context, dest string, body []byte, headers ...frame.Header) error {
	f := &frame.Frame{Command: frame.SEND, Headers: make([]frame.Header, 1, 2+len(headers)), Body: body}
	f.Headers[0] = frame.Header{Key: "destination", Value: dest}
	for _, h := range headers {
		f.Set(h.Key, h.Value)
	}
	return c.SendFrame(ctx, f, true)
}

// SendFrame writes any client frame: BEGIN/COMMIT/ABORT, ACK, or a
// hand-made frame a test wants on the wire. With wantReceipt it adds a
// receipt header (unless f has one, whose value is then awaited) and waits
// for the RECEIPT like SendReceipt. f is not modified. ctx may be nil when
// wantReceipt is false.
func (c *Conn) SendFrame(ctx context.Context, f *frame.Frame, wantReceipt bool) error {
	if !wantReceipt {
		return c.writeFrame(ctx, f)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	g := *f
	g.Headers = append(make([]frame.Header, 0, len(f.Headers)+1), f.Headers...)
	id, ok := g.Get("receipt")
	if !ok || id == "" {
		id = c.newReceiptID()
		g.Set("receipt", id)
	}
	return c.roundTrip(ctx, &g, id)
}

// Subscription is one SUBSCRIBE on a Conn.
type Subscription struct {
	c    *Conn
	id   string
	dest string
	ack  AckMode
	ch   chan *frame.Frame

	gone      chan struct{} // closed first on close, to wake a reader blocked on a full ch
	closeOnce sync.Once
	mu        sync.Mutex // held by the reader while sending on ch, so ch is never closed under it
	closed    bool       // guarded by mu
}

// C returns the channel of MESSAGE frames for this subscription, in the
// order the server sent them. It is closed after Unsubscribe or when the
// connection ends; frames already buffered can still be received.
func (s *Subscription) C() <-chan *frame.Frame { return s.ch }

// ID returns the subscription id sent in SUBSCRIBE, which the server echoes
// in each MESSAGE's subscription header.
func (s *Subscription) ID() string { return s.id }

// Destination returns the subscribed destination.
func (s *Subscription) Destination() string { return s.dest }

// AckMode returns the subscription's ack mode.
func (s *Subscription) AckMode() AckMode { return s.ack }

// Unsubscribe sends UNSUBSCRIBE and closes C. Messages already in flight
// from the server are dropped; unacknowledged ones in client modes are the
// server's to redeliver. It is idempotent, and a no-op once the connection
// has ended (nothing can be delivered any more).
func (s *Subscription) Unsubscribe() error {
	c := s.c
	c.mu.Lock()
	registered := c.subs[s.id] == s
	if registered {
		delete(c.subs, s.id)
	}
	ended := c.err != nil
	c.mu.Unlock()
	s.close()
	if !registered || ended {
		return nil
	}
	return c.writeFrame(nil, frame.New(frame.UNSUBSCRIBE, "id", s.id))
}

func (s *Subscription) close() {
	s.closeOnce.Do(func() {
		close(s.gone)
		s.mu.Lock()
		s.closed = true
		close(s.ch)
		s.mu.Unlock()
	})
}

// Subscribe subscribes to dest with the given ack mode ("" means auto). The
// id is generated ("sub-N") unless headers carry one; it is sent on every
// version, including 1.0 where it is optional, so MESSAGEs can be routed by
// their subscription header. Subscribe does not wait for the server: a
// message sent elsewhere right after it returns may predate the
// subscription. Use SubscribeReceipt when that matters.
func (c *Conn) Subscribe(dest string, ack AckMode, headers ...frame.Header) (*Subscription, error) {
	return c.subscribe(nil, false, dest, ack, headers)
}

// SubscribeReceipt is Subscribe that waits for the server's RECEIPT, after
// which the subscription is known to be active: the way to subscribe before
// publishing without a race.
func (c *Conn) SubscribeReceipt(ctx context.Context, dest string, ack AckMode, headers ...frame.Header) (*Subscription, error) {
	return c.subscribe(ctx, true, dest, ack, headers)
}

func (c *Conn) subscribe(ctx context.Context, wantReceipt bool, dest string, ack AckMode, headers []frame.Header) (*Subscription, error) {
	if ack == "" {
		ack = AckAuto
	}
	if ack == AckClientIndividual && c.version == frame.V10 {
		return nil, fmt.Errorf("%w: ack mode %s needs STOMP 1.1", ErrUnsupported, ack)
	}
	f := frame.New(frame.SUBSCRIBE, "destination", dest, "ack", string(ack))
	for _, h := range headers {
		f.Set(h.Key, h.Value)
	}
	id := f.Value("id")
	if id == "" {
		id = "sub-" + strconv.FormatUint(c.subSeq.Add(1), 10)
		f.Set("id", id)
	}
	s := &Subscription{
		c:    c,
		id:   id,
		dest: f.Value("destination"),
		ack:  AckMode(f.Value("ack")),
		ch:   make(chan *frame.Frame, c.buffer),
		gone: make(chan struct{}),
	}
	// Register before SUBSCRIBE leaves: the first MESSAGE can arrive before
	// the write returns.
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.endErr()
	}
	if _, dup := c.subs[id]; dup {
		c.mu.Unlock()
		return nil, fmt.Errorf("stompclient: subscription id %q is already in use", id)
	}
	c.subs[id] = s
	c.mu.Unlock()

	if err := c.SendFrame(ctx, f, wantReceipt); err != nil {
		c.mu.Lock()
		if c.subs[id] == s {
			delete(c.subs, id)
		}
		c.mu.Unlock()
		s.close()
		return nil, err
	}
	return s, nil
}

// ackFrame builds an ACK or NACK for msg in the negotiated version's form:
// 1.2 names the message by its ack header in id; 1.1 by message-id plus
// subscription; 1.0 by message-id alone (and has no NACK).
func (c *Conn) ackFrame(command string, msg *frame.Frame, headers []frame.Header) (*frame.Frame, error) {
	if msg == nil {
		return nil, errors.New("stompclient: " + command + " of a nil message")
	}
	f := &frame.Frame{Command: command, Headers: make([]frame.Header, 0, 2+len(headers))}
	switch c.version {
	case frame.V12:
		id, ok := msg.Get("ack")
		if !ok {
			return nil, fmt.Errorf("stompclient: %s: MESSAGE has no ack header (subscription in auto mode?)", command)
		}
		f.Add("id", id)
	case frame.V11:
		mid, ok1 := msg.Get("message-id")
		sub, ok2 := msg.Get("subscription")
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("stompclient: %s: MESSAGE lacks message-id or subscription header", command)
		}
		f.Add("message-id", mid)
		f.Add("subscription", sub)
	default:
		if command == frame.NACK {
			return nil, fmt.Errorf("%w: NACK needs STOMP 1.1", ErrUnsupported)
		}
		mid, ok := msg.Get("message-id")
		if !ok {
			return nil, fmt.Errorf("stompclient: %s: MESSAGE has no message-id header", command)
		}
		f.Add("message-id", mid)
	}
	for _, h := range headers {
		f.Set(h.Key, h.Value)
	}
	return f, nil
}

// Ack acknowledges msg, a MESSAGE received on this Conn, without waiting.
// Extra headers (e.g. transaction) are added.
func (c *Conn) Ack(msg *frame.Frame, headers ...frame.Header) error {
	f, err := c.ackFrame(frame.ACK, msg, headers)
	if err != nil {
		return err
	}
	return c.writeFrame(nil, f)
}

// Nack rejects msg (STOMP 1.1+) without waiting.
func (c *Conn) Nack(msg *frame.Frame, headers ...frame.Header) error {
	f, err := c.ackFrame(frame.NACK, msg, headers)
	if err != nil {
		return err
	}
	return c.writeFrame(nil, f)
}

// AckReceipt acknowledges msg and waits for the server's RECEIPT, after
// which the server will not redeliver it.
func (c *Conn) AckReceipt(ctx context.Context, msg *frame.Frame, headers ...frame.Header) error {
	f, err := c.ackFrame(frame.ACK, msg, headers)
	if err != nil {
		return err
	}
	return c.SendFrame(ctx, f, true)
}

// NackReceipt rejects msg (STOMP 1.1+) and waits for the server's RECEIPT.
func (c *Conn) NackReceipt(ctx context.Context, msg *frame.Frame, headers ...frame.Header) error {
	f, err := c.ackFrame(frame.NACK, msg, headers)
	if err != nil {
		return err
	}
	return c.SendFrame(ctx, f, true)
}

// Begin starts transaction tx without waiting. For a receipt use
// SendFrame(ctx, frame.New(frame.BEGIN, "transaction", tx), true).
func (c *Conn) Begin(tx string) error {
	return c.writeFrame(nil, frame.New(frame.BEGIN, "transaction", tx))
}

// Commit commits transaction tx without waiting; see Begin for receipts.
func (c *Conn) Commit(tx string) error {
	return c.writeFrame(nil, frame.New(frame.COMMIT, "transaction", tx))
}

// Abort rolls back transaction tx without waiting; see Begin for receipts.
func (c *Conn) Abort(tx string) error {
	return c.writeFrame(nil, frame.New(frame.ABORT, "transaction", tx))
}
