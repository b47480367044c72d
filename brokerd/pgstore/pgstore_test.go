package pgstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/brokerd/store"
	"handover/internal/pgtest"
	"handover/lockstore"
)

const testTimeout = 10 * time.Second

// fixture is a test database with a held master lock, as the broker has
// when it opens its store.
type fixture struct {
	t     *testing.T
	srv   *pgtest.Server
	lease lockstore.Lease
	epoch uint64 // the lock's epoch: the lease's, or later after bump
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := pgtest.Start(t)
	lk, err := lockstore.NewPostgres(lockstore.PostgresOptions{DSN: srv.DSN(), Retry: 200 * time.Millisecond, Log: pgtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	lease, err := lk.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lease.Release() })
	return &fixture{t: t, srv: srv, lease: lease, epoch: lease.Epoch()}
}

// opts are the Options of the fixture's database.
func (f *fixture) opts() Options {
	return Options{DSN: f.srv.DSN(), Log: pgtest.Logger(f.t)}
}

// open is a cold start of a master at the lock's current epoch, feeding
// idx (a new memIndex if nil).
func (f *fixture) open(idx store.Index) *Store {
	f.t.Helper()
	return f.openWith(f.opts(), idx)
}

func (f *fixture) openWith(opts Options, idx store.Index) *Store {
	f.t.Helper()
	if idx == nil {
		idx = newMemIndex()
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, err := Open(ctx, opts, store.Promotion{Epoch: f.epoch}, idx)
	if err != nil {
		f.t.Fatalf("Open: %v", err)
	}
	f.t.Cleanup(func() { s.Close() })
	return s
}

// follow starts a standby.
func (f *fixture) follow(opts Options) *Standby {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sb, err := Follow(ctx, opts)
	if err != nil {
		f.t.Fatalf("Follow: %v", err)
	}
	f.t.Cleanup(func() { sb.Close() })
	return sb
}

// bump moves the lock's epoch on, as another broker's acquisition does: a
// takeover. The fixture's lease notices it lost the lock; nothing here
// watches that.
func (f *fixture) bump() uint64 {
	f.t.Helper()
	var e int64
	if err := f.srv.Conn().QueryRow(context.Background(), "UPDATE handover_lock SET epoch = epoch + 1 RETURNING epoch").Scan(&e); err != nil {
		f.t.Fatal(err)
	}
	f.epoch = uint64(e)
	return f.epoch
}

// rows counts the rows of the messages table, from outside the store.
func (f *fixture) rows() int {
	f.t.Helper()
	var n int
	if err := f.srv.Conn().QueryRow(context.Background(), "SELECT count(*) FROM "+messagesTable).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}

// waitFor polls cond until it holds, failing the test after testTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func put(id, queue, data string) store.Record {
	return store.Record{Kind: store.KindPut, ID: id, Queue: queue, Data: []byte(data)}
}

func ack(id string) store.Record { return store.Record{Kind: store.KindAck, ID: id} }

func producer(id string, seq uint64) store.Record {
	return store.Record{Kind: store.KindProducer, ID: id, Data: strconv.AppendUint(nil, seq, 10)}
}

func producerEnd(id string) store.Record { return store.Record{Kind: store.KindProducerEnd, ID: id} }

// memIndex is a store.Index that keeps what it is fed, as the broker's
// does: live messages ordered by the order the store gives each Put.
type memIndex struct {
	live      map[string]memEntry
	producers map[string]uint64
	puts      []uint64 // the order of every Put, in call order
	nPut      int
	nAck      int
	nProd     int
}

type memEntry struct {
	queue string
	size  int
	order uint64
}

func newMemIndex() *memIndex {
	return &memIndex{live: map[string]memEntry{}, producers: map[string]uint64{}}
}

func (m *memIndex) Put(id, queue string, size int, order uint64) {
	m.puts = append(m.puts, order)
	m.nPut++
	if e, ok := m.live[id]; ok && e.order == order {
		return // a move: changes nothing
	}
	m.live[id] = memEntry{queue, size, order}
}

func (m *memIndex) Ack(id string) {
	delete(m.live, id)
	m.nAck++
}

func (m *memIndex) Producer(id string, seq uint64) {
	if seq == 0 {
		delete(m.producers, id)
	} else {
		m.producers[id] = seq
	}
	m.nProd++
}

