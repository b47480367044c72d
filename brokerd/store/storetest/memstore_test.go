package storetest_test

// memstore is a small in-memory backend written to the store contract, a
// log of checksummed frames (one per group commit) on a shared "disk", so
// that the suite can be run here, before and independently of the real
// backends, with every optional capability. Its bugs (see bug) are the
// mutants TestMutants runs the suite against: each must make some case
// fail, or that case could not catch the bug it is there for.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/brokerd/store"
	"handover/brokerd/store/storetest"
)

// disk is the medium every handle of one store shares.
type disk struct {
	mu     sync.Mutex
	log    []byte
	writer *memStore // the only store allowed to write; nil after a crash
}

// Frame: length (4), CRC of the payload (4), payload. Payload: records of
// kind (1), id, queue, data (each uvarint length then bytes), then a CRC
// of the data (4), so that Read can check a body alone.
const frameHeader = 8

func appendField(b []byte, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encodeFrame(recs []store.Record) []byte {
	var p []byte
	for _, r := range recs {
		p = append(p, byte(r.Kind))
		p = appendField(p, []byte(r.ID))
		p = appendField(p, []byte(r.Queue))
		p = appendField(p, r.Data)
		p = binary.LittleEndian.AppendUint32(p, crc32.ChecksumIEEE(r.Data))
	}
	f := binary.LittleEndian.AppendUint32(nil, uint32(len(p)))
	f = binary.LittleEndian.AppendUint32(f, crc32.ChecksumIEEE(p))
	return append(f, p...)
}

// rec is a decoded record and where its data is in the log.
type rec struct {
	kind           store.Kind
	id, queue      string
	dataOff, dataN int
	dataCRC        uint32
}

// decode parses the records of payload, which starts at off in the log;
// it returns those that are whole.
func decode(payload []byte, off int) []rec {
	var out []rec
	pos := 0
	field := func() ([]byte, int, bool) {
		n, k := binary.Uvarint(payload[pos:])
		if k <= 0 || pos+k+int(n) > len(payload) {
			return nil, 0, false
		}
		start := pos + k
		pos = start + int(n)
		return payload[start:pos], start, true
	}
	for pos < len(payload) {
		var r rec
		r.kind = store.Kind(payload[pos])
		pos++
		id, _, ok1 := field()
		q, _, ok2 := field()
		_, ds, ok3 := field()
		if !ok1 || !ok2 || !ok3 || pos+4 > len(payload) {
			return out
		}
		r.id, r.queue = string(id), string(q)
		r.dataOff, r.dataN = off+ds, pos-ds
		r.dataCRC = binary.LittleEndian.Uint32(payload[pos:])
		pos += 4
		out = append(out, r)
	}
	return out
}

// loc is where a live body is.
type loc struct {
	off, n int
	crc    uint32
}

// harness implements storetest.Harness and every optional capability.
type harness struct {
	d     *disk
	bug   string
	epoch uint64
}

func (h *harness) Follow(t *testing.T) store.Standby {
	return &memStandby{d: h.d, bug: h.bug, live: map[string]loc{}}
}

func (h *harness) Promotion(t *testing.T) store.Promotion {
	h.epoch++
	return store.Promotion{Epoch: h.epoch}
}

func (h *harness) Crash(t *testing.T, s store.Store) { s.(*memStore).crash() }

// TornTail cuts the last frame in half.
func (h *harness) TornTail(t *testing.T) {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	pos, last := 0, -1
	for pos+frameHeader <= len(h.d.log) {
		last = pos
		pos += frameHeader + int(binary.LittleEndian.Uint32(h.d.log[pos:]))
	}
	if last < 0 {
		t.Fatal("memstore: no frame to tear")
	}
	h.d.log = h.d.log[:last+(pos-last)/2]
}

// FlipBit finds the body by its content.
func (h *harness) FlipBit(t *testing.T, s store.Store, id string, body []byte) string {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	off := bytes.Index(h.d.log, body)
	if off < 0 {
		t.Fatalf("memstore: body of %q not found", id)
	}
	h.d.log[off+len(body)/2] ^= 0x10
	return fmt.Sprintf("offset %d", off)
}

func (h *harness) PartialWrite(t *testing.T, s store.Store, recs []store.Record, done func(error)) func() {
	ms := s.(*memStore)
	held, release := make(chan struct{}), make(chan struct{})
	ms.mu.Lock()
	ms.hold, ms.release = held, release
	ms.mu.Unlock()
	ms.Append(recs, done)
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("memstore: the write was not held")
	}
	return func() { close(release) }
}

// memStandby reads the log from pos.
type memStandby struct {
	d         *disk
	bug       string
	pos       int
	live      map[string]loc
	queues    map[string]string
	producers map[string]uint64
	closed    bool
}

