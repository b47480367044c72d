package journal

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/sirupsen/logrus"

	"handover/brokerd/store"
)

// Read returns the Data of the live Put id, read back from its segment and
// checked against its CRC: memory holds where each live message is, not
// its body. It is safe to call from any goroutine, alongside appends.
func (j *Journal) Read(id string) ([]byte, error) {
	// A record may move (carried forward) and its old segment be deleted
	// between the look-up and the read; the second look finds it moved.
	for attempt := 0; ; attempt++ {
		l, ok := j.st.lookup(id)
		if !ok {
			return nil, fmt.Errorf("journal: read %q: %w", id, store.ErrNotFound)
		}
		data, err := j.readAt(id, l)
		if err == nil {
			return data, nil
		}
		if attempt == 0 && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		return nil, err
	}
}

// maxRun bounds one read of adjacent records in ReadMany.
const maxRun = 256 << 10

// ReadMany implements store.BatchReader: records that lie next to each
// other in one segment (a queue's messages, usually) are read with one
// system call.
func (j *Journal) ReadMany(ids []string) ([][]byte, []error) {
	data := make([][]byte, len(ids))
	errs := make([]error, len(ids))
	type want struct {
		i int
		l loc
	}
	ws := make([]want, 0, len(ids))
	for i, id := range ids {
		l, ok := j.st.lookup(id)
		if !ok {
			errs[i] = fmt.Errorf("journal: read %q: %w", id, store.ErrNotFound)
			continue
		}
		ws = append(ws, want{i, l})
	}
	slices.SortFunc(ws, func(a, b want) int { return cmp.Compare(a.l.order(), b.l.order()) })
	for len(ws) > 0 {
		n, end := 1, int64(ws[0].l.off)+int64(ws[0].l.n)
		for n < len(ws) && ws[n].l.seg == ws[0].l.seg && int64(ws[n].l.off) == end && end-int64(ws[0].l.off) < maxRun {
			end += int64(ws[n].l.n)
			n++
		}
		run := ws[:n]
		ws = ws[n:]
		if n == 1 {
			data[run[0].i], errs[run[0].i] = j.Read(ids[run[0].i])
			continue
		}
		f, err := j.reader(run[0].l.seg)
		var buf []byte
		if err == nil {
			j.readAhead(f, run[0].l)
			buf = make([]byte, end-int64(run[0].l.off))
			_, err = f.ReadAt(buf, int64(run[0].l.off))
		}
		for _, w := range run {
			if err != nil {
				// Moved or deleted meanwhile, or unreadable: each alone.
				data[w.i], errs[w.i] = j.Read(ids[w.i])
				continue
			}
			rel := int64(w.l.off) - int64(run[0].l.off)
			data[w.i], errs[w.i] = j.checkAt(ids[w.i], w.l, buf[rel:rel+int64(w.l.n):rel+int64(w.l.n)])
		}
	}
	return data, errs
}

// readAt reads and checks the record of id at l, through the block cache
// where its segment is sealed.
func (j *Journal) readAt(id string, l loc) ([]byte, error) {
	if l.seg < j.activeSeq.Load() {
		if buf, err := j.readCached(id, l); buf != nil || err != nil {
			if err != nil {
				return nil, err
			}
			return j.checkAt(id, l, buf)
		}
	}
	f, err := j.reader(l.seg)
	if err != nil {
		return nil, err
	}
	j.readAhead(f, l)
	buf := make([]byte, l.n)
	if _, err := f.ReadAt(buf, int64(l.off)); err != nil {
		return nil, j.pastEnd(id, l, err)
	}
	return j.checkAt(id, l, buf)
}

// pastEnd is the error of a record that its file does not hold: the index
// and the file disagree.
func (j *Journal) pastEnd(id string, l loc, err error) error {
	path := filepath.Join(j.dir, segName(l.seg))
	return fmt.Errorf("%w: segment %s offset %d: reading %d-byte record of %q: %v", ErrCorrupt, path, l.off, l.n, id, err)
}

