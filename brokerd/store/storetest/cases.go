package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"handover/brokerd/store"
)

// testRoundTrip: what the master appends is what the next master finds.
// A restart must hand the broker exactly its backlog: every live message,
// in append order per queue, with its size (for memory accounting) and its
// body byte for byte; the producers' de-duplication windows at their
// latest; and nothing acknowledged.
func testRoundTrip(e *env) {
	t := e.t
	s, idx := e.cold()
	if idx.Len() != 0 || len(idx.Producers()) != 0 {
		t.Fatalf("Promote of a new store filled the index with %d messages and %d producers", idx.Len(), len(idx.Producers()))
	}
	st0 := s.Stats()

	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	binaryCopy := slices.Clone(binary)
	large := body("m6", 256<<10)
	const unicodeID = "m7 é/ü:☃"
	model := NewIndex()
	steps := [][]store.Record{
		{put("m1", "/queue/a", []byte("one")), put("m2", "/queue/b", []byte("two"))},
		{put("m3", "/queue/a", binary)},
		{ack("m2"), ack("never-put")},
		{put("m4", "/queue/a", []byte("four")), ack("m4")}, // acknowledged in its own Append
		{put("m5", "/queue/b", []byte{})},                  // an empty body
		{put("m6", "/queue/a", large)},
		{put(unicodeID, "/queue/ü", []byte("seven"))},
		{producer("p1", 5), producer("p2", 7)},
		// 2^53+1 is not a float64: a window must stay exact.
		{producer("p1", 9), producerEnd("p2"), producer("p3", 1<<53+1)},
		{producer("p2", 3)}, // back after being forgotten
		{producerEnd("never-seen")},
		nil, // a barrier
	}
	n := 0
	for _, recs := range steps {
		e.mustWrite(s, model, recs...)
		n += len(recs)
	}
	bodies := map[string][]byte{"m1": []byte("one"), "m3": binaryCopy, "m5": nil, "m6": large, unicodeID: []byte("seven")}
	// A nil Data is an empty body too, not a missing one.
	if err := e.write(s, put("m8", "/queue/b", nil)); err != nil {
		t.Errorf("Append of a Put with nil Data (an empty body): %v", err)
	} else {
		model.Apply(put("m8", "/queue/b", nil))
		bodies["m8"] = nil
		n++
	}

	// The store keeps no reference to Data once done was called: the
	// broker reuses its buffers.
	clear(binary)

	e.checkLive(s, model.Len(), "after the appends")
	st := s.Stats()
	if d := st.Records - st0.Records; d < uint64(n) {
		t.Errorf("Stats().Records grew by %d over %d appended records", d, n)
	}
	if st.Syncs == st0.Syncs {
		t.Errorf("Stats().Syncs did not grow over %d Appends", len(steps))
	}

	for id, b := range bodies {
		e.checkRead(s, id, b)
	}
	// Read's slice is the caller's: changing it changes nothing stored.
	if got, err := s.Read("m3"); err == nil && len(got) > 0 {
		got[0] ^= 0xff
		e.checkRead(s, "m3", binaryCopy)
	}
	e.checkNotFound(s, "m2", "acknowledged in a later Append")
	e.checkNotFound(s, "m4", "put and acknowledged in one Append")
	e.checkNotFound(s, "never-put", "never put")

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
		t.Errorf("second Close: %v (Close is idempotent)", err)
	}

	s2, idx2 := e.cold()
	if d := idx2.Diff(model); d != "" {
		t.Fatalf("after a restart the index differs from what was appended: %s", d)
	}
	for id, b := range bodies {
		e.checkRead(s2, id, b)
	}
	e.checkNotFound(s2, "m2", "acknowledged before the restart")
	e.checkLive(s2, model.Len(), "of the restarted store (what it took over)")
}

// testDoneOrder: done is called exactly once per Append, in Append order,
// one call at a time, with nil once the records are durable; several
// goroutines appending at once (the broker's connections) each see their
// own Appends done in order. The broker's RECEIPTs and its per-connection
// ordering rest on these promises.
func testDoneOrder(e *env) {
	t := e.t
	s, _ := e.cold()
	const producers, each = 4, 100
	d := newDoneLog(producers * each)
	var wg sync.WaitGroup
	for g := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("order-%d-%d", g, i)
				s.Append([]store.Record{put(id, fmt.Sprintf("/queue/order-%d", g), body(id, 32))}, d.done(g*each+i, nil))
			}
		}()
	}
	wg.Wait()
	d.wait(e, "concurrent Appends")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// After Close no done may come any more: a second call would have
	// been made by now.
	errs, calls, order := d.snapshot()
	report := &budget{t: t}
	defer report.flush()
	for k := range errs {
		if calls[k] != 1 {
			report.errorf("producer %d Append %d: done called %d times", k/each, k%each, calls[k])
		}
		if errs[k] != nil {
			report.errorf("producer %d Append %d: %v", k/each, k%each, errs[k])
		}
	}
	for g := range producers {
		var mine []int
		for _, k := range order {
			if k/each == g {
				mine = append(mine, k%each)
			}
		}
		if !slices.IsSorted(mine) {
			t.Errorf("producer %d: done called out of Append order: %v", g, mine)
		}
	}
	if n := d.overlap.Load(); n > 0 {
		t.Errorf("%d done calls overlapped another: done runs one at a time", n)
	}
}

