package pgstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"handover/brokerd/store"
)

// catchUp is one CatchUp that must succeed.
func catchUp(t *testing.T, sb *Standby, idx store.Index) store.Progress {
	t.Helper()
	p, err := sb.CatchUp(idx)
	if err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	return p
}

// model is what a master's live set must be: the test's own account of
// what it appended.
type model struct {
	order     []string
	live      map[string]string // id -> queue
	data      map[string]string
	producers map[string]uint64
}

func newModel() *model {
	return &model{live: map[string]string{}, data: map[string]string{}, producers: map[string]uint64{}}
}

func (m *model) apply(recs []store.Record) {
	for _, r := range recs {
		switch r.Kind {
		case store.KindPut:
			if _, ok := m.live[r.ID]; !ok {
				m.order = append(m.order, r.ID)
			}
			m.live[r.ID], m.data[r.ID] = r.Queue, string(r.Data)
		case store.KindAck:
			delete(m.live, r.ID)
			delete(m.data, r.ID)
		case store.KindProducer:
			m.producers[r.ID], _ = strconv.ParseUint(string(r.Data), 10, 64)
		case store.KindProducerEnd:
			delete(m.producers, r.ID)
		}
	}
}

func (m *model) liveIDs() []string {
	var out []string
	for _, id := range m.order {
		if _, ok := m.live[id]; ok {
			out = append(out, id)
		}
	}
	return out
}

func (m *model) String() string {
	var b strings.Builder
	for _, id := range m.liveIDs() {
		fmt.Fprintf(&b, "%s@%s:%d ", id, m.live[id], len(m.data[id]))
	}
	b.WriteString("| ")
	fmt.Fprint(&b, m.producers)
	return b.String()
}

// randomAppend makes one Append's records: a few Puts (ids numbered in
// append order), Acks of live messages, producer windows moving on or
// ending.
func (m *model) randomAppend(r *rand.Rand, next *int) []store.Record {
	var recs []store.Record
	for range r.IntN(4) {
		*next++
		id := fmt.Sprintf("m%06d", *next)
		recs = append(recs, put(id, "/queue/q"+strconv.Itoa(r.IntN(3)), strings.Repeat("x", r.IntN(300))))
	}
	live := m.liveIDs()
	for range r.IntN(3) {
		if len(live) > 0 {
			recs = append(recs, ack(live[r.IntN(len(live))]))
		}
	}
	if r.IntN(3) == 0 {
		p := "p" + strconv.Itoa(r.IntN(5))
		if r.IntN(4) == 0 {
			recs = append(recs, producerEnd(p))
		} else {
			recs = append(recs, producer(p, m.producers[p]+1+uint64(r.IntN(3))))
		}
	}
	return recs
}

// checkPutOrder checks that idx was fed Puts in append order, each once
// (nothing here is put twice or moved).
func checkPutOrder(t *testing.T, idx *memIndex) {
	t.Helper()
	for i := 1; i < len(idx.puts); i++ {
		if idx.puts[i] <= idx.puts[i-1] {
			t.Fatalf("Put %d has order %d after %d: not in append order", i, idx.puts[i], idx.puts[i-1])
		}
	}
}