func (sb *memStandby) CatchUp(idx store.Index) (store.Progress, error) {
	if sb.closed {
		return store.Progress{}, store.ErrClosed
	}
	if sb.bug == "reread" {
		sb.pos = 0
	}
	return sb.read(idx, false)
}

func (sb *memStandby) read(idx store.Index, final bool) (store.Progress, error) {
	sb.d.mu.Lock()
	defer sb.d.mu.Unlock()
	var p store.Progress
	log := sb.d.log
	for sb.pos < len(log) {
		if sb.pos+frameHeader > len(log) {
			p.Waiting = "frame header incomplete"
			break
		}
		n := int(binary.LittleEndian.Uint32(log[sb.pos:]))
		end := sb.pos + frameHeader + n
		whole := end <= len(log)
		good := whole && crc32.ChecksumIEEE(log[sb.pos+frameHeader:end]) == binary.LittleEndian.Uint32(log[sb.pos+4:])
		if !good {
			last := !whole || end == len(log)
			switch {
			case !last:
				return p, fmt.Errorf("%w: memstore log offset %d: bad checksum", store.ErrCorrupt, sb.pos)
			case final && sb.bug == "torncorrupt":
				return p, fmt.Errorf("%w: memstore log offset %d: torn", store.ErrCorrupt, sb.pos)
			case final:
				sb.d.log = sb.d.log[:sb.pos] // the writer is dead: cut the torn tail
			case sb.bug == "partialcorrupt":
				return p, fmt.Errorf("%w: memstore log offset %d: incomplete", store.ErrCorrupt, sb.pos)
			case sb.bug == "partialskip":
				sb.pos = len(log)
			case sb.bug == "partialapply":
				sb.apply(decode(log[sb.pos+frameHeader:], sb.pos+frameHeader), idx, &p)
			default:
				p.Waiting = fmt.Sprintf("frame at %d being written", sb.pos)
			}
			break
		}
		sb.apply(decode(log[sb.pos+frameHeader:end], sb.pos+frameHeader), idx, &p)
		p.Bytes += int64(end - sb.pos)
		sb.pos = end
	}
	p.Position = strconv.Itoa(sb.pos)
	return p, nil
}

func (sb *memStandby) apply(recs []rec, idx store.Index, p *store.Progress) {
	if sb.producers == nil {
		sb.producers = map[string]uint64{}
		sb.queues = map[string]string{}
	}
	for _, r := range recs {
		p.Records++
		switch r.kind {
		case store.KindPut:
			sb.live[r.id] = loc{r.dataOff, r.dataN, r.dataCRC}
			sb.queues[r.id] = r.queue
			idx.Put(r.id, r.queue, r.dataN, uint64(r.dataOff))
		case store.KindAck:
			if sb.bug == "ackignored" {
				continue
			}
			delete(sb.live, r.id)
			idx.Ack(r.id)
		case store.KindProducer:
			seq, _ := strconv.ParseUint(string(sb.d.log[r.dataOff:r.dataOff+r.dataN]), 10, 64)
			sb.producers[r.id] = seq
			idx.Producer(r.id, seq)
		case store.KindProducerEnd:
			delete(sb.producers, r.id)
			idx.Producer(r.id, 0)
		}
	}
}

func (sb *memStandby) Promote(pr store.Promotion, idx store.Index) (store.Store, error) {
	if sb.closed {
		return nil, store.ErrClosed
	}
	sb.closed = true
	if sb.bug == "promotereread" {
		sb.pos = 0
	}
	if _, err := sb.read(idx, true); err != nil {
		return nil, err
	}
	s := &memStore{d: sb.d, bug: sb.bug, fence: pr.Fence, live: sb.live, exited: make(chan struct{})}
	s.cond.L = &s.mu
	s.nLive = len(sb.live)
	sb.d.mu.Lock()
	sb.d.writer = s
	sb.d.mu.Unlock()
	go s.run()
	return s, nil
}

func (sb *memStandby) Close() error {
	sb.closed = true
	return nil
}

type request struct {
	recs []store.Record
	done func(error)
}

// memStore is the master: one writer goroutine, group commit.
type memStore struct {
	d     *disk
	bug   string
	fence func() error

	mu       sync.Mutex
	cond     sync.Cond
	pending  []request
	closed   bool
	crashed  bool
	hold     chan struct{} // armed by PartialWrite
	release  chan struct{}
	exited   chan struct{}
	live     map[string]loc    // under mu
	cache    map[string][]byte // the callers' Data (bug aliasdata)
	nLive    int
	nSyncs   uint64
	nRecords uint64
	fenced   error // writer only
	// lastBase is where the last frame written starts, ackedFrom where
	// the last one whose dones were called does (bug losetail).
	lastBase, ackedFrom int
}

