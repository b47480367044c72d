package journal

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

func put(id, queue string, data []byte) Record {
	return Record{Kind: KindPut, ID: id, Queue: queue, Data: data}
}

func ack(id string) Record { return Record{Kind: KindAck, ID: id} }

// open opens dir and registers Close; it fails the test on error.
func open(t testing.TB, opts Options) (*Journal, []Record) {
	t.Helper()
	j, live, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	return j, live
}

func mustWrite(t testing.TB, j *Journal, recs ...Record) {
	t.Helper()
	if err := j.Write(recs...); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func ids(recs []Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	slices.Sort(m)
	return m
}

// copyDir copies the segment files of src into a new temporary directory.
func copyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, name := range segFiles(t, src) {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func TestRoundTrip(t *testing.T) {
	binary := []byte("a\x00b\x00\x00\xff\xfe\x00")
	big := bytes.Repeat([]byte{0, 1, 2, 0}, 300000) // 1.2 MB, spans pages
	tests := []struct {
		name   string
		writes [][]Record
		want   []Record
	}{
		{
			name:   "puts only",
			writes: [][]Record{{put("m1", "q", []byte("one"))}, {put("m2", "q", []byte("two")), put("m3", "r", []byte("three"))}},
			want:   []Record{put("m1", "q", []byte("one")), put("m2", "q", []byte("two")), put("m3", "r", []byte("three"))},
		},
		{
			name: "puts and acks",
			writes: [][]Record{
				{put("m1", "q", []byte("1")), put("m2", "q", []byte("2"))},
				{ack("m1"), put("m3", "q", []byte("3"))},
				{ack("m3")},
			},
			want: []Record{put("m2", "q", []byte("2"))},
		},
		{
			name:   "put and ack in one append",
			writes: [][]Record{{put("m1", "q", nil), ack("m1"), put("m2", "q", nil)}},
			want:   []Record{put("m2", "q", nil)},
		},
		{
			name:   "binary data with NULs, binary id and queue",
			writes: [][]Record{{put("id\x00x", "q\x00\xff", binary)}, {put("big", "", big)}},
			want:   []Record{put("id\x00x", "q\x00\xff", binary), put("big", "", big)},
		},
		{
			name:   "empty data",
			writes: [][]Record{{put("e", "q", []byte{})}},
			want:   []Record{put("e", "q", nil)},
		},
		{
			name:   "ack of unknown id is ignored",
			writes: [][]Record{{ack("nope")}, {put("m1", "q", []byte("x"))}, {ack("m1"), ack("m1")}},
			want:   nil,
		},
		{
			name:   "second put of a live id replaces the first",
			writes: [][]Record{{put("a", "q", []byte("old")), put("b", "q", nil)}, {put("a", "q2", []byte("new"))}},
			want:   []Record{put("b", "q", nil), put("a", "q2", []byte("new"))},
		},
	}
	for _, tc := range tests {
		for _, segSize := range []int64{0, 1} { // default, and one batch per segment
			t.Run(fmt.Sprintf("%s/segsize=%d", tc.name, segSize), func(t *testing.T) {
				dir := t.TempDir()
				opts := Options{Dir: dir, SegmentSize: segSize}
				j, live := open(t, opts)
				if len(live) != 0 {
					t.Fatalf("fresh journal has %d live records", len(live))
				}
				for _, w := range tc.writes {
					mustWrite(t, j, w...)
				}
				if got := j.Stats().Live; got != len(tc.want) {
					t.Errorf("Stats().Live = %d, want %d", got, len(tc.want))
				}
				if err := j.Close(); err != nil {
					t.Fatal(err)
				}
				for round := 0; round < 2; round++ { // replay is repeatable
					j, live = open(t, opts)
					checkLive(t, live, tc.want)
					if got := j.Stats().Live; got != len(tc.want) {
						t.Errorf("reopened Stats().Live = %d, want %d", got, len(tc.want))
					}
					if err := j.Close(); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	}
}

func checkLive(t testing.TB, got, want []Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records %q, want %d %q", len(got), ids(got), len(want), ids(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Kind != w.Kind || g.ID != w.ID || g.Queue != w.Queue || !bytes.Equal(g.Data, w.Data) {
			t.Errorf("record %d = {%v %q %q %d bytes}, want {%v %q %q %d bytes}",
				i, g.Kind, g.ID, g.Queue, len(g.Data), w.Kind, w.ID, w.Queue, len(w.Data))
		}
	}
}

// buildJournal writes n one-record batches into dir and closes it. It returns
// the records and the file offset of each record's batch in segment 1.
func buildJournal(t *testing.T, dir string, n int, mode preallocMode) ([]Record, []int64) {
	t.Helper()
	j, _ := open(t, Options{Dir: dir, prealloc: mode, SegmentSize: 64 << 10, noEarlyRoll: true})
	var recs []Record
	var offs []int64
	off := int64(segHeaderSize)
	for i := range n {
		// Ends in a non-zero byte, so that zeroing any tail of it is damage.
		r := put(fmt.Sprintf("msg-%03d", i), "queue", bytes.Repeat([]byte{0, byte(i + 1)}, 20+i))
		mustWrite(t, j, r)
		recs = append(recs, r)
		offs = append(offs, off)
		off += int64(batchHeaderSize + encodedLen(&r))
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return recs, offs
}

// TestTornTail cuts the last batch at every byte, as a crash mid-write does,
// both by truncating the file (no preallocation) and by zeroing the rest of
// it (preallocated space).
func TestTornTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode preallocMode
		zero bool
	}{
		{"truncated", preallocNone, false},
		{"zeroed-prealloc", preallocFallocate, true},
		{"zeroed-zerofill", preallocZero, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := t.TempDir()
			const n = 4
			recs, offs := buildJournal(t, src, n, tc.mode)
			seg := segName(1)
			pristine, err := os.ReadFile(filepath.Join(src, seg))
			if err != nil {
				t.Fatal(err)
			}
			end := int(offs[n-1]) + batchHeaderSize + encodedLen(&recs[n-1])
			if len(pristine) < end || firstNonZero(pristine[end:]) >= 0 {
				t.Fatalf("segment is %d bytes, expected %d and zeros", len(pristine), end)
			}
			pristine = pristine[:end]
			for cut := int(offs[n-1]); cut < end; cut++ {
				dir := t.TempDir()
				data := slices.Clone(pristine)
				if tc.zero {
					clear(data[cut:])
					data = append(data, make([]byte, 4096)...) // preallocated tail
				} else {
					data = data[:cut]
				}
				if err := os.WriteFile(filepath.Join(dir, seg), data, 0o644); err != nil {
					t.Fatal(err)
				}
				logger, hook := test.NewNullLogger()
				opts := Options{Dir: dir, Log: logrus.NewEntry(logger), prealloc: tc.mode, SegmentSize: 64 << 10}
				j, live, err := Open(opts)
				if err != nil {
					t.Fatalf("cut at %d: Open: %v", cut, err)
				}
				checkLive(t, live, recs[:n-1])
				warned := false
				for _, e := range hook.AllEntries() {
					if e.Level == logrus.WarnLevel && e.Data["segment"] == seg && e.Data["offset"] != nil &&
						e.Data["zeroed_from"] == int(offs[n-1]) {
						warned = true
					}
				}
				if want := cut > int(offs[n-1]); warned != want {
					t.Fatalf("cut at %d: torn-tail warning naming segment and offset logged: %v, want %v", cut, warned, want)
				}
				extra := put("after-crash", "q", []byte("x"))
				mustWrite(t, j, extra)
				if err := j.Close(); err != nil {
					t.Fatal(err)
				}
				opts.Log = nil
				_, live = open(t, opts)
				checkLive(t, live, append(slices.Clone(recs[:n-1]), extra))
			}
		})
	}
}

func TestCorruption(t *testing.T) {
	const n = 5
	type result int
	const (
		corrupt result = iota
		torn
	)
	tests := []struct {
		name string
		// byte to flip, from the record offsets; also the offset the
		// error must name
		at   func(offs []int64) (flip, named int64)
		want result
	}{
		{"record body of middle record", func(o []int64) (int64, int64) {
			return o[2] + batchHeaderSize + 20, o[2] + batchHeaderSize
		}, corrupt},
		{"record length of middle record", func(o []int64) (int64, int64) {
			return o[2] + batchHeaderSize + 1, o[2] + batchHeaderSize
		}, corrupt},
		{"record crc of first record", func(o []int64) (int64, int64) {
			return o[0] + batchHeaderSize + 5, o[0] + batchHeaderSize
		}, corrupt},
		{"batch header of middle batch", func(o []int64) (int64, int64) { return o[1] + 6, o[1] }, corrupt},
		{"batch magic of middle batch", func(o []int64) (int64, int64) { return o[1], o[1] }, corrupt},
		{"segment header", func([]int64) (int64, int64) { return 3, 0 }, corrupt},
		{"record body of last record", func(o []int64) (int64, int64) {
			return o[n-1] + batchHeaderSize + 30, 0
		}, torn},
		{"batch header of last batch", func(o []int64) (int64, int64) { return o[n-1] + 9, 0 }, torn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			recs, offs := buildJournal(t, dir, n, preallocNone)
			path := filepath.Join(dir, segName(1))
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			flip, named := tc.at(offs)
			data[flip] ^= 0x10
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			j, live, err := Open(Options{Dir: dir})
			switch tc.want {
			case corrupt:
				if err == nil {
					j.Close()
					t.Fatalf("Open succeeded with %d live records, want ErrCorrupt", len(live))
				}
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open: %v, want ErrCorrupt", err)
				}
				if want := fmt.Sprintf("%s offset %d:", path, named); !strings.Contains(err.Error(), want) {
					t.Fatalf("error %q does not name %q", err, want)
				}
				// Nothing was repaired or deleted: the operator gets the evidence.
				after, _ := os.ReadFile(path)
				if !bytes.Equal(after, data) {
					t.Fatal("Open modified a corrupt segment")
				}
			case torn:
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				defer j.Close()
				checkLive(t, live, recs[:n-1])
			}
		})
	}
}

