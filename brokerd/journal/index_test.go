package journal

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
)

func TestSplitID(t *testing.T) {
	for _, c := range []struct {
		id     string
		prefix string
		n      uint64
		ok     bool
	}{
		{"ID:3-17", "ID:3-", 17, true},
		{"ID:3-0", "ID:3-", 0, true},
		{"7", "", 7, true},
		{"ID:3-017", "", 0, false}, // "ID:3-17" spelled otherwise
		{"ID:3-", "", 0, false},
		{"abc", "", 0, false},
		{"", "", 0, false},
		{"m-9999999999999999999", "m-", 9999999999999999999, true},
		{"m-10000000000000000000", "", 0, false}, // 20 digits
	} {
		prefix, n, ok := splitID(c.id)
		if prefix != c.prefix || n != c.n || ok != c.ok {
			t.Errorf("splitID(%q) = %q, %d, %v; want %q, %d, %v", c.id, prefix, n, ok, c.prefix, c.n, c.ok)
		}
	}
}

// checkIndex compares x with the reference map want, through get, len and
// each.
func checkIndex(t *testing.T, x *locIndex, want map[string]loc) {
	t.Helper()
	if x.len() != len(want) {
		t.Fatalf("len %d, want %d", x.len(), len(want))
	}
	got := map[string]loc{}
	x.each(func(id string, l loc) {
		if _, dup := got[id]; dup {
			t.Fatalf("each yields %q twice", id)
		}
		got[id] = l
	})
	if !maps.Equal(got, want) {
		t.Fatalf("each yields %d ids, want %d (first differences: %v)", len(got), len(want), firstDiff(got, want))
	}
	for id, l := range want {
		if g, ok := x.get(id); !ok || g != l {
			t.Fatalf("get(%q) = %v, %v; want %v", id, g, ok, l)
		}
	}
}

func firstDiff(a, b map[string]loc) []string {
	var d []string
	for id, l := range a {
		if m, ok := b[id]; !ok || m != l {
			d = append(d, id)
		}
	}
	for id := range b {
		if _, ok := a[id]; !ok {
			d = append(d, id)
		}
	}
	return d[:min(len(d), 5)]
}

// TestLocIndex runs random puts, moves and deletes of ids of several
// shapes against a map and compares after every few steps.
func TestLocIndex(t *testing.T) {
	shapes := []struct {
		name string
		next func(r *rand.Rand, i int) string
	}{
		{"sequential", func(_ *rand.Rand, i int) string { return "ID:1-" + strconv.Itoa(i+1) }},
		{"gaps", func(r *rand.Rand, i int) string { return "ID:2-" + strconv.Itoa(i*(1+r.IntN(40))) }},
		{"big jumps", func(r *rand.Rand, i int) string {
			return "ID:3-" + strconv.FormatUint(uint64(i)<<uint(r.IntN(40)), 10)
		}},
		{"epochs", func(r *rand.Rand, i int) string { return fmt.Sprintf("ID:%d-%d", r.IntN(100), i) }},
		{"no counter", func(r *rand.Rand, i int) string { return fmt.Sprintf("m%d-x", i) }},
		{"leading zeros", func(r *rand.Rand, i int) string { return fmt.Sprintf("q-%06d", i) }},
		{"random", func(r *rand.Rand, _ int) string { return strconv.FormatUint(r.Uint64(), 10) }},
	}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, uint64(len(sh.name))))
			x := newLocIndex()
			want := map[string]loc{}
			var ids []string
			for i := range 20000 {
				switch op := r.IntN(10); {
				case op < 6 || len(ids) == 0: // put
					id := sh.next(r, i)
					l := loc{seg: uint64(1 + i/1000), off: uint32(i), n: uint32(1 + r.IntN(2000))}
					x.set(id, l)
					if _, ok := want[id]; !ok {
						ids = append(ids, id)
					}
					want[id] = l
				case op < 7: // move a live id
					id := ids[r.IntN(len(ids))]
					if _, ok := want[id]; ok {
						l := loc{seg: 999, off: uint32(i), n: 7}
						x.set(id, l)
						want[id] = l
					}
				default: // delete, mostly the oldest
					k := r.IntN(len(ids))
					if r.IntN(4) > 0 {
						k = r.IntN(min(len(ids), 50))
					}
					id := ids[k]
					l, ok := x.del(id)
					w, wok := want[id]
					if ok != wok || l != w {
						t.Fatalf("del(%q) = %v, %v; want %v, %v", id, l, ok, w, wok)
					}
					delete(want, id)
					ids = append(ids[:k], ids[k+1:]...)
				}
				if i%997 == 0 {
					checkIndex(t, x, want)
				}
			}
			checkIndex(t, x, want)
			for _, id := range ids {
				x.del(id)
				delete(want, id)
			}
			checkIndex(t, x, want)
			if len(x.runs) != 0 || len(x.other) != 0 {
				t.Fatalf("empty index keeps %d runs and %d map entries", len(x.runs), len(x.other))
			}
		})
	}
}