// testDoneBarrier: an Append of no records is a barrier, whose done runs
// after every earlier Append's and before every later one's. The broker
// uses it to wait for what is already queued (a RECEIPT for a frame that
// wrote nothing, say).
func testDoneBarrier(e *env) {
	t := e.t
	s, _ := e.cold()
	if err := e.write(s); err != nil {
		t.Fatalf("barrier on an idle store: %v", err)
	}
	const before, after = 50, 10
	var finished atomic.Int64
	count := func(error) { finished.Add(1) }
	for i := range before {
		id := fmt.Sprintf("barrier-a%d", i)
		s.Append([]store.Record{put(id, "/queue/barrier", body(id, 64))}, count)
	}
	seen := make(chan int64, 1)
	barrierErr := make(chan error, 1)
	s.Append(nil, func(err error) {
		seen <- finished.Load()
		barrierErr <- err
		finished.Add(1)
	})
	for i := range after {
		id := fmt.Sprintf("barrier-b%d", i)
		s.Append([]store.Record{put(id, "/queue/barrier", body(id, 64))}, count)
	}
	seen2 := make(chan int64, 1)
	s.Append(nil, func(error) { seen2 <- finished.Load() })
	if n := await(e, seen, "the first barrier's done"); n != before {
		t.Errorf("the barrier's done ran after %d of the %d Appends before it and the %d after it; want exactly those before", n, before, after)
	}
	if err := <-barrierErr; err != nil {
		t.Errorf("barrier: %v", err)
	}
	if n := await(e, seen2, "the second barrier's done"); n != before+1+after {
		t.Errorf("the second barrier's done ran after %d of the %d Appends before it", n, before+1+after)
	}
}

// testDoneInvalid: a record the store cannot keep fails its own Append
// with store.ErrInvalid, writing none of that Append, and nothing else: the
// Appends sharing its group commit succeed. One bad frame must not cost
// other producers their messages.
func testDoneInvalid(e *env) {
	t := e.t
	s, _ := e.cold()
	q := "/queue/invalid"
	appends := []struct {
		recs    []store.Record
		invalid bool
	}{
		{[]store.Record{put("ok1", q, []byte("1"))}, false},
		{[]store.Record{put("", q, []byte("empty id"))}, true},
		{[]store.Record{put("ok2", q, []byte("2"))}, false},
		{[]store.Record{put("mixed", q, []byte("valid, beside an invalid one")), {Kind: 99, ID: "unknown-kind"}}, true},
		{[]store.Record{put("ok3", q, []byte("3"))}, false},
		{[]store.Record{{Kind: 0, ID: "zero-kind", Queue: q}}, true},
		{[]store.Record{ack("ok1"), ack("")}, true},
		{[]store.Record{{Kind: store.KindProducerEnd}}, true},
		{[]store.Record{put("ok4", q, []byte("4")), producer("p-ok", 1)}, false},
	}
	// Appended back to back, so that they share commits as concurrent
	// producers' would.
	d := newDoneLog(len(appends))
	for i, a := range appends {
		s.Append(a.recs, d.done(i, nil))
	}
	d.wait(e, "Appends with invalid records among them")
	errs, _, _ := d.snapshot()
	model := NewIndex()
	for i, a := range appends {
		switch {
		case a.invalid && !errors.Is(errs[i], store.ErrInvalid):
			t.Errorf("Append %d (%s %q...): %v, want an error wrapping store.ErrInvalid", i, kindOf(a.recs), idOf(a.recs), errs[i])
		case !a.invalid && errs[i] != nil:
			t.Errorf("Append %d (%q), valid, beside invalid ones: %v", i, idOf(a.recs), errs[i])
		case !a.invalid:
			model.Apply(a.recs...)
		}
	}
	e.checkNotFound(s, "mixed", "whose Append held an invalid record")
	e.checkRead(s, "ok1", []byte("1")) // the invalid Append's Ack did not happen
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, idx := e.cold()
	if d := idx.Diff(model); d != "" {
		t.Errorf("after a restart: %s (nothing of an invalid Append may be written; the rest must be)", d)
	}
}