func (m *memIndex) calls() int { return m.nPut + m.nAck + m.nProd }

// ids is the live ids in append order.
func (m *memIndex) ids() []string {
	ids := slices.Collect(maps.Keys(m.live))
	slices.SortFunc(ids, func(a, b string) int { return cmp.Compare(m.live[a].order, m.live[b].order) })
	return ids
}

// String describes the live set with queues and sizes, and the producers,
// for comparisons.
func (m *memIndex) String() string {
	var b strings.Builder
	for _, id := range m.ids() {
		fmt.Fprintf(&b, "%s@%s:%d ", id, m.live[id].queue, m.live[id].size)
	}
	b.WriteString("| ")
	fmt.Fprint(&b, m.producers)
	return b.String()
}

// TestRoundTrip: Puts survive a reopen in append order, across queues,
// with binary data intact (read back by Read); Acks remove them;
// replacing and acknowledging within one Append work as the journal's do;
// producer windows come back as such.
func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	idx := newMemIndex()
	s := f.open(idx)
	if idx.calls() != 0 {
		t.Fatalf("fresh store fed the index %d calls", idx.calls())
	}
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	steps := [][]store.Record{
		{put("m1", "/queue/a", "one"), put("m2", "/queue/b", "two"), producer("p1", 7)},
		{{Kind: store.KindPut, ID: "m3", Queue: "/queue/a", Data: binary}, producer("p2", 1<<63+5)},
		{ack("m2"), ack("unknown"), producer("p1", 9)},
		{put("m4", "/queue/a", "four"), ack("m4")},                   // acked in the same Append: never stored
		{put("m5", "/queue/b", "old"), put("m5", "/queue/b", "new")}, // a second Put replaces
		// nil Data is an empty body, not a NULL.
		{{Kind: store.KindPut, ID: "m6", Queue: "/queue/a"}, producer("p3", 1), producerEnd("p3"), producerEnd("nobody")},
		nil, // a barrier
	}
	for i, recs := range steps {
		if err := s.Write(recs...); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	st := s.Stats()
	if st.Live != 4 || st.Records != 16 || st.Syncs != 6 || st.Bytes != int64(3+256+3+0) || st.LiveBytes != st.Bytes || st.Segments != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	if b, err := s.Read("m3"); err != nil || !bytes.Equal(b, binary) {
		t.Fatalf("Read(m3) = %q, %v", b, err)
	}
	if b, err := s.Read("m6"); err != nil || b == nil || len(b) != 0 {
		t.Fatalf("Read(m6) = %#v, %v; want an empty, non-nil slice", b, err)
	}
	for _, id := range []string{"m2", "m4", "unknown", "p1", "", "nul\x00"} {
		if _, err := s.Read(id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Read(%q) = %v, want ErrNotFound", id, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(put("late", "/queue/a", "x")); !errors.Is(err, ErrClosed) || !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Write after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Read("m1"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Read after Close = %v, want ErrClosed", err)
	}

	idx2 := newMemIndex()
	s2 := f.open(idx2)
	if got, want := idx2.String(), "m1@/queue/a:3 m3@/queue/a:256 m5@/queue/b:3 m6@/queue/a:0 | map[p1:9 p2:9223372036854775813]"; got != want {
		t.Fatalf("index after reopen\n %s\nwant\n %s", got, want)
	}
	if b, err := s2.Read("m5"); err != nil || string(b) != "new" {
		t.Fatalf("Read(m5) = %q, %v", b, err)
	}
	if st := s2.Stats(); st.Live != 4 || st.Bytes != 262 || st.LiveBytes != 262 {
		t.Fatalf("Stats after reopen = %+v", st)
	}
}

