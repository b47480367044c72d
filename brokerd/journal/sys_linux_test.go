//go:build linux

package journal

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteDsync writes through both paths of writeDsync: pwritev2 with
// RWF_DSYNC and the pwrite + fdatasync fallback taken once the kernel has
// refused it. Both must put the bytes exactly at the offset.
func TestWriteDsync(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "pwritev2"
		if fallback {
			name = "fallback"
		}
		t.Run(name, func(t *testing.T) {
			was := noDsync.Load()
			noDsync.Store(fallback)
			t.Cleanup(func() { noDsync.Store(was) })
			f, err := os.Create(filepath.Join(t.TempDir(), "seg"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(64); err != nil {
				t.Fatal(err)
			}
			if err := writeDsync(f, []byte("abc"), 10); err != nil {
				t.Fatal(err)
			}
			if err := writeDsync(f, []byte("tail"), 62); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 66)
			copy(want[10:], "abc")
			copy(want[62:], "tail")
			if !bytes.Equal(got, want) {
				t.Fatalf("file = %q, want %q", got, want)
			}
			ro, err := os.Open(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			defer ro.Close()
			if err := writeDsync(ro, []byte("x"), 0); err == nil {
				t.Fatal("writing a read-only file succeeded")
			}
		})
	}
}
