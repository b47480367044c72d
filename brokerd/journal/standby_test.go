package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"handover/brokerd/store"
)

// liveIndex is a store.Index that keeps the live ids in order.
type liveIndex struct{ orderIndex }

// TestStandbyWaitsForHalfWrittenBatch: a standby that sees the start of a
// batch the writer is still writing waits for it; it neither fails nor
// skips it, and sees its records once the batch is whole.
func TestStandbyWaitsForHalfWrittenBatch(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Options{Dir: dir, buffered: true})
	mustWrite(t, j, put("a", "q", []byte("one")))
	sb, err := Follow(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var idx liveIndex
	if _, err := sb.CatchUp(&idx); err != nil {
		t.Fatal(err)
	}
	if got := idx.ids(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("standby sees %v, want [a]", got)
	}
	// Write the next batch by hand, in two halves, where the writer would.
	batch := make([]byte, batchHeaderSize)
	batch = appendRecord(batch, &Record{Kind: KindPut, ID: "b", Queue: "q", Data: []byte("two")})
	off := j.active.size
	putBatchHeader(batch, 1, off)
	path := filepath.Join(dir, j.active.name)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, cut := range []int{5, batchHeaderSize + 3, len(batch) - 1} {
		if _, err := f.WriteAt(batch[:cut], off); err != nil {
			t.Fatal(err)
		}
		p, err := sb.CatchUp(&idx)
		if err != nil {
			t.Fatalf("CatchUp with %d of %d bytes written: %v", cut, len(batch), err)
		}
		if p.Waiting == "" && cut > 5 {
			t.Errorf("CatchUp with %d of %d bytes written says it is not waiting", cut, len(batch))
		}
		if got := idx.ids(); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("standby sees %v with %d of %d bytes written, want [a]", got, cut, len(batch))
		}
	}
	if _, err := f.WriteAt(batch, off); err != nil {
		t.Fatal(err)
	}
	p, err := sb.CatchUp(&idx)
	if err != nil || p.Records != 1 || p.Waiting != "" {
		t.Fatalf("CatchUp after the batch is whole: %+v, %v", p, err)
	}
	if got := idx.ids(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("standby sees %v, want [a b]", got)
	}
}

// TestStandbyFollowsCompaction: a standby that follows a writer through
// segment rolls, deletions and carried-forward records ends with the
// writer's live set, in order, and a takeover reads only the tail.
func TestStandbyFollowsCompaction(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentSize: 4 << 10, buffered: true}
	j, _ := open(t, opts)
	sb, err := Follow(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var idx liveIndex
	body := make([]byte, 200)
	var want []string
	n := 0
	// One old message that is never acknowledged, then a stream of puts
	// and acks: the old one must be carried forward, not pin the files.
	mustWrite(t, j, put("old", "q", body))
	want = append(want, "old")
	for round := 0; round < 200; round++ {
		id := fmt.Sprintf("m%d", n)
		n++
		mustWrite(t, j, put(id, "q", body))
		if round%10 == 9 {
			want = append(want, id) // kept
		} else {
			mustWrite(t, j, ack(id))
		}
		if round%7 == 0 {
			if _, err := sb.CatchUp(&idx); err != nil {
				t.Fatalf("CatchUp: %v", err)
			}
		}
	}
	st := j.Stats()
	if limit := 2*st.LiveBytes + 2*opts.SegmentSize + 4<<10; st.Bytes > limit {
		t.Errorf("journal holds %d bytes for %d live bytes, want at most %d", st.Bytes, st.LiveBytes, limit)
	}
	if _, err := sb.CatchUp(&idx); err != nil {
		t.Fatal(err)
	}
	if got := idx.ids(); !slices.Equal(got, want) {
		t.Fatalf("standby sees %v\nwant %v", got, want)
	}
	mustWrite(t, j, put("tail", "q", body))
	want = append(want, "tail")
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	var calls countIndex
	calls.inner = &idx
	j2, err := sb.Promote(store.Promotion{}, &calls)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	if calls.puts != 1 {
		t.Errorf("takeover applied %d puts, want only the tail's 1", calls.puts)
	}
	if got := idx.ids(); !slices.Equal(got, want) {
		t.Fatalf("after takeover sees %v\nwant %v", got, want)
	}
	// A cold start sees the same, in the same order, with the bodies.
	j2.Close()
	_, live := open(t, Options{Dir: dir})
	if got := ids(live); !slices.Equal(got, want) {
		t.Fatalf("cold start sees %v\nwant %v", got, want)
	}
}

type countIndex struct {
	inner store.Index
	puts  int
}

func (c *countIndex) Put(id, q string, size int, order uint64) {
	c.puts++
	c.inner.Put(id, q, size, order)
}
func (c *countIndex) Ack(id string)                { c.inner.Ack(id) }
func (c *countIndex) Producer(id string, s uint64) { c.inner.Producer(id, s) }

// TestReadDamagedBody: a body whose bytes changed on disk after it was
// written is reported with its file and offset and never returned; the
// other messages read fine.
func TestReadDamagedBody(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Options{Dir: dir, buffered: true})
	mustWrite(t, j, put("a", "q", []byte("alpha")), put("b", "q", []byte("bravo")))
	l, _ := j.st.lookup("a")
	path := filepath.Join(dir, segName(l.seg))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("X"), int64(l.off)+int64(l.n)-2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = j.Read("a")
	if !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("Read of a damaged body: %v, want ErrCorrupt", err)
	}
	if want := fmt.Sprintf("%s offset %d", path, l.off); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %q", err, want)
	}
	if b, err := j.Read("b"); err != nil || string(b) != "bravo" {
		t.Fatalf("Read(b) = %q, %v", b, err)
	}
	if _, err := j.Read("zz"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Read of an unknown id: %v, want ErrNotFound", err)
	}
	// The file cut short under the index: b's entry points past its end.
	lb, _ := j.st.lookup("b")
	if err := os.Truncate(path, int64(lb.off)+2); err != nil {
		t.Fatal(err)
	}
	_, err = j.Read("b")
	if want := fmt.Sprintf("%s offset %d", path, lb.off); !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Read past the end of the segment: %v, want ErrCorrupt naming %q", err, want)
	}
}
