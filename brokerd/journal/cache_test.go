package journal

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"handover/brokerd/store"
)

// interleaved writes per messages to each of queues queues, round-robin in
// Appends of one message per queue, so that each queue's messages lie
// queues records apart; it returns each queue's ids in order and reopens
// the journal, so that what was written is in sealed segments.
func interleaved(t *testing.T, dir string, queues, per int, size func(id string) int) (*Journal, [][]string) {
	t.Helper()
	j, _ := open(t, Options{Dir: dir})
	ids := make([][]string, queues)
	for k := range per {
		recs := make([]Record, queues)
		for q := range queues {
			id := fmt.Sprintf("ID:1-%d", k*queues+q+1)
			ids[q] = append(ids[q], id)
			recs[q] = put(id, fmt.Sprintf("q%d", q), body(id, size(id)))
		}
		mustWrite(t, j, recs...)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j, _ = open(t, Options{Dir: dir})
	j.cache = newBlockCache(readCacheBytes) // Open read every record through it
	return j, ids
}

// body is a message's data: size bytes that name it.
func body(id string, size int) []byte {
	b := []byte(id + ":")
	return append(b, bytes.Repeat([]byte{'a' + byte(len(id)%26)}, max(0, size-len(b)))...)
}

func oneKiB(string) int { return 1024 }

// readAll reads ids through ReadMany in batches of 64, as a queue's
// read-ahead does, and checks every body.
func readAll(t *testing.T, j *Journal, ids []string, size func(string) int) {
	t.Helper()
	for len(ids) > 0 {
		n := min(64, len(ids))
		data, errs := j.ReadMany(ids[:n])
		for i, id := range ids[:n] {
			if errs[i] != nil || !bytes.Equal(data[i], body(id, size(id))) {
				t.Fatalf("%s: %.20q, %v", id, data[i], errs[i])
			}
		}
		ids = ids[n:]
	}
}

// TestCacheInterleaved: queues drained one after the other over records
// interleaved with each other's read each block of the journal about once,
// not each record: the neighbouring queues find their records cached.
// Some records span two blocks.
func TestCacheInterleaved(t *testing.T) {
	j, ids := interleaved(t, t.TempDir(), 100, 50, oneKiB)
	for _, qids := range ids {
		readAll(t, j, qids, oneKiB)
	}
	c := j.cache
	t.Logf("hits %d, misses %d", c.hits, c.misses)
	if c.hits < 4*c.misses || c.bypass != 0 {
		t.Errorf("hits %d, misses %d, bypass %d: the cache does not serve the neighbouring queues", c.hits, c.misses, c.bypass)
	}
	spans := 0
	for _, qids := range ids {
		for _, id := range qids {
			l, _ := j.st.lookup(id)
			if l.off/blockLen != (l.off+l.n-1)/blockLen {
				spans++
			}
		}
	}
	if spans == 0 {
		t.Fatal("no record spans two blocks: the test misses that case")
	}
}

// TestCacheBoundaries reads records of every size, some over half a block
// (read on their own), in random order, through caches of several sizes
// (one that thrashes, and turns itself off), and checks every body.
func TestCacheBoundaries(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	sizes := map[string]int{}
	size := func(id string) int {
		if n, ok := sizes[id]; ok {
			return n
		}
		n := r.IntN(3 * blockLen / 4)
		if r.IntN(10) == 0 {
			n = blockLen + r.IntN(3*blockLen)
		}
		sizes[id] = n
		return n
	}
	j, ids := interleaved(t, t.TempDir(), 30, 40, size)
	var all []string
	for _, qids := range ids {
		all = append(all, qids...)
	}
	for _, max := range []int{readCacheBytes, 4 * blockLen, blockLen} {
		j.cache = newBlockCache(max)
		for range 3 {
			r.Shuffle(len(all), func(a, b int) { all[a], all[b] = all[b], all[a] })
			readAll(t, j, all, size)
			for _, id := range all[:100] {
				if data, err := j.Read(id); err != nil || !bytes.Equal(data, body(id, size(id))) {
					t.Fatalf("Read(%s): %.20q, %v", id, data, err)
				}
			}
		}
		if c := j.cache; c.bytes > max {
			t.Fatalf("cache of %d bytes holds %d", max, c.bytes)
		}
	}
	if j.cache.bypass == 0 {
		t.Error("a cache of one block was never bypassed")
	}
}

// TestCacheSealedOnly: records of the segment being written are read
// directly, never cached (what lies past its durable end may change).
func TestCacheSealedOnly(t *testing.T) {
	j, _ := open(t, Options{Dir: t.TempDir()})
	for i := range 20 {
		id := fmt.Sprintf("m%d", i)
		mustWrite(t, j, put(id, "q", body(id, 1024)))
		if data, err := j.Read(id); err != nil || !bytes.Equal(data, body(id, 1024)) {
			t.Fatalf("Read(%s): %.20q, %v", id, data, err)
		}
	}
	if n := len(j.cache.blocks); n != 0 {
		t.Fatalf("%d blocks of the active segment cached", n)
	}
}

// TestCacheDamagedRecord: a record damaged on disk is reported with its
// file and offset when read through the cache; the records that share its
// block are read whole.
func TestCacheDamagedRecord(t *testing.T) {
	dir := t.TempDir()
	j, ids := interleaved(t, dir, 10, 20, oneKiB)
	victim := ids[3][5]
	l, _ := j.st.lookup(victim)
	path := filepath.Join(dir, segName(l.seg))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	off := int64(l.off) + int64(l.n) - 10
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for q, qids := range ids {
		data, errs := j.ReadMany(qids)
		for i, id := range qids {
			if id == victim {
				if !errors.Is(errs[i], store.ErrCorrupt) || !strings.Contains(errs[i].Error(), path) || !strings.Contains(errs[i].Error(), fmt.Sprint(l.off)) {
					t.Fatalf("damaged %s: %v, want ErrCorrupt naming %s at %d", id, errs[i], path, l.off)
				}
				continue
			}
			if errs[i] != nil || !bytes.Equal(data[i], body(id, 1024)) {
				t.Fatalf("queue %d, %s: %.20q, %v", q, id, data[i], errs[i])
			}
		}
	}
}