// TestCorruptionOlderSegment: damage at the very end of a segment that is not
// the last one cannot be a torn write (later segments were written after it
// was fsync'd), so it is corruption too.
func TestCorruptionOlderSegment(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Options{Dir: dir, SegmentSize: 1}) // one batch per segment
	for i := range 3 {
		mustWrite(t, j, put(fmt.Sprint("m", i), "q", []byte("payload")))
	}
	j.Close()
	path := filepath.Join(dir, segName(2))
	data, _ := os.ReadFile(path)
	data[len(data)-1] ^= 1
	os.WriteFile(path, data, 0o644)
	_, _, err := Open(Options{Dir: dir})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), segName(2)) {
		t.Fatalf("Open: %v, want ErrCorrupt naming %s", err, segName(2))
	}
}

// TestZeroedHole: a zeroed block followed by valid batches is damage, not the
// end of the data.
func TestZeroedHole(t *testing.T) {
	dir := t.TempDir()
	_, offs := buildJournal(t, dir, 4, preallocNone)
	path := filepath.Join(dir, segName(1))
	data, _ := os.ReadFile(path)
	clear(data[offs[1]:offs[2]])
	os.WriteFile(path, data, 0o644)
	_, _, err := Open(Options{Dir: dir})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v, want ErrCorrupt", err)
	}
}