func (s *memStore) Append(recs []store.Record, done func(error)) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		if s.bug == "closeearly" {
			done(nil)
			return
		}
		done(store.ErrClosed)
		return
	}
	if len(recs) == 0 && s.bug == "barrierearly" {
		s.mu.Unlock()
		done(nil)
		return
	}
	s.pending = append(s.pending, request{recs, done})
	s.mu.Unlock()
	s.cond.Signal()
}

func (s *memStore) run() {
	defer close(s.exited)
	for {
		s.mu.Lock()
		for len(s.pending) == 0 && !s.closed && !s.crashed {
			s.cond.Wait()
		}
		if s.crashed || len(s.pending) == 0 {
			s.mu.Unlock()
			return
		}
		work := s.pending
		s.pending = nil
		s.mu.Unlock()
		if !s.commit(work) {
			return
		}
	}
}

func validate(recs []store.Record) error {
	for _, r := range recs {
		if r.ID == "" {
			return fmt.Errorf("%w: empty id", store.ErrInvalid)
		}
		if r.Kind < store.KindPut || r.Kind > store.KindProducerEnd {
			return fmt.Errorf("%w: kind %v", store.ErrInvalid, r.Kind)
		}
	}
	return nil
}

// commit writes one batch; false means the store crashed meanwhile.
func (s *memStore) commit(work []request) bool {
	errs := make([]error, len(work))
	var recs []store.Record
	for i, r := range work {
		errs[i] = validate(r.recs)
		if errs[i] == nil {
			recs = append(recs, r.recs...)
		}
	}
	if s.bug == "invalidall" {
		for i := range errs {
			if errs[i] != nil {
				for k := range errs {
					errs[k] = errs[i]
				}
				recs = nil
				break
			}
		}
	}
	if len(recs) > 0 && s.fenced == nil && s.fence != nil && s.bug != "nofence" {
		if err := s.fence(); err != nil {
			s.fenced = fmt.Errorf("%w: %v", store.ErrFenced, err)
			if s.bug == "fenceerr" {
				s.fenced = fmt.Errorf("memstore: %v", err)
			}
		}
	}
	if len(recs) > 0 && s.fenced != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = s.fenced
			}
		}
		recs = nil
	}
	if len(recs) > 0 {
		frame := encodeFrame(recs)
		s.mu.Lock()
		hold, release := s.hold, s.release
		s.hold, s.release = nil, nil
		s.mu.Unlock()
		s.d.mu.Lock()
		if s.d.writer != s {
			s.d.mu.Unlock()
			return false
		}
		base := len(s.d.log)
		s.mu.Lock()
		s.lastBase = base
		s.mu.Unlock()
		if hold != nil {
			s.d.log = append(s.d.log, frame[:len(frame)/2]...)
			s.d.mu.Unlock()
			close(hold)
			<-release
			s.d.mu.Lock()
			if s.d.writer != s {
				s.d.mu.Unlock()
				return false
			}
			s.d.log = append(s.d.log, frame[len(frame)/2:]...)
		} else {
			s.d.log = append(s.d.log, frame...)
		}
		s.d.mu.Unlock()
		time.Sleep(50 * time.Microsecond) // what an fsync costs, at least
		s.mu.Lock()
		for _, r := range decode(frame[frameHeader:], base+frameHeader) {
			switch r.kind {
			case store.KindPut:
				if _, ok := s.live[r.id]; !ok {
					s.nLive++
				}
				if s.bug == "aliasdata" {
					if s.cache == nil {
						s.cache = map[string][]byte{}
					}
					for _, in := range recs {
						if in.ID == r.id {
							s.cache[r.id] = in.Data
						}
					}
				}
				s.live[r.id] = loc{r.dataOff, r.dataN, r.dataCRC}
			case store.KindAck:
				if _, ok := s.live[r.id]; ok {
					delete(s.live, r.id)
					if s.bug != "livestat" {
						s.nLive--
					}
				}
			}
		}
		s.nSyncs++
		s.nRecords += uint64(len(recs))
		crashed := s.crashed
		s.mu.Unlock()
		if crashed {
			return false
		}
	}
	if len(recs) > 0 {
		s.mu.Lock()
		s.ackedFrom = s.lastBase
		s.mu.Unlock()
	}
	if s.bug == "donereverse" {
		for i := len(work) - 1; i >= 0; i-- {
			work[i].done(errs[i])
		}
		return true
	}
	for i, r := range work {
		r.done(errs[i])
	}
	return true
}

