package brokerd

import (
	"testing"
	"time"

	"handover/frame"
	"handover/stompclient"
)

func stamped(producer, seq string) []frame.Header {
	return []frame.Header{{Key: "persistent", Value: "true"}, {Key: HeaderProducer, Value: producer}, {Key: HeaderSeq, Value: seq}}
}

// TestDuplicateSendDropped: a SEND replayed with the same (producer, seq)
// is receipted but not enqueued again, also across a restart (the window is
// in the journal), and the stamp headers never reach consumers.
func TestDuplicateSendDropped(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, nil)
	s.waitReady(t)
	q := "/queue/dedup"
	c := dial(t, s.Addr())
	sub, err := c.SubscribeReceipt(ctx5(t), q, stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	p := dial(t, s.Addr())
	for _, seq := range []string{"1", "1", "2", "1", "2"} {
		if err := p.SendReceipt(ctx5(t), q, []byte("m"+seq), stamped("prod-a", seq)...); err != nil {
			t.Fatalf("seq %s: %v", seq, err)
		}
	}
	// Another producer's sequence is its own.
	if err := p.SendReceipt(ctx5(t), q, []byte("b1"), stamped("prod-b", "1")...); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"m1", "m2", "b1"} {
		m := recv(t, sub)
		if string(m.Body) != want {
			t.Fatalf("got %q, want %q", m.Body, want)
		}
		if _, ok := m.Get(HeaderProducer); ok {
			t.Fatalf("stamp header reached the consumer: %v", m)
		}
		if want != "b1" {
			c.AckReceipt(ctx5(t), m)
		}
	}
	expectNone(t, sub, 100*time.Millisecond)
	if s.dedup.droppedCount() != 3 {
		t.Fatalf("dropped %d duplicates, want 3", s.dedup.droppedCount())
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}

	// A new master recovers the window with the messages.
	s2 := startServer(t, dir, nil)
	s2.waitReady(t)
	c2 := dial(t, s2.Addr())
	sub2, _ := c2.SubscribeReceipt(ctx5(t), q, stompclient.AckAuto)
	if m := recv(t, sub2); string(m.Body) != "b1" {
		t.Fatalf("recovered %q, want the unacked b1", m.Body)
	}
	p2 := dial(t, s2.Addr())
	for _, tc := range []struct{ producer, seq string }{{"prod-a", "2"}, {"prod-b", "1"}, {"prod-a", "3"}} {
		if err := p2.SendReceipt(ctx5(t), q, []byte(tc.producer+tc.seq), stamped(tc.producer, tc.seq)...); err != nil {
			t.Fatal(err)
		}
	}
	if m := recv(t, sub2); string(m.Body) != "prod-a3" {
		t.Fatalf("after restart got %q, want only the new prod-a3", m.Body)
	}
	expectNone(t, sub2, 100*time.Millisecond)
}
