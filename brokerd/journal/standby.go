package journal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"

	"handover/brokerd/store"
)

// Standby reads a journal that another process may be writing, never
// writing to it and never waiting for the writer, and keeps the live set
// (state) current; Promote turns it into the writing Journal. Replay at a
// cold start is a Standby promoted at once, so there is one reading path.
//
// What makes reading alongside the writer safe:
//   - The writer appends whole batches with one write each and makes each
//     durable before the next, so a reader can only ever see the last
//     batch half-written. A standby stops there and looks again next time;
//     only Promote, once the writer is known dead (this process holds the
//     lock), may call it a torn tail.
//   - A segment is renamed into place with its header already written, so a
//     listed segment always has one; the writer moves to a new segment
//     only after the previous one's last batch was durable, so a segment
//     older than the newest listed one is complete.
//   - The writer deletes (renames to .trash) only segments with nothing
//     live, and a segment only after every older one whose records it
//     retired. Each CatchUp lists the directory before reading, reads
//     everything present, then drops segments missing from the listing:
//     whatever the writer wrote before deleting a segment (its carried
//     forward records, say) was on disk before the listing, so it was read.
type Standby struct {
	dir  string
	log  *logrus.Entry
	opts Options
	st   *state

	cur     uint64 // segment being read, 0 before the first
	pos     int    // offset in cur of the next batch
	queues  map[string]string
	closed  bool
	promote bool // the final catch-up: the writer is dead
}

// Follow opens a Standby on opts.Dir. The directory need not exist yet: a
// standby waits for the first master to create it.
func Follow(opts Options) (*Standby, error) {
	if opts.Dir == "" {
		return nil, errors.New("journal: Options.Dir is empty")
	}
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	return &Standby{dir: opts.Dir, log: log, opts: opts, st: newState(), queues: map[string]string{}}, nil
}

// intern returns one string per queue name, so that a million index
// entries of one queue share its name.
func (s *Standby) intern(b []byte) string {
	if q, ok := s.queues[string(b)]; ok {
		return q
	}
	q := string(b)
	s.queues[q] = q
	return q
}

// CatchUp reads everything appended since the last call into idx; see
// store.Standby.
func (s *Standby) CatchUp(idx store.Index) (store.Progress, error) {
	if s.closed {
		return store.Progress{}, store.ErrClosed
	}
	return s.catchUp(idx)
}

func (s *Standby) catchUp(idx store.Index) (store.Progress, error) {
	var p store.Progress
	seqs, err := listSegmentFiles(s.dir)
	if errors.Is(err, fs.ErrNotExist) && !s.promote {
		p.Waiting = "no journal directory yet"
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("journal: %w", err)
	}
	listed := make(map[uint64]bool, len(seqs))
	for _, seq := range seqs {
		listed[seq] = true
	}
	for i, seq := range seqs {
		if seq < s.cur {
			continue
		}
		last := i == len(seqs)-1
		done, err := s.readSegment(seq, last, idx, &p)
		if err != nil {
			return p, err
		}
		if !done {
			break // waiting for the rest of a batch
		}
	}
	for _, seq := range slices.Clone(s.st.order) {
		if !listed[seq] {
			s.st.dropSegment(seq, idx)
		}
	}
	p.Position = s.position()
	return p, nil
}

func (s *Standby) position() string {
	if s.cur == 0 {
		return "start"
	}
	return segName(s.cur) + "@" + strconv.Itoa(s.pos)
}

