package stompproxy

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"handover/frame"
)

var t0 = time.Unix(1_700_000_000, 0)

func fr(cmd string, kv ...string) *frame.Frame { return frame.New(cmd, kv...) }

// connected returns a tracker past CONNECT/CONNECTED at version v.
func connected(t *testing.T, v frame.Version) *tracker {
	t.Helper()
	tr := newTracker("prod-1", 1<<20, 10*time.Second)
	a := tr.fromClient(fr(frame.CONNECT, "accept-version", "1.0,1.1,1.2", "host", "/"), t0)
	if len(a.up) != 1 || ups(t, a)[0].Command != frame.CONNECT {
		t.Fatalf("CONNECT not forwarded: %+v", ups(t, a))
	}
	a = tr.fromBroker(fr(frame.CONNECTED, "version", string(v)), t0)
	if a.pass == nil || tr.version != v {
		t.Fatalf("CONNECTED not passed or version %q not taken", tr.version)
	}
	return tr
}

// ups returns the frames a sends upstream, those in wire form decoded.
func ups(t *testing.T, a actions) []*frame.Frame {
	t.Helper()
	fs := make([]*frame.Frame, len(a.up))
	for i, u := range a.up {
		if fs[i] = u.f; u.wire != nil {
			fs[i] = decode(t, u.wire)
		}
	}
	return fs
}

// decode parses the single frame b holds, at STOMP 1.2.
func decode(t *testing.T, b []byte) *frame.Frame {
	t.Helper()
	return decodeAt(t, b, frame.V12)
}

// decodeAt parses the single frame b holds at version v.
func decodeAt(t *testing.T, b []byte, v frame.Version) *frame.Frame {
	t.Helper()
	r := frame.NewReader(bytes.NewReader(b), frame.Limits{MaxBody: -1, MaxHeaders: -1})
	r.SetVersion(v)
	f, err := r.Read()
	if err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	if g, err := r.Read(); err != io.EOF {
		t.Fatalf("%q holds more than one frame: %v %v", b, g, err)
	}
	return f
}

// one asserts a produced exactly one upstream frame and nothing for the
// client, and returns it.
func one(t *testing.T, a actions) *frame.Frame {
	t.Helper()
	up := ups(t, a)
	if len(up) != 1 || len(a.client) != 0 {
		t.Fatalf("want one frame upstream and none to the client, got up=%v client=%v", up, a.client)
	}
	return up[0]
}

func none(t *testing.T, a actions) {
	t.Helper()
	if len(a.up) != 0 || len(a.client) != 0 {
		t.Fatalf("want nothing sent, got up=%v client=%v", ups(t, a), a.client)
	}
}

// receiptFor answers f's receipt as the broker would.
func receiptFor(t *testing.T, f *frame.Frame) *frame.Frame {
	t.Helper()
	id, ok := f.Get("receipt")
	if !ok {
		t.Fatalf("%v carries no receipt", f)
	}
	return fr(frame.RECEIPT, "receipt-id", id)
}

func msg(sub, id, ack string) *frame.Frame {
	f := fr(frame.MESSAGE, "subscription", sub, "message-id", id, "destination", "/queue/q")
	if ack != "" {
		f.Set("ack", ack)
	}
	return f
}

// clientReceipts returns the receipt-ids of RECEIPTs a sends to the client.
func clientReceipts(a actions) []string {
	var ids []string
	for _, f := range a.client {
		if f.Command == frame.RECEIPT {
			ids = append(ids, f.Value("receipt-id"))
		}
	}
	return ids
}

func commands(fs []*frame.Frame) string {
	var b []string
	for _, f := range fs {
		s := f.Command
		for _, k := range []string{"id", "destination", "transaction", HeaderSeq} {
			if v, ok := f.Get(k); ok && !(k == "destination" && f.Command == frame.SEND && f.Value("transaction") != "") {
				s += " " + k + "=" + v
			}
		}
		if _, ok := f.Get("receipt"); ok {
			s += " +r"
		}
		b = append(b, s)
	}
	return strings.Join(b, ", ")
}

