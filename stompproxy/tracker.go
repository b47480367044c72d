package stompproxy

import (
	"bytes"
	"container/list"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"handover/frame"
)

// The SEND headers the sidecar stamps. brokerd drops a SEND whose
// (producer, sequence) it has already persisted and answers its receipt
// all the same (brokerd.HeaderProducer, brokerd.HeaderSeq; a test checks the
// names agree), which is what makes a replayed SEND safe against brokerd.
const (
	HeaderProducer = "handover-producer"
	HeaderSeq      = "handover-seq"
)

// HeaderShutdown marks brokerd's ERROR to a client because the broker is
// shutting down (brokerd.HeaderShutdown): a failover, so the session is
// resumed on the next master, not ended as for an ERROR about the client.
const HeaderShutdown = "handover-shutdown"

// internalReceiptPrefix starts every receipt id the sidecar puts on frames
// it forwards. The broker's RECEIPT for such an id is translated back to the
// client's own receipt id, or swallowed when the client asked for none. The
// ids need escaping at no STOMP version (no colon, backslash or EOL), so
// they are written the same at every version, and the broker's RECEIPT for
// one is a plain frame (see frame.PeekPlain), which sendReceipt can take
// without parsing.
const internalReceiptPrefix = "handover-"

// deliveryCost is what one tracked delivery is charged against
// MaxReplayBytes on top of its ids: the struct, two list elements and a map
// entry.
const deliveryCost = 160

// kind says what a client frame awaiting its RECEIPT is, which decides what
// a resume does with it.
type kind uint8

const (
	kindSend        kind = iota // a SEND outside a transaction: re-sent with its stamp
	kindSubscribe               // replayed as part of its subscription
	kindUnsubscribe             // answered by the sidecar: the new master never had the subscription
	kindAck                     // an ACK or NACK the sidecar forwarded for tracked deliveries
	kindBegin                   // replayed with its transaction
	kindTxFrame                 // a SEND, ACK or NACK in a transaction: replayed with it
	kindCommit                  // outcome unknown if the connection dies first: an ERROR
	kindAbort                   // answered by the sidecar: the new master never had the transaction
	kindDisconnect              // re-sent, after everything it must follow
	kindOther                   // anything else with a receipt: re-sent
	kindLocal                   // an ACK or NACK of nothing tracked: answered by the sidecar on a resume
)

// record is a client frame the tracker keeps: until its RECEIPT comes back,
// or, inside a transaction, until the transaction ends.
type record struct {
	kind kind
	ord  uint64       // the client frame's position in the session, for replay order
	f    *frame.Frame // as forwarded, minus the receipt header; nil once not kept for replay
	size int          // bytes charged for f or wire

	// wire replaces f for a SEND that stampPlain took in wire form: the
	// frame as last sent, receipt header included. From tail on it is what
	// every send of it repeats byte for byte: the stamp, the client's other
	// headers and the body. nil once not kept for replay.
	wire []byte
	tail int

	// rid is the internal receipt id it was last sent with, "" when no
	// RECEIPT is awaited (never asked for, already back, or not sent).
	rid string
	// client is the client's own receipt id, when hasClient.
	client    string
	hasClient bool
	replayed  bool // sent again by a resume: its RECEIPT means a duplicate was dropped or never made

	sub     *subState
	tx      *txState
	settles []*delivery // kindAck: the deliveries its RECEIPT settles
	txAck   *delivery   // kindTxFrame ACK or NACK: the delivery it names, if tracked
	held    bool        // kindTxFrame: waiting for txAck's redelivery, not sent
	since   time.Time   // when held began
}

// subState is an active subscription.
type subState struct {
	id      string
	ord     uint64
	f       *frame.Frame // the SUBSCRIBE, minus receipt; nil once not kept
	size    int
	mode    string // auto, client or client-individual
	durable bool   // false for a plain /topic/ subscription: nothing is redelivered
	rec     *record

	// deliveries holds the tracked deliveries in the order the client got
	// them, which is what a cumulative ACK from the client covers.
	deliveries list.List
	// upOrder holds the deliveries made by the current upstream connection
	// in its order, which is what a cumulative ACK to the broker covers.
	upOrder list.List
	// stale holds, by message-id, deliveries made before the last upstream
	// loss whose redelivery has not been seen yet.
	stale map[string]*delivery
}

// delivery is a MESSAGE passed to the client on a subscription that needs
// acknowledgement, and not settled yet.
type delivery struct {
	sub   *subState
	msgID string
	key   string // what the client acknowledges it by: the ack header (1.2) or message-id
	upKey string // what the current upstream knows it by; "" while stale

	stale  bool // delivered before the last upstream loss, no redelivery seen since
	orphan bool // stale on a subscription that redelivers nothing: answered locally

	verdict   string       // "", ACK or NACK: what the client said, not yet settled
	tmpl      *frame.Frame // the client's ACK or NACK frame, minus receipt
	since     time.Time    // when the verdict began waiting for a redelivery
	forwarded bool         // the verdict went to the current upstream; its RECEIPT is awaited
	waiters   []*waiter
	txHold    *record // a transactional ACK or NACK waiting for the redelivery

	ce, ue  *list.Element // in sub.deliveries and sub.upOrder
	n       uint64        // the session's count of deliveries at this one: client order
	settled bool
}