// TestStandbyFollowsMaster: a standby catching up while a master appends
// Puts, Acks and producer windows (several Appends per commit) ends with
// exactly the master's live set, in order, having been fed Puts in append
// order and never a message's data; so does a standby started afterwards.
func TestStandbyFollowsMaster(t *testing.T) {
	f := newFixture(t)
	s := f.open(nil)
	sb := f.follow(f.opts())
	idx := newMemIndex()

	m := newModel()
	r := rand.New(rand.NewPCG(1, 2))
	finished := make(chan error, 1)
	go func() {
		// Appends are made without waiting for each (so that commits
		// group them), in the order the model applies them.
		next := 0
		errs := make(chan error, 1)
		const rounds = 600
		pending := 0
		for i := range rounds {
			recs := m.randomAppend(r, &next)
			m.apply(recs)
			pending++
			s.Append(recs, func(err error) {
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			})
			if i%20 == 19 {
				// A barrier now and then, so that CatchUps land between
				// commits of a live master, not only after the last.
				if err := s.Write(); err != nil {
					finished <- err
					return
				}
			}
		}
		if err := s.Write(); err != nil {
			finished <- err
			return
		}
		select {
		case err := <-errs:
			finished <- err
		default:
			finished <- nil
		}
	}()
	calls := 0
	for done := false; !done; {
		select {
		case err := <-finished:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		default:
		}
		p := catchUp(t, sb, idx)
		calls++
		if p.Waiting != "" {
			t.Fatalf("CatchUp waiting on a current schema: %s", p.Waiting)
		}
	}
	p := catchUp(t, sb, idx) // everything the master committed
	t.Logf("%d CatchUps while the master appended; last at %s", calls, p.Position)
	if got, want := idx.String(), m.String(); got != want {
		t.Fatalf("standby's index\n %s\nmaster's live set\n %s", got, want)
	}
	checkPutOrder(t, idx)
	if p := catchUp(t, sb, idx); p.Records != 0 {
		t.Fatalf("CatchUp with nothing new read %d records", p.Records)
	}
	if st := s.Stats(); st.Live != len(m.live) {
		t.Fatalf("master Stats.Live = %d, want %d", st.Live, len(m.live))
	}
	for id, data := range m.data {
		if b, err := s.Read(id); err != nil || string(b) != data {
			t.Fatalf("Read(%s) = %q, %v; want %q", id, b, err, data)
		}
	}

	cold := newMemIndex()
	catchUp(t, f.follow(f.opts()), cold)
	if got, want := cold.String(), m.String(); got != want {
		t.Fatalf("new standby's index\n %s\nmaster's live set\n %s", got, want)
	}
	checkPutOrder(t, cold)
}

// TestPromoteReadsOnlyTheTail: a takeover by a standby that had caught up
// reads only what the old master wrote since; the old master is fenced off
// and the new one's stats count the whole backlog.
func TestPromoteReadsOnlyTheTail(t *testing.T) {
	f := newFixture(t)
	old := f.open(nil)
	m := newModel()
	write := func(s *Store, recs ...store.Record) {
		t.Helper()
		if err := s.Write(recs...); err != nil {
			t.Fatal(err)
		}
		m.apply(recs)
	}
	for i := range 1000 {
		write(old, put(fmt.Sprintf("m%04d", i), "/queue/a", "data"), producer("p", uint64(i+1)))
	}
	sb := f.follow(f.opts())
	idx := newMemIndex()
	if p := catchUp(t, sb, idx); p.Records != 1001 {
		t.Fatalf("first CatchUp read %d records, want 1001 (1000 messages, 1 producer)", p.Records)
	}
	// The tail: 10 Puts, 5 Acks, one producer ended and one moved on.
	for i := range 10 {
		write(old, put(fmt.Sprintf("m%04d", 1000+i), "/queue/b", "tail"))
	}
	write(old, ack("m0000"), ack("m0001"), ack("m0002"), ack("m0003"), ack("m1009"), producerEnd("p"), producer("q", 3))
	before := idx.calls()
	f.bump() // the old master is dead to the lock
	start := time.Now()
	st, err := sb.Promote(store.Promotion{Epoch: f.epoch}, idx)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	s := st.(*Store)
	t.Cleanup(func() { s.Close() })
	// 9 Puts and 4 Acks (m1009 was put and acknowledged within the tail:
	// its row is gone, and the standby, which never saw it, is fed
	// neither), the producer ended and the one set.
	if got := idx.calls() - before; got != 15 || s.promoted.Records != 15 {
		t.Fatalf("Promote fed %d index calls, Progress.Records %d; want 15 (the tail only)", got, s.promoted.Records)
	}
	t.Logf("Promote read %d records in %v", s.promoted.Records, took)
	if got, want := idx.String(), m.String(); got != want {
		t.Fatalf("index after Promote\n %s\nwant\n %s", got, want)
	}
	if st := s.Stats(); st.Live != 1005 || st.Bytes != 996*4+9*4 {
		t.Fatalf("Stats after Promote = %+v", st)
	}
	if err := old.Write(put("late", "/queue/a", "x")); !errors.Is(err, ErrFenced) {
		t.Fatalf("old master's Write after the takeover = %v, want ErrFenced", err)
	}
	if _, err := s.Read("m0000"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Read of an acknowledged message = %v, want ErrNotFound", err)
	}
	if b, err := s.Read("m1008"); err != nil || string(b) != "tail" {
		t.Fatalf("Read(m1008) = %q, %v", b, err)
	}
	if err := s.Write(put("new", "/queue/a", "n"), ack("m0500")); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.CatchUp(idx); !errors.Is(err, ErrClosed) {
		t.Fatalf("CatchUp after Promote = %v, want ErrClosed", err)
	}
}