func TestTrackerSendStamping(t *testing.T) {
	tr := connected(t, frame.V12)
	// Without a receipt a SEND is never kept, so never replayed: it goes
	// through as the client sent it, unstamped.
	in := fr(frame.SEND, "destination", "/queue/a")
	plain := one(t, tr.fromClient(in, t0))
	if plain != in || plain.Value(HeaderProducer) != "" || plain.Value(HeaderSeq) != "" {
		t.Fatalf("SEND without receipt changed: %v", plain)
	}
	if len(tr.inflight) != 0 {
		t.Fatal("a SEND without receipt was kept")
	}
	rec := one(t, tr.fromClient(fr(frame.SEND, "destination", "/queue/a", "receipt", "r-1"), t0))
	if rec.Value(HeaderProducer) != "prod-1" || rec.Value(HeaderSeq) != "1" || !strings.HasPrefix(rec.Value("receipt"), internalReceiptPrefix) {
		t.Fatalf("receipted SEND: %v", rec)
	}
	if tr.bytes == 0 {
		t.Fatal("kept SEND not charged")
	}
	a := tr.fromBroker(receiptFor(t, rec), t0)
	if a.pass == nil || a.pass.Value("receipt-id") != "r-1" {
		t.Fatalf("RECEIPT not translated to the client's id: %v", a.pass)
	}
	if len(tr.inflight) != 0 || tr.bytes != frameSize(tr.connect) {
		t.Fatalf("SEND still kept after its RECEIPT: %d inflight, %d bytes", len(tr.inflight), tr.bytes)
	}
	// A RECEIPT the sidecar did not ask for passes as it is.
	if a := tr.fromBroker(fr(frame.RECEIPT, "receipt-id", "other"), t0); a.pass.Value("receipt-id") != "other" {
		t.Fatal("foreign RECEIPT changed")
	}
	// Transactional SENDs are not stamped (see txFrame).
	one(t, tr.fromClient(fr(frame.BEGIN, "transaction", "t"), t0))
	txs := one(t, tr.fromClient(fr(frame.SEND, "destination", "/queue/a", "transaction", "t"), t0))
	if _, ok := txs.Get(HeaderSeq); ok {
		t.Fatalf("transactional SEND stamped: %v", txs)
	}
}

func TestTrackerSubscriptions(t *testing.T) {
	tr := connected(t, frame.V12)
	one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "s1", "destination", "/queue/a", "ack", "client-individual", "x-h", "1"), t0))
	sub2 := one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "s2", "destination", "/queue/b", "receipt", "rs2"), t0))
	one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "s3", "destination", "/queue/c"), t0))
	unsub := one(t, tr.fromClient(fr(frame.UNSUBSCRIBE, "id", "s3", "receipt", "ru3"), t0))
	if len(tr.subs) != 2 {
		t.Fatalf("%d subscriptions, want 2", len(tr.subs))
	}
	_ = sub2
	_ = unsub
	if fatal, why := tr.lost(t0); fatal != nil || why != "" {
		t.Fatalf("lost: %v %q", fatal, why)
	}
	a := tr.replay(t0)
	if got, want := commands(ups(t, a)), "SUBSCRIBE id=s1 destination=/queue/a, SUBSCRIBE id=s2 destination=/queue/b +r"; got != want {
		t.Fatalf("replay\n got %s\nwant %s", got, want)
	}
	if ups(t, a)[0].Value("x-h") != "1" || ups(t, a)[0].Value("ack") != "client-individual" {
		t.Fatalf("SUBSCRIBE headers not kept: %v", ups(t, a)[0])
	}
	// The UNSUBSCRIBE's receipt is answered by the sidecar (the new master
	// never had s3); the replayed SUBSCRIBE's comes from the broker.
	if got := clientReceipts(a); len(got) != 1 || got[0] != "ru3" {
		t.Fatalf("local receipts %v, want [ru3]", got)
	}
	if b := tr.fromBroker(receiptFor(t, ups(t, a)[1]), t0); b.pass.Value("receipt-id") != "rs2" {
		t.Fatalf("replayed SUBSCRIBE's receipt: %v", b.pass)
	}
	if a.replayed != 2 {
		t.Fatalf("replayed %d, want 2", a.replayed)
	}
}

