//go:build !linux

package lockstore

import (
	"context"
	"errors"
)

// errNoOFD is returned on platforms without OFD locks.
var errNoOFD = errors.New("lockstore: the file locker requires Linux open file description (OFD) locks")

// File is a Locker backed by an OFD lock. It is only implemented on Linux;
// elsewhere NewFile fails.
type File struct{}

// NewFile fails on this platform: the file locker requires Linux OFD locks.
func NewFile(opts FileOptions) (*File, error) { return nil, errNoOFD }

// Acquire always fails on this platform.
func (*File) Acquire(ctx context.Context) (Lease, error) { return nil, errNoOFD }

// String describes the backend.
func (*File) String() string { return "file:unsupported" }
