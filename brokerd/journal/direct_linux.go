//go:build linux

package journal

import (
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the file offset, length and memory alignment of O_DIRECT
// writes: 4 KiB is a multiple of every common logical block size.
const directAlign = 4096

// direct writes one segment with O_DIRECT and RWF_DSYNC: the batch goes
// from our buffer to the device and is flushed in one system call, with no
// copy into the page cache and no writeback. Measured on ext4 against the
// buffered pwritev2(RWF_DSYNC), in the same runs: BenchmarkAppend1KiBParallel
// ~184k against ~160k msgs/s (prealloc=zero vs prealloc=zero/buffered), and
// one producer waiting for each receipt through brokerd 4-6 % faster.
//
// O_DIRECT writes whole aligned blocks, so each write starts at the block
// holding the segment's end and rewrites that block's committed bytes with
// the same values (as page writeback would), then the batch, then zeros to
// the block's end. Replay reads zeros as the end of data, and the space
// after a segment's end is zero anyway (zero-filled, fallocate'd, or past
// the end of the file), so the padding changes nothing a reader sees.
type direct struct {
	fd   int
	path string
	end  int64  // where the next batch goes: the segment's size
	tail []byte // the segment's bytes from the last block boundary to end
	buf  []byte // aligned scratch, reused across batches
	// pwritev2 is directPwritev2 when opened; tests replace it.
	pwritev2 func(fd int, iovs [][]byte, off int64, flags int) (int, error)
}

// directPwritev2 is the system call direct uses; tests replace it to see
// a kernel or file system refuse.
var directPwritev2 = unix.Pwritev2

// openDirect opens path for O_DIRECT writes after end, whose last partial
// block holds tail. It fails where the file system has no O_DIRECT.
func openDirect(path string, end int64, tail []byte) (*direct, error) {
	if int64(len(tail)) != end%directAlign {
		return nil, fmt.Errorf("journal: %d tail bytes for a segment ending at %d", len(tail), end)
	}
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open O_DIRECT", Path: path, Err: err}
	}
	d := &direct{fd: fd, path: path, end: end, tail: make([]byte, 0, directAlign), pwritev2: directPwritev2}
	d.tail = append(d.tail, tail...)
	return d, nil
}

// writeSync writes b at off, which must be the segment's end, and returns
// once it is durable. An error wrapping unix.EINVAL means the file system
// refuses these writes (alignment, no O_DIRECT); nothing was changed then.
func (d *direct) writeSync(b []byte, off int64) error {
	if off != d.end {
		return fmt.Errorf("journal: direct write at offset %d of %s, which ends at %d", off, d.path, d.end)
	}
	start := off - int64(len(d.tail))
	n := len(d.tail) + len(b)
	total := (n + directAlign - 1) &^ (directAlign - 1)
	buf := d.scratch(total)
	copy(buf, d.tail)
	copy(buf[len(d.tail):], b)
	clear(buf[n:])
	for w := 0; w < total; {
		k, err := d.pwritev2(d.fd, [][]byte{buf[w:]}, start+int64(w), unix.RWF_DSYNC)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return &os.PathError{Op: "pwritev2 O_DIRECT", Path: d.path, Err: err}
		case k <= 0 || k%directAlign != 0:
			// Only whole blocks can be continued; the caller cuts the
			// segment back to off.
			return &os.PathError{Op: "pwritev2 O_DIRECT", Path: d.path, Err: io.ErrShortWrite}
		}
		w += k
	}
	d.end = off + int64(len(b))
	keep := int(d.end % directAlign)
	d.tail = append(d.tail[:0], buf[n-keep:n]...)
	if cap(d.buf) > 2*maxBatchBytes {
		d.buf = nil // one huge Append should not pin its buffer forever
	}
	return nil
}

// scratch returns an aligned buffer of n bytes.
func (d *direct) scratch(n int) []byte {
	if cap(d.buf) < n {
		raw := make([]byte, n+directAlign)
		skip := int(-uintptr(unsafe.Pointer(&raw[0])) & (directAlign - 1))
		d.buf = raw[skip : skip+n : skip+n]
	}
	return d.buf[:n]
}

func (d *direct) close() error { return unix.Close(d.fd) }