// TestInvalidRecordFailsOnlyItsAppend: a record PostgreSQL cannot store
// fails its own Append, not the Appends committed with it.
func TestInvalidRecordFailsOnlyItsAppend(t *testing.T) {
	f := newFixture(t)
	s := f.open(nil)
	bad := []store.Record{
		{Kind: store.KindPut, ID: "", Queue: "/queue/a"},
		{Kind: store.KindPut, ID: "nul\x00", Queue: "/queue/a"},
		{Kind: store.KindPut, ID: "ok", Queue: "/queue/\xff"},
		{Kind: 9, ID: "k"},
		{Kind: store.KindProducer, ID: "p", Data: []byte("-1")},
		{Kind: store.KindProducer, ID: "p", Data: []byte("18446744073709551616")},
		{Kind: store.KindProducer, ID: "p"},
		{Kind: store.KindProducerEnd, ID: ""},
	}
	var wg sync.WaitGroup
	errs := make([]error, len(bad)+1)
	for i, r := range bad {
		wg.Add(1)
		s.Append([]store.Record{r}, func(err error) { errs[i] = err; wg.Done() })
	}
	wg.Add(1)
	s.Append([]store.Record{put("good", "/queue/a", "x")}, func(err error) { errs[len(bad)] = err; wg.Done() })
	wg.Wait()
	for i := range bad {
		if !errors.Is(errs[i], ErrInvalid) || !errors.Is(errs[i], store.ErrInvalid) {
			t.Errorf("bad record %d: %v, want ErrInvalid", i, errs[i])
		}
	}
	if errs[len(bad)] != nil {
		t.Fatalf("valid Append failed: %v", errs[len(bad)])
	}
	if n := f.rows(); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}

// TestGroupCommit: concurrent Appends share transactions, and every done
// is called once, in Append order.
func TestGroupCommit(t *testing.T) {
	f := newFixture(t)
	s := f.open(nil)
	const producers, each = 32, 40
	var (
		mu    sync.Mutex // orders Append calls, so that their order is known
		next  int
		dmu   sync.Mutex
		order []int
		wg    sync.WaitGroup
		fails int
	)
	body := bytes.Repeat([]byte("x"), 1024)
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				done := make(chan struct{})
				mu.Lock()
				n := next
				next++
				rec := store.Record{Kind: store.KindPut, ID: "m" + strconv.Itoa(n), Queue: "/queue/g", Data: body}
				s.Append([]store.Record{rec}, func(err error) {
					dmu.Lock()
					order = append(order, n)
					if err != nil {
						fails++
					}
					dmu.Unlock()
					close(done)
				})
				mu.Unlock()
				<-done // like a producer waiting for its RECEIPT
			}
		}()
	}
	wg.Wait()
	if fails != 0 {
		t.Fatalf("%d Appends failed", fails)
	}
	for i, n := range order {
		if n != i {
			t.Fatalf("done %d called for Append %d: not in Append order", i, n)
		}
	}
	st := s.Stats()
	t.Logf("%d records in %d commits (%.1f per commit)", st.Records, st.Syncs, float64(st.Records)/float64(st.Syncs))
	if st.Records != producers*each || st.Syncs > st.Records/4 {
		t.Fatalf("Stats = %+v: want %d records sharing commits (Syncs under a quarter of Records)", st, producers*each)
	}
	if n := f.rows(); n != producers*each {
		t.Fatalf("%d rows, want %d", n, producers*each)
	}
}

// TestReadConcurrent: Reads run on their own connections, concurrently
// with each other and with commits, and return the caller's own copy.
func TestReadConcurrent(t *testing.T) {
	f := newFixture(t)
	opts := f.opts()
	opts.ReadConns = 2
	s := f.openWith(opts, nil)
	const n = 50
	for i := range n {
		if err := s.Write(put("m"+strconv.Itoa(i), "/queue/r", strings.Repeat(strconv.Itoa(i%10), 100+i))); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8*n)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				id := "m" + strconv.Itoa((i+g)%n)
				b, err := s.Read(id)
				want := strings.Repeat(strconv.Itoa(((i+g)%n)%10), 100+(i+g)%n)
				if err != nil || string(b) != want {
					errs <- fmt.Errorf("Read(%s) = %.20q, %v", id, b, err)
				}
				if err == nil {
					b[0] = 'X' // the caller's own copy
				}
			}
		}()
	}
	for i := range 20 {
		if err := s.Write(put("w"+strconv.Itoa(i), "/queue/r", "x")); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var conns int
	if err := f.srv.Conn().QueryRow(context.Background(),
		"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'handover-store-read/%'").Scan(&conns); err != nil {
		t.Fatal(err)
	}
	if conns < 1 || conns > 2 {
		t.Fatalf("%d read connections, want 1 or 2 (ReadConns = 2)", conns)
	}
}

