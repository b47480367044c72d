package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"handover/frame"
	"handover/internal/pgtest"
	"handover/internal/testutil"
	"handover/stompclient"
)

// pgLockRetry is the -lock-retry of these tests.
const pgLockRetry = 250 * time.Millisecond

// pgCluster is a PostgreSQL server and the brokers sharing it.
type pgCluster struct {
	t   *testing.T
	srv *pgtest.Server
	dsn string // with a password, which must never show
	// data is passed as -data to every broker; with a postgres store
	// nothing may be created there.
	data string
}

func newPGCluster(t *testing.T) *pgCluster {
	srv := pgtest.Start(t)
	c := &pgCluster{
		t:    t,
		srv:  srv,
		dsn:  strings.Replace(srv.DSN(), "postgres@", "postgres:s3cret@", 1),
		data: filepath.Join(t.TempDir(), "unused"),
	}
	t.Cleanup(func() {
		if _, err := os.Stat(c.data); err == nil {
			t.Errorf("-data %s was created although the store is PostgreSQL", c.data)
		}
	})
	return c
}

func (c *pgCluster) start(name string, args ...string) *broker {
	c.t.Helper()
	testutil.InitBroker(c.t, "-store", c.dsn)
	b := &broker{listen: testutil.FreePort(c.t), admin: testutil.FreePort(c.t)}
	b.p = testutil.Start(c.t, name, testutil.Binary(c.t, "handover/cmd/brokerd"),
		append([]string{"-listen", b.listen, "-admin", b.admin, "-data", c.data,
			"-store", c.dsn, "-lock-retry", pgLockRetry.String(), "-log-level", "debug"}, args...)...)
	return b
}

// terminate ends the database sessions of broker b's process whose role
// ("lock" or "store") matches the LIKE pattern role, as an administrator or
// the server's keepalives after a network partition would.
func (c *pgCluster) terminate(b *broker, role string) int {
	c.t.Helper()
	var n int
	err := c.srv.Conn().QueryRow(context.Background(),
		`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'handover-' || $1 || '/' || $2`,
		role, strconv.Itoa(b.p.Cmd.Process.Pid)).Scan(&n)
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}

// lateCommits counts messages stored under an older epoch that committed
// after the current epoch was taken; fencing makes it 0.
func (c *pgCluster) lateCommits() int {
	c.t.Helper()
	var late int
	err := c.srv.Conn().QueryRow(context.Background(), `SELECT count(*) FROM handover_messages m, handover_lock l
		WHERE l.name = 'brokerd' AND m.epoch < l.epoch
		  AND pg_xact_commit_timestamp(m.xmin) > pg_xact_commit_timestamp(l.xmin)`).Scan(&late)
	if err != nil {
		c.t.Fatal(err)
	}
	return late
}

// portClosed reports whether nothing accepts connections on addr.
func portClosed(addr string) bool {
	nc, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return true
	}
	nc.Close()
	return false
}

// producer sends receipted persistent messages numbered 0, 1, 2, ... to
// whichever broker answers, reconnecting on any error, and remembers which
// numbers got a RECEIPT.
type producer struct {
	mu        sync.Mutex
	receipted map[int]bool
	last      time.Time // of the latest RECEIPT
	stop      chan struct{}
	done      chan error
}

func startProducer(ctx context.Context, queue string, addrs ...string) *producer {
	p := &producer{receipted: map[int]bool{}, stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		seq := 0
		var c *stompclient.Conn
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		for {
			select {
			case <-p.stop:
				p.done <- nil
				return
			default:
			}
			if c == nil {
				for _, addr := range addrs {
					dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
					cc, err := stompclient.Dial(dctx, addr, stompclient.Options{})
					dcancel()
					if err == nil {
						c = cc
						break
					}
				}
				if c == nil {
					if ctx.Err() != nil {
						p.done <- ctx.Err()
						return
					}
					time.Sleep(5 * time.Millisecond)
					continue
				}
			}
			sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
			err := c.SendReceipt(sctx, queue, []byte("order "+strconv.Itoa(seq)),
				frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "seq", Value: strconv.Itoa(seq)})
			scancel()
			if err != nil {
				c.Close()
				c = nil
				seq++ // the unreceipted one may or may not exist; never reuse its number
				continue
			}
			p.mu.Lock()
			p.receipted[seq] = true
			p.last = time.Now()
			p.mu.Unlock()
			seq++
		}
	}()
	return p
}

