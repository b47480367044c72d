//go:build !linux

package journal

import (
	"errors"
	"os"
)

// datasync falls back to a full fsync where fdatasync is not available.
func datasync(f *os.File) error { return f.Sync() }

// fallocate is not available here; segments grow as they are written.
func fallocate(*os.File, int64) error { return errors.ErrUnsupported }

// mapSegment reads a segment file for replay.
func mapSegment(path string) ([]byte, func(), error) {
	data, err := os.ReadFile(path)
	return data, func() {}, err
}