// TestFencing: once the lock's epoch moves on (another broker became
// master), the store's next write fails with ErrFenced, and nothing is
// written after, however many times it is asked.
func TestFencing(t *testing.T) {
	f := newFixture(t)
	s := f.open(nil)
	if err := s.Write(put("before", "/queue/a", "x")); err != nil {
		t.Fatal(err)
	}
	stale := f.epoch
	f.bump()
	for i := 0; i < 3; i++ {
		err := s.Write(put("after"+strconv.Itoa(i), "/queue/a", "x"), ack("before"))
		if !errors.Is(err, ErrFenced) || !errors.Is(err, store.ErrFenced) || !errors.Is(err, lockstore.ErrLost) {
			t.Fatalf("Write %d after the epoch moved = %v, want ErrFenced", i, err)
		}
	}
	var n int
	var id string
	if err := f.srv.Conn().QueryRow(context.Background(), "SELECT count(*), min(id) FROM "+messagesTable).Scan(&n, &id); err != nil {
		t.Fatal(err)
	}
	if n != 1 || id != "before" {
		t.Fatalf("table holds %d rows (first %q) after fencing, want only \"before\"", n, id)
	}
	// Reads are not fenced.
	if b, err := s.Read("before"); err != nil || string(b) != "x" {
		t.Fatalf("Read on a fenced store = %q, %v", b, err)
	}
	if err := s.Close(); !errors.Is(err, ErrFenced) {
		t.Fatalf("Close = %v, want ErrFenced", err)
	}
	// A store cannot even be opened with a stale epoch.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := Open(ctx, f.opts(), store.Promotion{Epoch: stale}, newMemIndex()); !errors.Is(err, ErrFenced) {
		t.Fatalf("Open with a stale epoch = %v, want ErrFenced", err)
	}
	// Nor with a Fence that refuses.
	lost := errors.New("lease lost")
	if _, err := Open(ctx, f.opts(), store.Promotion{Epoch: f.epoch, Fence: func() error { return lost }}, newMemIndex()); !errors.Is(err, ErrFenced) {
		t.Fatalf("Open with a refusing Fence = %v, want ErrFenced", err)
	}
}