// testDoneClose: Close flushes what was appended before it, calling every
// done with nil before it returns (a broker shutting down sends those
// RECEIPTs); an Append after Close fails with store.ErrClosed rather than
// vanish; Close is idempotent.
func testDoneClose(e *env) {
	t := e.t
	s, _ := e.cold()
	const n = 20
	d := newDoneLog(n)
	model := NewIndex()
	for i := range n {
		id := fmt.Sprintf("close-%d", i)
		recs := []store.Record{put(id, "/queue/close", body(id, 100))}
		s.Append(recs, d.done(i, nil))
		model.Apply(recs...)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	if err := await(e, closed, "Close with %d Appends pending", n); err != nil {
		t.Fatalf("Close: %v", err)
	}
	errs, calls, _ := d.snapshot()
	for i := range n {
		if calls[i] != 1 || errs[i] != nil {
			t.Errorf("Append %d, pending at Close: done called %d times by the time Close returned, error %v; want once, nil", i, calls[i], errs[i])
		}
	}
	if err := e.write(s, put("after-close", "/queue/close", []byte("x"))); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Append after Close: %v, want an error wrapping store.ErrClosed", err)
	}
	if err := e.write(s); !errors.Is(err, store.ErrClosed) {
		t.Errorf("barrier after Close: %v, want an error wrapping store.ErrClosed", err)
	}
	go func() { closed <- s.Close() }()
	if err := await(e, closed, "a second Close"); err != nil && !errors.Is(err, store.ErrClosed) {
		t.Errorf("second Close: %v (Close is idempotent)", err)
	}
	_, idx := e.cold()
	if d := idx.Diff(model); d != "" {
		t.Errorf("after a restart: %s (Close must flush what was appended before it)", d)
	}
}

// testCrash: a crash loses nothing whose done said nil (the broker sent a
// RECEIPT for it) and resurrects nothing whose Ack's done said nil (the
// consumer was told it is gone). Appends in flight at the crash may be
// kept or lost, but each as a whole, and a later one never without an
// earlier one of the same producer that did not fail.
//
// Each producer goroutine g appends, in its own queue, Appends i of
// {Put a_i, Put b_i, Producer p_g = i+1, Ack a_(i-3)}: b_i is never
// acknowledged, so it says whether Append i was kept.
func testCrash(e *env) {
	t := e.t
	s, _ := e.cold()
	const producers, window, maxEach, crashAfter = 4, 8, 3000, 160
	type producerLog struct {
		mu     sync.Mutex
		status []int // per Append: 0 no done yet, 1 nil, 2 error
	}
	logs := make([]*producerLog, producers)
	var ok atomic.Int64
	crashNow := make(chan struct{})
	var crashOnce sync.Once
	stop := make(chan struct{})
	var gate sync.RWMutex // appenders hold it shared; Crash exclusively
	crashed := false
	var wg sync.WaitGroup
	a := func(g, i int) string { return fmt.Sprintf("crash-%d-%d-a", g, i) }
	b := func(g, i int) string { return fmt.Sprintf("crash-%d-%d-b", g, i) }
	queue := func(g int) string { return fmt.Sprintf("/queue/crash-%d", g) }
	prod := func(g int) string { return fmt.Sprintf("crash-producer-%d", g) }
	for g := range producers {
		pl := &producerLog{}
		logs[g] = pl
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem := make(chan struct{}, window)
			for i := range maxEach {
				select {
				case sem <- struct{}{}:
				case <-stop:
					return
				}
				recs := []store.Record{
					put(a(g, i), queue(g), body(a(g, i), 80)),
					put(b(g, i), queue(g), body(b(g, i), 80)),
					producer(prod(g), uint64(i+1)),
				}
				if i >= 3 {
					recs = append(recs, ack(a(g, i-3)))
				}
				gate.RLock()
				if crashed {
					gate.RUnlock()
					return
				}
				pl.mu.Lock()
				pl.status = append(pl.status, 0)
				pl.mu.Unlock()
				s.Append(recs, func(err error) {
					st := 1
					if err != nil {
						st = 2
					}
					pl.mu.Lock()
					pl.status[i] = st
					pl.mu.Unlock()
					<-sem
					if err == nil && ok.Add(1) == crashAfter {
						crashOnce.Do(func() { close(crashNow) })
					}
				})
				gate.RUnlock()
			}
		}()
	}
	if !e.poll(func() bool {
		select {
		case <-crashNow:
			return true
		default:
			return false
		}
	}) {
		close(stop)
		wg.Wait()
		t.Fatalf("only %d of the %d Appends the crash waits for succeeded within %v", ok.Load(), crashAfter, patience)
	}
	gate.Lock()
	crashed = true
	close(stop)
	e.crash(s)
	gate.Unlock()
	wg.Wait()

	sb := e.follow()
	s2 := sb.promoteMaster()
	idx := sb.idx
	wantLive := 0
	errs := &budget{t: t}
	defer errs.flush()
	for g, pl := range logs {
		pl.mu.Lock()
		status := slices.Clone(pl.status)
		pl.mu.Unlock()
		n := len(status)
		kept := make([]bool, n)
		for i := range n {
			_, _, kept[i] = idx.Lookup(b(g, i))
		}
		var want []string
		lastKept := -1
		firstLost := -1
		for i := range n {
			if status[i] == 1 && !kept[i] {
				errs.errorf("producer %d Append %d: done said nil, but its Put %q is gone after the crash", g, i, b(g, i))
			}
			if kept[i] {
				lastKept = i
				if firstLost >= 0 {
					errs.errorf("producer %d: Append %d survived the crash but the earlier Append %d, which did not fail, did not", g, i, firstLost)
				}
			} else if status[i] != 2 && firstLost < 0 {
				firstLost = i
			}
			ackKept := i+3 < n && kept[i+3]
			_, _, aLive := idx.Lookup(a(g, i))
			switch {
			case aLive && ackKept:
				errs.errorf("producer %d: message %q reappeared after the crash, though the Append acknowledging it (%d, done %s) was kept", g, a(g, i), i+3, statusName(status[i+3]))
			case aLive && !kept[i]:
				errs.errorf("producer %d Append %d: %q survived the crash without %q of the same Append (Appends are atomic)", g, i, a(g, i), b(g, i))
			case !aLive && kept[i] && !ackKept:
				errs.errorf("producer %d Append %d: %q is gone after the crash, though %q of the same Append survived and nothing kept acknowledged it", g, i, a(g, i), b(g, i))
			}
			if kept[i] && !ackKept {
				want = append(want, a(g, i))
			}
			if kept[i] {
				want = append(want, b(g, i))
			}
		}
		if got := idx.Order(queue(g)); !slices.Equal(got, want) && !t.Failed() {
			errs.errorf("producer %d: queue after the crash = %d messages %q..., want %d in append order", g, len(got), head(got), len(want))
		}
		wantLive += len(want)
		seq, has := idx.Producers()[prod(g)]
		switch {
		case lastKept < 0 && has:
			errs.errorf("producer window %q = %d after the crash, but none of its Appends was kept", prod(g), seq)
		case lastKept >= 0 && seq != uint64(lastKept+1):
			errs.errorf("producer window %q = %d (present %v) after the crash, want %d from the last kept Append", prod(g), seq, has, lastKept+1)
		}
		for _, id := range []string{a(g, 0), b(g, 0), b(g, max(lastKept, 0))} {
			if _, size, live := idx.Lookup(id); live {
				if size != 80 {
					errs.errorf("message %q has size %d after the crash, want 80", id, size)
				}
				e.checkRead(s2, id, body(id, 80))
			}
		}
	}
	if idx.Len() != wantLive {
		errs.errorf("%d live messages after the crash, want %d: the store invented some", idx.Len(), wantLive)
	}
}

