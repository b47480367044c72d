package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

func segName(seq uint64) string { return fmt.Sprintf("%08d.log", seq) }

// tmpPath is where this journal prepares segment seq before installing it.
// The name is this journal's own (j.token), so that a deposed writer and
// its successor never write, or remove, each other's files.
func (j *Journal) tmpPath(seq uint64) string {
	return filepath.Join(j.dir, segName(seq)+"."+j.token+".tmp")
}

// isTemp says whether a file name is a segment being prepared.
func isTemp(name string) bool {
	return strings.HasSuffix(name, ".tmp") && strings.Contains(name, ".log.")
}

// spare is a segment file prepared ahead of time under its temporary name.
type spare struct {
	seq uint64
	f   *os.File
	err error
}

// startSpare begins zero-filling the file for segment seq in the background,
// so that rolling to it later costs a rename instead of writing a whole
// segment of zeros while producers wait.
func (j *Journal) startSpare(seq uint64) {
	ch := make(chan spare, 1)
	j.spare = ch
	go func() {
		f, err := j.newSegmentFile(seq, preallocZero)
		ch <- spare{seq: seq, f: f, err: err}
	}()
}

// spareReady reports whether the active segment should be left early for a
// finished spare: only a segment made on the spot (not zero-filled) is, so
// that the slow fallocate'd file made at Open serves just until the first
// zero-filled one is ready.
func (j *Journal) spareReady() bool {
	if !j.earlyRoll || j.active.zeroed || j.spare == nil {
		return false
	}
	select {
	case sp := <-j.spare:
		j.spare = make(chan spare, 1)
		j.spare <- sp
		return sp.err == nil
	default:
		return false
	}
}

// takeSpare waits for the background file, if one was started, and returns
// it if it is for seq.
func (j *Journal) takeSpare(seq uint64) *os.File {
	if j.spare == nil {
		return nil
	}
	sp := <-j.spare
	j.spare = nil
	switch {
	case sp.err != nil:
		j.log.WithField("segment", segName(sp.seq)).WithError(sp.err).Warn("journal: preparing next segment failed")
		return nil
	case sp.seq != seq:
		j.discard(sp)
		return nil
	}
	return sp.f
}

// dropSpare removes an unused spare file (on Close).
func (j *Journal) dropSpare() {
	if j.spare != nil {
		if sp := <-j.spare; sp.err == nil {
			j.discard(sp)
		}
		j.spare = nil
	}
}

func (j *Journal) discard(sp spare) {
	sp.f.Close()
	os.Remove(j.tmpPath(sp.seq))
}

// createSegment makes segment seq the next file to write. It is prepared
// under a temporary name (header written, space reserved, fsync'd) and only
// then renamed into place, so a segment file always has a valid header and
// replay never has to guess about a half-created one.
func (j *Journal) createSegment(seq uint64) (*segment, *os.File, error) {
	f := j.takeSpare(seq)
	zeroed := f != nil
	if f == nil {
		mode := j.prealloc
		if mode == preallocZero {
			mode = preallocFallocate // do not make producers wait for zeros
		}
		var err error
		if f, err = j.newSegmentFile(seq, mode); err != nil {
			return nil, nil, err
		}
	}
	name := segName(seq)
	path := filepath.Join(j.dir, name)
	// Linked into place, not renamed: a link never replaces a segment
	// another writer (a deposed master that has not noticed yet) put
	// there first.
	tmp := j.tmpPath(seq)
	err := os.Link(tmp, path)
	os.Remove(tmp)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("install segment %s: %w", path, err)
	}
	if err := syncDir(j.dir); err != nil {
		f.Close()
		os.Remove(path)
		return nil, nil, fmt.Errorf("install segment %s: fsync directory: %w", path, err)
	}
	seg := newSegment(seq, segHeaderSize)
	seg.zeroed = zeroed
	return seg, f, nil
}

// newSegmentFile writes the temporary file for segment seq: header, reserved
// space, fsync. A failure to reserve space (a full disk, a file system
// without fallocate) only costs speed, so it is logged and not returned.
// It may run on its own goroutine; it touches no Journal state but j's
// immutable configuration and logger.
func (j *Journal) newSegmentFile(seq uint64, mode preallocMode) (*os.File, error) {
	tmp := j.tmpPath(seq)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create segment: %w", err)
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("create segment %s: %w", tmp, err)
	}
	if _, err := f.Write(encodeSegHeader(seq)); err != nil {
		return fail(err)
	}
	if mode != preallocNone && !j.roomFor(j.segSize) {
		// Reserving a whole segment would eat into the free space kept
		// for acknowledgements (or fail half-way, having used it all
		// meanwhile): the file grows as it is written instead.
		j.log.WithField("segment", segName(seq)).Info("journal: not preallocating: free space is short")
		mode = preallocNone
	}
	if err := j.preallocate(f, mode); err != nil {
		j.log.WithField("segment", segName(seq)).WithError(err).Warn("journal: preallocation failed")
		// Leave no partly reserved tail: zeros would be harmless to
		// replay but waste space.
		if err := f.Truncate(segHeaderSize); err != nil {
			return fail(err)
		}
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	return f, nil
}

// roomFor reports whether n more bytes fit on the file system without
// cutting into the reserve (true when the free space is unknown).
func (j *Journal) roomFor(n int64) bool {
	free, _, err := j.space()
	return err != nil || free-n >= j.reserve
}

// preallocate reserves the segment's space after its header.
func (j *Journal) preallocate(f *os.File, mode preallocMode) error {
	switch mode {
	case preallocFallocate:
		return fallocate(f, j.segSize)
	case preallocZero:
		zero := make([]byte, 1<<20)
		for off := int64(segHeaderSize); off < j.segSize; off += int64(len(zero)) {
			n := min(int64(len(zero)), j.segSize-off)
			if _, err := f.WriteAt(zero[:n], off); err != nil {
				return err
			}
		}
	}
	return nil
}