// waiter is a client receipt answered once n deliveries have settled.
type waiter struct {
	receipt string
	n       int
}

// txState is an open transaction.
type txState struct {
	id        string
	begin     *record
	frames    []*record
	holds     int     // frames held for a redelivery; the COMMIT waits for them
	commit    *record // the client's COMMIT, held or sent
	committed bool    // the COMMIT was sent; its RECEIPT decides the outcome
}

// upFrame is one frame for the broker: f, to encode, or wire, a frame
// already in wire form (a SEND that stampPlain took).
type upFrame struct {
	f    *frame.Frame
	wire []byte
}

// actions are what the session must do after the tracker saw a frame: the
// frames to send upstream and to the client, in order.
type actions struct {
	up     []upFrame
	client []*frame.Frame
	// pass is the broker's frame to pass to the client (translated), nil
	// when it is swallowed.
	pass *frame.Frame
	// Counters for Status and metrics.
	suppressed int // redeliveries of pre-failover deliveries not passed on
	replayed   int // frames re-sent by a resume
	confirmed  int // replayed SENDs whose RECEIPT came back
}

func (a *actions) send(f *frame.Frame) { a.up = append(a.up, upFrame{f: f}) }

func (a *actions) receipt(id string) {
	a.client = append(a.client, frame.New(frame.RECEIPT, "receipt-id", id))
}

// tracker is one session's memory of its STOMP conversation: everything a
// new master must be told to carry the session on, and what the client
// already has. It does no I/O and has no lock; the session serializes calls.
type tracker struct {
	producer string        // handover-producer of this session's SENDs
	limit    int           // MaxReplayBytes
	holdFor  time.Duration // how long a verdict waits for its redelivery

	connect *frame.Frame
	version frame.Version

	seq uint64 // last handover-seq stamped
	ord uint64 // client frames seen
	rid uint64 // internal receipts issued
	dn  uint64 // deliveries tracked

	subs     map[string]*subState
	acks     map[string]*delivery // by the client's key
	inflight map[string]*record   // by internal receipt id
	txs      map[string]*txState

	// resend and local are what lost collected for the next replay: records
	// to send again and client receipts to answer.
	resend []*record
	local  []*record

	bytes int
	// unresumable is set, for good, when bytes went over limit: from then
	// on nothing new is kept, and the next upstream loss ends the session.
	unresumable   bool
	disconnecting bool    // the client sent DISCONNECT
	disc          *record // its record while its RECEIPT is awaited
	errored       bool    // the broker sent ERROR: the session ends
}

func newTracker(producer string, limit int, holdFor time.Duration) *tracker {
	return &tracker{
		producer: producer,
		limit:    limit,
		holdFor:  holdFor,
		version:  frame.V10,
		subs:     map[string]*subState{},
		acks:     map[string]*delivery{},
		inflight: map[string]*record{},
		txs:      map[string]*txState{},
	}
}

// frameSize approximates the memory a kept frame costs.
func frameSize(f *frame.Frame) int {
	n := len(f.Command) + len(f.Body) + 48
	for _, h := range f.Headers {
		n += len(h.Key) + len(h.Value) + 32
	}
	return n
}

// strip returns a copy of f's headers without receipt (the body is shared:
// frames are never modified in place).
func strip(f *frame.Frame) *frame.Frame {
	g := &frame.Frame{Command: f.Command, Headers: make([]frame.Header, 0, len(f.Headers)+2), Body: f.Body}
	for _, h := range f.Headers {
		if h.Key != "receipt" && h.Key != "content-length" {
			g.Headers = append(g.Headers, h)
		}
	}
	return g
}

// withHeader returns a copy of f with key set to value.
func withHeader(f *frame.Frame, key, value string) *frame.Frame {
	g := &frame.Frame{Command: f.Command, Headers: make([]frame.Header, len(f.Headers), len(f.Headers)+1), Body: f.Body}
	copy(g.Headers, f.Headers)
	g.Set(key, value)
	return g
}

// charge adds n bytes to what the session keeps; over the limit the session
// stops being resumable and lets go of its replay copies.
func (t *tracker) charge(n int) {
	t.bytes += n
	if t.bytes > t.limit && !t.unresumable {
		t.giveUp()
	}
}