func (s *memStore) Read(id string) ([]byte, error) {
	s.mu.Lock()
	l, ok := s.live[id]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("memstore: %q: %w", id, store.ErrNotFound)
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if l.off+l.n > len(s.d.log) {
		return nil, fmt.Errorf("%w: memstore: body of %q at offset %d is past the end", store.ErrCorrupt, id, l.off)
	}
	b := s.d.log[l.off : l.off+l.n]
	if s.bug != "nocrc" && crc32.ChecksumIEEE(b) != l.crc {
		return nil, fmt.Errorf("%w: memstore: body of %q at offset %d fails its checksum", store.ErrCorrupt, id, l.off)
	}
	if s.bug == "sharedread" {
		return b, nil
	}
	if s.bug == "aliasdata" {
		if d, ok := s.cache[id]; ok {
			return bytes.Clone(d), nil
		}
	}
	return bytes.Clone(b), nil
}

func (s *memStore) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cond.Broadcast()
	<-s.exited
	return nil
}

func (s *memStore) Stats() store.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return store.Stats{Live: s.nLive, Syncs: s.nSyncs, Records: s.nRecords}
}

// crash stops the writer as SIGKILL would: what is pending is never
// written, and nothing more is.
func (s *memStore) crash() {
	s.mu.Lock()
	acked := s.ackedFrom
	s.mu.Unlock()
	s.d.mu.Lock()
	if s.d.writer == s {
		s.d.writer = nil
		if s.bug == "losetail" {
			// Loses the last frame whose dones were called, and what
			// follows, as if done had come before the write was durable.
			s.d.log = s.d.log[:acked]
		}
	}
	s.d.mu.Unlock()
	s.mu.Lock()
	s.crashed = true
	s.mu.Unlock()
	s.cond.Broadcast()
	<-s.exited
}

func newHarness(bug string) func(t *testing.T) storetest.Harness {
	return func(t *testing.T) storetest.Harness { return &harness{d: &disk{}, bug: bug} }
}

// TestSuite runs the suite over the correct memstore: every case passes.
func TestSuite(t *testing.T) {
	storetest.Run(t, newHarness(""))
}

// TestMutant runs the suite over the memstore with the bug named by
// $STORETEST_MUTANT; TestMutants runs it in a child process per bug.
func TestMutant(t *testing.T) {
	bug := os.Getenv("STORETEST_MUTANT")
	if bug == "" {
		t.Skip("run by TestMutants")
	}
	// The suite is meant to fail here: it need not wait long to.
	storetest.SetPatience(3 * time.Second)
	storetest.Run(t, newHarness(bug))
}

// mutants maps each bug of memstore to the case that must catch it.
var mutants = map[string]string{
	"reread":         "Follow",
	"promotereread":  "TakeoverReadsTail",
	"nofence":        "Fencing",
	"fenceerr":       "Fencing",
	"losetail":       "Crash",
	"torncorrupt":    "TornTail",
	"partialcorrupt": "PartialWrite",
	"partialskip":    "PartialWrite",
	"partialapply":   "PartialWrite",
	"nocrc":          "BitFlip",
	"donereverse":    "DoneOrder",
	"sharedread":     "RoundTrip",
	"aliasdata":      "RoundTrip",
	"livestat":       "Scale",
	"closeearly":     "DoneClose",
	"barrierearly":   "DoneBarrier",
	"ackignored":     "RoundTrip",
	"invalidall":     "DoneInvalid",
}

// TestMutants checks that the suite is not blind: for each bug of
// memstore, the case meant to catch it fails. Each runs in a child process
// (the test binary, running TestMutant), since a failing case fails the
// test that runs it.
func TestMutants(t *testing.T) {
	if os.Getenv("STORETEST_MUTANT") != "" {
		t.Skip("inside a mutant run")
	}
	if testing.Short() {
		t.Skip("runs the suite once per mutant")
	}
	for bug, want := range mutants {
		t.Run(bug, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run", "^TestMutant$/^"+want+"$", "-test.v")
			cmd.Env = append(os.Environ(), "STORETEST_MUTANT="+bug)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "--- FAIL: TestMutant/"+want) {
				t.Errorf("with bug %q, case %s did not fail (%v):\n%s", bug, want, err, out)
				return
			}
			// The last message before the case's verdict is the failure
			// that ended it.
			last := ""
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, "--- FAIL") {
					break
				}
				if strings.Contains(line, ".go:") {
					last = strings.TrimSpace(line)
				}
			}
			t.Logf("caught: %s", last)
		})
	}
}

// TestSuiteWithoutOptions runs the suite over a memstore that hides its
// optional capabilities, as a backend without them (PostgreSQL) would:
// those cases are skipped, the others pass.
func TestSuiteWithoutOptions(t *testing.T) {
	type plain struct{ storetest.Harness }
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		return plain{newHarness("")(t)}
	})
}
