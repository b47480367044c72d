//go:build linux

package journal

import (
	"bytes"
	"errors"
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

// TestDirectRefusedFallsBack: a kernel or file system that refuses
// O_DIRECT writes with RWF_DSYNC (EINVAL, EOPNOTSUPP, ENOSYS or a seccomp
// EPERM) costs nothing but speed, whether it refuses from the start or
// only later: the refused batch and every later one, across rolls, go
// through the page cache, with a warning.
func TestDirectRefusedFallsBack(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EINVAL, unix.EOPNOTSUPP, unix.ENOSYS, unix.EPERM} {
		for _, at := range []string{"first", "later"} {
			t.Run(fmt.Sprintf("%s/%v", at, errno), func(t *testing.T) {
				refuse := func(int, [][]byte, int64, int) (int, error) { return 0, errno }
				if at == "first" {
					directPwritev2 = refuse
					t.Cleanup(func() { directPwritev2 = unix.Pwritev2 })
				}
				dir := t.TempDir()
				logger, hook := test.NewNullLogger()
				j, _ := open(t, Options{Dir: dir, SegmentSize: 16 << 10, Log: logrus.NewEntry(logger)})
				if at == "later" {
					if j.direct == nil {
						t.Skip("no O_DIRECT on this file system")
					}
					j.direct.pwritev2 = refuse
				}
				data := bytes.Repeat([]byte("d"), 1000)
				for i := range 50 {
					mustWrite(t, j, put(fmt.Sprint("m", i), "q", data))
				}
				if j.direct != nil || j.tryDirect {
					t.Fatalf("still writing with O_DIRECT after %v", errno)
				}
				if st := j.Stats(); st.Segments < 2 {
					t.Fatalf("%d segments: the test must roll", st.Segments)
				}
				said := false
				for _, e := range hook.AllEntries() {
					said = said || bytes.Contains([]byte(e.Message), []byte("O_DIRECT"))
				}
				if !said {
					t.Fatal("nothing logged about O_DIRECT")
				}
				if err := j.Close(); err != nil {
					t.Fatal(err)
				}
				_, live := open(t, Options{Dir: dir})
				if len(live) != 50 {
					t.Fatalf("replayed %d records, want 50", len(live))
				}
			})
		}
	}
}

// TestDirectWriteFailsMidway: a batch whose O_DIRECT write fails after
// some of its blocks reached the file (EIO, a full disk) fails as a whole
// and is cut back; the journal goes on writing with O_DIRECT, and replay
// sees every record acknowledged and none of the failed one.
func TestDirectWriteFailsMidway(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Options{Dir: dir})
	if j.direct == nil {
		t.Skip("no O_DIRECT on this file system")
	}
	mustWrite(t, j, put("before", "q", bytes.Repeat([]byte("b"), 3000)))
	calls := 0
	j.direct.pwritev2 = func(fd int, iovs [][]byte, off int64, flags int) (int, error) {
		calls++
		if calls == 1 {
			return unix.Pwritev2(fd, [][]byte{iovs[0][:directAlign]}, off, flags) // one block lands
		}
		return 0, unix.EIO
	}
	if err := j.Write(put("failed", "q", bytes.Repeat([]byte("f"), 3*directAlign))); !errors.Is(err, unix.EIO) {
		t.Fatalf("Write = %v, want EIO", err)
	}
	j.direct.pwritev2 = unix.Pwritev2
	for i := range 20 {
		mustWrite(t, j, put(fmt.Sprint("after", i), "q", bytes.Repeat([]byte("a"), 700)))
	}
	if j.direct == nil {
		t.Fatal("O_DIRECT was given up after an I/O error")
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	_, live := open(t, Options{Dir: dir})
	if len(live) != 21 {
		t.Fatalf("replayed %d records, want 21", len(live))
	}
	for _, r := range live {
		if r.ID == "failed" {
			t.Fatal("the failed batch was replayed")
		}
	}
}