// giveUp makes the session unresumable and frees what only a resume would
// need: frame copies and transactions. Deliveries stay: acknowledgements
// still need translating if an earlier failover changed their ack ids.
func (t *tracker) giveUp() {
	t.unresumable = true
	drop := func(r *record) {
		if r != nil && (r.f != nil || r.wire != nil) {
			t.bytes -= r.size
			r.f, r.wire, r.size = nil, nil, 0
		}
	}
	for _, r := range t.inflight {
		drop(r)
	}
	for _, s := range t.subs {
		if s.f != nil {
			t.bytes -= s.size
			s.f, s.size = nil, 0
		}
	}
	for id, tx := range t.txs {
		if tx.holds > 0 {
			continue // its held frames still go out when their redeliveries come
		}
		drop(tx.begin)
		for _, r := range tx.frames {
			drop(r)
		}
		delete(t.txs, id)
	}
}

// keep records f (minus receipt) on r, charging it, unless the session is
// no longer resumable.
func (t *tracker) keep(r *record, f *frame.Frame) {
	r.f = strip(f)
	if t.unresumable {
		return
	}
	r.size = frameSize(r.f)
	t.charge(r.size)
}

// release uncharges r's frame.
func (t *tracker) release(r *record) {
	t.bytes -= r.size
	r.size = 0
}

// newRecord starts a record for the client frame f, noting its receipt.
func (t *tracker) newRecord(k kind, f *frame.Frame) *record {
	r := &record{kind: k, ord: t.ord}
	r.client, r.hasClient = f.Get("receipt")
	return r
}

// emit returns base (a frame without receipt) with a fresh internal receipt
// id, and registers r as awaiting it.
func (t *tracker) emit(r *record, base *frame.Frame) *frame.Frame {
	t.await(r)
	return withHeader(base, "receipt", r.rid)
}

// await gives r a fresh internal receipt id and registers it as awaiting
// that id's RECEIPT.
func (t *tracker) await(r *record) {
	t.rid++
	r.rid = internalReceiptPrefix + strconv.FormatUint(t.rid, 10)
	t.inflight[r.rid] = r
}

// wireHead starts a SEND in wire form, up to its receipt id.
const wireHead = frame.SEND + "\nreceipt:"

// stampPlain is fromClient for a receipted SEND in wire form, which
// session.pickPlain picked: plain (see frame.PeekPlain), outside a
// transaction, with no stamp of its own. hdrs are its header lines, rest
// its blank line, body and NUL. It returns what to send: the internal
// receipt and the stamp spliced in after the command line, then the
// client's headers but receipt, and rest, as the client wrote them. That
// means to the broker what fromClient's re-encoded Frame means (a plain
// frame means the same at every version, so its receipt value is what Read
// would make of it, and neither the stamp nor the receipt id needs escaping
// at any), and spares a producer's every receipted SEND a parse, three
// copies and an encoding. Once the session is unresumable it returns nil,
// having done nothing: the frame must go through fromClient, which passes
// it on unstamped.
func (t *tracker) stampPlain(hdrs, rest []byte) []byte {
	if t.unresumable {
		return nil
	}
	t.ord++
	t.seq++
	r := &record{kind: kindSend, ord: t.ord}
	t.await(r)
	w := make([]byte, 0, len(wireHead)+len(r.rid)+len(HeaderProducer)+len(t.producer)+len(HeaderSeq)+32+len(hdrs)+len(rest))
	w = append(w, wireHead...)
	w = append(w, r.rid...)
	w = append(w, '\n')
	r.tail = len(w)
	w = append(w, HeaderProducer+":"...)
	w = append(w, t.producer...)
	w = append(w, "\n"+HeaderSeq+":"...)
	w = strconv.AppendUint(w, t.seq, 10)
	w = append(w, '\n')
	for len(hdrs) > 0 {
		line := hdrs[:bytes.IndexByte(hdrs, '\n')+1]
		hdrs = hdrs[len(line):]
		if v, ok := bytes.CutPrefix(line, []byte("receipt:")); ok {
			if !r.hasClient { // the first wins (STOMP 1.2 "Repeated Header Entries")
				r.client, r.hasClient = string(v[:len(v)-1]), true
			}
			continue
		}
		w = append(w, line...)
	}
	w = append(w, rest...)
	r.wire, r.size = w, len(w)+48
	t.charge(r.size) // over the limit, giveUp lets go of r.wire too: r is in inflight
	return w
}

// rewire renders r, a SEND stampPlain took, for a new master: byte for byte
// as first sent but for a fresh internal receipt id.
func (t *tracker) rewire(r *record) []byte {
	t.await(r)
	w := make([]byte, 0, len(wireHead)+len(r.rid)+1+len(r.wire)-r.tail)
	w = append(w, wireHead...)
	w = append(w, r.rid...)
	w = append(w, '\n')
	tail := len(w)
	r.wire, r.tail = append(w, r.wire[r.tail:]...), tail
	return r.wire
}