// TestLocIndexDense checks that brokerd's ids live in chunks, not the map,
// and that a backlog drained in order, or with a few stragglers left
// behind, frees its chunks.
func TestLocIndexDense(t *testing.T) {
	const n = 100000
	x := newLocIndex()
	id := func(i int) string { return "ID:7-" + strconv.Itoa(i) }
	for i := 1; i <= n; i++ {
		x.set(id(i), loc{seg: 1, off: uint32(i), n: 100})
	}
	if len(x.other) != 0 {
		t.Fatalf("%d of %d sequential ids in the map", len(x.other), n)
	}
	if r := x.runs["ID:7-"]; r == nil || len(r.chunks) != n/chunkLen+1 {
		t.Fatalf("run %+v, want %d chunks", r, n/chunkLen+1)
	}
	// Acknowledge all but every 1000th, in order, then put as many
	// again: each chunk the run grows by looks at one older one.
	for i := 1; i <= n; i++ {
		if i%1000 != 0 {
			x.del(id(i))
		}
	}
	for i := 1; i <= n; i++ {
		x.set(id(n+i), loc{seg: 2, off: uint32(i), n: 100})
	}
	r := x.runs["ID:7-"]
	held := 0
	for _, ch := range r.chunks {
		if ch != nil {
			held++
		}
	}
	// The stragglers went to the map as the run grew past them; the
	// chunks held are about those of the second n.
	if held > n/chunkLen+2 {
		t.Fatalf("%d chunks held for %d live ids", held, x.len())
	}
	// (The last straggler shares its chunk with the first of the new ids.)
	if len(x.other) != n/1000-1 {
		t.Fatalf("%d ids in the map, want the %d stragglers", len(x.other), n/1000-1)
	}
	for i := 1; i <= n; i++ {
		if i%1000 == 0 {
			if _, ok := x.get(id(i)); !ok {
				t.Fatalf("straggler %s lost", id(i))
			}
		}
	}
}

// TestLocIndexLateCommits: transactions of several connections take their
// ids in one order and reach the journal in another; their ids still go to
// chunks, not the map.
func TestLocIndexLateCommits(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	x := newLocIndex()
	const tx, conns = 1000, 4
	next := 1
	for range 100 {
		blocks := make([]int, conns)
		for i := range blocks {
			blocks[i] = next
			next += tx
		}
		r.Shuffle(len(blocks), func(i, j int) { blocks[i], blocks[j] = blocks[j], blocks[i] })
		for _, b := range blocks {
			for i := b; i < b+tx; i++ {
				x.set("ID:9-"+strconv.Itoa(i), loc{seg: 1, off: uint32(i), n: 1})
			}
		}
	}
	if len(x.other) != 0 || x.len() != next-1 {
		t.Fatalf("%d of %d ids in the map", len(x.other), x.len())
	}
}

// TestLocIndexJumps: a deep run whose counter jumps ahead (a burst of topic
// or non-persistent messages took the counters in between) keeps its ids in
// chunks; and a queue kept empty does not make a chunk per message.
func TestLocIndexJumps(t *testing.T) {
	x := newLocIndex()
	id := func(i int) string { return "ID:7-" + strconv.Itoa(i) }
	for i := 1; i <= 1000; i++ {
		x.set(id(i), loc{seg: 1, off: uint32(i), n: 100})
	}
	for i := 10001; i <= 110000; i++ {
		x.set(id(i), loc{seg: 1, off: uint32(i), n: 100})
	}
	if len(x.other) > chunkLen {
		t.Errorf("%d of %d ids in the map after a jump of 9,000 counters", len(x.other), x.len())
	}
	for _, i := range []int{1, 1000, 10001, 110000} {
		if l, ok := x.get(id(i)); !ok || l.off != uint32(i) {
			t.Fatalf("%s: %+v %v", id(i), l, ok)
		}
	}

	y := newLocIndex()
	next := 0
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const msgs = 5000
	for range msgs {
		next++
		y.set(id(next), loc{seg: 1, off: 1, n: 100})
		y.del(id(next))
	}
	runtime.ReadMemStats(&after)
	// The ids and the run's small slices; not a chunk of 8 KiB each.
	if per := (after.TotalAlloc - before.TotalAlloc) / msgs; per > 1024 {
		t.Errorf("%d bytes allocated per message through an empty queue", per)
	}
}