// await waits until at least n messages were receipted after since.
func (p *producer) await(t *testing.T, n int, since time.Time) {
	t.Helper()
	start := p.count()
	testutil.Eventually(t, 20*time.Second, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if got := len(p.receipted) - start; got < n || !p.last.After(since) {
			return fmt.Errorf("%d of %d receipts since %v", got, n, since.Format(time.StampMilli))
		}
		return nil
	})
}

func (p *producer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.receipted)
}

// halt stops the producer and returns the receipted numbers.
func (p *producer) halt(t *testing.T) map[int]bool {
	t.Helper()
	close(p.stop)
	if err := <-p.done; err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.receipted
}

// drain consumes queue on addr until every receipted message has been
// delivered, and fails the test with the lost ones otherwise.
func drain(t *testing.T, addr, queue string, receipted map[int]bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := stompclient.Dial(ctx, addr, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sub, err := c.Subscribe(queue, stompclient.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	missing := len(receipted)
	for missing > 0 {
		select {
		case m := <-sub.C():
			n, _ := strconv.Atoi(m.Value("seq"))
			if receipted[n] && !got[n] {
				missing--
			}
			got[n] = true
			c.Ack(m)
		case <-time.After(5 * time.Second):
			var lost []int
			for n := range receipted {
				if !got[n] {
					lost = append(lost, n)
				}
			}
			sort.Ints(lost)
			t.Fatalf("%d of %d receipted messages never delivered: %v", len(lost), len(receipted), lost)
		}
	}
	t.Logf("all %d receipted messages delivered (%d delivered in all)", len(receipted), len(got))
}

// TestPostgresKill9MasterUnderLoad: two brokerd share one database; the
// master is killed with SIGKILL under a stream of receipted persistent
// sends; the slave serves within 1s plus lock_retry, and every receipted
// message is delivered afterwards.
func TestPostgresKill9MasterUnderLoad(t *testing.T) {
	c := newPGCluster(t)
	a := c.start("brokerd-a")
	a.waitRole(t, "master")
	b := c.start("brokerd-b")
	b.waitRole(t, "slave")
	if !portClosed(b.listen) {
		t.Fatalf("slave %s accepts STOMP connections", b.listen)
	}
	st, err := b.status()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres", c.srv.Port())
	if st["store"] != want || st["lock"] != want {
		t.Fatalf("/status store %q lock %q, want both %q", st["store"], st["lock"], want)
	}

	const queue = "/queue/orders"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProducer(ctx, queue, a.listen, b.listen)
	p.await(t, 300, time.Time{})

	killedAt := time.Now()
	a.p.Cmd.Process.Signal(syscall.SIGKILL)
	b.waitRole(t, "master")
	servedAfter := time.Since(killedAt)
	p.await(t, 50, killedAt)
	receipted := p.halt(t)
	t.Logf("slave serving %v after kill -9; %d receipted", servedAfter, len(receipted))
	if bound := time.Second + pgLockRetry; servedAfter > bound {
		t.Errorf("slave took %v to serve, want under %v", servedAfter, bound)
	}
	if st, _ := b.status(); st["epoch"] != float64(2) {
		t.Errorf("new master's epoch %v, want 2", st["epoch"])
	}
	drain(t, b.listen, queue, receipted)
}

// TestPostgresFencing: a master whose database sessions are terminated
// stops serving within lock_retry, exits with status 3, and commits nothing
// after its successor took the lock; nothing receipted is lost.
func TestPostgresFencing(t *testing.T) {
	c := newPGCluster(t)
	a := c.start("brokerd-a")
	a.waitRole(t, "master")
	b := c.start("brokerd-b")
	b.waitRole(t, "slave")

	const queue = "/queue/fenced"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProducer(ctx, queue, a.listen, b.listen)
	p.await(t, 200, time.Time{})

	if n := c.terminate(a, "%"); n < 2 {
		t.Fatalf("terminated %d sessions of the master, want its lock and store sessions", n)
	}
	terminated := time.Now()
	// The lease notices at its next check (within lock_retry) or when
	// that check times out (another lock_retry).
	testutil.Eventually(t, 2*pgLockRetry+time.Second, func() error {
		if !portClosed(a.listen) {
			return fmt.Errorf("deposed master still accepts connections")
		}
		return nil
	})
	stopped := time.Since(terminated)
	if err := a.p.Wait(10 * time.Second); a.p.ExitCode() != 3 {
		t.Fatalf("deposed master: %v, exit %d, want exit 3 (lease lost)", err, a.p.ExitCode())
	}
	b.waitRole(t, "master")
	p.await(t, 50, terminated)
	receipted := p.halt(t)
	t.Logf("deposed master stopped serving %v after its sessions were terminated; %d receipted", stopped, len(receipted))
	if bound := 2*pgLockRetry + 500*time.Millisecond; stopped > bound {
		t.Errorf("deposed master served for %v after losing its session, want under %v", stopped, bound)
	}

	// Nothing written by an older epoch committed after the newest epoch
	// was taken: the successor's increment waited for the deposed master's
	// writes in flight, and every later one was fenced off.
	if late := c.lateCommits(); late != 0 {
		t.Fatalf("%d messages of the deposed master committed after the new epoch", late)
	}
	drain(t, b.listen, queue, receipted)
}

// TestPostgresPausedMaster is the long-GC-pause case: the master is frozen
// (SIGSTOP) while its lock session ends (here terminated; after a network
// partition the server's keepalives end it), the slave takes over, and then
// the old master wakes up with a SEND already in its socket. Its write must
// be refused by the database-side fence, or by the lease it then finds
// lost, never committed: the SEND gets no RECEIPT, the old master exits 3.
func TestPostgresPausedMaster(t *testing.T) {
	c := newPGCluster(t)
	a := c.start("brokerd-a")
	a.waitRole(t, "master")
	b := c.start("brokerd-b")
	b.waitRole(t, "slave")

	const queue = "/queue/paused"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProducer(ctx, queue, a.listen, b.listen)
	p.await(t, 100, time.Time{})
	late, err := stompclient.Dial(ctx, a.listen, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()

	a.p.Signal(syscall.SIGSTOP)
	paused := time.Now()
	if n := c.terminate(a, "lock"); n != 1 {
		t.Fatalf("terminated %d lock sessions, want 1", n)
	}
	b.waitRole(t, "master")
	p.await(t, 50, paused)
	lateErr := make(chan error, 1)
	go func() {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		defer scancel()
		lateErr <- late.SendReceipt(sctx, queue, []byte("sent to a frozen master"),
			frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "seq", Value: "-1"})
	}()
	time.Sleep(100 * time.Millisecond) // let the SEND reach a's socket
	a.p.Signal(syscall.SIGCONT)
	if err := a.p.Wait(10 * time.Second); a.p.ExitCode() != 3 {
		t.Fatalf("woken deposed master: %v, exit %d, want exit 3", err, a.p.ExitCode())
	}
	if err := <-lateErr; err == nil {
		t.Fatal("the deposed master receipted a SEND after its successor took over")
	}
	receipted := p.halt(t)
	if n := c.lateCommits(); n != 0 {
		t.Fatalf("%d messages of the deposed master committed after the new epoch", n)
	}
	t.Logf("deposed master's log on waking:\n%s", grepLines(a.p.Out.String(), "fenced", "lock lost", "journal write failed"))
	drain(t, b.listen, queue, receipted)
}

// TestPostgresFrozenMasterLease: the master is frozen (SIGSTOP) and its
// database session stays open, so its advisory lock stays held; the slave
// finds its lease expired, ends that session and takes over; thawed, the
// old master exits 3; nothing receipted is lost.
func TestPostgresFrozenMasterLease(t *testing.T) {
	// As in TestPostgresStalledMaster: room for each of the new master's
	// lease checks on a loaded machine.
	const leaseTimeout = 3 * time.Second
	c := newPGCluster(t)
	cfg := t.TempDir() + "/lease.toml"
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("lease_timeout = %q\n", leaseTimeout)), 0o644); err != nil {
		t.Fatal(err)
	}
	a := c.start("brokerd-a", "-config", cfg)
	a.waitRole(t, "master")
	b := c.start("brokerd-b", "-config", cfg)
	b.waitRole(t, "slave")

	const queue = "/queue/frozen"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProducer(ctx, queue, a.listen, b.listen)
	p.await(t, 100, time.Time{})
	frozen := time.Now()
	a.p.Signal(syscall.SIGSTOP)
	b.waitRole(t, "master")
	took := time.Since(frozen)
	p.await(t, 50, frozen)
	a.p.Signal(syscall.SIGCONT)
	if err := a.p.Wait(10 * time.Second); a.p.ExitCode() != 3 {
		t.Fatalf("the thawed master: %v, exit %d, want exit 3", err, a.p.ExitCode())
	}
	receipted := p.halt(t)
	t.Logf("the slave took over %v after the freeze (lease_timeout %v)", took.Round(time.Millisecond), leaseTimeout)
	// The lease runs from the master's last renewal, up to one renewal
	// (lock_retry) before the freeze.
	if took < leaseTimeout-pgLockRetry {
		t.Errorf("took over %v after the freeze, before the lease could expire", took)
	}
	if !strings.Contains(b.p.Out.String(), "lease expired") {
		t.Error("the new master's log does not say it ended the frozen master's session")
	}
	drain(t, b.listen, queue, receipted)
}