// sendReceipt is fromBroker for a RECEIPT with the internal receipt id id
// and nothing else, without parsing it: when id is a SEND's outside a
// transaction (the bulk of a producer's receipts) it settles that SEND and
// returns its record, whose client receipt the session answers. Otherwise it
// returns nil, having done nothing, and the frame must go through
// fromBroker.
func (t *tracker) sendReceipt(id []byte) *record {
	r := t.inflight[string(id)]
	if r == nil || r.kind != kindSend {
		return nil
	}
	delete(t.inflight, r.rid)
	r.rid = ""
	t.release(r)
	return r
}

// ackKey is what an ACK or NACK names its message by at version v.
func ackKey(f *frame.Frame, v frame.Version) string {
	if v == frame.V12 {
		return f.Value("id")
	}
	return f.Value("message-id")
}

// rekey returns the client's ACK or NACK template naming upKey instead.
func rekey(tmpl *frame.Frame, upKey string, v frame.Version) *frame.Frame {
	if v == frame.V12 {
		return withHeader(tmpl, "id", upKey)
	}
	return withHeader(tmpl, "message-id", upKey)
}

// fromClient takes in a frame from the client and says what to send.
func (t *tracker) fromClient(f *frame.Frame, now time.Time) actions {
	var a actions
	t.ord++
	if t.connect == nil && (f.Command == frame.CONNECT || f.Command == frame.STOMP) {
		t.connect = f
		t.charge(frameSize(f))
		a.send(f)
		return a
	}
	if tx := f.Value("transaction"); tx != "" && (f.Command == frame.SEND || f.Command == frame.ACK || f.Command == frame.NACK) {
		t.txFrame(f, tx, &a, now)
		return a
	}
	switch f.Command {
	case frame.SEND:
		if _, ok := f.Get("receipt"); !ok || t.unresumable {
			// Never kept, so never replayed, so never a duplicate: the
			// stamp would only cost the broker a window update.
			a.send(f)
			return a
		}
		t.seq++
		g := withHeader(f, HeaderProducer, t.producer)
		g.Set(HeaderSeq, strconv.FormatUint(t.seq, 10))
		t.forward(kindSend, g, true, &a)
	case frame.SUBSCRIBE:
		t.subscribe(f, &a)
	case frame.UNSUBSCRIBE:
		id, ok := f.Get("id")
		if !ok {
			id = f.Value("destination") // STOMP 1.0 names subscriptions by destination
		}
		if s := t.subs[id]; s != nil {
			t.dropSub(s, &a)
		}
		t.forward(kindUnsubscribe, f, false, &a)
	case frame.ACK, frame.NACK:
		t.ack(f, &a, now)
	case frame.BEGIN:
		t.begin(f, &a)
	case frame.COMMIT:
		t.commit(f, &a)
	case frame.ABORT:
		if tx := t.txs[f.Value("transaction")]; tx != nil {
			t.dropTx(tx)
		}
		t.forward(kindAbort, f, false, &a)
	case frame.DISCONNECT:
		t.disconnecting = true
		t.disc = t.forward(kindDisconnect, f, true, &a)
	default:
		t.forward(kindOther, f, true, &a)
	}
	return a
}

// forward sends f on. With a receipt (and while resumable) a record awaits
// it; keep says whether a resume would re-send f, so it must be kept.
func (t *tracker) forward(k kind, f *frame.Frame, keep bool, a *actions) *record {
	if _, ok := f.Get("receipt"); !ok || t.unresumable {
		a.send(f)
		return nil
	}
	r := t.newRecord(k, f)
	base := strip(f)
	if keep {
		t.keep(r, f)
		base = r.f
	}
	a.send(t.emit(r, base))
	if t.unresumable && r.f != nil {
		// This very frame took the session over its limit: let it go
		// too, as giveUp did the others.
		t.release(r)
		r.f = nil
	}
	return r
}

func (t *tracker) subscribe(f *frame.Frame, a *actions) {
	id, ok := f.Get("id")
	if !ok {
		id = f.Value("destination")
	}
	if _, dup := t.subs[id]; dup {
		a.send(f) // the broker answers the client's mistake
		return
	}
	mode := f.Value("ack")
	if mode == "" {
		mode = "auto"
	}
	dest := f.Value("destination")
	s := &subState{
		id:    id,
		ord:   t.ord,
		mode:  mode,
		stale: map[string]*delivery{},
		// ActiveMQ and brokerd keep nothing of a plain topic subscription
		// for a new connection; a named (durable) one is redelivered.
		durable: !strings.HasPrefix(dest, "/topic/") || f.Value("activemq.subscriptionName") != "" || f.Value("durable-subscription-name") != "",
	}
	t.subs[id] = s
	if !t.unresumable {
		s.f = strip(f)
		s.size = frameSize(s.f)
	}
	if r := t.forward(kindSubscribe, f, false, a); r != nil {
		r.sub, s.rec = s, r
	}
	t.charge(s.size)
}

