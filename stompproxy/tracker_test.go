package stompproxy

import (
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
	if len(a.up) != 1 || a.up[0].Command != frame.CONNECT {
		t.Fatalf("CONNECT not forwarded: %+v", a.up)
	}
	a = tr.fromBroker(fr(frame.CONNECTED, "version", string(v)), t0)
	if a.pass == nil || tr.version != v {
		t.Fatalf("CONNECTED not passed or version %q not taken", tr.version)
	}
	return tr
}

// one asserts a produced exactly one upstream frame and nothing for the
// client, and returns it.
func one(t *testing.T, a actions) *frame.Frame {
	t.Helper()
	if len(a.up) != 1 || len(a.client) != 0 {
		t.Fatalf("want one frame upstream and none to the client, got up=%v client=%v", a.up, a.client)
	}
	return a.up[0]
}

func none(t *testing.T, a actions) {
	t.Helper()
	if len(a.up) != 0 || len(a.client) != 0 {
		t.Fatalf("want nothing sent, got up=%v client=%v", a.up, a.client)
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
	if got, want := commands(a.up), "SUBSCRIBE id=s1 destination=/queue/a, SUBSCRIBE id=s2 destination=/queue/b +r"; got != want {
		t.Fatalf("replay\n got %s\nwant %s", got, want)
	}
	if a.up[0].Value("x-h") != "1" || a.up[0].Value("ack") != "client-individual" {
		t.Fatalf("SUBSCRIBE headers not kept: %v", a.up[0])
	}
	// The UNSUBSCRIBE's receipt is answered by the sidecar (the new master
	// never had s3); the replayed SUBSCRIBE's comes from the broker.
	if got := clientReceipts(a); len(got) != 1 || got[0] != "ru3" {
		t.Fatalf("local receipts %v, want [ru3]", got)
	}
	if b := tr.fromBroker(receiptFor(t, a.up[1]), t0); b.pass.Value("receipt-id") != "rs2" {
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
	if got := commands(plan.up); got != want {
		t.Fatalf("replay plan\n got %s\nwant %s", got, want)
	}
	if plan.up[1].Value(HeaderProducer) != a1.Value(HeaderProducer) || string(plan.up[4].Body) != string(c.Body) {
		t.Fatal("replayed SEND differs from the original")
	}
	if plan.up[1].Value("receipt") == a1.Value("receipt") {
		t.Fatal("replay reused a receipt id of the dead connection")
	}
	// The replayed SEND's RECEIPT reaches the client under its own id and
	// counts as a possible duplicate dropped.
	r := tr.fromBroker(receiptFor(t, plan.up[1]), t0)
	if r.pass.Value("receipt-id") != "ra" || r.confirmed != 1 {
		t.Fatalf("replayed SEND's receipt: %v confirmed=%d", r.pass, r.confirmed)
	}
	tr.fromBroker(receiptFor(t, plan.up[5]), t0)
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
	if commands(plan.up) != "SUBSCRIBE id=s destination=/queue/q" {
		t.Fatalf("replay %s", commands(plan.up))
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
		t.Fatalf("redelivery of unacked m4: pass=%v up=%v", a.pass, a.up)
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
		t.Fatalf("topic ACK after failover: up=%v receipts=%v", a.up, clientReceipts(a))
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
		t.Fatalf("UNSUBSCRIBE with a held ACK: up=%v receipts=%v", a.up, clientReceipts(a))
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
		if got := commands(plan.up); got != want {
			t.Fatalf("replay\n got %s\nwant %s", got, want)
		}
		// COMMIT waits for the held ACK, which waits for m1's redelivery.
		none(t, tr.fromClient(fr(frame.COMMIT, "transaction", "t", "receipt", "rc"), t0))
		a := tr.fromBroker(msg("s", "m1", "n1"), t0)
		if got := commands(a.up); got != "ACK id=n1 transaction=t, COMMIT transaction=t +r" {
			t.Fatalf("after the redelivery: %s", got)
		}
		r := tr.fromBroker(receiptFor(t, a.up[1]), t0)
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
			t.Fatalf("aborted transaction replayed: %s; receipts %v", commands(plan.up), clientReceipts(plan))
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