// TestStandbyBehindTrim: a standby that did not catch up while the master
// trimmed acknowledgements it had not read reloads, says so in the log,
// and ends with the master's live set (Acks for the messages it had that
// are gone, Puts for the new ones, producers likewise).
func TestStandbyBehindTrim(t *testing.T) {
	f := newFixture(t)
	opts := f.opts()
	opts.AckRetention = time.Nanosecond // every ack is old by the next transaction
	opts.trimEvery = time.Nanosecond    // trim after every batch
	s := f.openWith(opts, nil)
	m := newModel()
	write := func(recs ...store.Record) {
		t.Helper()
		if err := s.Write(recs...); err != nil {
			t.Fatal(err)
		}
		m.apply(recs)
	}
	for i := range 10 {
		write(put(fmt.Sprintf("m%02d", i), "/queue/a", "x"))
	}
	write(producer("p1", 1), producer("p2", 2))

	sbOpts := f.opts()
	hook := logtest.NewLocal(sbOpts.Log.Logger)
	sb := f.follow(sbOpts)
	idx := newMemIndex()
	catchUp(t, sb, idx)
	if len(idx.ids()) != 10 {
		t.Fatalf("standby has %d live messages, want 10", len(idx.ids()))
	}

	// While the standby does not look: acknowledgements, then trimmed.
	write(ack("m00"), ack("m01"), ack("m02"), producerEnd("p1"))
	write(put("m10", "/queue/a", "yy"), ack("m03"), producer("p2", 5))
	admin := f.srv.Conn()
	var below, maxAck int64
	waitFor(t, "the ack log to be trimmed past the standby", func() bool {
		if err := admin.QueryRow(context.Background(), "SELECT below, (SELECT coalesce(max(seq), 0) FROM "+acksTable+") FROM "+ackTrimTable).Scan(&below, &maxAck); err != nil {
			t.Fatal(err)
		}
		if below < maxAck {
			write() // another batch, another trim
			return false
		}
		return true
	})
	before := idx.nAck
	p := catchUp(t, sb, idx)
	if sb.reloads != 1 {
		t.Fatalf("standby reloaded %d times, want 1 (it is behind the trim at %d)", sb.reloads, below)
	}
	if got, want := idx.String(), m.String(); got != want {
		t.Fatalf("standby's index after reloading\n %s\nmaster's live set\n %s", got, want)
	}
	if got := idx.nAck - before; got != 4 {
		t.Fatalf("reload fed %d Acks, want 4 (m00-m03)", got)
	}
	warned := false
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.WarnLevel && strings.Contains(e.Message, "fell behind the ack log's trim") {
			warned = true
		}
	}
	if !warned {
		t.Fatal("no warning about the reload in the log")
	}
	t.Logf("reload: %+v", p)

	// And it follows incrementally again, once acknowledgements are kept
	// a while: with a 1 ns retention the next batch's own trim may reach
	// them before the standby does, which on a loaded machine it did.
	s.Close()
	s = f.openWith(f.opts(), nil)
	write(ack("m04"), put("m11", "/queue/b", "z"))
	if p := catchUp(t, sb, idx); sb.reloads != 1 || p.Records != 2 {
		t.Fatalf("CatchUp after the reload: %+v, %d reloads; want 2 records, no reload", p, sb.reloads)
	}
	if got, want := idx.String(), m.String(); got != want {
		t.Fatalf("standby's index\n %s\nmaster's live set\n %s", got, want)
	}
}

