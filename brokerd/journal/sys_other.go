//go:build !linux

package journal

import (
	"errors"
	"os"
)

// datasync falls back to a full fsync where fdatasync is not available.
func datasync(f *os.File) error { return f.Sync() }

// writeDsync writes b at off and flushes it.
func writeDsync(f *os.File, b []byte, off int64) error {
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return datasync(f)
}

// fallocate is not available here; segments grow as they are written.
func fallocate(*os.File, int64) error { return errors.ErrUnsupported }

// mapSegment reads a segment file for replay.
func mapSegment(path string) ([]byte, func(), error) {
	data, err := os.ReadFile(path)
	return data, func() {}, err
}
