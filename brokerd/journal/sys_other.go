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

// direct is Linux's O_DIRECT write path; openDirect always fails here, so
// the journal writes through the page cache.
type direct struct{}

func openDirect(string, int64, []byte) (*direct, error) { return nil, errors.ErrUnsupported }

func (*direct) writeSync([]byte, int64) error { return errors.ErrUnsupported }

func (*direct) close() error { return nil }

// fadviseWillNeed is not available here; reads wait for the disk.
func fadviseWillNeed(*os.File, int64, int64) {}

// diskSpace is unknown here: no reserve is kept.
func diskSpace(string) (free, total int64, err error) { return 0, 0, errors.ErrUnsupported }