// TestTrackerReplayPlan: SUBSCRIBEs first, then open transactions and
// frames awaiting RECEIPTs in client order, with their original stamps;
// confirmed frames are not re-sent, confirmed transaction frames are re-sent
// without asking for a receipt again.
func TestTrackerReplayPlan(t *testing.T) {
	tr := connected(t, frame.V12)
	var sent []*frame.Frame
	do := func(f *frame.Frame) *frame.Frame {
		g := one(t, tr.fromClient(f, t0))
		sent = append(sent, g)
		return g
	}
	a1 := do(fr(frame.SEND, "destination", "/queue/a", "receipt", "ra"))
	do(fr(frame.BEGIN, "transaction", "t1", "receipt", "rb"))
	tx1 := do(fr(frame.SEND, "destination", "/queue/t", "transaction", "t1", "receipt", "rt"))
	b := do(fr(frame.SEND, "destination", "/queue/b", "receipt", "rbb"))
	do(fr(frame.SEND, "destination", "/queue/nr")) // no receipt: not kept
	do(fr(frame.SUBSCRIBE, "id", "late", "destination", "/queue/s"))
	c := do(fr(frame.SEND, "destination", "/queue/c", "receipt", "rc"))
	do(fr(frame.DISCONNECT, "receipt", "bye"))
	tr.fromBroker(receiptFor(t, tx1), t0)
	tr.fromBroker(receiptFor(t, b), t0)

	if fatal, why := tr.lost(t0); fatal != nil || why != "" {
		t.Fatalf("lost: %v %q", fatal, why)
	}
	if tr.disconnected() {
		t.Fatal("DISCONNECT unconfirmed yet the session counts as disconnected")
	}
	plan := tr.replay(t0)
	want := "SUBSCRIBE id=late destination=/queue/s, SEND destination=/queue/a handover-seq=1 +r, " +
		"BEGIN transaction=t1 +r, SEND transaction=t1, SEND destination=/queue/c handover-seq=3 +r, DISCONNECT +r"
	if got := commands(ups(t, plan)); got != want {
		t.Fatalf("replay plan\n got %s\nwant %s", got, want)
	}
	if ups(t, plan)[1].Value(HeaderProducer) != a1.Value(HeaderProducer) || string(ups(t, plan)[4].Body) != string(c.Body) {
		t.Fatal("replayed SEND differs from the original")
	}
	if ups(t, plan)[1].Value("receipt") == a1.Value("receipt") {
		t.Fatal("replay reused a receipt id of the dead connection")
	}
	// The replayed SEND's RECEIPT reaches the client under its own id and
	// counts as a possible duplicate dropped.
	r := tr.fromBroker(receiptFor(t, ups(t, plan)[1]), t0)
	if r.pass.Value("receipt-id") != "ra" || r.confirmed != 1 {
		t.Fatalf("replayed SEND's receipt: %v confirmed=%d", r.pass, r.confirmed)
	}
	tr.fromBroker(receiptFor(t, ups(t, plan)[5]), t0)
	if !tr.disconnected() {
		t.Fatal("DISCONNECT confirmed but not disconnected")
	}
}

// TestTrackerAckIndividual: verdicts on deliveries made before a failover
// are forwarded under the redelivery's new ack id, or held until it comes;
// redeliveries the client has are not passed on.
func TestTrackerAckIndividual(t *testing.T) {
	tr := connected(t, frame.V12)
	one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "s", "destination", "/queue/q", "ack", "client-individual"), t0))
	for _, id := range []string{"m1", "m2", "m3", "m4"} {
		if a := tr.fromBroker(msg("s", id, "old-"+id), t0); a.pass == nil {
			t.Fatalf("first delivery of %s not passed", id)
		}
	}
	// m1: acked and confirmed before the failover.
	ack1 := one(t, tr.fromClient(fr(frame.ACK, "id", "old-m1"), t0))
	if ack1.Value("id") != "old-m1" || !strings.HasPrefix(ack1.Value("receipt"), internalReceiptPrefix) {
		t.Fatalf("ACK not forwarded with the sidecar's receipt: %v", ack1)
	}
	if a := tr.fromBroker(receiptFor(t, ack1), t0); a.pass != nil || len(a.client) != 0 {
		t.Fatal("the sidecar's own receipt reached the client")
	}
	// m2: acked with a receipt, not confirmed at the failover.
	ack2 := one(t, tr.fromClient(fr(frame.ACK, "id", "old-m2", "receipt", "r2"), t0))
	tr.lost(t0)
	plan := tr.replay(t0)
	if commands(ups(t, plan)) != "SUBSCRIBE id=s destination=/queue/q" {
		t.Fatalf("replay %s", commands(ups(t, plan)))
	}
	_ = ack2
	// m3: acked after the failover, before its redelivery: held.
	none(t, tr.fromClient(fr(frame.ACK, "id", "old-m3", "receipt", "r3"), t0))

	// A new message passes; redeliveries of m3, m2, m4 do not.
	if a := tr.fromBroker(msg("s", "m5", "new-m5"), t0); a.pass == nil {
		t.Fatal("new message not passed")
	}
	a := tr.fromBroker(msg("s", "m3", "new-m3"), t0)
	if a.pass != nil || a.suppressed != 1 {
		t.Fatal("redelivery of m3 passed to the client again")
	}
	fwd3 := one(t, a)
	if fwd3.Command != frame.ACK || fwd3.Value("id") != "new-m3" {
		t.Fatalf("held ACK of m3 forwarded as %v", fwd3)
	}
	fwd2 := one(t, tr.fromBroker(msg("s", "m2", "new-m2"), t0))
	if fwd2.Value("id") != "new-m2" {
		t.Fatalf("re-sent ACK of m2: %v", fwd2)
	}
	a = tr.fromBroker(msg("s", "m4", "new-m4"), t0)
	if a.pass != nil || len(a.up) != 0 {
		t.Fatalf("redelivery of unacked m4: pass=%v up=%v", a.pass, ups(t, a))
	}
	// m4: acked after its redelivery arrived: translated at once.
	fwd4 := one(t, tr.fromClient(fr(frame.NACK, "id", "old-m4"), t0))
	if fwd4.Command != frame.NACK || fwd4.Value("id") != "new-m4" {
		t.Fatalf("NACK of m4 forwarded as %v", fwd4)
	}
	// Receipts: the client's, under its own ids.
	if got := clientReceipts(tr.fromBroker(receiptFor(t, fwd3), t0)); len(got) != 1 || got[0] != "r3" {
		t.Fatalf("receipts %v, want [r3]", got)
	}
	if got := clientReceipts(tr.fromBroker(receiptFor(t, fwd2), t0)); len(got) != 1 || got[0] != "r2" {
		t.Fatalf("receipts %v, want [r2]", got)
	}
	tr.fromBroker(receiptFor(t, fwd4), t0)
	// Only m5 is left unsettled.
	if len(tr.acks) != 1 || tr.acks["new-m5"] == nil {
		t.Fatalf("unsettled deliveries: %v", tr.acks)
	}
}

