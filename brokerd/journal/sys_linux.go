//go:build linux

package journal

import (
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
