package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"handover/brokerd/store"
)

// TestFull: once the journal reaches MaxBytes, or the file system has less
// than Reserve free, an Append holding a Put fails with ErrFull and writes
// nothing, while acknowledgements are still written; when space comes back,
// Puts are taken again.
func TestFull(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts func(o *Options, free *atomic.Int64)
		fill func(free *atomic.Int64) // makes the journal full
		room func(free *atomic.Int64) // gives space back, or nil: drain
	}{
		{
			name: "max_disk",
			opts: func(o *Options, _ *atomic.Int64) { o.MaxBytes = 16 << 10; o.Reserve = -1 },
		},
		{
			name: "reserve",
			opts: func(o *Options, free *atomic.Int64) {
				o.Reserve = 1 << 20
				o.space = func() (int64, int64, error) { return free.Load(), 1 << 30, nil }
			},
			fill: func(free *atomic.Int64) { free.Store(512 << 10) },
			room: func(free *atomic.Int64) { free.Store(2 << 20) },
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var free atomic.Int64
			free.Store(1 << 30)
			opts := Options{Dir: t.TempDir(), SegmentSize: 8192, prealloc: preallocNone}
			tt.opts(&opts, &free)
			j, _ := open(t, opts)
			var stored []string
			if tt.fill != nil {
				mustWrite(t, j, put("m0", "q", make([]byte, 100)))
				stored = append(stored, "m0")
				tt.fill(&free)
			}
			var full error
			for i := len(stored); full == nil; i++ {
				if i > 1000 {
					t.Fatal("1,000 Puts taken: the journal never became full")
				}
				id := fmt.Sprint("m", i)
				if full = j.Write(put(id, "q", make([]byte, 1000))); full == nil {
					stored = append(stored, id)
				}
			}
			if !errors.Is(full, store.ErrFull) || !errors.Is(full, ErrFull) {
				t.Fatalf("a Put on a full journal: %v, want ErrFull", full)
			}
			if _, err := j.Read(fmt.Sprint("m", len(stored))); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("the refused Put is readable: %v", err)
			}
			// Consumers drain: every acknowledgement is written.
			for _, id := range stored {
				if err := j.Write(ack(id)); err != nil {
					t.Fatalf("ack %s on a full journal: %v", id, err)
				}
			}
			if tt.room != nil {
				tt.room(&free)
			}
			// Space comes back (compaction after the drain, or the file
			// system): Puts are taken again. Compaction runs after a batch,
			// so a few tries may be refused first.
			var err error
			for try := 0; try < 10; try++ {
				if err = j.Write(put("again", "q", make([]byte, 100))); err == nil {
					break
				}
			}
			if err != nil {
				t.Fatalf("a Put after the drain: %v (stats %+v)", err, j.Stats())
			}
		})
	}
}

// TestNoPreallocationIntoReserve: a new segment is not preallocated when
// that would cut into the reserve; it grows as it is written.
func TestNoPreallocationIntoReserve(t *testing.T) {
	for _, tt := range []struct {
		name     string
		free     int64
		wantSize func(size int64) bool
	}{
		{"plenty", 1 << 30, func(size int64) bool { return size == 64<<10 }},
		{"short", 64 << 10, func(size int64) bool { return size < 8<<10 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, SegmentSize: 64 << 10, prealloc: preallocFallocate, Reserve: 32 << 10,
				space: func() (int64, int64, error) { return tt.free, 1 << 30, nil }}
			j, _ := open(t, opts)
			mustWrite(t, j, put("m", "q", make([]byte, 100)))
			segs := segFiles(t, dir)
			fi, err := os.Stat(filepath.Join(dir, segs[len(segs)-1]))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.wantSize(fi.Size()) {
				t.Errorf("free %d, reserve 32 KiB, segment 64 KiB: file is %d bytes", tt.free, fi.Size())
			}
		})
	}
}
