package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"handover/brokerd/store"
	"handover/brokerd/store/storetest"
)

// TestConformance runs the store contract's suite against the journal, with
// small segments so that rolls, compaction and carrying forward happen.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		h := &harness{dir: t.TempDir()}
		h.hooks = &hooks{writeAt: h.writeAt}
		return h
	})
}

// harness is the journal's side of the suite: a directory. Writes go
// through writeAt, so that PartialWrite can stop one halfway.
type harness struct {
	dir   string
	epoch atomic.Uint64
	hooks *hooks
	gate  atomic.Pointer[gate]
}

type gate struct{ half, finish chan struct{} }

func (h *harness) writeAt(f *os.File, b []byte, off int64) (int, error) {
	g := h.gate.Swap(nil)
	if g == nil {
		return f.WriteAt(b, off)
	}
	n := len(b) / 2
	if _, err := f.WriteAt(b[:n], off); err != nil {
		return 0, err
	}
	close(g.half)
	<-g.finish
	m, err := f.WriteAt(b[n:], off+int64(n))
	return n + m, err
}

func (h *harness) Follow(t *testing.T) store.Standby {
	sb, err := Follow(Options{Dir: h.dir, SegmentSize: 16 << 10, hooks: h.hooks})
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func (h *harness) Promotion(*testing.T) store.Promotion {
	return store.Promotion{Epoch: h.epoch.Add(1)}
}

// Crash abandons the journal as SIGKILL would: it writes, deletes and
// truncates nothing more. Its files stay open, as a dead process's would
// until the kernel closes them.
func (h *harness) Crash(t *testing.T, s store.Store) {
	s.(*Journal).abandoned.Store(true)
}

// TornTail cuts the last batch of the newest segment in half, as a crash
// in the middle of its write would leave it.
func (h *harness) TornTail(t *testing.T) {
	seqs, err := listSegmentFiles(h.dir)
	if err != nil || len(seqs) == 0 {
		t.Fatalf("no segments: %v", err)
	}
	for i := len(seqs) - 1; i >= 0; i-- {
		path := filepath.Join(h.dir, segName(seqs[i]))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		last, end := -1, 0
		pos := segHeaderSize
		for {
			hd, why := parseBatchHeader(data, pos)
			if why != "" {
				break
			}
			last, end = pos, pos+batchHeaderSize+hd.length
			pos = end
		}
		if last < 0 {
			continue // an empty segment made at Promote
		}
		cut := last + (end-last)/2
		clear(data[cut:end])
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("no batch to tear")
}

func (h *harness) FlipBit(t *testing.T, s store.Store, id string, body []byte) string {
	l, ok := s.(*Journal).st.lookup(id)
	if !ok {
		t.Fatalf("FlipBit: %q is not live", id)
	}
	path := filepath.Join(h.dir, segName(l.seg))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	at := int64(l.off) + int64(l.n) - 1 // the body's last byte, or the id's
	b := []byte{0}
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s offset %d", path, l.off)
}

func (h *harness) PartialWrite(t *testing.T, s store.Store, recs []store.Record, done func(error)) func() {
	g := &gate{half: make(chan struct{}), finish: make(chan struct{})}
	h.gate.Store(g)
	s.Append(recs, done)
	<-g.half
	return func() { close(g.finish) }
}
