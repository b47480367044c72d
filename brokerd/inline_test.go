package brokerd

import (
	"bufio"
	"fmt"
	"strconv"
	"testing"
	"time"

	"handover/frame"
)

// TestReceiptedSendsInlineAndPipelined covers both ways a persistent SEND
// reaches the journal: one at a time, each waiting for its RECEIPT (the
// reader commits it itself, journal.AppendNow), mixed with SENDs without a
// receipt (queued); and a burst written at once (queued, so they share
// commits). Every RECEIPT comes back in order, every message is stored in
// the order sent, and the burst is group-committed.
func TestReceiptedSendsInlineAndPipelined(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	c := connectRaw(t, s.Addr())

	const one = 59 // ends with a receipted SEND: the journal is idle before the burst
	for i := range one {
		if i%3 == 2 {
			c.send(fmt.Sprintf("SEND\ndestination:/queue/in\npersistent:true\nn:%d\n\n\x00", i))
			continue
		}
		c.send(fmt.Sprintf("SEND\ndestination:/queue/in\npersistent:true\nreceipt:r%d\nn:%d\n\n\x00", i, i))
		if r := c.read(); r.Command != frame.RECEIPT || r.Value("receipt-id") != fmt.Sprint("r", i) {
			t.Fatalf("SEND %d: got %s %v", i, r.Command, r.Headers)
		}
	}

	const burst = 500
	before := s.st.Stats()
	w := bufio.NewWriter(c.nc)
	for i := range burst {
		fmt.Fprintf(w, "SEND\ndestination:/queue/in\npersistent:true\nreceipt:b%d\nn:%d\n\n\x00", i, one+i)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range burst {
		r, err := c.tryRead(10 * time.Second)
		if err != nil {
			t.Fatalf("burst RECEIPT %d: %v", i, err)
		}
		if r.Command != frame.RECEIPT || r.Value("receipt-id") != fmt.Sprint("b", i) {
			t.Fatalf("burst %d: got %s %v", i, r.Command, r.Headers)
		}
	}
	after := s.st.Stats()
	recs, syncs := after.Records-before.Records, after.Syncs-before.Syncs
	t.Logf("burst: %d records in %d commits", recs, syncs)
	if recs < burst || syncs*2 > recs {
		t.Fatalf("burst of %d SENDs: %d records in %d commits; want them grouped", burst, recs, syncs)
	}

	sub := connectRaw(t, s.Addr())
	sub.send("SUBSCRIBE\nid:s\ndestination:/queue/in\nack:auto\n\n\x00")
	for i := range one + burst {
		m, err := sub.tryRead(10 * time.Second)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if m.Command != frame.MESSAGE || m.Value("n") != strconv.Itoa(i) {
			t.Fatalf("message %d: got %s n:%q", i, m.Command, m.Value("n"))
		}
	}
}