// readCached returns the bytes of the record at l in a sealed segment from
// the cached blocks it spans, reading and caching those that are missing.
// It returns nil, nil when the record is not for the cache (larger than
// half a block: worth its own read) or the cache is being bypassed.
func (j *Journal) readCached(id string, l loc) ([]byte, error) {
	if l.n > blockLen/2 {
		return nil, nil
	}
	c := j.cache
	off, end := int64(l.off), int64(l.off)+int64(l.n)
	first, last := off/blockLen, (end-1)/blockLen // at most two blocks
	buf := make([]byte, l.n)
	// part is what of buf block b holds, and where in the block it starts.
	part := func(b int64) ([]byte, int) {
		lo, hi := max(off, b*blockLen), min(end, (b+1)*blockLen)
		return buf[lo-off : hi-off], int(lo - b*blockLen)
	}
	var missing [2]bool
	for b := first; b <= last; b++ {
		dst, from := part(b)
		missing[b-first] = !c.copyOut(blockKey{l.seg, uint32(b)}, from, dst)
	}
	if !missing[0] && !missing[last-first] {
		return buf, nil
	}
	if !c.useful() {
		return nil, nil
	}
	f, err := j.reader(l.seg)
	if err != nil {
		return nil, err
	}
	j.readAhead(f, l)
	for b := first; b <= last; b++ {
		if !missing[b-first] {
			continue
		}
		d := c.buffer()
		n, err := f.ReadAt(d, b*blockLen)
		d = d[:n]
		dst, from := part(b)
		if from+len(dst) > n {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return nil, j.pastEnd(id, l, err)
		}
		copy(dst, d[from:])
		// Only a missing block is cached: a cached one is never replaced,
		// so that the cache can tell which blocks served reads. After put,
		// d belongs to the cache.
		c.put(blockKey{l.seg, uint32(b)}, d)
	}
	return buf, nil
}

// checkAt checks that buf is the whole record of id found at l, and
// returns its data.
func (j *Journal) checkAt(id string, l loc, buf []byte) ([]byte, error) {
	path := filepath.Join(j.dir, segName(l.seg))
	if int(le.Uint32(buf)) != len(buf)-recHeaderSize {
		return nil, fmt.Errorf("%w: segment %s offset %d: record length %d, index says %d", ErrCorrupt, path, l.off, le.Uint32(buf), len(buf)-recHeaderSize)
	}
	r, why := checkRecord(buf)
	if why == "" && string(r.id) != id {
		why = fmt.Sprintf("record holds id %q", r.id)
	}
	if why != "" {
		return nil, fmt.Errorf("%w: segment %s offset %d: reading %q: %s", ErrCorrupt, path, l.off, id, why)
	}
	if r.kind == kindMove {
		return r.data[moveKeyLen:], nil
	}
	return r.data, nil
}

// readAheadBytes is how far ahead of a read the kernel is asked to fetch.
// Queues are delivered in about the order they were written, so the
// records after the one read now are the ones read next; the journal's
// writes bypass the page cache (O_DIRECT), so without this every delivery
// of a backlog would wait for the disk.
const readAheadBytes = 2 << 20

// readAhead asks the kernel to fetch the next readAheadBytes of l's
// segment once reads come within half of that of where it last asked.
func (j *Journal) readAhead(f *os.File, l loc) {
	j.rmu.Lock()
	ahead := j.ahead[l.seg]
	due := int64(l.off)+readAheadBytes/2 > ahead
	if due {
		j.ahead[l.seg] = int64(l.off) + readAheadBytes
	}
	j.rmu.Unlock()
	if due {
		fadviseWillNeed(f, int64(l.off), readAheadBytes)
	}
}

// reader returns the read-only descriptor of segment seq, opening it once.
func (j *Journal) reader(seq uint64) (*os.File, error) {
	j.rmu.Lock()
	defer j.rmu.Unlock()
	if f := j.rfiles[seq]; f != nil {
		return f, nil
	}
	if j.rfiles == nil {
		return nil, ErrClosed
	}
	f, err := os.Open(filepath.Join(j.dir, segName(seq)))
	if err != nil {
		return nil, err
	}
	j.rfiles[seq] = f
	return f, nil
}

// closeReader closes segment seq's read descriptor, once it is deleted.
func (j *Journal) closeReader(seq uint64) {
	j.rmu.Lock()
	f := j.rfiles[seq]
	delete(j.rfiles, seq)
	delete(j.ahead, seq)
	j.rmu.Unlock()
	j.cache.dropSegment(seq)
	if f != nil {
		f.Close()
	}
}

