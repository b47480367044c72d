package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"handover/brokerd/journal"
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
	return &fixture{t: t, srv: srv, lease: lease}
}

func (f *fixture) open(epoch uint64) (*Store, []journal.Record) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, live, err := Open(ctx, Options{DSN: f.srv.DSN(), Epoch: epoch, Log: pgtest.Logger(f.t)})
	if err != nil {
		f.t.Fatalf("Open: %v", err)
	}
	f.t.Cleanup(func() { s.Close() })
	return s, live
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

func put(id, queue, data string) journal.Record {
	return journal.Record{Kind: journal.KindPut, ID: id, Queue: queue, Data: []byte(data)}
}

func ack(id string) journal.Record { return journal.Record{Kind: journal.KindAck, ID: id} }

func ids(recs []journal.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

// TestRoundTrip: Puts survive a reopen in append order, across queues,
// with binary data intact; Acks remove them; replacing and acknowledging
// within one Append work as the journal's do.
func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	s, live := f.open(f.lease.Epoch())
	if len(live) != 0 {
		t.Fatalf("fresh store has %d live records", len(live))
	}
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	steps := [][]journal.Record{
		{put("m1", "/queue/a", "one"), put("m2", "/queue/b", "two")},
		{{Kind: journal.KindPut, ID: "m3", Queue: "/queue/a", Data: binary}},
		{ack("m2"), ack("unknown")},
		{put("m4", "/queue/a", "four"), ack("m4")},                   // acked in the same Append: never stored
		{put("m5", "/queue/b", "old"), put("m5", "/queue/b", "new")}, // a second Put replaces
		{put("m6", "/queue/a", "")},
		nil, // a barrier
	}
	for i, recs := range steps {
		if err := s.Write(recs...); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	st := s.Stats()
	if st.Live != 4 || st.Records != 10 || st.Syncs != 6 || st.Bytes != int64(3+256+3+0) || st.Segments != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(put("late", "/queue/a", "x")); !errors.Is(err, ErrClosed) || !errors.Is(err, journal.ErrClosed) {
		t.Fatalf("Write after Close = %v, want ErrClosed", err)
	}

	s2, live := f.open(f.lease.Epoch())
	if got, want := fmt.Sprint(ids(live)), "[m1 m3 m5 m6]"; got != want {
		t.Fatalf("live after reopen %s, want %s", got, want)
	}
	if live[0].Queue != "/queue/a" || string(live[0].Data) != "one" || !bytes.Equal(live[1].Data, binary) ||
		string(live[2].Data) != "new" || live[3].Data == nil && len(live[3].Data) != 0 {
		t.Fatalf("live records differ: %+v", live)
	}
	for _, r := range live {
		if r.Kind != journal.KindPut {
			t.Fatalf("live record of kind %v", r.Kind)
		}
	}
	if st := s2.Stats(); st.Live != 4 || st.Bytes != 262 {
		t.Fatalf("Stats after reopen = %+v", st)
	}
}

// TestInvalidRecordFailsOnlyItsAppend: a record PostgreSQL cannot store
// fails its own Append, not the Appends committed with it.
func TestInvalidRecordFailsOnlyItsAppend(t *testing.T) {
	f := newFixture(t)
	s, _ := f.open(f.lease.Epoch())
	bad := []journal.Record{
		{Kind: journal.KindPut, ID: "", Queue: "/queue/a"},
		{Kind: journal.KindPut, ID: "nul\x00", Queue: "/queue/a"},
		{Kind: journal.KindPut, ID: "ok", Queue: "/queue/\xff"},
		{Kind: 9, ID: "k"},
	}
	var wg sync.WaitGroup
	errs := make([]error, len(bad)+1)
	for i, r := range bad {
		wg.Add(1)
		s.Append([]journal.Record{r}, func(err error) { errs[i] = err; wg.Done() })
	}
	wg.Add(1)
	s.Append([]journal.Record{put("good", "/queue/a", "x")}, func(err error) { errs[len(bad)] = err; wg.Done() })
	wg.Wait()
	for i := range bad {
		if !errors.Is(errs[i], ErrInvalid) || !errors.Is(errs[i], journal.ErrInvalid) {
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
	s, _ := f.open(f.lease.Epoch())
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
				rec := journal.Record{Kind: journal.KindPut, ID: "m" + strconv.Itoa(n), Queue: "/queue/g", Data: body}
				s.Append([]journal.Record{rec}, func(err error) {
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

// TestFencing: once the lock's epoch moves on (another broker became
// master), the store's next write fails with ErrFenced, and nothing is
// written after, however many times it is asked.
func TestFencing(t *testing.T) {
	f := newFixture(t)
	s, _ := f.open(f.lease.Epoch())
	if err := s.Write(put("before", "/queue/a", "x")); err != nil {
		t.Fatal(err)
	}
	admin := f.srv.Conn()
	if _, err := admin.Exec(context.Background(), "UPDATE handover_lock SET epoch = epoch + 1"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		err := s.Write(put("after"+strconv.Itoa(i), "/queue/a", "x"), ack("before"))
		if !errors.Is(err, ErrFenced) || !errors.Is(err, lockstore.ErrLost) {
			t.Fatalf("Write %d after the epoch moved = %v, want ErrFenced", i, err)
		}
	}
	var n int
	var id string
	if err := admin.QueryRow(context.Background(), "SELECT count(*), min(id) FROM "+messagesTable).Scan(&n, &id); err != nil {
		t.Fatal(err)
	}
	if n != 1 || id != "before" {
		t.Fatalf("table holds %d rows (first %q) after fencing, want only \"before\"", n, id)
	}
	if err := s.Close(); !errors.Is(err, ErrFenced) {
		t.Fatalf("Close = %v, want ErrFenced", err)
	}
	// A store cannot even be opened with a stale epoch.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, _, err := Open(ctx, Options{DSN: f.srv.DSN(), Epoch: f.lease.Epoch()}); !errors.Is(err, ErrFenced) {
		t.Fatalf("Open with a stale epoch = %v, want ErrFenced", err)
	}
}

// TestFenceWaitsForWriter: the fence's row lock orders an epoch increment
// after a write transaction in flight, so a new master reads what the old
// one committed; the test holds such a lock from outside and checks that the
// increment waits for it.
func TestFenceWaitsForWriter(t *testing.T) {
	f := newFixture(t)
	f.open(f.lease.Epoch()) // creates the schema
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	writer, bumper := f.srv.Conn(), f.srv.Conn()
	tx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT "+fenceFunc+"($1, $2)", lockstore.DefaultPostgresName, int64(f.lease.Epoch())); err != nil {
		t.Fatal(err)
	}
	bumped := make(chan error, 1)
	go func() {
		_, err := bumper.Exec(ctx, "UPDATE handover_lock SET epoch = epoch + 1")
		bumped <- err
	}()
	select {
	case err := <-bumped:
		t.Fatalf("epoch increment did not wait for the fenced transaction: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-bumped; err != nil {
		t.Fatal(err)
	}
}

// TestReconnect: the store's own session dying (an administrator, a
// restarted pooler) fails the batch in flight; the next one reconnects.
func TestReconnect(t *testing.T) {
	f := newFixture(t)
	s, _ := f.open(f.lease.Epoch())
	if err := s.Write(put("a", "/queue/a", "x")); err != nil {
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
}

// TestSchemaTooNew: a brokerd refuses a database migrated by a newer one.
func TestSchemaTooNew(t *testing.T) {
	f := newFixture(t)
	s, _ := f.open(f.lease.Epoch())
	s.Close()
	if _, err := f.srv.Conn().Exec(context.Background(), "INSERT INTO "+versionTable+" (version, description) VALUES (99, 'future')"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, _, err := Open(ctx, Options{DSN: f.srv.DSN(), Epoch: f.lease.Epoch()}); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
}

func TestOptions(t *testing.T) {
	ctx := context.Background()
	for _, o := range []Options{
		{},
		{DSN: "postgres://u@h/db"},
		{DSN: "postgres://u@h/db", Epoch: 1, WriteTimeout: -1},
		{DSN: "postgres://u:pw@h:x/db", Epoch: 1},
	} {
		if _, _, err := Open(ctx, o); err == nil || bytes.Contains([]byte(err.Error()), []byte("pw")) {
			t.Errorf("Open(%+v) = %v, want an error without the password", o, err)
		}
	}
}