// TestFenceCallback: once Promotion.Fence refuses, the store refuses all
// writes without asking the database.
func TestFenceCallback(t *testing.T) {
	f := newFixture(t)
	var (
		mu   sync.Mutex
		lost error
	)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, err := Open(ctx, f.opts(), store.Promotion{Epoch: f.epoch, Fence: func() error {
		mu.Lock()
		defer mu.Unlock()
		return lost
	}}, newMemIndex())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Write(put("a", "/queue/a", "x")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	lost = errors.New("lease lost")
	mu.Unlock()
	if err := s.Write(put("b", "/queue/a", "x")); !errors.Is(err, ErrFenced) {
		t.Fatalf("Write after the fence refused = %v, want ErrFenced", err)
	}
	if n := f.rows(); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}

// waitingOnLock waits until a session is blocked on a lock running a
// statement that starts with prefix.
func waitingOnLock(t *testing.T, f *fixture, prefix string) {
	t.Helper()
	admin := f.srv.Conn()
	waitFor(t, "a session running "+prefix+" to wait for a lock", func() bool {
		var n int
		if err := admin.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND starts_with(query, $1)", prefix).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
}

// TestFenceWaitsForWriter: the fence's row lock orders an epoch increment
// after a write transaction in flight, so a new master reads what the old
// one committed; the test holds such a lock from outside and checks that the
// increment waits for it.
func TestFenceWaitsForWriter(t *testing.T) {
	f := newFixture(t)
	f.open(nil) // creates the schema
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	writer, bumper := f.srv.Conn(), f.srv.Conn()
	tx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT "+fenceFunc+"($1, $2)", lockstore.DefaultPostgresName, int64(f.epoch)); err != nil {
		t.Fatal(err)
	}
	bumped := make(chan error, 1)
	go func() {
		_, err := bumper.Exec(ctx, "UPDATE handover_lock SET epoch = epoch + 1")
		bumped <- err
	}()
	waitingOnLock(t, f, "UPDATE handover_lock")
	select {
	case err := <-bumped:
		t.Fatalf("epoch increment did not wait for the fenced transaction: %v", err)
	default:
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-bumped; err != nil {
		t.Fatal(err)
	}
}

// TestFenceSerializesWriters: two write transactions of one epoch exclude
// each other at the fence, so that sequence numbers (taken after it) are
// assigned in commit order even if a master's abandoned transaction is
// still running when it writes from a new connection.
func TestFenceSerializesWriters(t *testing.T) {
	f := newFixture(t)
	f.open(nil)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	old, next := f.srv.Conn(), f.srv.Conn()
	tx, err := old.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fence := "SELECT " + fenceFunc + "($1, $2)"
	if _, err := tx.Exec(ctx, fence, lockstore.DefaultPostgresName, int64(f.epoch)); err != nil {
		t.Fatal(err)
	}
	passed := make(chan error, 1)
	go func() {
		_, err := next.Exec(ctx, fence, lockstore.DefaultPostgresName, int64(f.epoch))
		passed <- err
	}()
	waitingOnLock(t, f, fence)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-passed; err != nil {
		t.Fatal(err)
	}
}

// TestReconnect: the store's own session dying (an administrator, a
// restarted pooler) fails the batch in flight; the next one reconnects.
func TestReconnect(t *testing.T) {
	f := newFixture(t)
	s := f.open(nil)
	if err := s.Write(put("a", "/queue/a", "x")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read("a"); err != nil { // opens a read connection, which must survive
		t.Fatal(err)
	}
	var n int
	if err := f.srv.Conn().QueryRow(context.Background(),
		"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'handover-store/%'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d store sessions: %v", n, err)
	}
	if err := s.Write(put("b", "/queue/a", "x")); err == nil || errors.Is(err, ErrFenced) {
		t.Fatalf("Write on a terminated session = %v, want a connection error", err)
	}
	if err := s.Write(put("c", "/queue/a", "x")); err != nil {
		t.Fatalf("Write after reconnecting: %v", err)
	}
	if n := f.rows(); n != 2 {
		t.Fatalf("%d rows, want 2 (a and c)", n)
	}
	// Now the reader's turn: a Read that finds its connection broken
	// reopens it and reads again.
	admin := f.srv.Conn()
	if err := admin.QueryRow(context.Background(),
		"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'handover-store-read/%'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d read sessions: %v", n, err)
	}
	waitFor(t, "the read session to end", func() bool {
		if err := admin.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'handover-store-read/%'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
	if b, err := s.Read("c"); err != nil || string(b) != "x" {
		t.Fatalf("Read after its session was terminated = %q, %v", b, err)
	}
}

// TestSchemaTooNew: a brokerd refuses a database migrated by a newer one,
// as master and as standby.
func TestSchemaTooNew(t *testing.T) {
	f := newFixture(t)
	s := f.open(nil)
	s.Close()
	if _, err := f.srv.Conn().Exec(context.Background(), "INSERT INTO "+versionTable+" (version, description) VALUES (99, 'future')"); err != nil {
		t.Fatal(err)
	}
	sb := f.follow(f.opts())
	if _, err := sb.CatchUp(newMemIndex()); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("CatchUp = %v, want ErrSchemaTooNew", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := Open(ctx, f.opts(), store.Promotion{Epoch: f.epoch}, newMemIndex()); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
}

func TestOptions(t *testing.T) {
	ctx := context.Background()
	for _, o := range []Options{
		{},
		{DSN: "postgres://u@h/db", WriteTimeout: -1},
		{DSN: "postgres://u@h/db", AckRetention: -1},
		{DSN: "postgres://u@h/db", ReadConns: -1},
		{DSN: "postgres://u:pw@h:x/db"},
	} {
		if _, err := Follow(ctx, o); err == nil || strings.Contains(err.Error(), "pw") {
			t.Errorf("Follow(%+v) = %v, want an error without the password", o, err)
		}
	}
	f := newFixture(t)
	for _, epoch := range []uint64{0, 1 << 63} {
		sb := f.follow(f.opts())
		st, err := sb.Promote(store.Promotion{Epoch: epoch}, newMemIndex())
		if err == nil || st != nil {
			t.Errorf("Promote with epoch %d = %v, %v; want a nil Store and an error", epoch, st, err)
		}
		if _, err := sb.CatchUp(newMemIndex()); !errors.Is(err, ErrClosed) {
			t.Errorf("CatchUp after a failed Promote = %v, want ErrClosed", err)
		}
	}
}