// TestUnknownKindRefused: a well-formed record of a kind this version does
// not know is refused, not skipped, even at the tail.
func TestUnknownKindRefused(t *testing.T) {
	dir := t.TempDir()
	buf := encodeSegHeader(1)
	batch := make([]byte, batchHeaderSize)
	batch = appendRecord(batch, &Record{Kind: 9, ID: "x"})
	putBatchHeader(batch, 1, int64(len(buf)))
	os.WriteFile(filepath.Join(dir, segName(1)), append(buf, batch...), 0o644)
	_, _, err := Open(Options{Dir: dir})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "unknown record kind 9") {
		t.Fatalf("Open: %v", err)
	}
}

func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentSize: 4096}
	j, _ := open(t, opts)
	data := bytes.Repeat([]byte("x"), 300)
	const n = 100
	for i := range n {
		mustWrite(t, j, put(fmt.Sprint("m", i), "q", data))
	}
	st := j.Stats()
	if st.Segments < 5 || st.Live != n {
		t.Fatalf("after puts: %+v", st)
	}
	for i := range n {
		mustWrite(t, j, ack(fmt.Sprint("m", i)))
	}
	mustWrite(t, j) // barrier: compaction runs after a batch's dones
	st = j.Stats()
	// Only the segment being written (holding the last acks) may remain.
	if st.Segments > 2 || st.Live != 0 {
		t.Fatalf("after acks: %+v, files %v", st, segFiles(t, dir))
	}
	if got := len(segFiles(t, dir)); got != st.Segments {
		t.Fatalf("Stats says %d segments, %d files on disk", st.Segments, got)
	}
	j.Close()
	j, live := open(t, opts)
	if len(live) != 0 {
		t.Fatalf("reopen: %d live", len(live))
	}
	settleAfterOpen(t, j)
	if st := j.Stats(); st.Segments != 1 {
		t.Fatalf("reopen of an empty backlog keeps %d segments (%v)", st.Segments, segFiles(t, dir))
	}
}

