package stompproxy

import (
	"bytes"
	"testing"

	"handover/frame"
)

// FuzzStampPlain feeds arbitrary client bytes, at every version, to the
// wire path for receipted SENDs (session.pickPlain, tracker.stampPlain) and
// the broker's RECEIPTs for them (session.pickReceipt, tracker.sendReceipt).
// Whatever the wire path takes, the broker must read as one frame meaning
// what the Frame path (Read, tracker.fromClient) would have sent: the same
// headers but content-length, the same body, the same client receipt id to
// answer; and a RECEIPT it takes must name the id Read finds in it.
func FuzzStampPlain(f *testing.F) {
	f.Add([]byte("SEND\ndestination:/queue/a\nreceipt:r-1\nx:y\ncontent-length:5\n\na\x00b\x00c\x00"))
	f.Add([]byte("\n\nSEND\nreceipt:a:b\nreceipt:c\ndestination:/queue/a\n\nbody\x00"))
	f.Add([]byte("SEND\nd:/q\n\n\x00SEND\nreceipt:r\n\n\x00"))
	f.Add([]byte("RECEIPT\nreceipt-id:handover-1\n\n\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []frame.Version{frame.V10, frame.V11, frame.V12} {
			fuzzClient(t, data, v)
			fuzzBroker(t, data, v)
		}
	})
}

func fuzzClient(t *testing.T, data []byte, v frame.Version) {
	s := &session{}
	r := frame.NewReader(bytes.NewReader(data), frame.Limits{})
	r.SetVersion(v)
	if r.FillTo(len(data)) != nil {
		return
	}
	raw, _ := r.PeekPlain(s.pickPlain)
	if len(raw) == 0 || !s.plain.alone {
		return // nothing taken (the state may be of a frame not all there), or a run passed as it is
	}
	fast, slow := connected(t, v), connected(t, v)
	hdrs := s.plain.hdrs
	lead := len(raw) - len(bytes.TrimLeft(raw, "\n"))
	w := fast.stampPlain(hdrs, raw[lead+len(frame.SEND)+1+len(hdrs):])

	want, err := r.Read()
	if err != nil {
		t.Fatalf("v%s: PeekPlain took %q, Read: %v", v, raw, err)
	}
	sent := one(t, slow.fromClient(want, t0))
	got := decodeAt(t, w, v)
	if got.Command != sent.Command || headerSet(got) != headerSet(sent) || !bytes.Equal(got.Body, sent.Body) {
		t.Fatalf("v%s: %q sent as\n%q\nmeaning %v %q; the Frame path sends %v %q", v, raw, w, got, got.Body, sent, sent.Body)
	}
	rf, rs := fast.inflight[got.Value("receipt")], slow.inflight[sent.Value("receipt")]
	if rf == nil || rs == nil || rf.client != rs.client || rf.hasClient != rs.hasClient {
		t.Fatalf("v%s: %q: client receipt %+v, the Frame path's %+v", v, raw, rf, rs)
	}
}

func fuzzBroker(t *testing.T, data []byte, v frame.Version) {
	s := &session{}
	r := frame.NewReader(bytes.NewReader(data), frame.Limits{})
	r.SetVersion(v)
	if r.FillTo(len(data)) != nil {
		return
	}
	if raw, _ := r.PeekPlain(s.pickReceipt); len(raw) == 0 {
		return
	}
	f, err := r.Read()
	if err != nil || f.Command != frame.RECEIPT {
		t.Fatalf("v%s: pickReceipt took %q: %v %v", v, data, f, err)
	}
	hdrs := s.rcpt.hdrs
	if id := string(hdrs[len("receipt-id:") : len(hdrs)-1]); id != f.Value("receipt-id") || len(f.Headers) != 1 {
		t.Fatalf("v%s: pickReceipt took %q as receipt-id %q, Read: %v", v, data, id, f)
	}
}
