package journal

import "strconv"

// locIndex maps the ids of live records to where they are. A deep backlog
// is a million entries or more, and they are most of what the journal costs
// in memory: a map[string]loc takes 40 to 90 bytes an entry (the id's
// string header, the loc, and the table's slack as it doubles), all of it
// scanned by every garbage collection.
//
// Ids that end in a decimal counter, such as brokerd's "ID:<epoch>-<seq>",
// are mostly consecutive within their prefix, so they are kept in arrays
// instead: one run per prefix, in chunks of chunkLen locs indexed by the
// counter, 16 bytes an id and nothing for the collector to scan. The rest
// go to a map: ids without such a counter, ids of a prefix met after
// maxRuns others, and ids away from the end of their prefix's run (a run
// only grows at its end, so scattered counters cannot each cost a chunk).
//
// Each time a run grows, it looks at two of its older chunks in turn: one
// holding fewer than chunkLen/sparseDiv ids (counters that were mostly
// skipped by messages that were not journaled, or a few old messages left
// among acknowledged ones) moves them to the map and is freed. A chunk is
// freed as soon as it is empty.
type locIndex struct {
	runs  map[string]*idRun
	other map[string]loc
	n     int
	spare *[chunkLen]loc // an emptied chunk, all zero, for the next one made
}

const (
	chunkLen  = 512 // 8 KiB of locs
	sparseDiv = 16
	maxRuns   = 64
	// maxGap is how many chunks' worth of counters a run may skip as it
	// grows (counters of messages that were not journaled), and how many
	// of its last chunks may still be made late.
	maxGap = 16
	// maxJump is how far past its end a run holding many ids may grow at
	// once: the counters in between were taken by messages never
	// journaled (brokerd's counter is shared with topic and non-persistent
	// messages, which a burst can take thousands of), and a skipped chunk
	// costs a nil pointer and a count. Past it, ids go to the map.
	maxJump = 1 << 16
	// maxDigits keeps a counter within uint64.
	maxDigits = 19
)

// idRun is the chunks of one prefix: chunks[i] holds the counters from
// (base+i)*chunkLen on; nil where freed.
type idRun struct {
	base   uint64
	chunks []*[chunkLen]loc
	live   []uint16 // ids in each chunk
	n      int      // ids in all chunks
	end    uint64   // one past the highest chunk number made
	sweep  int      // the older chunk the next growth looks at
}

func newLocIndex() *locIndex {
	return &locIndex{runs: make(map[string]*idRun), other: make(map[string]loc)}
}

// splitID splits id into a prefix and its trailing decimal counter. An id
// whose counter is missing, too long, or written with a leading zero (two
// spellings of one number) does not split.
func splitID(id string) (prefix string, n uint64, ok bool) {
	i := len(id)
	for i > 0 && id[i-1] >= '0' && id[i-1] <= '9' {
		i--
	}
	digits := len(id) - i
	if digits == 0 || digits > maxDigits || digits > 1 && id[i] == '0' {
		return "", 0, false
	}
	for _, c := range []byte(id[i:]) {
		n = n*10 + uint64(c-'0')
	}
	return id[:i], n, true
}

// slot finds id's place in its prefix's run: the run (nil if none), the
// chunk index in it, and the loc's address (nil if that chunk does not
// exist).
func (x *locIndex) slot(id string) (r *idRun, i uint64, p *loc) {
	prefix, n, ok := splitID(id)
	if !ok {
		return nil, 0, nil
	}
	if r = x.runs[prefix]; r == nil {
		return nil, 0, nil
	}
	c := n / chunkLen
	if c < r.base || c-r.base >= uint64(len(r.chunks)) || r.chunks[c-r.base] == nil {
		return r, 0, nil
	}
	i = c - r.base
	return r, i, &r.chunks[i][n%chunkLen]
}

// get returns the loc of id.
func (x *locIndex) get(id string) (loc, bool) {
	if _, _, p := x.slot(id); p != nil && p.n != 0 {
		return *p, true
	}
	l, ok := x.other[id]
	return l, ok
}

// set makes l the loc of id, whether it was indexed or not. l.n must not
// be zero: that marks a free slot.
func (x *locIndex) set(id string, l loc) {
	if _, ok := x.other[id]; ok {
		x.other[id] = l
		return
	}
	r, i, p := x.slot(id)
	if p == nil && x.grow(id, r) {
		r, i, p = x.slot(id)
	}
	switch {
	case p == nil:
		x.other[id] = l
		x.n++
	case p.n == 0:
		*p = l
		r.live[i]++
		r.n++
		x.n++
	default:
		*p = l
	}
}