// TestStandbyWaitsForSchema: on a fresh database a standby reports that it
// waits and feeds nothing; Promote creates the schema.
func TestStandbyWaitsForSchema(t *testing.T) {
	f := newFixture(t)
	sb := f.follow(f.opts())
	idx := newMemIndex()
	p := catchUp(t, sb, idx)
	if p.Waiting == "" || p.Records != 0 || idx.calls() != 0 {
		t.Fatalf("CatchUp on a fresh database = %+v, %d index calls; want Waiting and nothing fed", p, idx.calls())
	}
	var n int
	if err := f.srv.Conn().QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'handover_%' AND tablename NOT IN ('handover_lock', 'handover_lease')").Scan(&n); err != nil || n != 0 {
		t.Fatalf("a standby created %d tables (%v)", n, err)
	}
	st, err := sb.Promote(store.Promotion{Epoch: f.epoch}, idx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ch := make(chan error, 1)
	st.Append([]store.Record{put("a", "/queue/a", "x")}, func(err error) { ch <- err })
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
}

// TestOldSchema: a database written by a brokerd of schema version 1 (no
// ack log; producer windows as Puts in a reserved queue) is waited on by a
// standby, and migrated and fully loaded by Promote.
func TestOldSchema(t *testing.T) {
	f := newFixture(t)
	admin := f.srv.Conn()
	ctx := context.Background()
	if _, err := admin.Exec(ctx, `CREATE TABLE `+versionTable+` (version int PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO `+versionTable+` (version, description) VALUES (1, 'v1')`); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, migrations[0].sql); err != nil {
		t.Fatal(err)
	}
	// As version 1 wrote them, one upsert per record.
	for _, r := range [][3]string{
		{"ID:1-1", "/queue/a", "one"},
		{"producer:px", "dedup", "41"},
		{"ID:1-2", "/queue/b", "two"},
		{"producer:px", "dedup", "42"},
		{"producer:py", "dedup", "7"},
		{"producer:bad", "dedup", "x7"},
		{"ID:1-3", "/queue/a", "three"},
	} {
		if _, err := admin.Exec(ctx, `INSERT INTO `+messagesTable+` (id, queue, data, epoch) VALUES ($1, $2, $3, 1)
			ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, seq = EXCLUDED.seq`, r[0], r[1], []byte(r[2])); err != nil {
			t.Fatal(err)
		}
	}
	sb := f.follow(f.opts())
	idx := newMemIndex()
	if p := catchUp(t, sb, idx); !strings.Contains(p.Waiting, "version 1") || idx.calls() != 0 {
		t.Fatalf("CatchUp on a version 1 schema = %+v, %d index calls; want Waiting", p, idx.calls())
	}
	st, err := sb.Promote(store.Promotion{Epoch: f.epoch}, idx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// producer:bad's data is not a sequence: it stays as it was.
	if got, want := idx.String(), "ID:1-1@/queue/a:3 ID:1-2@/queue/b:3 producer:bad@dedup:2 ID:1-3@/queue/a:5 | map[px:42 py:7]"; got != want {
		t.Fatalf("index after migrating\n %s\nwant\n %s", got, want)
	}
	if b, err := st.Read("ID:1-3"); err != nil || string(b) != "three" {
		t.Fatalf("Read = %q, %v", b, err)
	}
}

