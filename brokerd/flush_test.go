package brokerd

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"handover/frame"
)

// TestOutputOrderWhenClientStopsReading drives both output paths at once: a
// subscriber's MESSAGEs go through writeLoop, the RECEIPTs are written by
// flush directly, and a client that reads nothing until it has sent every
// frame fills the socket, so flush's writes come back short or refused and
// their remainders must go out first. The stream must still be exactly
// MESSAGE i, RECEIPT i, in order, with no frame torn or interleaved.
func TestOutputOrderWhenClientStopsReading(t *testing.T) {
	// Room for the whole stream in the output queue: this test is about
	// order, not the slow-consumer limit.
	s := startServer(t, t.TempDir(), func(o *Options) { o.MaxPendingBytes = 64 << 20 })
	s.waitReady(t)
	c := connectRaw(t, s.Addr())
	c.send("SUBSCRIBE\nid:s\ndestination:/topic/order\n\n\x00")

	// 20 MB: more than the socket buffers hold, even autotuned.
	const n = 20000
	body := strings.Repeat("x", 1000)
	w := bufio.NewWriter(c.nc)
	for i := range n {
		fmt.Fprintf(w, "SEND\ndestination:/topic/order\nreceipt:%d\nn:%d\n\n%s\x00", i, i, body)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	// Give the broker time to run into the full socket before reading.
	time.Sleep(200 * time.Millisecond)

	for i := range n {
		m, err := c.tryRead(10 * time.Second)
		if err != nil {
			t.Fatalf("frame %d: %v", 2*i, err)
		}
		if m.Command != frame.MESSAGE || m.Value("n") != strconv.Itoa(i) || string(m.Body) != body {
			t.Fatalf("want MESSAGE n:%d, got %s n:%q body %d bytes", i, m.Command, m.Value("n"), len(m.Body))
		}
		r, err := c.tryRead(10 * time.Second)
		if err != nil {
			t.Fatalf("frame %d: %v", 2*i+1, err)
		}
		if r.Command != frame.RECEIPT || r.Value("receipt-id") != strconv.Itoa(i) {
			t.Fatalf("want RECEIPT %d after MESSAGE %d, got %v", i, i, r)
		}
	}
}
