//go:build linux

package journal

import (
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// datasync flushes file data and only the metadata needed to read it back.
// It is cheaper than fsync because timestamps are not forced out.
func datasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}

// noDsync is set once the kernel or file system has refused RWF_DSYNC, so
// every later batch goes straight to the two-call path.
var noDsync atomic.Bool

// writeDsync writes b at off and makes it durable as fdatasync would, in
// one system call where it can: pwritev2 with RWF_DSYNC (Linux 4.7+) flushes
// just what it wrote. Against write(2) followed by fdatasync it saves a
// system call and the scheduler's hand-off around it on every group commit,
// about a tenth of a one-producer round trip (BenchmarkAppend1KiB). Kernels
// or file systems without it get pwrite and fdatasync.
func writeDsync(f *os.File, b []byte, off int64) error {
	if !noDsync.Load() {
		for len(b) > 0 {
			n, err := unix.Pwritev2(int(f.Fd()), [][]byte{b}, off, unix.RWF_DSYNC)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EOPNOTSUPP || err == unix.EINVAL || err == unix.ENOSYS:
				noDsync.Store(true)
			case err != nil:
				return &os.PathError{Op: "pwritev2", Path: f.Name(), Err: err}
			}
			if err != nil {
				break
			}
			b, off = b[n:], off+int64(n)
		}
		if len(b) == 0 {
			return nil
		}
	}
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return datasync(f)
}

// fallocate reserves size bytes for f. A failure is not an error for the
// journal: the space is then simply allocated as it is written.
func fallocate(f *os.File, size int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), 0, 0, size)
		if err != unix.EINTR {
			return err
		}
	}
}

// mapSegment maps a segment file read-only for replay. A crashed master
// leaves its last segment at its full preallocated size, mostly zeros;
// mapping it spares the new master reading and copying all of it into the
// heap before it may serve, which is on the failover's critical path.
// Replay copies out everything it keeps, so nothing refers to the mapping
// after unmap.
func mapSegment(path string) (data []byte, unmap func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if st.Size() == 0 {
		return nil, func() {}, nil
	}
	data, err = unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	return data, func() { unix.Munmap(data) }, nil
}

// fadviseWillNeed asks the kernel to read [off, off+n) of f into the page
// cache in the background. It is advice: a failure changes nothing.
func fadviseWillNeed(f *os.File, off, n int64) {
	_ = unix.Fadvise(int(f.Fd()), off, n, unix.FADV_WILLNEED)
}

// diskSpace returns the bytes of dir's file system available to this
// process, and its size.
func diskSpace(dir string) (free, total int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}