// TestTrackerAckCumulative: in ack mode client a cumulative ACK goes to the
// broker only for the head of the broker's own delivery order that the
// client has acknowledged, named by its last (latest redelivered) message.
func TestTrackerAckCumulative(t *testing.T) {
	tr := connected(t, frame.V12)
	one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "s", "destination", "/queue/q", "ack", "client"), t0))
	for _, id := range []string{"m1", "m2", "m3", "m4"} {
		tr.fromBroker(msg("s", id, "o-"+id), t0)
	}
	ack := one(t, tr.fromClient(fr(frame.ACK, "id", "o-m2"), t0))
	if ack.Value("id") != "o-m2" {
		t.Fatalf("cumulative ACK: %v", ack)
	}
	tr.fromBroker(receiptFor(t, ack), t0)
	if len(tr.acks) != 2 {
		t.Fatalf("m1 and m2 not settled: %d left", len(tr.acks))
	}
	tr.lost(t0)
	tr.replay(t0)
	// The new master delivers n1 first, then redelivers m4 and m3.
	tr.fromBroker(msg("s", "n1", "n-n1"), t0)
	none(t, tr.fromBroker(msg("s", "m4", "n-m4"), t0))
	// The client (order m3, m4, n1) acks m3: the broker's head is n1,
	// which the client has not acked, so nothing may go yet.
	none(t, tr.fromClient(fr(frame.ACK, "id", "o-m3", "receipt", "r3"), t0))
	none(t, tr.fromBroker(msg("s", "m3", "n-m3"), t0))
	// Acking n1 covers m4 and n1: now the broker's whole order n1, m4, m3
	// is acknowledged, and one ACK naming m3 says so.
	fwd := one(t, tr.fromClient(fr(frame.ACK, "id", "n-n1", "receipt", "rn1"), t0))
	if fwd.Value("id") != "n-m3" {
		t.Fatalf("want one cumulative ACK of n-m3, got %v", fwd)
	}
	got := clientReceipts(tr.fromBroker(receiptFor(t, fwd), t0))
	if strings.Join(got, ",") != "r3,rn1" {
		t.Fatalf("client receipts %v, want r3 then rn1", got)
	}
	if len(tr.acks) != 0 {
		t.Fatalf("%d deliveries left unsettled", len(tr.acks))
	}
}

// TestTrackerAckVersions: before 1.2, ACKs name message-id.
func TestTrackerAckVersions(t *testing.T) {
	tr := connected(t, frame.V11)
	one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "s", "destination", "/queue/q", "ack", "client-individual"), t0))
	tr.fromBroker(msg("s", "m1", ""), t0)
	tr.lost(t0)
	tr.replay(t0)
	none(t, tr.fromClient(fr(frame.ACK, "message-id", "m1", "subscription", "s"), t0))
	fwd := one(t, tr.fromBroker(msg("s", "m1", ""), t0))
	if fwd.Value("message-id") != "m1" || fwd.Value("subscription") != "s" {
		t.Fatalf("ACK at 1.1: %v", fwd)
	}
}

