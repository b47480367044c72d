package journal

import (
	"errors"
	"os"
	"slices"
	"sync/atomic"
	"testing"

	"handover/brokerd/store"
)

// TestTakeoverInterleavings: a successor takes over (the lease's epoch
// changes) at each point of a batch's life: before it is written, between
// its write and its fsync, between the fsync and the check that precedes
// the acknowledgement, and after that check. The writer acknowledges the
// batch only in the last case, and whatever it acknowledged is what the
// successor reads; a batch written but not acknowledged may be on disk
// (the successor may deliver it: an unreceipted message, at least once),
// but nothing acknowledged is ever missing.
func TestTakeoverInterleavings(t *testing.T) {
	for _, tt := range []struct {
		name    string
		at      string // where the takeover happens
		wantAck bool
	}{
		{"before the write", "fence", false},
		{"between write and fsync", "write", false},
		{"between fsync and check", "sync", false},
		{"after the check", "never", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var epoch, ours atomic.Uint64
			epoch.Store(1)
			ours.Store(1)
			errSuperseded := errors.New("superseded")
			check := func() error {
				if epoch.Load() != ours.Load() {
					return errSuperseded
				}
				return nil
			}
			var armed atomic.Bool
			takeover := func(point string) {
				if armed.Load() && point == tt.at {
					epoch.Add(1) // the successor bumped the epoch
				}
			}
			h := &hooks{
				writeAt: func(f *os.File, b []byte, off int64) (int, error) {
					n, err := f.WriteAt(b, off)
					takeover("write")
					return n, err
				},
				sync: func(f *os.File) error {
					err := datasync(f)
					takeover("sync")
					return err
				},
			}
			j, _ := open(t, Options{Dir: dir, hooks: h, prealloc: preallocNone,
				Fence:  func() error { takeover("fence"); return check() },
				Verify: check,
			})
			mustWrite(t, j, put("acked-before", "q", []byte("x")))
			armed.Store(true)
			err := j.Write(put("m", "q", []byte("y")))
			switch {
			case tt.wantAck && err != nil:
				t.Fatalf("Write: %v, want it acknowledged", err)
			case !tt.wantAck && (err == nil || !errors.Is(err, store.ErrFenced) && !errors.Is(err, errSuperseded)):
				t.Fatalf("Write after a takeover %s: %v, want it refused", tt.at, err)
			}
			if _, rerr := j.Read("m"); tt.wantAck != (rerr == nil) {
				t.Errorf("Read of the batch: %v, acknowledged %v", rerr, tt.wantAck)
			}
			j.abandoned.Store(true) // the old writer does nothing more

			// The successor reads what is on disk.
			_, live := open(t, Options{Dir: dir})
			got := ids(live)
			if !slices.Contains(got, "acked-before") {
				t.Fatalf("the successor lost an acknowledged message: %v", got)
			}
			if tt.wantAck && !slices.Contains(got, "m") {
				t.Fatalf("the successor lost the acknowledged batch: %v", got)
			}
			if tt.at == "fence" && slices.Contains(got, "m") {
				t.Fatalf("a batch refused before its write is on disk: %v", got)
			}
		})
	}
}