// TestCompactionAckReferences walks the dependency rule step by step. With
// SegmentSize 1 every batch lands in its own segment.
func TestCompactionAckReferences(t *testing.T) {
	dir := t.TempDir()
	// Carrying b forward would free segment 1 at once; this test is about
	// what may be deleted without it.
	opts := Options{Dir: dir, SegmentSize: 1, noCarry: true}
	j, _ := open(t, opts)
	steps := []struct {
		write []Record
		files []string // segment files after the write
		live  []string // live set after reopening
	}{
		{[]Record{put("a", "q", nil), put("b", "q", nil)}, []string{"00000001.log"}, []string{"a", "b"}},
		{[]Record{put("c", "q", nil)}, []string{"00000001.log", "00000002.log"}, []string{"a", "b", "c"}},
		// Ack of a lives in 3 and refers to 1, which still holds b.
		{[]Record{ack("a")}, []string{"00000001.log", "00000002.log", "00000003.log"}, []string{"b", "c"}},
		// 2 has nothing live any more; 4 is being written.
		{[]Record{ack("c")}, []string{"00000001.log", "00000003.log", "00000004.log"}, []string{"b"}},
		// Rolling away from 4 frees it (its ack referred to 2, gone);
		// 3 must stay, or a would come back.
		{[]Record{put("d", "q", nil)}, []string{"00000001.log", "00000003.log", "00000005.log"}, []string{"b", "d"}},
		// 1 is empty now, which frees 3 in the same pass.
		{[]Record{ack("b")}, []string{"00000005.log", "00000006.log"}, []string{"d"}},
	}
	for i, s := range steps {
		mustWrite(t, j, s.write...)
		// Compaction runs after the dones of a batch; an empty Write is
		// a barrier behind it.
		mustWrite(t, j)
		if got := segFiles(t, dir); !slices.Equal(got, s.files) {
			t.Fatalf("step %d: files %v, want %v", i, got, s.files)
		}
		// Check replay from a copy, so the journal under test is undisturbed.
		cp := copyDir(t, dir)
		j2, live := open(t, Options{Dir: cp})
		if got := ids(live); !slices.Equal(got, s.live) {
			t.Fatalf("step %d: replayed live %v, want %v", i, got, s.live)
		}
		j2.Close()
	}
	j.Close()
	// Reopen: 6 (ack of b, referring to deleted 1) is freed, 5 keeps d.
	j, live := open(t, opts)
	if got := ids(live); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("live %v", got)
	}
	settleAfterOpen(t, j)
	if got := segFiles(t, dir); !slices.Equal(got, []string{"00000005.log", "00000007.log"}) {
		t.Fatalf("files after reopen %v", got)
	}
	_ = j
}