// TestStandbyReconnects: a standby whose connection was ended goes on
// from where it was at the next CatchUp.
func TestStandbyReconnects(t *testing.T) {
	f := newFixture(t)
	s := f.open(nil)
	sb := f.follow(f.opts())
	idx := newMemIndex()
	if err := s.Write(put("a", "/queue/a", "x")); err != nil {
		t.Fatal(err)
	}
	catchUp(t, sb, idx)
	admin := f.srv.Conn()
	var pid uint32
	if err := admin.QueryRow(context.Background(), "SELECT pg_terminate_backend($1)", int32(sb.conn.PgConn().PID())).Scan(new(bool)); err != nil {
		t.Fatal(err)
	}
	pid = sb.conn.PgConn().PID()
	if err := s.Write(put("b", "/queue/a", "x"), ack("a")); err != nil {
		t.Fatal(err)
	}
	var err error
	waitFor(t, "a CatchUp to succeed again", func() bool {
		_, err = sb.CatchUp(idx)
		return err == nil
	})
	if sb.conn.PgConn().PID() == pid {
		t.Fatal("the standby did not reconnect")
	}
	if got := fmt.Sprint(idx.ids()); got != "[b]" {
		t.Fatalf("live after reconnecting %s, want [b]", got)
	}
}

// backlogRows is how many messages TestLargeBacklog stores: 200,000 by
// default, PGSTORE_BACKLOG to measure with more.
func backlogRows(t *testing.T) int {
	if v := os.Getenv("PGSTORE_BACKLOG"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("PGSTORE_BACKLOG=%q: want a number >= 1000", v)
		}
		return n
	}
	return 200000
}

// memStats returns the live heap after a collection, and the bytes
// allocated so far: what a load allocates in all says whether it read the
// data, however soon it dropped it.
func memStats() (heap, allocated uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.TotalAlloc
}

// countIndex is a store.Index that keeps nothing but counts, so that a
// test can measure what the store itself holds.
type countIndex struct {
	puts, acks int
	size       int64
	lastOrder  uint64
	outOfOrder bool
}

func (c *countIndex) Put(id, queue string, size int, order uint64) {
	c.puts++
	c.size += int64(size)
	if order <= c.lastOrder {
		c.outOfOrder = true
	}
	c.lastOrder = order
}

func (c *countIndex) Ack(string)              { c.acks++ }
func (c *countIndex) Producer(string, uint64) {}

func (c *countIndex) String() string {
	return fmt.Sprintf("%d puts, %d acks, %d bytes", c.puts, c.acks, c.size)
}

func (c *countIndex) live() (int, int64) { return c.puts - c.acks, c.size }

func (c *countIndex) check(t *testing.T, puts int) {
	t.Helper()
	if c.puts != puts {
		t.Fatalf("%s, want %d puts", c, puts)
	}
	if c.outOfOrder {
		t.Fatal("Puts not in append order")
	}
}

