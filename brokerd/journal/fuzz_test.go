package journal

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fuzzBase is segment 1 of the fuzzed journal: three live puts, so that the
// fuzzed segment's acks have something to refer to.
func fuzzBase() []byte {
	b := encodeSegHeader(1)
	batch := make([]byte, batchHeaderSize)
	for _, id := range []string{"a", "b", "c"} {
		batch = appendRecord(batch, &Record{Kind: KindPut, ID: id, Queue: "q", Data: []byte(id)})
	}
	putBatchHeader(batch, 3, int64(len(b)))
	return append(b, batch...)
}

// seedSegment encodes batches as they would appear in segment 2.
func seedSegment(batches ...[]Record) []byte {
	b := encodeSegHeader(2)
	for _, recs := range batches {
		batch := make([]byte, batchHeaderSize)
		for i := range recs {
			batch = appendRecord(batch, &recs[i])
		}
		putBatchHeader(batch, len(recs), int64(len(b)))
		b = append(b, batch...)
	}
	return b
}

// FuzzReplay writes arbitrary bytes as the last segment file. A standby's
// CatchUp must not fail on them, Open must not panic; it either fails or
// returns records, and if it succeeds, opening again must give the same
// live set (the repair it made is stable).
func FuzzReplay(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("garbage"))
	f.Add(encodeSegHeader(2))
	valid := seedSegment(
		[]Record{{Kind: KindPut, ID: "d", Queue: "q", Data: []byte("x\x00y")}, {Kind: KindAck, ID: "a"}},
		[]Record{{Kind: KindAck, ID: "d"}, {Kind: KindPut, ID: "e"}},
	)
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add(append(slices.Clone(valid), make([]byte, 100)...))
	flipped := slices.Clone(valid)
	flipped[40] ^= 4
	f.Add(flipped)
	f.Fuzz(func(t *testing.T, seg []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segName(1)), fuzzBase(), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, segName(2)), seg, 0o644); err != nil {
			t.Fatal(err)
		}
		// A standby reading the same files while their writer might still
		// be alive must not fail on anything a torn or damaged batch holds:
		// it waits there.
		sb, err := Follow(Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		var idx orderIndex
		if _, err := sb.CatchUp(&idx); err != nil {
			t.Fatalf("standby CatchUp: %v", err)
		}
		j, live, err := Open(Options{Dir: dir})
		if err != nil {
			return
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		j, again, err := Open(Options{Dir: dir})
		if err != nil {
			t.Fatalf("second Open failed after first succeeded: %v", err)
		}
		defer j.Close()
		if !slices.Equal(ids(live), ids(again)) {
			t.Fatalf("replay not stable: %v then %v", ids(live), ids(again))
		}
	})
}
