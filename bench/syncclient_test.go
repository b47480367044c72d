package bench

import (
	"fmt"
	"net"
	"strconv"
	"testing"

	"handover/frame"
)

// syncProducer is the leanest honest STOMP producer: one goroutine that
// writes a receipted SEND, then reads and checks the broker's reply before
// the next. stompclient, the project's general client, reads on a goroutine
// of its own and hands each RECEIPT to the waiting caller over a channel:
// right for a client that also consumes and keeps heart-beats, but on a
// small VM that hand-off (a goroutine wake-up, often a thread wake-up) costs
// a third of a round trip. Measuring the broker with both, in the same
// run, shows what is the broker's and what is the client's.
type syncProducer struct {
	nc net.Conn
	r  *frame.Reader
	w  *frame.Writer
	n  uint64
}

func dialSync(b *testing.B, addr string) *syncProducer {
	b.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	p := &syncProducer{nc: nc, r: frame.NewReader(nc, frame.Limits{}), w: frame.NewWriter(nc)}
	if err := p.w.Write(frame.New(frame.CONNECT, "accept-version", "1.2", "host", "bench")); err != nil {
		b.Fatal(err)
	}
	if err := p.w.Flush(); err != nil {
		b.Fatal(err)
	}
	f, err := p.r.Read()
	if err != nil || f.Command != frame.CONNECTED {
		b.Fatalf("CONNECT: %v %v", f, err)
	}
	p.r.SetVersion(frame.V12)
	p.w.SetVersion(frame.V12)
	return p
}

// sendReceipt sends body to dest as a persistent SEND and waits for its
// RECEIPT; anything else (an ERROR, another id) is an error.
func (p *syncProducer) sendReceipt(dest string, body []byte) error {
	p.n++
	id := "r" + strconv.FormatUint(p.n, 10)
	f := frame.New(frame.SEND, "destination", dest, "persistent", "true", "receipt", id)
	f.Body = body
	if err := p.w.Write(f); err != nil {
		return err
	}
	if err := p.w.Flush(); err != nil {
		return err
	}
	r, err := p.r.Read() // heart-beats are skipped
	switch {
	case err != nil:
		return err
	case r.Command != frame.RECEIPT || r.Value("receipt-id") != id:
		return fmt.Errorf("waiting for RECEIPT %s, got %s %v", id, r.Command, r.Headers)
	}
	return nil
}