// TestLargeBacklog: with a large backlog (1 KB messages, inserted directly
// by SQL), a cold standby loads the index without the data (the index gets
// sizes; the process's heap does not grow by the backlog's size), a
// caught-up standby's Promote reads only the tail and is fast, and a cold
// Follow+Promote loads sizes only too.
func TestLargeBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("large backlog")
	}
	n := backlogRows(t)
	const body = 1000
	f := newFixture(t)
	master := f.open(nil) // creates the schema
	admin := f.srv.Conn()
	start := time.Now()
	if _, err := admin.Exec(context.Background(), `INSERT INTO `+messagesTable+` (id, queue, data, epoch)
		SELECT 'ID:1-' || g, '/queue/q' || (g % 8), convert_to(repeat('x', $2), 'UTF8'), 1 FROM generate_series(1, $1) g`, n, body); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(context.Background(), "VACUUM ANALYZE "+messagesTable); err != nil {
		t.Fatal(err)
	}
	t.Logf("inserted %d messages of %d bytes in %v", n, body, time.Since(start).Round(time.Millisecond))
	total := int64(n) * body

	// A cold standby: the first CatchUp loads the whole index.
	heap0, alloc0 := memStats()
	sb := f.follow(f.opts())
	idx := &countIndex{}
	start = time.Now()
	p := catchUp(t, sb, idx)
	took := time.Since(start)
	heap1, alloc1 := memStats()
	grew, allocated := int64(heap1)-int64(heap0), int64(alloc1-alloc0)
	t.Logf("cold CatchUp of %d messages: %v, read %d bytes, allocated %d MB, heap grew %d MB (data: %d MB)",
		n, took.Round(time.Millisecond), p.Bytes, allocated>>20, grew>>20, total>>20)
	idx.check(t, n)
	if idx.size != total {
		t.Fatalf("index was told %d bytes, want %d", idx.size, total)
	}
	if p.Records != n || p.Bytes > total/10 {
		t.Fatalf("CatchUp = %+v; want %d records and far fewer bytes than the %d of data", p, n, total)
	}
	if grew > total/4 || allocated > total/2 {
		t.Fatalf("loading an index of %d messages of %d bytes allocated %d bytes, of which %d are still held: the data was read", n, body, allocated, grew)
	}

	// The master goes on; the standby follows.
	for i := range 100 {
		if err := master.Write(put(fmt.Sprintf("ID:2-%d", i), "/queue/q0", "new"), ack(fmt.Sprintf("ID:1-%d", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	start = time.Now()
	p = catchUp(t, sb, idx)
	t.Logf("CatchUp of 100 Puts and 100 Acks: %v", time.Since(start).Round(time.Microsecond))
	if p.Records != 200 {
		t.Fatalf("CatchUp = %+v, want 200 records", p)
	}
	// The tail, then the master dies and the standby takes over.
	for i := range 10 {
		if err := master.Write(put(fmt.Sprintf("ID:3-%d", i), "/queue/q1", "tail"), ack(fmt.Sprintf("ID:1-%d", 200+i))); err != nil {
			t.Fatal(err)
		}
	}
	master.Close()
	f.bump()
	start = time.Now()
	st, err := sb.Promote(store.Promotion{Epoch: f.epoch}, idx)
	if err != nil {
		t.Fatal(err)
	}
	took = time.Since(start)
	s := st.(*Store)
	t.Logf("Promote of a caught-up standby with %d live messages: %v, read %d records", s.Stats().Live, took.Round(time.Microsecond), s.promoted.Records)
	if s.promoted.Records != 20 {
		t.Fatalf("Promote read %d records, want 20 (the tail)", s.promoted.Records)
	}
	if took > time.Second {
		t.Fatalf("Promote of a caught-up standby took %v, want under a second", took)
	}
	wantLive := n - 110 + 110
	if st := s.Stats(); st.Live != wantLive || st.Bytes != total-110*body+100*3+10*4 {
		t.Fatalf("Stats = %+v, want %d live", st, wantLive)
	}
	if b, err := s.Read("ID:1-5000"); err != nil || len(b) != body {
		t.Fatalf("Read = %d bytes, %v", len(b), err)
	}
	s.Close()

	// Cold start: Follow and Promote at once.
	f.bump()
	_, alloc0 = memStats()
	*idx = countIndex{}
	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cold, err := Open(ctx, f.opts(), store.Promotion{Epoch: f.epoch}, idx)
	if err != nil {
		t.Fatal(err)
	}
	took = time.Since(start)
	_, alloc1 = memStats()
	allocated = int64(alloc1 - alloc0)
	defer cold.Close()
	t.Logf("cold Follow+Promote of %d messages: %v, allocated %d MB", wantLive, took.Round(time.Millisecond), allocated>>20)
	idx.check(t, wantLive)
	if live, size := idx.live(); live != wantLive || size != total-110*body+100*3+10*4 {
		t.Fatalf("cold index: %s", idx)
	}
	if allocated > total/4 {
		t.Fatalf("a cold start with %d messages of %d bytes allocated %d bytes: the data was read", n, body, allocated)
	}
}