// TestPostgresInit: a database without a cluster identity is refused with
// what to do; -init writes one once.
func TestPostgresInit(t *testing.T) {
	srv := pgtest.Start(t)
	run := func(args ...string) (int, string) { return runBrokerd(t, args...) }
	if code, out := run("-admin", "127.0.0.1:0", "-store", srv.DSN()); code != 2 || !strings.Contains(out, "is not initialized (no handover_cluster table)") || !strings.Contains(out, "-init") {
		t.Fatalf("start on a fresh database: exit %d\n%s", code, out)
	}
	if code, out := run("-init", "-store", srv.DSN()); code != 0 || !strings.Contains(out, "as cluster ") {
		t.Fatalf("-init: exit %d\n%s", code, out)
	}
	if code, out := run("-init", "-store", srv.DSN()); code != 1 || !strings.Contains(out, "already initialized (cluster ") {
		t.Fatalf("a second -init: exit %d\n%s", code, out)
	}
}

func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestPostgresRestart: PostgreSQL itself is restarted under load. The
// master loses its lock session, so it steps down and exits with status 3
// (a session-level lock cannot outlive its session, and another broker may
// take it while this one reconnects); the slave keeps retrying, becomes
// master once the database is back, and a restarted broker joins as a
// slave. Nothing receipted is lost.
func TestPostgresRestart(t *testing.T) {
	c := newPGCluster(t)
	a := c.start("brokerd-a")
	a.waitRole(t, "master")
	b := c.start("brokerd-b")
	b.waitRole(t, "slave")

	const queue = "/queue/restart"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProducer(ctx, queue, a.listen, b.listen)
	p.await(t, 200, time.Time{})

	c.srv.Stop()
	if err := a.p.Wait(10 * time.Second); a.p.ExitCode() != 3 {
		t.Fatalf("master with its database down: %v, exit %d, want exit 3", err, a.p.ExitCode())
	}
	if st, err := b.status(); err != nil || st["role"] != "slave" {
		t.Fatalf("slave with the database down: %v %v", st, err)
	}
	c.srv.Start()
	restarted := time.Now()
	b.waitRole(t, "master")
	t.Logf("slave became master %v after the database came back", time.Since(restarted).Round(time.Millisecond))
	a2 := c.start("brokerd-a2")
	a2.waitRole(t, "slave")
	p.await(t, 50, restarted)
	receipted := p.halt(t)
	drain(t, b.listen, queue, receipted)
}