// TestTrackerHolds: a verdict waiting for a redelivery that never comes is
// settled (its receipt answered) after holdFor, or when the subscription
// ends; plain topic subscriptions redeliver nothing, so theirs settle at
// once.
func TestTrackerHolds(t *testing.T) {
	tr := connected(t, frame.V12)
	one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "q", "destination", "/queue/q", "ack", "client-individual"), t0))
	one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "q2", "destination", "/queue/q2", "ack", "client-individual"), t0))
	one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "tp", "destination", "/topic/t", "ack", "client"), t0))
	tr.fromBroker(msg("q", "m1", "a1"), t0)
	tr.fromBroker(msg("q2", "m2", "a2"), t0)
	tr.fromBroker(msg("tp", "m3", "a3"), t0)
	tr.lost(t0)
	tr.replay(t0)

	a := tr.fromClient(fr(frame.ACK, "id", "a3", "receipt", "r3"), t0)
	if len(a.up) != 0 || strings.Join(clientReceipts(a), ",") != "r3" {
		t.Fatalf("topic ACK after failover: up=%v receipts=%v", ups(t, a), clientReceipts(a))
	}
	none(t, tr.fromClient(fr(frame.ACK, "id", "a1", "receipt", "r1"), t0))
	if !tr.waiting() {
		t.Fatal("not waiting for m1's redelivery")
	}
	if a := tr.expire(t0.Add(5 * time.Second)); len(a.client) != 0 {
		t.Fatal("hold expired early")
	}
	if got := clientReceipts(tr.expire(t0.Add(10 * time.Second))); strings.Join(got, ",") != "r1" {
		t.Fatalf("expired hold answered %v, want r1", got)
	}
	none(t, tr.fromClient(fr(frame.ACK, "id", "a2", "receipt", "r2"), t1(t0)))
	a = tr.fromClient(fr(frame.UNSUBSCRIBE, "id", "q2"), t0)
	if len(a.up) != 1 || strings.Join(clientReceipts(a), ",") != "r2" {
		t.Fatalf("UNSUBSCRIBE with a held ACK: up=%v receipts=%v", ups(t, a), clientReceipts(a))
	}
	if tr.waiting() {
		t.Fatal("still waiting after every hold ended")
	}
}

func t1(t time.Time) time.Time { return t.Add(time.Second) }

