//go:build linux

package journal

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"
)

// TestDirectWrite writes batches of many sizes, crossing and ending on
// block boundaries, through the O_DIRECT path and checks the file holds
// exactly what plain writes at the same offsets would have left: the
// header, every batch, and zeros after the end, whether the space after the
// end was zero-filled, fallocate'd or not there at all.
func TestDirectWrite(t *testing.T) {
	for _, prep := range []string{"zeroed", "fallocate", "none"} {
		t.Run(prep, func(t *testing.T) {
			const size = 256 << 10
			path := filepath.Join(t.TempDir(), "seg")
			header := encodeSegHeader(7)
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write(header); err != nil {
				t.Fatal(err)
			}
			switch prep {
			case "zeroed":
				err = f.Truncate(size)
			case "fallocate":
				err = fallocate(f, size)
			}
			if err != nil {
				t.Fatal(err)
			}
			d, err := openDirect(path, int64(len(header)), header)
			if err != nil {
				t.Skipf("no O_DIRECT on this file system: %v", err)
			}
			defer d.close()

			want := append([]byte(nil), header...)
			rng := rand.New(rand.NewPCG(1, 2))
			sizes := []int{1, directAlign - len(header) - 1, 1, directAlign, 3 * directAlign, 7, 2*directAlign + 5}
			for range 40 {
				sizes = append(sizes, 1+rng.IntN(3*directAlign))
			}
			for i, n := range sizes {
				b := make([]byte, n)
				for k := range b {
					b[k] = byte(1 + rng.IntN(255)) // never zero: zeros would hide a lost byte
				}
				if err := d.writeSync(b, int64(len(want))); err != nil {
					t.Fatalf("batch %d (%d bytes): %v", i, n, err)
				}
				want = append(want, b...)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) < len(want) || !bytes.Equal(got[:len(want)], want) {
				t.Fatalf("file holds %d bytes, differs from the %d written", len(got), len(want))
			}
			if z := firstNonZero(got[len(want):]); z >= 0 {
				t.Fatalf("non-zero byte %d bytes after the end", z)
			}
			if err := d.writeSync([]byte("x"), 5); err == nil {
				t.Fatal("a write away from the end was accepted")
			}
		})
	}
}

// TestDirectRefusedFallsBack: a file system that refuses O_DIRECT writes
// (EINVAL) costs nothing but speed: the batch is written through the page
// cache, with a warning, and so is every later one, across rolls.
func TestDirectRefusedFallsBack(t *testing.T) {
	dir := t.TempDir()
	logger, hook := test.NewNullLogger()
	j, _ := open(t, Options{Dir: dir, SegmentSize: 16 << 10, Log: logrus.NewEntry(logger)})
	if j.direct == nil {
		t.Skip("no O_DIRECT on this file system")
	}
	j.direct.pwritev2 = func(int, [][]byte, int64, int) (int, error) { return 0, unix.EINVAL }
	data := bytes.Repeat([]byte("d"), 1000)
	for i := range 50 {
		mustWrite(t, j, put(fmt.Sprint("m", i), "q", data))
	}
	if j.direct != nil || j.tryDirect {
		t.Fatal("still writing with O_DIRECT after EINVAL")
	}
	if st := j.Stats(); st.Segments < 2 {
		t.Fatalf("%d segments: the test must roll", st.Segments)
	}
	warned := false
	for _, e := range hook.AllEntries() {
		warned = warned || (e.Level == logrus.WarnLevel && bytes.Contains([]byte(e.Message), []byte("O_DIRECT")))
	}
	if !warned {
		t.Fatal("no warning about the refused O_DIRECT write")
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	_, live := open(t, Options{Dir: dir})
	if len(live) != 50 {
		t.Fatalf("replayed %d records, want 50", len(live))
	}
}