func statusName(s int) string {
	return [...]string{"not called", "nil", "an error"}[s]
}

// head returns the first few of ids, for messages.
func head(ids []string) []string { return ids[:min(len(ids), 5)] }

// testFollow: a Standby that calls CatchUp while the master appends from
// several goroutines ends with the very index a cold start builds (the
// slave takes over with it), never calls a write in progress an error,
// and reports its progress truthfully: the records it read, and nothing
// when nothing was appended.
func testFollow(e *env) {
	t := e.t
	sb := e.follow()
	// A slave may start before any master ever wrote.
	if p, calls := sb.catchUp(); p.Records != 0 || calls != 0 {
		t.Fatalf("CatchUp on a store never written: %d records, %d Index calls", p.Records, calls)
	}
	s, _ := e.cold()
	const producers, window = 4, 4
	model := NewIndex()

	// appendWhileFollowing runs gen for each producer goroutine, appending
	// what it yields with at most window Appends outstanding, while this
	// goroutine calls CatchUp; it returns once every done is in, having
	// applied every producer's Appends to model.
	appendWhileFollowing := func(phase string, gen func(g int, r *rand.Rand) [][]store.Record) (records, calls int) {
		t.Helper()
		var failed atomic.Value
		all := make([][][]store.Record, producers)
		var wg sync.WaitGroup
		for g := range producers {
			all[g] = gen(g, rand.New(rand.NewPCG(uint64(g), 7)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem := make(chan struct{}, window)
				for _, recs := range all[g] {
					sem <- struct{}{}
					s.Append(recs, func(err error) {
						if err != nil {
							failed.CompareAndSwap(nil, fmt.Errorf("%s: Append of %q: %w", phase, idOf(recs), err))
						}
						<-sem
					})
				}
				for range window {
					sem <- struct{}{}
				}
			}()
		}
		finished := make(chan struct{})
		go func() { wg.Wait(); close(finished) }()
		for done := false; !done; {
			select {
			case <-finished:
				done = true
			default:
			}
			p, c := sb.catchUp()
			records += p.Records
			calls += c
		}
		if err, _ := failed.Load().(error); err != nil {
			t.Fatal(err)
		}
		for g := range producers {
			for _, recs := range all[g] {
				if err := model.Apply(recs...); err != nil {
					t.Fatalf("storetest model: %v", err)
				}
			}
		}
		r, c := sb.converge(model)
		return records + r, calls + c
	}
	idle := func(phase string) {
		t.Helper()
		if p, calls := sb.catchUp(); p.Records != 0 || calls != 0 {
			t.Errorf("%s: CatchUp with nothing appended since the last one read %d records and made %d Index calls", phase, p.Records, calls)
		}
	}

	// Phase 1, Puts only: each record is one change to read, so the
	// progress must add up.
	const ownRecords = 16
	puts := 0
	records, calls := appendWhileFollowing("puts", func(g int, r *rand.Rand) [][]store.Record {
		var out [][]store.Record
		for i := range 60 {
			var recs []store.Record
			for k := range i%3 + 1 {
				id := fmt.Sprintf("follow-%d-%d-%d", g, i, k)
				recs = append(recs, put(id, fmt.Sprintf("/queue/follow-%d", g), body(id, 50+r.IntN(300))))
			}
			out = append(out, recs)
		}
		return out
	})
	for q := range producers {
		puts += len(model.Order(fmt.Sprintf("/queue/follow-%d", q)))
	}
	// Each Put is applied once (calls), and reported as read (records);
	// a few records of the store's own (an epoch marker, say) may be read
	// besides, but not a re-read of what was read before.
	if calls != puts || records < puts || records > puts+ownRecords {
		t.Errorf("catching up on %d Puts, CatchUp reported %d records and made %d Index calls in all; want %d calls and %d to %d records", puts, records, calls, puts, puts, puts+ownRecords)
	}
	idle("after the Puts")

	// Phase 2, everything a broker appends: Puts, Acks of messages the
	// standby may not have seen yet, producer windows coming and going.
	appendWhileFollowing("mixed", func(g int, r *rand.Rand) [][]store.Record {
		q := fmt.Sprintf("/queue/follow-%d", g)
		var live []string
		for i := range 60 {
			for k := range i%3 + 1 {
				live = append(live, fmt.Sprintf("follow-%d-%d-%d", g, i, k))
			}
		}
		seqs := map[string]uint64{}
		var out [][]store.Record
		for i := range 80 {
			id := fmt.Sprintf("follow2-%d-%d", g, i)
			p := fmt.Sprintf("follow-producer-%d-%d", g, r.IntN(3))
			var recs []store.Record
			switch r.IntN(5) {
			case 0:
				recs = []store.Record{put(id, q, body(id, 100))}
			case 1: // an old message acknowledged
				k := r.IntN(len(live))
				recs = []store.Record{ack(live[k]), put(id, q, body(id, 100))}
				live = slices.Delete(live, k, k+1)
			case 2: // the last one acknowledged at once
				recs = []store.Record{ack(live[len(live)-1])}
				live = live[:len(live)-1]
			case 3:
				seqs[p] += uint64(1 + r.IntN(10))
				recs = []store.Record{producer(p, seqs[p]), put(id, q, body(id, 100))}
			case 4:
				delete(seqs, p)
				recs = []store.Record{producerEnd(p), put(id, q, body(id, 100))}
			}
			for _, rec := range recs {
				if rec.Kind == store.KindPut {
					live = append(live, rec.ID)
				}
			}
			out = append(out, recs)
		}
		return out
	})
	idle("after the mixed Appends")

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, cold := e.cold()
	if d := cold.Diff(model); d != "" {
		t.Errorf("a cold start does not see what was appended: %s", d)
	}
	if d := sb.idx.Diff(cold); d != "" {
		t.Errorf("the following Standby's index differs from a cold start's: %s", d)
	}
	sb.close()
}

// testTakeoverReadsTail: a standby that had caught up reads, at Promote,
// only what was appended since. This is what makes a takeover fast
// whatever the backlog; a Promote that re-reads the store would be correct
// and uselessly slow, so the Index calls it makes are counted.
func testTakeoverReadsTail(e *env) {
	t := e.t
	s, _ := e.cold()
	sb := e.follow()
	model := NewIndex()
	const backlog, perAppend, queues = 1000, 25, 4
	var batches [][]store.Record
	for i := 0; i < backlog; i += perAppend {
		var recs []store.Record
		for k := i; k < i+perAppend; k++ {
			id := fmt.Sprintf("tail-%d", k)
			recs = append(recs, put(id, fmt.Sprintf("/queue/tail-%d", k%queues), body(id, 64+k%200)))
		}
		recs = append(recs, producer(fmt.Sprintf("tail-producer-%d", i%3), uint64(i+1)))
		batches = append(batches, recs)
	}
	e.writeAll(s, model, batches)
	sb.converge(model)

	tail := [][]store.Record{
		{put("new-1", "/queue/tail-0", body("new-1", 100)), put("new-2", "/queue/tail-1", body("new-2", 100))},
		{ack("tail-5")},
		{producer("tail-producer-0", 5000)},
		{put("new-3", "/queue/tail-2", body("new-3", 100)), ack("new-1")},
		{ack("tail-500")},
	}
	k := 0
	for _, recs := range tail {
		e.mustWrite(s, model, recs...)
		k += len(recs)
	}
	e.crash(s)

	before := sb.idx.Calls()
	s2 := sb.promoteMaster()
	if calls := sb.idx.Calls() - before; calls > k {
		t.Errorf("Promote of a standby that had caught up on %d records made %d Index calls for the %d records appended since: it re-read the backlog", backlog, calls, k)
	}
	if d := sb.idx.Diff(model); d != "" {
		t.Fatalf("after the takeover: %s", d)
	}
	e.checkLive(s2, model.Len(), "of the promoted store")
	e.checkRead(s2, "tail-0", body("tail-0", 64))
	e.checkRead(s2, "tail-999", body("tail-999", 64+999%200))
	e.checkRead(s2, "new-2", body("new-2", 100))
	e.checkNotFound(s2, "tail-5", "acknowledged just before the crash")
	e.mustWrite(s2, model, put("after-takeover", "/queue/tail-0", []byte("x")))
}

// testFencing: once the lease is lost, the old master writes nothing more
// that anyone will read, tells the broker why (store.ErrFenced, so that it
// steps down instead of retrying), and its Close damages nothing of its
// successor's, even when it closes after the successor started writing.
func testFencing(e *env) {
	t := e.t
	s1, _ := e.cold()
	model := NewIndex()
	e.mustWrite(s1, model, put("before", "/queue/fence", []byte("before")), producer("fence-producer", 1))

	// The lease is lost while Appends are in flight: those committed before
	// the fence refused are kept, the rest refused.
	const inFlight, revokeAt = 30, 5
	d := newDoneLog(inFlight)
	batches := make([][]store.Record, inFlight)
	for i := range inFlight {
		id := fmt.Sprintf("inflight-%d", i)
		batches[i] = []store.Record{put(id, "/queue/fence", body(id, 40))}
		var extra func(error)
		if i == revokeAt {
			extra = func(error) { s1.lease.revoke() }
		}
		s1.Append(batches[i], d.done(i, extra))
	}
	d.wait(e, "Appends in flight as the lease is lost")
	errs, _, _ := d.snapshot()
	fenced := -1
	for i, err := range errs {
		switch {
		case i <= revokeAt && err != nil:
			t.Errorf("Append %d, done before the lease was lost: %v", i, err)
		case err != nil && !errors.Is(err, store.ErrFenced):
			t.Errorf("Append %d, after the lease was lost: %v, want an error wrapping store.ErrFenced", i, err)
		case err == nil && fenced >= 0:
			t.Errorf("Append %d succeeded after Append %d was fenced off", i, fenced)
		case err != nil && fenced < 0:
			fenced = i
		}
		if err == nil {
			model.Apply(batches[i]...)
		}
	}
	for i := range 3 {
		err := e.write(s1, put(fmt.Sprintf("refused-%d", i), "/queue/fence", []byte("x")), ack("before"), producer("fence-producer", 2))
		if !errors.Is(err, store.ErrFenced) {
			t.Errorf("Append %d after the lease was lost: %v, want an error wrapping store.ErrFenced", i, err)
		}
	}

	// A new master takes over while the old one is still open.
	sb := e.follow()
	s2 := sb.promoteMaster()
	if d := sb.idx.Diff(model); d != "" {
		t.Fatalf("the new master sees: %s (refused writes must never become visible)", d)
	}
	if err := e.write(s1, put("refused-late", "/queue/fence", []byte("x"))); !errors.Is(err, store.ErrFenced) {
		t.Errorf("Append by the old master after the new one took over: %v, want an error wrapping store.ErrFenced", err)
	}
	e.mustWrite(s2, model, put("second-1", "/queue/fence", []byte("s1")))
	s1.Close() // what a deposed broker does; its error may well say fenced
	e.mustWrite(s2, model, put("second-2", "/queue/fence", []byte("s2")))
	if err := s2.Close(); err != nil {
		t.Fatalf("Close of the new master: %v", err)
	}

	s3, idx := e.cold()
	if d := idx.Diff(model); d != "" {
		t.Fatalf("after the new master closed: %s", d)
	}
	e.checkRead(s3, "before", []byte("before"))
	e.checkRead(s3, "second-1", []byte("s1"))
	e.checkRead(s3, "second-2", []byte("s2"))
	e.checkNotFound(s3, "refused-0", "whose Append was fenced off")
}

// testScale: a backlog of thousands, mostly acknowledged, then entirely:
// Stats().Live follows it (it is the broker's /metrics gauge), standbys
// keep up, one of them lagging across everything the store did meanwhile
// (compaction included), and in the end a restart finds nothing live.
func testScale(e *env) {
	t := e.t
	s, _ := e.cold()
	lag := e.follow()
	lag.catchUp()
	follower := e.follow()
	model := NewIndex()
	const n, perAppend, queues = 5000, 50, 8
	var batches [][]store.Record
	for i := 0; i < n; i += perAppend {
		var recs []store.Record
		for k := i; k < i+perAppend; k++ {
			id := fmt.Sprintf("scale-%d", k)
			recs = append(recs, put(id, fmt.Sprintf("/queue/scale-%d", k%queues), body(id, 200+k%500)))
		}
		recs = append(recs, producer("scale-producer", uint64(i+1)))
		batches = append(batches, recs)
	}
	e.writeAll(s, model, batches)
	e.checkLive(s, n, "after the Puts")
	follower.converge(model)

	ackAll := func(keep func(k int) bool) {
		batches = batches[:0]
		var recs []store.Record
		for k := range n {
			if keep(k) {
				continue
			}
			recs = append(recs, ack(fmt.Sprintf("scale-%d", k)))
			if len(recs) == 100 {
				batches = append(batches, recs)
				recs = nil
			}
		}
		if recs != nil {
			batches = append(batches, recs)
		}
		e.writeAll(s, model, batches)
	}
	ackAll(func(k int) bool { return k%10 == 0 })
	e.checkLive(s, n/10, "after acknowledging nine in ten")
	follower.converge(model)
	e.checkRead(s, "scale-10", body("scale-10", 210))
	e.checkNotFound(s, "scale-11", "acknowledged")

	ackAll(func(k int) bool { return k%10 != 0 })
	e.mustWrite(s, model, producerEnd("scale-producer"))
	e.checkLive(s, 0, "after acknowledging everything")
	follower.converge(model)
	lag.converge(model)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2, idx := e.cold()
	if idx.Len() != 0 || len(idx.Producers()) != 0 {
		t.Errorf("after acknowledging everything and a restart: %s", idx.Diff(model))
	}
	e.checkLive(s2, 0, "after the restart")
	e.checkNotFound(s2, "scale-0", "acknowledged before the restart")
}

// testTornTail: a crash in the middle of a write leaves a torn tail; the
// takeover drops that write, as a whole (its done never said nil), keeps
// everything before it, and writes on after it so that the next start
// reads it all, rather than taking the torn bytes for corruption.
func testTornTail(e *env) {
	tt, ok := e.h.(TornTailer)
	if !ok { // the first harness had it, this one does not
		e.t.Skip(needsTornTailer(e.h))
	}
	t := e.t
	s, _ := e.cold()
	sb := e.follow()
	model := NewIndex()
	e.mustWrite(s, model, put("a1", "/queue/torn", body("a1", 300)), put("a2", "/queue/torn", body("a2", 300)))
	e.mustWrite(s, model, put("a3", "/queue/torn", body("a3", 300)), producer("torn-producer", 1))
	sb.converge(model)
	e.mustWrite(s, nil, put("b1", "/queue/torn", body("b1", 300)), put("b2", "/queue/torn", body("b2", 300)), ack("a1"), producer("torn-producer", 2))
	e.crash(s)
	tt.TornTail(t)

	s2 := sb.promoteMaster()
	if d := sb.idx.Diff(model); d != "" {
		t.Fatalf("after the torn write: %s (it must be dropped whole, and nothing before it)", d)
	}
	e.checkRead(s2, "a1", body("a1", 300))
	e.checkNotFound(s2, "b1", "whose write was torn")
	e.mustWrite(s2, model, put("c1", "/queue/torn", body("c1", 300)))
	if err := s2.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s3, idx := e.cold()
	if d := idx.Diff(model); d != "" {
		t.Fatalf("a start after the repaired tail: %s", d)
	}
	e.checkRead(s3, "c1", body("c1", 300))
}

// testBitFlip: one damaged body costs that message only. Read says
// store.ErrCorrupt and where, so that an operator can act; the other
// messages, even those committed with it, read fine; and a restart either
// refuses with store.ErrCorrupt or keeps the message, still unreadable,
// never serving or silently dropping it.
func testBitFlip(e *env) {
	bf, ok := e.h.(BitFlipper)
	if !ok { // the first harness had it, this one does not
		e.t.Skip(needsBitFlipper(e.h))
	}
	t := e.t
	s, _ := e.cold()
	ids := []string{"x1", "x2", "x3", "x4"}
	e.mustWrite(s, nil, put("x1", "/queue/flip", body("x1", 300)))
	e.mustWrite(s, nil, put("x2", "/queue/flip", body("x2", 300)), put("x3", "/queue/flip", body("x3", 300)))
	e.mustWrite(s, nil, put("x4", "/queue/flip", body("x4", 300)))
	where := bf.FlipBit(t, s.Store, "x2", body("x2", 300))

	checkDamaged := func(s store.Store, when string) {
		t.Helper()
		for range 2 { // and again: a failed check is not cached as good
			got, err := s.Read("x2")
			if !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("%s: Read of the damaged body = %d bytes, error %v; want an error wrapping store.ErrCorrupt", when, len(got), err)
				return
			}
			if !strings.Contains(err.Error(), where) {
				t.Errorf("%s: Read's error %q does not say where the damage is (%q)", when, err, where)
			}
		}
		for _, id := range ids {
			if id != "x2" {
				e.checkRead(s, id, body(id, 300))
			}
		}
	}
	checkDamaged(s, "the open store")
	s.Close()

	sb := e.follow()
	s2, err := sb.tryPromote(e.promotion())
	if err != nil {
		if !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("Promote over a damaged body: %v, want success or an error wrapping store.ErrCorrupt", err)
		}
		return
	}
	if _, _, live := sb.idx.Lookup("x2"); !live {
		t.Errorf("after a restart the damaged message is no longer live: the store dropped it instead of refusing")
	}
	checkDamaged(s2, "after a restart")
}