// TestPostgresFlags: the backend settings are checked before anything
// starts.
func TestPostgresFlags(t *testing.T) {
	bin := testutil.Binary(t, "handover/cmd/brokerd")
	cfg := filepath.Join(t.TempDir(), "b.toml")
	tests := []struct {
		name    string
		config  string
		args    []string
		wantOut string
	}{
		{"store not postgres", "", []string{"-store", "mysql://x"}, "store: want empty"},
		{"lock not postgres", "", []string{"-lock", "file:/x"}, "lock: want empty"},
		{"different databases", "", []string{"-store", "postgres://u:pw@h1/db", "-lock", "postgres://u:pw@h2/db"}, "must be the same database"},
		{"bad retry", "", []string{"-store", "postgres://u@h/db", "-lock-retry", "0s"}, "lock_retry: must be positive"},
		{"bad DSN", "", []string{"-store", "postgres://u:pw@h:port/db"}, "cannot parse"},
		{"config keys", "store = \"postgres://u:pw@h1/db\"\nlock = \"postgres://u@h2/db\"\nlock_retry = \"1s\"\n", nil, "must be the same database"},
		{"config bad retry", "lock_retry = \"-1s\"\n", nil, "lock_retry: must be positive"},
		{"users table without postgres", "users_table = true\n", nil, "users_table: the users table is in the store's database"},
		{"users table and file", "users_table = true\nusers_file = \"/etc/u\"\n", []string{"-store", "postgres://u:pw@h/db"}, "users_table and users_file: choose one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-admin", "127.0.0.1:0"}, tt.args...)
			if tt.config != "" {
				os.WriteFile(cfg, []byte(tt.config), 0o644)
				args = append([]string{"-config", cfg}, args...)
			}
			p := testutil.Start(t, "brokerd", bin, args...)
			p.Wait(10 * time.Second)
			out := p.Out.String()
			if p.ExitCode() != 2 || !strings.Contains(out, tt.wantOut) || strings.Contains(out, "pw") {
				t.Fatalf("exit %d output %q; want exit 2 containing %q and no password", p.ExitCode(), out, tt.wantOut)
			}
		})
	}
}