// readSegment reads segment seq from where the last call stopped. It
// returns done=false when it stopped at something it must look at again
// later (a batch being written), with p.Waiting saying what.
func (s *Standby) readSegment(seq uint64, last bool, idx store.Index, p *store.Progress) (done bool, err error) {
	path := filepath.Join(s.dir, segName(seq))
	data, unmap, err := mapSegment(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil // deleted since the listing: nothing live in it
	}
	if err != nil {
		return false, fmt.Errorf("journal: read segment: %w", err)
	}
	defer unmap()
	if seq != s.cur {
		if err := checkSegHeader(data, seq); err != nil {
			if !s.promote {
				p.Waiting = fmt.Sprintf("segment %s: %v", path, err)
				return false, nil
			}
			return false, fmt.Errorf("%w: segment %s offset 0: %v", ErrCorrupt, path, err)
		}
		s.st.addSegment(newSegment(seq, segHeaderSize))
		s.cur, s.pos = seq, segHeaderSize
	}
	seg := s.st.segs[seq]
	mode := scanFollow
	if s.promote {
		mode = scanFinal
		if last {
			mode = scanFinalLast
		}
	}
	// Another process may shorten the file under the mapping (a writer
	// undoing a failed write); touching a page past its new end is a
	// SIGBUS, which this turns into a panic recovered below: the standby
	// keeps what it applied up to the last whole batch and looks again.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault || mode != scanFollow {
				panic(r)
			}
			done, err = false, nil
			p.Waiting = fmt.Sprintf("segment %s changed while being read; reading it again", path)
		}
	}()
	end, t, err := scanSegment(data, s.pos, path, mode, func(r rawRecord, off int) {
		s.st.applyRecord(&r, loc{seg: seq, off: uint32(off), n: uint32(r.n)}, idx, s.intern)
		p.Records++
	}, func(end int) {
		p.Bytes += int64(end - s.pos)
		seg.size = int64(end)
		s.st.nBytes.Add(int64(end - s.pos))
		s.pos = end
	})
	if err != nil {
		return false, err
	}
	if t == nil {
		return true, nil
	}
	if mode == scanFollow {
		p.Waiting = fmt.Sprintf("segment %s offset %d: %s", path, t.offset, t.reason)
		return false, nil
	}
	// Zero the torn batch: this file will never be written again, and from
	// now on it is not the last one, so what follows its data must read as
	// the end. Zeroing rather than truncating leaves the file's size alone
	// for other standbys that may have it mapped (a page cut off under a
	// mapping is a SIGBUS).
	tail := data[end:min(len(data), end+zeroScanWindow)]
	n := lastNonZero(tail) + 1
	s.log.WithFields(logrus.Fields{
		"segment": segName(seq), "offset": t.offset, "zeroed_from": end, "zeroed_bytes": n,
	}).Warnf("journal: torn write at tail of last segment, zeroing it: %s", t.reason)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return false, fmt.Errorf("journal: repair segment: %w", err)
	}
	_, err = f.WriteAt(make([]byte, n), int64(end))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("journal: zero torn tail of segment %s at offset %d: %w", path, end, err)
	}
	return true, nil
}

// lastNonZero returns the index of the last non-zero byte of b, or -1.
func lastNonZero(b []byte) int {
	for i := len(b); i > 0; i -= len(zeroBlock) {
		lo := max(0, i-len(zeroBlock))
		if bytes.Equal(b[lo:i], zeroBlock[:i-lo]) {
			continue
		}
		for k := i - 1; k >= lo; k-- {
			if b[k] != 0 {
				return k
			}
		}
	}
	return -1
}

// Promote makes this process the journal's writer: it sets aside what a
// dead writer left half-made, catches up one last time (a half-written
// final batch is now a torn tail, to be cut off; damage anywhere else is
// ErrCorrupt), and starts writing in a new segment. p.Fence, if set,
// replaces Options.Fence. On error the Standby is closed.
func (s *Standby) Promote(p store.Promotion, idx store.Index) (store.Store, error) {
	j, err := s.promoteJournal(p, idx)
	if err != nil {
		return nil, err
	}
	return j, nil
}

func (s *Standby) promoteJournal(p store.Promotion, idx store.Index) (*Journal, error) {
	if s.closed {
		return nil, store.ErrClosed
	}
	s.closed = true
	s.promote = true
	opts := s.opts
	if p.Fence != nil {
		opts.Fence = p.Fence
	}
	if p.Verify != nil {
		opts.Verify = p.Verify
	}
	j := newJournal(opts, s.log)
	if err := j.makeDir(); err != nil {
		return nil, err
	}
	if err := j.setAsideLeftovers(); err != nil {
		return nil, err
	}
	if _, err := s.catchUp(idx); err != nil {
		return nil, err
	}
	if err := j.start(s.st); err != nil {
		return nil, err
	}
	return j, nil
}

// Close releases the Standby; it holds no files between calls.
func (s *Standby) Close() error {
	s.closed = true
	return nil
}

// listSegmentFiles returns the sequence numbers of the segment files in
// dir, ascending, ignoring temporaries and trash.
func listSegmentFiles(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, e := range ents {
		stem, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok || stem == "" || strings.Trim(stem, "0123456789") != "" {
			continue
		}
		seq, err := strconv.ParseUint(stem, 10, 64)
		if err != nil || seq == 0 {
			continue
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	return seqs, nil
}