// testPartialWrite: a standby that meets a write still in progress waits
// for it, without an error (the master is alive and well) and without
// applying any of it (it might yet be torn), and applies it all once it is
// complete.
func testPartialWrite(e *env) {
	pw, ok := e.h.(PartialWriter)
	if !ok { // the first harness had it, this one does not
		e.t.Skip(needsPartialWriter(e.h))
	}
	t := e.t
	s, _ := e.cold()
	sb := e.follow()
	model := NewIndex()
	e.mustWrite(s, model, put("w1", "/queue/partial", body("w1", 200)))
	e.mustWrite(s, model, put("w2", "/queue/partial", body("w2", 200)))
	sb.converge(model)

	recs := []store.Record{
		put("p1", "/queue/partial", body("p1", 64<<10)),
		put("p2", "/queue/partial", body("p2", 64<<10)),
		ack("w1"),
		producer("partial-producer", 1),
	}
	done := make(chan error, 1)
	held := pw.PartialWrite(t, s.Store, recs, func(err error) { done <- err })
	// Whatever happens, the write is let go before the store is closed.
	finish := sync.OnceFunc(held)
	t.Cleanup(finish)
	for range 3 {
		p, _ := sb.catchUp()
		if d := sb.idx.Diff(model); d != "" {
			t.Fatalf("with a write in progress, the standby's index differs from what was complete: %s", d)
		}
		t.Logf("CatchUp during the write: %+v", p)
	}
	finish()
	if err := await(e, done, "the done of the held write after finish"); err != nil {
		t.Fatalf("the held write: %v", err)
	}
	model.Apply(recs...)
	sb.converge(model)
	e.mustWrite(s, model, put("w3", "/queue/partial", body("w3", 200)))
	sb.converge(model)
	e.checkRead(s, "p2", body("p2", 64<<10))
}