// TestTrackerTransactions: an open transaction is replayed, its ACKs of
// pre-failover deliveries wait for the redelivery and its COMMIT waits for
// them; a COMMIT in flight at the loss is reported, never re-sent.
func TestTrackerTransactions(t *testing.T) {
	t.Run("replayed", func(t *testing.T) {
		tr := connected(t, frame.V12)
		one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "s", "destination", "/queue/q", "ack", "client-individual"), t0))
		tr.fromBroker(msg("s", "m1", "o1"), t0)
		one(t, tr.fromClient(fr(frame.BEGIN, "transaction", "t", "receipt", "rb"), t0))
		one(t, tr.fromClient(fr(frame.SEND, "destination", "/queue/out", "transaction", "t"), t0))
		ackF := one(t, tr.fromClient(fr(frame.ACK, "id", "o1", "transaction", "t"), t0))
		if ackF.Value("id") != "o1" {
			t.Fatal(ackF)
		}
		tr.lost(t0)
		plan := tr.replay(t0)
		want := "SUBSCRIBE id=s destination=/queue/q, BEGIN transaction=t +r, SEND transaction=t"
		if got := commands(ups(t, plan)); got != want {
			t.Fatalf("replay\n got %s\nwant %s", got, want)
		}
		// COMMIT waits for the held ACK, which waits for m1's redelivery.
		none(t, tr.fromClient(fr(frame.COMMIT, "transaction", "t", "receipt", "rc"), t0))
		a := tr.fromBroker(msg("s", "m1", "n1"), t0)
		if got := commands(ups(t, a)); got != "ACK id=n1 transaction=t, COMMIT transaction=t +r" {
			t.Fatalf("after the redelivery: %s", got)
		}
		r := tr.fromBroker(receiptFor(t, ups(t, a)[1]), t0)
		if r.pass.Value("receipt-id") != "rc" || len(tr.txs) != 0 || len(tr.acks) != 0 {
			t.Fatalf("COMMIT receipt %v; %d transactions, %d deliveries left", r.pass, len(tr.txs), len(tr.acks))
		}
	})
	t.Run("commit in flight", func(t *testing.T) {
		tr := connected(t, frame.V12)
		one(t, tr.fromClient(fr(frame.BEGIN, "transaction", "t9"), t0))
		one(t, tr.fromClient(fr(frame.SEND, "destination", "/queue/out", "transaction", "t9"), t0))
		c := one(t, tr.fromClient(fr(frame.COMMIT, "transaction", "t9", "receipt", "rc9"), t0))
		if c.Value("receipt") == "rc9" || c.Value("receipt") == "" {
			t.Fatalf("COMMIT must carry the sidecar's receipt: %v", c)
		}
		fatal, why := tr.lost(t0)
		if why != reasonCommitUnknown || fatal == nil || fatal.Command != frame.ERROR ||
			fatal.Value("receipt-id") != "rc9" || !strings.Contains(fatal.Value("message"), `"t9"`) {
			t.Fatalf("lost with a COMMIT in flight: %v %q", fatal, why)
		}
	})
	t.Run("commit without receipt in flight", func(t *testing.T) {
		tr := connected(t, frame.V12)
		one(t, tr.fromClient(fr(frame.BEGIN, "transaction", "t8"), t0))
		c := one(t, tr.fromClient(fr(frame.COMMIT, "transaction", "t8"), t0))
		if _, ok := c.Get("receipt"); !ok {
			t.Fatal("COMMIT sent without a receipt: its outcome could never be known")
		}
		if fatal, why := tr.lost(t0); why != reasonCommitUnknown || fatal.Value("receipt-id") != "" {
			t.Fatalf("got %v %q", fatal, why)
		}
	})
	t.Run("aborted", func(t *testing.T) {
		tr := connected(t, frame.V12)
		one(t, tr.fromClient(fr(frame.BEGIN, "transaction", "t"), t0))
		one(t, tr.fromClient(fr(frame.SEND, "destination", "/queue/out", "transaction", "t"), t0))
		one(t, tr.fromClient(fr(frame.ABORT, "transaction", "t", "receipt", "ra"), t0))
		tr.lost(t0)
		plan := tr.replay(t0)
		if len(plan.up) != 0 || strings.Join(clientReceipts(plan), ",") != "ra" {
			t.Fatalf("aborted transaction replayed: %s; receipts %v", commands(ups(t, plan)), clientReceipts(plan))
		}
	})
}

// TestTrackerOverLimit: over MaxReplayBytes the session lets go of its
// copies and cannot be resumed.
func TestTrackerOverLimit(t *testing.T) {
	tr := newTracker("p", 4096, time.Second)
	tr.fromClient(fr(frame.CONNECT), t0)
	tr.fromBroker(fr(frame.CONNECTED, "version", "1.2"), t0)
	small := fr(frame.SEND, "destination", "/queue/a", "receipt", "r1")
	one(t, tr.fromClient(small, t0))
	if tr.unresumable {
		t.Fatal("unresumable too early")
	}
	big := fr(frame.SEND, "destination", "/queue/a", "receipt", "r2")
	big.Body = make([]byte, 8192)
	g := one(t, tr.fromClient(big, t0))
	if !tr.unresumable || tr.bytes > 4096 {
		t.Fatalf("unresumable=%v bytes=%d", tr.unresumable, tr.bytes)
	}
	// Frames still reach the broker, receipts still reach the client.
	if a := tr.fromBroker(receiptFor(t, g), t0); a.pass.Value("receipt-id") != "r2" {
		t.Fatal(a.pass)
	}
	after := one(t, tr.fromClient(fr(frame.SEND, "destination", "/queue/a", "receipt", "r3"), t0))
	if after.Value("receipt") != "r3" {
		t.Fatalf("an unresumable session keeps nothing new, so passes receipts as they are: %v", after)
	}
	if _, why := tr.lost(t0); why != reasonOverLimit {
		t.Fatalf("lost: %q, want %q", why, reasonOverLimit)
	}
}

// TestTrackerErrorReceipt: an ERROR answering a frame the sidecar
// receipted names the client's receipt, or none.
func TestTrackerErrorReceipt(t *testing.T) {
	tr := connected(t, frame.V12)
	g := one(t, tr.fromClient(fr(frame.SEND, "destination", "/queue/a", "receipt", "mine"), t0))
	a := tr.fromBroker(fr(frame.ERROR, "message", "no", "receipt-id", g.Value("receipt")), t0)
	if a.pass.Value("receipt-id") != "mine" || !tr.errored {
		t.Fatalf("ERROR: %v errored=%v", a.pass, tr.errored)
	}
}