// TestPostgresLockWithJournal: -lock postgres://… alone keeps the messages
// in the journal of the shared -data and takes only the lock in the
// database (for file systems that cannot be trusted with locks).
func TestPostgresLockWithJournal(t *testing.T) {
	srv := pgtest.Start(t)
	data := t.TempDir()
	testutil.InitBroker(t, "-data", data)
	start := func(name string) *broker {
		b := &broker{listen: testutil.FreePort(t), admin: testutil.FreePort(t)}
		b.p = testutil.Start(t, name, testutil.Binary(t, "handover/cmd/brokerd"),
			"-listen", b.listen, "-admin", b.admin, "-data", data,
			"-lock", srv.DSN(), "-lock-retry", pgLockRetry.String(), "-log-level", "debug")
		return b
	}
	a := start("brokerd-a")
	a.waitRole(t, "master")
	b := start("brokerd-b")
	b.waitRole(t, "slave")
	st, err := a.status()
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres", srv.Port()); st["lock"] != want || st["store"] != "journal:"+data {
		t.Fatalf("/status lock %q store %q, want %q and the journal in %s", st["lock"], st["store"], want, data)
	}
	if _, err := os.Stat(filepath.Join(data, "lock")); err == nil {
		t.Fatal("the file lock was created although the lock is PostgreSQL")
	}

	const queue = "/queue/journal"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := startProducer(ctx, queue, a.listen, b.listen)
	p.await(t, 100, time.Time{})
	killedAt := time.Now()
	a.p.Cmd.Process.Signal(syscall.SIGKILL)
	b.waitRole(t, "master")
	t.Logf("slave serving %v after kill -9", time.Since(killedAt).Round(time.Millisecond))
	p.await(t, 20, killedAt)
	drain(t, b.listen, queue, p.halt(t))
}