// TestCompactionModel runs random puts and acks with tiny segments and checks,
// after every reopen, that replay agrees with a simple model.
func TestCompactionModel(t *testing.T) {
	for seed := range uint64(5) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 42))
			dir := t.TempDir()
			opts := Options{Dir: dir, SegmentSize: int64(200 + rng.IntN(2000))}
			j, _ := open(t, opts)
			var model []string // live ids in order
			next := 0
			for step := range 400 {
				var recs []Record
				for range 1 + rng.IntN(4) {
					if len(model) > 0 && rng.IntN(100) < 45 {
						k := rng.IntN(len(model))
						recs = append(recs, ack(model[k]))
						model = slices.Delete(model, k, k+1)
					} else {
						id := fmt.Sprint("m", next)
						next++
						recs = append(recs, put(id, "q", make([]byte, rng.IntN(100))))
						model = append(model, id)
					}
				}
				mustWrite(t, j, recs...)
				if st := j.Stats(); st.Live != len(model) {
					t.Fatalf("step %d: Stats().Live %d, model %d", step, st.Live, len(model))
				}
				if step%50 == 49 {
					if err := j.Close(); err != nil {
						t.Fatal(err)
					}
					var live []Record
					j, live = open(t, opts)
					if got := ids(live); !slices.Equal(got, model) {
						t.Fatalf("step %d: replay %v, model %v", step, got, model)
					}
				}
			}
			// Ack everything: the disk must shrink to almost nothing.
			for _, id := range model {
				mustWrite(t, j, ack(id))
			}
			mustWrite(t, j, put("last", "q", nil))
			mustWrite(t, j, ack("last"))
			mustWrite(t, j) // barrier behind compaction
			if st := j.Stats(); st.Segments > 2 {
				t.Fatalf("after acking everything: %+v, files %v", st, segFiles(t, dir))
			}
		})
	}
}

func TestGroupCommit(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Options{Dir: dir})
	const writers, each = 64, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := j.Write(put(fmt.Sprintf("w%d-%d", w, i), "q", make([]byte, 512))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := j.Stats()
	t.Logf("%+v: %.1f records per fsync", st, float64(st.Records)/float64(st.Syncs))
	if st.Records != writers*each {
		t.Fatalf("Records = %d", st.Records)
	}
	if st.Syncs*4 > st.Records {
		t.Fatalf("group commit is not grouping: %d syncs for %d records", st.Syncs, st.Records)
	}
	j.Close()
	_, live := open(t, Options{Dir: dir})
	if len(live) != writers*each {
		t.Fatalf("replayed %d", len(live))
	}
}

// TestDoneOrder: done callbacks run in Append order, exactly once each.
func TestDoneOrder(t *testing.T) {
	j, _ := open(t, Options{Dir: t.TempDir()})
	const n = 2000
	var got []int
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		recs := []Record{put(fmt.Sprint(i), "q", nil)}
		if i%100 == 7 {
			recs = []Record{{Kind: 0, ID: "bad"}} // invalid Appends keep their place too
		}
		j.Append(recs, func(err error) {
			if (err != nil) != (i%100 == 7) {
				t.Errorf("append %d: %v", i, err)
			}
			got = append(got, i) // only the writer goroutine touches got
			wg.Done()
		})
	}
	wg.Wait()
	for i := range got {
		if got[i] != i {
			t.Fatalf("done order broken at %d: %v", i, got[max(0, i-3):i+1])
		}
	}
}

func TestFence(t *testing.T) {
	dir := t.TempDir()
	errLease := errors.New("lease lost")
	var fenced atomic.Bool
	j, _ := open(t, Options{Dir: dir, Fence: func() error {
		if fenced.Load() {
			return errLease
		}
		return nil
	}})
	mustWrite(t, j, put("before", "q", nil))
	before := j.Stats()
	fenced.Store(true)
	if err := j.Write(put("during", "q", nil)); !errors.Is(err, errLease) {
		t.Fatalf("Write while fenced: %v, want %v", err, errLease)
	}
	if st := j.Stats(); st != before {
		t.Fatalf("fenced batch changed stats: %+v -> %+v", before, st)
	}
	fenced.Store(false)
	mustWrite(t, j, put("after", "q", nil))
	j.Close()
	_, live := open(t, Options{Dir: dir})
	if got := ids(live); !slices.Equal(got, []string{"before", "after"}) {
		t.Fatalf("live %v", got)
	}
}