// dropSub forgets a subscription the client ended. Verdicts already
// forwarded settle when their RECEIPT comes; those still waiting for a
// redelivery will never get one on this subscription, so their receipts
// are answered now.
func (t *tracker) dropSub(s *subState, a *actions) {
	delete(t.subs, s.id)
	t.bytes -= s.size
	s.rec = nil // a pending receipt for its SUBSCRIBE is answered locally on a resume
	for e := s.deliveries.Front(); e != nil; {
		d := e.Value.(*delivery)
		e = e.Next()
		if d.forwarded {
			continue
		}
		t.settle(d, a)
	}
}

// ack handles a client's ACK or NACK outside a transaction.
func (t *tracker) ack(f *frame.Frame, a *actions, now time.Time) {
	d := t.acks[ackKey(f, t.version)]
	if d == nil || d.verdict != "" {
		// Nothing tracked (an auto subscription, a repeated ACK, a session
		// over its limit): the broker judges it as it would without us.
		t.forward(kindLocal, f, false, a)
		return
	}
	s := d.sub
	var w *waiter
	if id, ok := f.Get("receipt"); ok {
		w = &waiter{receipt: id}
	}
	tmpl := strip(f)
	if f.Command == frame.NACK || s.mode != "client" {
		// NACK names one message in every mode (STOMP 1.2 "NACK", and
		// brokerd requeues just that one).
		t.verdict(d, f.Command, tmpl, w, now)
		if w != nil {
			w.n = 1
		}
		t.push(d, a)
		return
	}
	// Ack mode client: the ACK covers every delivery the client got on
	// this subscription up to this one (STOMP 1.2 "SUBSCRIBE ack Header").
	var covered []*delivery
	for e := s.deliveries.Front(); e != nil; e = e.Next() {
		c := e.Value.(*delivery)
		if c.verdict == "" {
			covered = append(covered, c)
		}
		if c == d {
			break
		}
	}
	for _, c := range covered {
		t.verdict(c, frame.ACK, tmpl, w, now)
	}
	if w != nil {
		w.n = len(covered)
	}
	for _, c := range covered {
		if c.orphan {
			t.settle(c, a)
		}
	}
	t.flushCumulative(s, a)
}

func (t *tracker) verdict(d *delivery, cmd string, tmpl *frame.Frame, w *waiter, now time.Time) {
	d.verdict, d.tmpl = cmd, tmpl
	if w != nil {
		d.waiters = append(d.waiters, w)
	}
	if d.stale {
		d.since = now
	}
}

// push forwards d's verdict on its own, once the current upstream knows d;
// an orphan's verdict is moot and settles at once.
func (t *tracker) push(d *delivery, a *actions) {
	switch {
	case d.orphan:
		t.settle(d, a)
	case d.upKey == "" || d.forwarded:
	default:
		d.forwarded = true
		r := &record{kind: kindAck, ord: t.ord, settles: []*delivery{d}}
		a.send(t.emit(r, rekey(d.tmpl, d.upKey, t.version)))
	}
}

// flushCumulative forwards, for ack mode client, one cumulative ACK for the
// longest run at the head of the upstream's delivery order that the client
// has acknowledged. The broker's cumulative ACK covers its own delivery
// order, which after a failover may differ from the client's: forwarding
// only an all-acknowledged prefix never acknowledges a message the client
// has not.
func (t *tracker) flushCumulative(s *subState, a *actions) {
	var run []*delivery
	for e := s.upOrder.Front(); e != nil; e = e.Next() {
		d := e.Value.(*delivery)
		if d.forwarded {
			continue
		}
		if d.verdict != frame.ACK {
			break
		}
		run = append(run, d)
	}
	if len(run) == 0 {
		return
	}
	last := run[len(run)-1]
	for _, d := range run {
		d.forwarded = true
	}
	r := &record{kind: kindAck, ord: t.ord, settles: run}
	a.send(t.emit(r, rekey(last.tmpl, last.upKey, t.version)))
}

// settle forgets d: its verdict is done (or moot), so its client receipts
// may be answered.
func (t *tracker) settle(d *delivery, a *actions) {
	if d.settled {
		return
	}
	d.settled = true
	s := d.sub
	if d.ce != nil {
		s.deliveries.Remove(d.ce)
		d.ce = nil
	}
	if d.ue != nil {
		s.upOrder.Remove(d.ue)
		d.ue = nil
	}
	if s.stale[d.msgID] == d {
		delete(s.stale, d.msgID)
	}
	if t.acks[d.key] == d {
		delete(t.acks, d.key)
	}
	t.bytes -= deliveryCost + len(d.key) + len(d.msgID)
	for _, w := range d.waiters {
		if w.n--; w.n == 0 {
			a.receipt(w.receipt)
		}
	}
	d.waiters = nil
	if r := d.txHold; r != nil {
		// The redelivery will never come here: the ACK is moot.
		d.txHold = nil
		t.unhold(r, a)
		r.tx.frames = slices.DeleteFunc(r.tx.frames, func(x *record) bool { return x == r })
		t.release(r)
		if r.hasClient {
			a.receipt(r.client)
		}
	}
}