// splitPlain splits a plain client frame as session.passPlain does for
// tracker.stampPlain: its header lines, and the rest after them.
func splitPlain(t *testing.T, raw string) (hdrs, rest []byte) {
	t.Helper()
	b := []byte(strings.TrimLeft(raw, "\n"))
	start := bytes.IndexByte(b, '\n') + 1
	end := bytes.Index(b, []byte("\n\n")) + 1
	if start == 0 || end == 0 || end < start {
		t.Fatalf("not a frame with headers: %q", raw)
	}
	return b[start:end], b[end:]
}

// TestTrackerStampPlain: a receipted SEND taken in wire form reaches the
// broker with the stamp and an internal receipt spliced in after its
// command line, its receipt header(s) gone and every other byte as the
// client wrote it, means what the Frame path's rendering means, and is
// settled by its RECEIPT under the client's first receipt id.
func TestTrackerStampPlain(t *testing.T) {
	for _, tc := range []struct {
		name, in, want, client string
	}{
		{"content-length",
			"SEND\ndestination:/queue/a\nreceipt:r-1\nx:y\ncontent-length:5\n\na\x00b\x00c\x00",
			"SEND\nreceipt:handover-1\nhandover-producer:prod-1\nhandover-seq:1\ndestination:/queue/a\nx:y\ncontent-length:5\n\na\x00b\x00c\x00",
			"r-1"},
		{"no content-length, heart-beats before",
			"\n\nSEND\nreceipt:r-1\ndestination:/queue/a\n\nbody\x00",
			"SEND\nreceipt:handover-1\nhandover-producer:prod-1\nhandover-seq:1\ndestination:/queue/a\n\nbody\x00",
			"r-1"},
		{"repeated receipt: the first wins, none passes",
			"SEND\ndestination:/queue/a\nreceipt:first\nreceipt:second\n\n\x00",
			"SEND\nreceipt:handover-1\nhandover-producer:prod-1\nhandover-seq:1\ndestination:/queue/a\n\n\x00",
			"first"},
		{"colon in the receipt value",
			"SEND\ndestination:/queue/a\nreceipt:a:b\n\n\x00",
			"SEND\nreceipt:handover-1\nhandover-producer:prod-1\nhandover-seq:1\ndestination:/queue/a\n\n\x00",
			"a:b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := connected(t, frame.V12)
			base := tr.bytes
			w := tr.stampPlain(splitPlain(t, tc.in))
			if string(w) != tc.want {
				t.Fatalf("sent\n%q\nwant\n%q", w, tc.want)
			}
			// The Frame path's rendering of the same client frame means
			// the same: same headers (but content-length), same body.
			slow := one(t, connected(t, frame.V12).fromClient(decode(t, []byte(tc.in)), t0))
			got := decode(t, w)
			if string(got.Body) != string(slow.Body) || headerSet(got) != headerSet(slow) {
				t.Fatalf("wire form means %v %q, the Frame path's %v %q", got, got.Body, slow, slow.Body)
			}
			if tr.bytes <= base || len(tr.inflight) != 1 {
				t.Fatalf("not kept: %d bytes, %d inflight", tr.bytes-base, len(tr.inflight))
			}
			r := tr.sendReceipt([]byte("handover-1"))
			if r == nil || !r.hasClient || r.client != tc.client || r.replayed {
				t.Fatalf("sendReceipt: %+v, want client receipt %q", r, tc.client)
			}
			if tr.bytes != base || len(tr.inflight) != 0 {
				t.Fatalf("still kept after its RECEIPT: %d bytes, %d inflight", tr.bytes-base, len(tr.inflight))
			}
			if tr.sendReceipt([]byte("handover-1")) != nil {
				t.Fatal("a second RECEIPT for the same id settled something")
			}
		})
	}
}

// headerSet renders f's headers but content-length, sorted by key.
func headerSet(f *frame.Frame) string {
	var hs []string
	for _, h := range f.Headers {
		if h.Key != "content-length" {
			hs = append(hs, h.Key+"="+h.Value)
		}
	}
	slices.Sort(hs)
	return strings.Join(hs, ",")
}