func TestCloseDrainsAndErrClosed(t *testing.T) {
	dir := t.TempDir()
	j, _, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	var ok atomic.Int64
	for i := range n {
		j.Append([]Record{put(fmt.Sprint(i), "q", []byte("p"))}, func(err error) {
			if err == nil {
				ok.Add(1)
			}
		})
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if ok.Load() != n {
		t.Fatalf("%d of %d appends done before Close returned", ok.Load(), n)
	}
	if err := j.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := j.Write(put("late", "q", nil)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	called := 0
	j.Append([]Record{put("late", "q", nil)}, func(err error) {
		called++
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Append after Close: %v", err)
		}
	})
	if called != 1 {
		t.Fatalf("done called %d times", called)
	}
	_, live := open(t, Options{Dir: dir})
	if len(live) != n {
		t.Fatalf("replayed %d of %d", len(live), n)
	}
}

func TestInvalidRecords(t *testing.T) {
	tests := []struct {
		name string
		rec  Record
	}{
		{"unknown kind", Record{Kind: 7, ID: "x"}},
		{"zero kind", Record{ID: "x"}},
		{"empty id", put("", "q", nil)},
		{"long id", put(strings.Repeat("i", 70000), "q", nil)},
		{"long queue", put("x", strings.Repeat("q", 70000), nil)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j, _ := open(t, Options{Dir: dir})
			// The invalid Append fails alone; its neighbours in the same
			// batch are written.
			errs := make([]error, 3)
			var wg sync.WaitGroup
			wg.Add(3)
			for i, recs := range [][]Record{{put("ok1", "q", nil)}, {put("skipped", "q", nil), tc.rec}, {put("ok2", "q", nil)}} {
				j.Append(recs, func(err error) { errs[i] = err; wg.Done() })
			}
			wg.Wait()
			if errs[0] != nil || errs[2] != nil || !errors.Is(errs[1], ErrInvalid) {
				t.Fatalf("errors %v", errs)
			}
			j.Close()
			_, live := open(t, Options{Dir: dir})
			if got := ids(live); !slices.Equal(got, []string{"ok1", "ok2"}) {
				t.Fatalf("live %v", got)
			}
		})
	}
}

// TestWriteFailure injects ENOSPC and EIO into the write path.
func TestWriteFailure(t *testing.T) {
	tests := []struct {
		name       string
		failWrite  bool // short write, then ENOSPC
		failSync   bool // write ok, fdatasync EIO
		failUndo   bool // truncate back fails too
		wantCause  error
		wantBroken bool
	}{
		{name: "enospc", failWrite: true, wantCause: syscall.ENOSPC},
		{name: "sync eio", failSync: true, wantCause: syscall.EIO},
		{name: "enospc, undo fails", failWrite: true, failUndo: true, wantCause: syscall.ENOSPC, wantBroken: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var failing atomic.Bool
			h := &hooks{
				writeAt: func(f *os.File, b []byte, off int64) (int, error) {
					if failing.Load() && tc.failWrite {
						n, _ := f.WriteAt(b[:len(b)/2], off)
						return n, fmt.Errorf("write %s: %w", f.Name(), syscall.ENOSPC)
					}
					return f.WriteAt(b, off)
				},
				sync: func(f *os.File) error {
					if failing.Load() && tc.failSync {
						return syscall.EIO
					}
					return datasync(f)
				},
				truncate: func(f *os.File, size int64) error {
					if failing.Load() && tc.failUndo {
						return syscall.EROFS
					}
					return f.Truncate(size)
				},
			}
			j, _ := open(t, Options{Dir: dir, hooks: h})
			mustWrite(t, j, put("good1", "q", []byte("data")))
			failing.Store(true)
			err := j.Write(put("bad1", "q", []byte("data")), put("bad2", "q", []byte("data")))
			if !errors.Is(err, tc.wantCause) || !strings.Contains(err.Error(), segName(1)) {
				t.Fatalf("Write: %v, want %v naming the segment", err, tc.wantCause)
			}
			failing.Store(false)
			err = j.Write(put("good2", "q", []byte("data")))
			want := []string{"good1", "good2"}
			if tc.wantBroken {
				if !errors.Is(err, ErrBroken) || !errors.Is(err, syscall.EROFS) {
					t.Fatalf("Write after failed undo: %v, want ErrBroken wrapping the cause", err)
				}
				if err := j.Close(); !errors.Is(err, ErrBroken) {
					t.Fatalf("Close of broken journal: %v", err)
				}
				want = []string{"good1"} // the half-written batch is a torn tail now
			} else {
				if err != nil {
					t.Fatalf("Write after recovery: %v", err)
				}
				if st := j.Stats(); st.Live != 2 {
					t.Fatalf("Stats %+v", st)
				}
				j.Close()
			}
			_, live := open(t, Options{Dir: dir})
			if got := ids(live); !slices.Equal(got, want) {
				t.Fatalf("live %v, want %v", got, want)
			}
		})
	}
}