// txFrame handles a SEND, ACK or NACK inside a transaction. The broker
// applies them only at COMMIT, so they are kept until the transaction ends:
// a resume replays BEGIN and all of them. SENDs in a transaction are not
// stamped: they are replayed only when their COMMIT was never sent, so
// cannot be duplicates, and a stamp taken now would fall behind the stamps
// of later SENDs outside the transaction, which brokerd would then take for
// a replay.
func (t *tracker) txFrame(f *frame.Frame, id string, a *actions, now time.Time) {
	tx := t.txs[id]
	if tx == nil || t.unresumable && tx.holds == 0 {
		t.forward(kindLocal, f, false, a)
		return
	}
	r := t.newRecord(kindTxFrame, f)
	r.tx = tx
	if f.Command != frame.SEND {
		r.txAck = t.acks[ackKey(f, t.version)]
		if d := r.txAck; d != nil && d.orphan {
			// Nothing on the new master to acknowledge.
			if r.hasClient {
				a.receipt(r.client)
			}
			return
		}
	}
	t.keep(r, f)
	tx.frames = append(tx.frames, r)
	if d := r.txAck; d != nil && d.upKey == "" {
		t.hold(r, d, now)
		return
	}
	a.send(t.sendTx(r))
}

// hold parks the transactional ACK or NACK r until d is redelivered.
func (t *tracker) hold(r *record, d *delivery, now time.Time) {
	r.held, r.since = true, now
	d.txHold = r
	r.tx.holds++
}

// unhold ends r's wait, and sends its transaction's COMMIT if that was
// waiting for r alone.
func (t *tracker) unhold(r *record, a *actions) {
	r.held = false
	tx := r.tx
	tx.holds--
	if tx.holds == 0 && tx.commit != nil && !tx.committed {
		tx.committed = true
		a.send(t.emit(tx.commit, tx.commit.f))
	}
}

// sendTx renders a transaction frame for the current upstream.
func (t *tracker) sendTx(r *record) *frame.Frame {
	g := r.f // kept for as long as its transaction is tracked (see giveUp)
	if d := r.txAck; d != nil && d.upKey != "" {
		g = rekey(g, d.upKey, t.version)
	}
	if r.hasClient {
		return t.emit(r, g)
	}
	return g
}

func (t *tracker) begin(f *frame.Frame, a *actions) {
	id := f.Value("transaction")
	if _, open := t.txs[id]; open || id == "" || t.unresumable {
		t.forward(kindLocal, f, false, a)
		return
	}
	tx := &txState{id: id}
	t.txs[id] = tx
	r := t.newRecord(kindBegin, f)
	r.tx = tx
	t.keep(r, f)
	tx.begin = r
	if r.hasClient {
		a.send(t.emit(r, r.f))
	} else {
		a.send(r.f)
	}
}

// commit sends the COMMIT, always with a receipt: if the connection dies
// before it comes back, the outcome is unknown, and the client must be told
// rather than have the transaction silently applied twice or not at all.
func (t *tracker) commit(f *frame.Frame, a *actions) {
	tx := t.txs[f.Value("transaction")]
	if tx == nil {
		t.forward(kindLocal, f, false, a)
		return
	}
	r := t.newRecord(kindCommit, f)
	r.tx = tx
	r.f = strip(f)
	tx.commit = r
	if tx.holds > 0 {
		return // sent by unhold once the held acknowledgements are out
	}
	tx.committed = true
	a.send(t.emit(r, r.f))
}

// dropTx forgets a transaction the client aborted.
func (t *tracker) dropTx(tx *txState) {
	delete(t.txs, tx.id)
	if tx.begin != nil {
		t.release(tx.begin)
	}
	for _, r := range tx.frames {
		t.release(r)
		if d := r.txAck; d != nil && d.txHold == r {
			d.txHold = nil
		}
	}
}

// endTx settles a committed transaction: its acknowledgements took effect.
func (t *tracker) endTx(tx *txState, a *actions) {
	t.dropTx(tx)
	for _, r := range tx.frames {
		d := r.txAck
		if d == nil || d.settled {
			continue
		}
		if r.f != nil && r.f.Command == frame.ACK && d.sub.mode == "client" {
			for e := d.sub.deliveries.Front(); e != nil; {
				c := e.Value.(*delivery)
				e = e.Next()
				t.settle(c, a)
				if c == d {
					break
				}
			}
			continue
		}
		t.settle(d, a)
	}
}