// TestPostgresReadBack: a master that took over a backlog from PostgreSQL
// reads its bodies back in batches, several on their way at once, and
// delivers every message in order; a body damaged in the database is
// reported in /status and skipped, and the messages around it flow.
func TestPostgresReadBack(t *testing.T) {
	const n, damaged = 400, 150
	c := newPGCluster(t)
	a := c.start("brokerd-a")
	a.waitRole(t, "master")
	b := c.start("brokerd-b")
	b.waitRole(t, "slave")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := stompclient.Dial(ctx, a.listen, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(strings.Repeat("x", 2<<10))
	for i := range n {
		h := []frame.Header{{Key: "persistent", Value: "true"}, {Key: "seq", Value: strconv.Itoa(i)}}
		if i < n-1 {
			err = p.Send("/queue/readback", body, h...)
		} else {
			err = p.SendReceipt(ctx, "/queue/readback", body, h...) // after all the others
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	tag, err := c.srv.Conn().Exec(ctx, `UPDATE handover_messages SET data = 'not a frame'::bytea
		WHERE id = (SELECT id FROM handover_messages ORDER BY seq OFFSET $1 LIMIT 1)`, damaged)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("damaging message %d: %v, %v", damaged, tag, err)
	}
	// The new master holds no body in memory: it reads every one back.
	a.p.Signal(syscall.SIGTERM)
	b.waitRole(t, "master")

	cc, err := stompclient.Dial(ctx, b.listen, stompclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sub, err := cc.Subscribe("/queue/readback", stompclient.AckClientIndividual, frame.Header{Key: "activemq.prefetchSize", Value: "1000"})
	if err != nil {
		t.Fatal(err)
	}
	for want := range n {
		if want == damaged {
			continue
		}
		m := testutil.Recv(t, sub, 10*time.Second)
		if got := m.Value("seq"); got != strconv.Itoa(want) || len(m.Body) != len(body) {
			t.Fatalf("got message %s (%d bytes), want %d", got, len(m.Body), want)
		}
		cc.Ack(m)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		st, err := b.status()
		if err != nil {
			return err
		}
		if d, _ := st["damaged"].([]any); len(d) != 1 {
			return fmt.Errorf("status damaged = %v, want message %d", st["damaged"], damaged)
		}
		return nil
	})
}

// TestPostgresUsersTable: with users_table, logins are checked against the
// store's handover_users table: a user added with SQL can log in on the
// master within about a second, without a restart, and a new master after a
// failover checks the same users.
func TestPostgresUsersTable(t *testing.T) {
	c := newPGCluster(t)
	cfg := filepath.Join(t.TempDir(), "brokerd.toml")
	if err := os.WriteFile(cfg, []byte("users_table = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := c.start("brokerd-a", "-config", cfg)
	a.waitRole(t, "master")
	b := c.start("brokerd-b", "-config", cfg)
	b.waitRole(t, "slave")
	hash, err := bcrypt.GenerateFromPassword([]byte("wonderland"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	login := func(addr, user, pass string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := stompclient.Dial(ctx, addr, stompclient.Options{Login: user, Passcode: pass})
		if err != nil {
			return err
		}
		return conn.Close()
	}
	if err := login(a.listen, "alice", "wonderland"); err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("alice before she was added: %v", err)
	}
	if _, err := c.srv.Conn().Exec(context.Background(), "INSERT INTO handover_users VALUES ('alice', $1, 'ops')", string(hash)); err != nil {
		t.Fatal(err)
	}
	// The master reads the table once a second; a wrong login is answered
	// ever more slowly, so the wait is for its log line, not by retrying.
	testutil.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(a.p.Out.String(), "users read again") {
			return fmt.Errorf("the master has not read the users again")
		}
		return nil
	})
	if err := login(a.listen, "alice", "wonderland"); err != nil {
		t.Fatalf("alice, added: %v", err)
	}
	if err := login(a.listen, "alice", "guess"); err == nil {
		t.Fatal("alice with a wrong password got in")
	}
	a.p.Kill()
	b.waitRole(t, "master")
	if err := login(b.listen, "alice", "wonderland"); err != nil {
		t.Fatalf("alice on the new master: %v", err)
	}
}