// TestLeftoverTempSegment: a crash during segment creation leaves a .tmp file,
// which Open removes.
func TestLeftoverTempSegment(t *testing.T) {
	dir := t.TempDir()
	buildJournal(t, dir, 2, preallocNone)
	tmp := filepath.Join(dir, segName(9)+".tmp")
	os.WriteFile(tmp, []byte("half"), 0o644)
	_, live := open(t, Options{Dir: dir})
	if len(live) != 2 {
		t.Fatalf("live %d", len(live))
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("temp segment not removed: %v", err)
	}
}

// TestPreallocModes: each preallocation strategy round-trips, across rolls.
func TestPreallocModes(t *testing.T) {
	for _, mode := range []preallocMode{preallocNone, preallocFallocate, preallocZero} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, SegmentSize: 8192, prealloc: mode}
			j, _ := open(t, opts)
			var want []Record
			for i := range 40 {
				r := put(fmt.Sprint("m", i), "q", make([]byte, 700))
				mustWrite(t, j, r)
				want = append(want, r)
			}
			if j.Stats().Segments < 3 {
				t.Fatalf("expected rolls, %+v", j.Stats())
			}
			j.Close()
			_, live := open(t, opts)
			checkLive(t, live, want)
		})
	}
}

// TestEarlyRollToZeroedSegment: the segment made at Open is fallocate'd
// (slow to fdatasync into); the journal moves to a zero-filled spare as soon
// as one is ready, and nothing is lost across the move.
func TestEarlyRollToZeroedSegment(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Options{Dir: dir, prealloc: preallocZero, SegmentSize: 1 << 20})
	var recs []Record
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		r := put(fmt.Sprintf("m-%04d", i), "q", []byte("body"))
		mustWrite(t, j, r)
		recs = append(recs, r)
		if j.Stats().Segments >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still in the segment made at Open after %d records", i+1)
		}
		time.Sleep(time.Millisecond) // pace writes while the spare is zero-filled
	}
	for i := 0; i < 5; i++ { // a few more into the zeroed segment
		r := put(fmt.Sprintf("z-%04d", i), "q", []byte("body"))
		mustWrite(t, j, r)
		recs = append(recs, r)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	_, live := open(t, Options{Dir: dir})
	checkLive(t, live, recs)
}

// settleAfterOpen waits for the compaction Open defers: it runs after the
// first batch (here an empty one), and a second empty batch is a barrier
// behind it.
func settleAfterOpen(t *testing.T, j *Journal) {
	t.Helper()
	mustWrite(t, j)
	mustWrite(t, j)
}