// fromBroker takes in a frame from the broker and says what to pass on.
func (t *tracker) fromBroker(f *frame.Frame, now time.Time) actions {
	var a actions
	switch f.Command {
	case frame.CONNECTED:
		if v := f.Value("version"); v != "" {
			t.version = frame.Version(v)
		}
		a.pass = f
	case frame.MESSAGE:
		t.message(f, &a)
	case frame.RECEIPT:
		t.receipt(f, &a)
	case frame.ERROR:
		t.errored = true
		a.pass = f
		if id, ok := f.Get("receipt-id"); ok {
			if r := t.inflight[id]; r != nil {
				delete(t.inflight, id)
				if r.hasClient {
					a.pass = withHeader(f, "receipt-id", r.client)
				} else {
					a.pass = f.Clone()
					a.pass.Del("receipt-id")
				}
			}
		}
	default:
		a.pass = f
	}
	return a
}

// message tracks a delivery, or recognizes the redelivery of one the
// client already has: that one is not passed on again, and whatever the
// client said about it goes to the broker under its new ack id.
func (t *tracker) message(f *frame.Frame, a *actions) {
	a.pass = f
	id, ok := f.Get("subscription")
	var s *subState
	if ok {
		s = t.subs[id]
	} else {
		// Some 1.0 brokers omit it; a 1.0 subscription is named by its
		// destination anyway.
		s = t.subs[f.Value("destination")]
	}
	if s == nil || s.mode == "auto" {
		return
	}
	msgID := f.Value("message-id")
	upKey := msgID
	if t.version == frame.V12 {
		upKey = f.Value("ack")
	}
	if upKey == "" || msgID == "" {
		return
	}
	if d := s.stale[msgID]; d != nil {
		delete(s.stale, msgID)
		d.stale, d.upKey = false, upKey
		d.ue = s.upOrder.PushBack(d)
		a.pass = nil
		a.suppressed++
		if r := d.txHold; r != nil {
			d.txHold = nil
			a.send(t.sendTx(r))
			t.unhold(r, a)
		}
		switch {
		case d.verdict == frame.ACK && s.mode == "client":
			t.flushCumulative(s, a)
		case d.verdict != "":
			t.push(d, a)
		}
		return
	}
	if t.unresumable {
		return // keep nothing new; the broker's own ids work as they are
	}
	key := upKey
	t.dn++
	d := &delivery{sub: s, msgID: msgID, key: key, upKey: upKey, n: t.dn}
	d.ce = s.deliveries.PushBack(d)
	d.ue = s.upOrder.PushBack(d)
	// A NACKed message can come back before the NACK's RECEIPT: the newer
	// delivery takes the key; the older settles by its record.
	t.acks[key] = d
	t.charge(deliveryCost + len(key) + len(msgID))
}

func (t *tracker) receipt(f *frame.Frame, a *actions) {
	id := f.Value("receipt-id")
	r := t.inflight[id]
	if r == nil {
		a.pass = f
		return
	}
	delete(t.inflight, id)
	r.rid = ""
	if r == t.disc {
		t.disc = nil
	}
	if r.hasClient {
		a.pass = withHeader(f, "receipt-id", r.client)
	}
	switch r.kind {
	case kindSend:
		if r.replayed {
			a.confirmed++
		}
		t.release(r)
	case kindSubscribe:
		if r.sub.rec == r {
			r.sub.rec = nil
		}
	case kindAck:
		// In the client's order, so its receipts come back in the order
		// it sent its ACKs.
		slices.SortFunc(r.settles, func(x, y *delivery) int { return cmpOrd(x.n, y.n) })
		for _, d := range r.settles {
			t.settle(d, a)
		}
	case kindBegin, kindTxFrame:
		// Confirmed: a replay sends it without asking again.
		r.hasClient = false
	case kindCommit:
		t.endTx(r.tx, a)
	default:
		t.release(r)
	}
}

