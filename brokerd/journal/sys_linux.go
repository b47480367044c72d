//go:build linux

package journal

import (
	"fmt"
	"os"

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