// grow makes the chunk of id's counter if the run may have it there, and
// reports whether it did. A run grows at its end, or a little past it;
// chunks among its last maxGap may be made late (transactions of several
// connections take their ids in one order and commit in another). A run
// that holds few ids starts again where a counter far ahead of it lands.
func (x *locIndex) grow(id string, r *idRun) bool {
	prefix, n, ok := splitID(id)
	if !ok {
		return false
	}
	c := n / chunkLen
	switch {
	case r == nil && len(x.runs) >= maxRuns:
		return false
	case r == nil:
		r = &idRun{base: c, end: c}
		x.runs[prefix] = r
	case c < r.base || c+maxGap < r.end:
		return false // older than the run's last chunks
	case c >= r.end+maxGap && r.n >= chunkLen && c >= r.end+maxJump:
		return false
	case c >= r.end+maxGap && r.n < chunkLen:
		for k := range r.chunks {
			if r.chunks[k] != nil {
				x.thin(prefix, r, k)
			}
		}
		r.chunks, r.live, r.base, r.end, r.sweep = r.chunks[:0], r.live[:0], c, c, 0
	}
	if len(r.chunks) == 0 {
		r.base = c
	}
	for r.base+uint64(len(r.chunks)) <= c {
		r.chunks = append(r.chunks, nil)
		r.live = append(r.live, 0)
	}
	if x.spare != nil {
		r.chunks[c-r.base], x.spare = x.spare, nil
	} else {
		r.chunks[c-r.base] = new([chunkLen]loc)
	}
	if c >= r.end {
		r.end = c + 1
		x.sweep(prefix, r)
	}
	return true
}

// sweep looks at the next two older chunks of run r (two, so that the
// sweep gains on the run's growth and comes round again), and thins those
// that are sparse. The last maxGap chunks are left alone: ids may still
// be coming for them.
func (x *locIndex) sweep(prefix string, r *idRun) {
	for range 2 {
		k := r.sweep
		if r.base+uint64(k)+maxGap >= r.end {
			r.sweep = 0
			continue
		}
		if r.chunks[k] != nil && int(r.live[k]) < chunkLen/sparseDiv {
			x.thin(prefix, r, k)
		}
		r.sweep++
	}
	x.trim(prefix, r)
}

// del forgets id and returns its loc.
func (x *locIndex) del(id string) (loc, bool) {
	if l, ok := x.other[id]; ok {
		delete(x.other, id)
		x.n--
		return l, true
	}
	r, i, p := x.slot(id)
	if p == nil || p.n == 0 {
		return loc{}, false
	}
	l := *p
	*p = loc{}
	x.n--
	r.n--
	if r.live[i]--; r.live[i] == 0 {
		// Every slot is zero again: the chunk is kept for the next one
		// made, so that a queue its consumer keeps empty does not make
		// and free a chunk of 8 KiB for every message.
		x.spare, r.chunks[i] = r.chunks[i], nil
		prefix, _, _ := splitID(id)
		x.trim(prefix, r)
	}
	return l, true
}

// thin moves the ids of chunk k of run r to the map and frees the chunk.
func (x *locIndex) thin(prefix string, r *idRun, k int) {
	base := (r.base + uint64(k)) * chunkLen
	for j, l := range r.chunks[k] {
		if l.n != 0 {
			x.other[prefix+strconv.FormatUint(base+uint64(j), 10)] = l
		}
	}
	r.n -= int(r.live[k])
	r.chunks[k], r.live[k] = nil, 0
}

// trim drops the freed chunks at the front of run r, so that a run
// drained in order keeps no slot for every chunk it ever had; a run with
// no chunk left that is not growing any more (its end chunk is gone too)
// is dropped, making room for another prefix.
func (x *locIndex) trim(prefix string, r *idRun) {
	k := 0
	for k < len(r.chunks) && r.chunks[k] == nil {
		k++
	}
	if k == 0 {
		return
	}
	if k == len(r.chunks) {
		delete(x.runs, prefix)
		return
	}
	n := copy(r.chunks, r.chunks[k:])
	copy(r.live, r.live[k:])
	clear(r.chunks[n:])
	r.chunks, r.live = r.chunks[:n], r.live[:n]
	r.base += uint64(k)
	r.sweep = max(0, r.sweep-k)
}

// len is the number of ids indexed.
func (x *locIndex) len() int { return x.n }

// each calls fn with every id and its loc, in no particular order. fn
// must not change the index.
func (x *locIndex) each(fn func(id string, l loc)) {
	x.eachWhere(nil, fn)
}

// eachWhere is each for the locs keep (unless nil) takes: the id of a loc
// it does not take is never made, which matters to a standby dropping a
// segment among a million live ids.
func (x *locIndex) eachWhere(keep func(loc) bool, fn func(id string, l loc)) {
	for id, l := range x.other {
		if keep == nil || keep(l) {
			fn(id, l)
		}
	}
	for prefix, r := range x.runs {
		for k, ch := range r.chunks {
			if ch == nil {
				continue
			}
			base := (r.base + uint64(k)) * chunkLen
			for j, l := range ch {
				if l.n != 0 && (keep == nil || keep(l)) {
					fn(prefix+strconv.FormatUint(base+uint64(j), 10), l)
				}
			}
		}
	}
}