// lost is called when the upstream connection is gone. It returns, when the
// session cannot be resumed, why, and the ERROR to send the client (nil
// for a plain close). Otherwise it turns everything per-connection into
// what replay will need.
func (t *tracker) lost(now time.Time) (fatal *frame.Frame, why string) {
	if t.unresumable {
		return nil, reasonOverLimit
	}
	for _, tx := range t.txs {
		if tx.committed {
			c := tx.commit
			msg := fmt.Sprintf("transaction %q: the broker connection was lost before the COMMIT was confirmed; it may or may not have been applied", tx.id)
			e := frame.New(frame.ERROR, "message", msg, "content-type", "text/plain")
			if c.hasClient {
				e.Set("receipt-id", c.client)
			}
			e.Body = []byte(msg + ". The sidecar will not send it again: check the transaction's effects before retrying.\n")
			return e, reasonCommitUnknown
		}
	}
	records := make([]*record, 0, len(t.inflight))
	for _, r := range t.inflight {
		records = append(records, r)
	}
	t.inflight = map[string]*record{}
	slices.SortFunc(records, func(x, y *record) int { return cmpOrd(x.ord, y.ord) })
	for _, r := range records {
		r.rid = ""
		switch r.kind {
		case kindSend, kindDisconnect, kindOther:
			t.resend = append(t.resend, r)
		case kindSubscribe:
			if r.sub.rec != r {
				t.local = append(t.local, r)
			}
		case kindUnsubscribe, kindAbort, kindLocal:
			t.local = append(t.local, r)
		case kindAck, kindBegin, kindTxFrame:
			// Deliveries keep their verdicts; transactions keep their frames.
		}
	}
	var a actions // orphans settled here answer their receipts at replay
	for _, s := range t.subs {
		s.upOrder.Init()
		for e := s.deliveries.Front(); e != nil; {
			d := e.Value.(*delivery)
			e = e.Next()
			d.ue, d.forwarded, d.upKey = nil, false, ""
			if !s.durable {
				d.orphan = true
				if d.verdict != "" {
					t.settle(d, &a)
				}
				continue
			}
			if !d.stale {
				d.stale = true
				s.stale[d.msgID] = d
				if d.verdict != "" {
					d.since = now
				}
			}
		}
	}
	for _, f := range a.client {
		t.local = append(t.local, &record{kind: kindLocal, hasClient: true, client: f.Value("receipt-id")})
	}
	return nil, ""
}

// replay returns what to send a new master after its CONNECTED, in order:
// every SUBSCRIBE, then the transactions open and the frames still awaiting
// their RECEIPT, in the order the client sent them; and the receipts the
// sidecar answers itself.
func (t *tracker) replay(now time.Time) actions {
	var a actions
	subs := make([]*subState, 0, len(t.subs))
	for _, s := range t.subs {
		subs = append(subs, s)
	}
	slices.SortFunc(subs, func(x, y *subState) int { return cmpOrd(x.ord, y.ord) })
	for _, s := range subs {
		if s.rec != nil {
			s.rec.replayed = true
			a.send(t.emit(s.rec, s.f))
		} else {
			a.send(s.f)
		}
	}

	type item struct {
		ord uint64
		r   *record
		tx  *txState
	}
	var items []item
	for _, r := range t.resend {
		items = append(items, item{ord: r.ord, r: r})
	}
	for _, tx := range t.txs {
		items = append(items, item{ord: tx.begin.ord, tx: tx})
	}
	slices.SortFunc(items, func(x, y item) int { return cmpOrd(x.ord, y.ord) })
	for _, it := range items {
		if it.r != nil {
			it.r.replayed = true
			if it.r.wire != nil {
				a.up = append(a.up, upFrame{wire: t.rewire(it.r)})
			} else {
				a.send(t.emit(it.r, it.r.f))
			}
			continue
		}
		tx := it.tx
		if tx.begin.hasClient {
			a.send(t.emit(tx.begin, tx.begin.f))
		} else {
			a.send(tx.begin.f)
		}
		kept := tx.frames[:0]
		for _, r := range tx.frames {
			if d := r.txAck; d != nil && d.orphan {
				// Its message will not be redelivered: nothing to acknowledge.
				t.release(r)
				if r.hasClient {
					a.receipt(r.client)
				}
				continue
			}
			kept = append(kept, r)
			if r.held {
				continue
			}
			if d := r.txAck; d != nil && d.upKey == "" {
				t.hold(r, d, now)
				continue
			}
			a.send(t.sendTx(r))
		}
		tx.frames = kept
	}
	a.replayed = len(a.up)
	for _, r := range t.local {
		if r.hasClient {
			a.receipt(r.client)
		}
	}
	t.resend, t.local = nil, nil
	return a
}

// expire settles verdicts that waited longer than holdFor for a redelivery
// that is not coming (the message went to another consumer, or was not
// persistent and died with the old master): there is nothing left to
// acknowledge, so their receipts are answered.
func (t *tracker) expire(now time.Time) actions {
	var a actions
	for _, s := range t.subs {
		for _, d := range s.stale {
			switch {
			case d.verdict != "" && now.Sub(d.since) >= t.holdFor:
				t.settle(d, &a)
			case d.txHold != nil && now.Sub(d.txHold.since) >= t.holdFor:
				r := d.txHold
				d.txHold = nil
				t.unhold(r, &a)
				r.tx.frames = slices.DeleteFunc(r.tx.frames, func(x *record) bool { return x == r })
				t.release(r)
				if r.hasClient {
					a.receipt(r.client)
				}
			}
		}
	}
	return a
}

// disconnected reports whether the client said goodbye and the broker
// confirmed it (or was not asked to): an upstream close is then the end.
func (t *tracker) disconnected() bool { return t.disconnecting && t.disc == nil }

// waiting reports whether anything waits for a redelivery, so expire is
// worth calling.
func (t *tracker) waiting() bool {
	for _, s := range t.subs {
		if len(s.stale) > 0 {
			return true
		}
	}
	return false
}

func cmpOrd(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