// TestLeftoversRemovedInBackground: a crashed master's unfinished segment
// file is set aside at Open (a rename, instant) and deleted in the
// background; replay never reads it.
func TestLeftoversRemovedInBackground(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Options{Dir: dir})
	mustWrite(t, j, put("a", "q", []byte("x")))
	j.Close()
	junk := filepath.Join(dir, "00000009.log.tmp")
	if err := os.WriteFile(junk, bytes.Repeat([]byte{0xff}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	j, live := open(t, Options{Dir: dir})
	defer j.Close()
	if got := ids(live); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("live %v", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left, _ := filepath.Glob(filepath.Join(dir, "*.tmp*"))
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leftovers not removed: %v", left)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAppendNow: an idle journal commits on the caller's goroutine and calls
// done before AppendNow returns; a busy one queues behind the commit in
// progress, as Append does. Either way the record is durable and dones keep
// call order.
func TestAppendNow(t *testing.T) {
	dir := t.TempDir()
	block := make(chan struct{})
	var blocking atomic.Bool
	entered := make(chan struct{}, 1)
	j, _ := open(t, Options{Dir: dir, Fence: func() error {
		if blocking.Load() {
			entered <- struct{}{}
			<-block
		}
		return nil
	}})

	doneNow := false
	j.AppendNow([]Record{put("idle", "q", []byte("x"))}, func(err error) {
		if err != nil {
			t.Error(err)
		}
		doneNow = true
	})
	if !doneNow {
		t.Fatal("idle journal: AppendNow returned before done")
	}

	// Hold a commit in progress on the writer goroutine. Cleanups run last
	// first, so a failing test lets it go before open's Close waits for it.
	release := sync.OnceFunc(func() { close(block) })
	t.Cleanup(release)
	blocking.Store(true)
	var order []string
	var mu sync.Mutex
	note := func(id string) func(error) {
		return func(err error) {
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			order = append(order, id)
			mu.Unlock()
		}
	}
	j.Append([]Record{put("first", "q", nil)}, note("first"))
	<-entered
	blocking.Store(false)
	returned := make(chan struct{})
	go func() {
		j.AppendNow([]Record{put("second", "q", nil)}, note("second"))
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("AppendNow waited for the commit in progress instead of queueing")
	}
	mu.Lock()
	early := slices.Clone(order)
	mu.Unlock()
	if len(early) != 0 {
		t.Fatalf("dones ran during the blocked commit: %v", early)
	}
	release()
	if err := j.Write(put("third", "q", nil)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := fmt.Sprint(order)
	mu.Unlock()
	if got != "[first second]" {
		t.Fatalf("done order %s, want [first second]", got)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	var closedErr error
	j.AppendNow([]Record{put("late", "q", nil)}, func(err error) { closedErr = err })
	if !errors.Is(closedErr, ErrClosed) {
		t.Fatalf("AppendNow after Close: %v, want ErrClosed", closedErr)
	}
	_, live := open(t, Options{Dir: dir})
	if len(live) != 4 {
		t.Fatalf("replayed %d records, want 4", len(live))
	}
}

// TestAppendNowConcurrent mixes AppendNow and Append from many goroutines
// (run it with -race): every record acknowledged without error is
// replayed, and each goroutine's dones run in its own call order.
func TestAppendNowConcurrent(t *testing.T) {
	dir := t.TempDir()
	j, _ := open(t, Options{Dir: dir, SegmentSize: 64 << 10})
	const workers, each = 8, 200
	var ok atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			last := -1
			var mu sync.Mutex
			var inner sync.WaitGroup
			for i := range each {
				inner.Add(1)
				done := func(err error) {
					defer inner.Done()
					mu.Lock()
					defer mu.Unlock()
					if i <= last {
						t.Errorf("worker %d: done %d after %d", w, i, last)
					}
					last = i
					if err == nil {
						ok.Add(1)
					}
				}
				rec := []Record{put(fmt.Sprintf("w%d-%d", w, i), "q", make([]byte, 300))}
				if (i+w)%3 == 0 {
					j.Append(rec, done)
				} else {
					j.AppendNow(rec, done)
				}
			}
			inner.Wait()
		})
	}
	wg.Wait()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	_, live := open(t, Options{Dir: dir})
	if int64(len(live)) != ok.Load() || ok.Load() != workers*each {
		t.Fatalf("replayed %d, acknowledged %d, want %d", len(live), ok.Load(), workers*each)
	}
}