// testReadMany: a store that reads many bodies at once (store.BatchReader)
// gives, for each id, what Read gives: bodies written together and apart,
// in any order asked, with acknowledged and unknown ids not found.
func testReadMany(e *env) {
	t := e.t
	m, _ := e.cold()
	br, ok := m.Store.(store.BatchReader)
	if !ok {
		t.Skip("the store does not implement store.BatchReader")
	}
	var recs []store.Record
	var ids []string
	for i := range 40 {
		id := "rm-" + strconv.Itoa(i)
		recs = append(recs, put(id, "/queue/rm", body(id, 100+i*37)))
		ids = append(ids, id)
	}
	e.mustWrite(m, nil, recs[:30]...)
	e.mustWrite(m, nil, recs[30:]...)
	e.mustWrite(m, nil, ack("rm-5"), ack("rm-31"))
	ask := append([]string{"rm-39", "no-such-id"}, ids...)
	data, errs := br.ReadMany(ask)
	if len(data) != len(ask) || len(errs) != len(ask) {
		t.Fatalf("ReadMany of %d ids gave %d bodies and %d errors", len(ask), len(data), len(errs))
	}
	for i, id := range ask {
		switch id {
		case "no-such-id", "rm-5", "rm-31":
			if !errors.Is(errs[i], store.ErrNotFound) {
				t.Errorf("ReadMany: %q gave %d bytes, error %v; want ErrNotFound", id, len(data[i]), errs[i])
			}
			continue
		}
		if errs[i] != nil {
			t.Errorf("ReadMany: %q: %v", id, errs[i])
		} else if want := body(id, len(data[i])); len(data[i]) < 100 || !bytes.Equal(data[i], want) {
			t.Errorf("ReadMany: %q = %d bytes %s", id, len(data[i]), preview(data[i]))
		}
	}
	m.Close()
}