// TestTrackerStampPlainReplay: after a failover, SENDs taken in wire form
// and as Frames are replayed in the client's order, each once; a wire one
// byte for byte as first sent but for a fresh receipt id, and its RECEIPT
// then reaches the client as a duplicate dropped.
func TestTrackerStampPlainReplay(t *testing.T) {
	tr := connected(t, frame.V12)
	w1 := tr.stampPlain(splitPlain(t, "SEND\ndestination:/queue/a\nreceipt:r1\n\none\x00"))
	f2 := one(t, tr.fromClient(fr(frame.SEND, "destination", "/queue/a", "receipt", "r2"), t0))
	w3 := tr.stampPlain(splitPlain(t, "SEND\ndestination:/queue/a\nreceipt:r3\n\nthree\x00"))
	w4 := tr.stampPlain(splitPlain(t, "SEND\ndestination:/queue/a\nreceipt:r4\n\nfour\x00"))
	if f2.Value(HeaderSeq) != "2" || !bytes.Contains(w3, []byte("\nhandover-seq:3\n")) {
		t.Fatalf("stamps out of sequence: %v, %q", f2, w3)
	}
	if tr.sendReceipt([]byte(decode(t, w3).Value("receipt"))) == nil {
		t.Fatal("RECEIPT for the third SEND not taken")
	}
	if tr.sendReceipt([]byte(f2.Value("receipt"))) == nil {
		t.Fatal("RECEIPT for a Frame-path SEND not taken")
	}
	sub := one(t, tr.fromClient(fr(frame.SUBSCRIBE, "id", "s", "destination", "/queue/s", "receipt", "rs"), t0))
	if tr.sendReceipt([]byte(sub.Value("receipt"))) != nil || len(tr.inflight) != 3 {
		t.Fatal("sendReceipt took a SUBSCRIBE's RECEIPT")
	}
	tr.lost(t0)
	plan := tr.replay(t0)
	if len(plan.up) != 3 || plan.up[1].wire == nil || plan.up[2].wire == nil {
		t.Fatalf("replay %s, want the subscription and the first and fourth SENDs in wire form", commands(ups(t, plan)))
	}
	for i, w := range [][]byte{w1, w4} {
		re := plan.up[i+1].wire
		id := decode(t, re).Value("receipt")
		if !strings.HasPrefix(id, internalReceiptPrefix) || id == decode(t, w).Value("receipt") {
			t.Fatalf("replay receipt id %q, want a fresh internal one", id)
		}
		want := append([]byte(wireHead+id+"\n"), w[len(wireHead+decode(t, w).Value("receipt")+"\n"):]...)
		if !bytes.Equal(re, want) {
			t.Fatalf("replayed\n%q\nwant\n%q", re, want)
		}
		r := tr.sendReceipt([]byte(id))
		if r == nil || !r.replayed || r.client != []string{"r1", "r4"}[i] {
			t.Fatalf("replay's RECEIPT: %+v", r)
		}
	}
	tr.lost(t0)
	if plan := tr.replay(t0); len(plan.up) != 1 {
		t.Fatalf("confirmed SENDs replayed again: %s", commands(ups(t, plan)))
	}
}

// TestTrackerStampPlainOverLimit: the wire path keeps to MaxReplayBytes as
// the Frame path does, and declines once the session is unresumable.
func TestTrackerStampPlainOverLimit(t *testing.T) {
	tr := newTracker("p", 4096, time.Second)
	tr.fromClient(fr(frame.CONNECT), t0)
	tr.fromBroker(fr(frame.CONNECTED, "version", "1.2"), t0)
	if tr.stampPlain(splitPlain(t, "SEND\ndestination:/queue/a\nreceipt:r1\n\nsmall\x00")) == nil || tr.unresumable {
		t.Fatal("small SEND not taken, or unresumable too early")
	}
	big := "SEND\ndestination:/queue/a\nreceipt:r2\n\n" + strings.Repeat("x", 8192) + "\x00"
	w := tr.stampPlain(splitPlain(t, big))
	if w == nil || !tr.unresumable || tr.bytes > 4096 {
		t.Fatalf("sent=%v unresumable=%v bytes=%d", w != nil, tr.unresumable, tr.bytes)
	}
	for _, r := range tr.inflight {
		if r.wire != nil {
			t.Fatal("an unresumable session still keeps a wire copy")
		}
	}
	if r := tr.sendReceipt([]byte(decode(t, w).Value("receipt"))); r == nil || r.client != "r2" {
		t.Fatalf("RECEIPT after going over the limit: %+v", r)
	}
	if tr.stampPlain(splitPlain(t, "SEND\ndestination:/queue/a\nreceipt:r3\n\n\x00")) != nil {
		t.Fatal("an unresumable session stamped a SEND")
	}
}