// closeReaders closes every read descriptor (at Close).
func (j *Journal) closeReaders() {
	j.rmu.Lock()
	fs := j.rfiles
	j.rfiles = nil
	j.rmu.Unlock()
	for _, f := range fs {
		f.Close()
	}
}

// carryBytes bounds the records carried forward in one go, so that
// producers' batches are never held up behind a large copy.
const carryBytes = 1 << 20

// carry copies live records out of the oldest segment into the one being
// written, as kindMove records, so that one old unacknowledged message
// cannot pin a segment (and every segment after it that retired records
// there) on disk: disk use stays within about twice the live data plus two
// segments whatever the pattern of acknowledgements. It runs on the writer
// and queues the moves as the journal's own Append; the segment empties
// once they are applied, and compaction deletes it.
func (j *Journal) carry() {
	// Worth copying out of: a segment that is mostly retired records, or
	// one that keeps an otherwise dead newer segment on disk (it retired
	// records here). Either way the copy frees more than it writes, so
	// carrying cannot feed on itself: the copies are live records.
	var seg *segment
	for _, seq := range j.st.order {
		if s := j.st.segs[seq]; s != j.active && s.live > 0 && (2*s.liveBytes < s.recBytes || j.pinsDead(seq)) {
			seg = s
			break
		}
	}
	if seg == nil {
		return
	}
	path := filepath.Join(j.dir, seg.name)
	data, unmap, err := mapSegment(path)
	if err != nil {
		j.log.WithError(err).WithField("segment", seg.name).Warn("journal: cannot read segment to carry its live records forward")
		return
	}
	defer unmap()
	var moves []Record
	size := 0
	from := max(seg.carried, segHeaderSize)
	end, _, err := scanSegment(data[:seg.size], int(from), path, scanFinal, func(r rawRecord, off int) {
		if size >= carryBytes {
			return
		}
		seg.carried = int64(off + r.n)
		var cur loc
		var ok bool
		var data []byte
		kind := r.kind
		switch r.kind {
		case store.KindPut:
			kind = kindMove
			cur, ok = j.st.lookup(string(r.id))
			data = le.AppendUint64(make([]byte, 0, moveKeyLen+len(r.data)), loc{seg: seg.seq, off: uint32(off)}.order())
			data = append(data, r.data...)
		case kindMove:
			cur, ok = j.st.lookup(string(r.id))
			data = append([]byte(nil), r.data...)
		case store.KindProducer:
			cur, ok = j.st.producers[string(r.id)]
			data = append([]byte(nil), r.data...)
		}
		if !ok || cur.seg != seg.seq || cur.off != uint32(off) {
			return // retired, or carried already
		}
		moves = append(moves, Record{Kind: kind, ID: string(r.id), Queue: string(r.queue), Data: data})
		size += r.n
	}, nil)
	if err != nil {
		j.log.WithError(err).WithField("segment", seg.name).Error("journal: cannot carry live records forward")
		return
	}
	if size < carryBytes {
		seg.carried = int64(end)
	}
	if len(moves) == 0 {
		return
	}
	j.log.WithFields(logrus.Fields{"segment": seg.name, "records": len(moves), "bytes": size}).Debug("journal: carrying live records forward")
	// The moves go ahead of everything queued: they copy records live as
	// of now, and an Ack queued meanwhile must land after its move, or
	// replay would bring the message back.
	j.carrying = true
	j.mu.Lock()
	j.pending = slices.Insert(j.pending, 0, request{recs: moves, internal: true, done: func(err error) {
		j.carrying = false // on the writer, like carry
		if err != nil {
			j.log.WithError(err).Warn("journal: carrying live records forward failed")
		}
		j.st.compactDue = true
	}})
	j.mu.Unlock()
}

// pinsDead reports whether a segment with nothing live is kept only
// because it retired records of segment seq.
func (j *Journal) pinsDead(seq uint64) bool {
	for _, s := range j.st.segs {
		if s != j.active && s.live == 0 && s.refs[seq] > 0 {
			return true
		}
	}
	return false
}
