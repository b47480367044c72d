// Package pgtest starts throwaway PostgreSQL servers for tests.
//
// Start runs initdb into a temporary directory and a postgres on a free
// loopback port, with fsync on: the durability of what brokerd commits is
// what the tests check, so the server must flush like a production one
// would. Each test gets its own server, so tests can kill, stop and restart
// it without disturbing others.
//
// PostgreSQL refuses to run as root. When the test runs as root (CI
// containers), initdb and postgres run as the "postgres" system user that
// Debian's postgresql package creates, and the temporary directory is handed
// to that user.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"handover/internal/testutil"
)

// binDirs are searched in order for initdb and postgres. PGTEST_BIN, when
// set, comes first, for machines with another version or layout.
var binDirs = []string{"/usr/lib/postgresql/15/bin"}

// startTimeout bounds how long a server may take to accept connections
// (crash recovery after Kill included).
const startTimeout = 60 * time.Second

// Server is one throwaway PostgreSQL instance. Its methods must be called
// from the test's goroutine (they fail the test on error).
type Server struct {
	t    testing.TB
	bin  string
	dir  string // temporary root, removed at cleanup
	data string // data directory
	port int
	cred *syscall.Credential // nil unless running as root

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exited
	out  *testutil.SyncBuffer
}

// Start creates a new database cluster and starts PostgreSQL on it. The
// server is stopped and its files removed when the test ends. The test fails
// with a clear message when the PostgreSQL binaries are not installed.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findBin()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s := &Server{t: t, bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgtest: running as root, PostgreSQL must run as the \"postgres\" system user, which is missing (%v); install Debian's postgresql package", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Not t.TempDir: its parent is private to the test process's user, and
	// the postgres user must be able to reach the data directory.
	s.dir, err = os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(s.cleanup)
	if s.cred != nil {
		if err := os.Chown(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	s.data = filepath.Join(s.dir, "data")
	// Trust auth on loopback only, as user postgres. --no-sync only skips
	// initdb's flush of the fresh cluster (nothing in it matters after a
	// host crash); the server itself runs with fsync on.
	initdb := s.command(filepath.Join(bin, "initdb"), "-D", s.data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	// A port that was free a moment ago may be taken by the time postgres
	// binds it; try a few.
	for attempt := 0; ; attempt++ {
		s.port = freePort(t)
		err := s.start()
		if err == nil {
			return s
		}
		if attempt == 4 || !strings.Contains(s.out.String(), "could not bind") {
			t.Fatalf("pgtest: %v\n%s", err, s.out.String())
		}
	}
}

// DSN is the URL of the "postgres" database as superuser "postgres".
func (s *Server) DSN() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// Port is the TCP port the server listens on; it stays the same across
// Stop and Start.
func (s *Server) Port() int { return s.port }

// Start starts the server again on the same data directory and port after
// Stop or Kill (after Kill it runs crash recovery first, as in production).
func (s *Server) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("pgtest: restart: %v\n%s", err, s.out.String())
	}
}

// Stop shuts the server down with a fast shutdown (SIGINT): sessions are
// terminated, a checkpoint is written, and it exits.
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.signal(unix.SIGINT, 30*time.Second); err != nil {
		s.t.Fatalf("pgtest: stop: %v\n%s", err, s.out.String())
	}
}

// Kill kills the postmaster and all its backends with SIGKILL, like a
// crash of the database host (committed transactions survive; the next
// Start runs crash recovery).
func (s *Server) Kill() {
	s.t.Helper()
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	// The whole process group: killing only the postmaster would leave its
	// backends running for a moment, which a host crash does not.
	_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	<-done
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}

// Conn opens a connection to the server that is closed when the test ends,
// for tests that inspect tables or terminate sessions.
func (s *Server) Conn() *pgx.Conn {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		s.t.Fatalf("pgtest: connect: %v", err)
	}
	s.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// Log is what the server has written to stderr so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("already running")
	}
	// Settings: fsync and synchronous_commit stay on (the defaults);
	// track_commit_timestamp lets tests check WHEN a row was committed
	// (fencing: nothing of a deposed master commits after its successor's
	// epoch); the rest keeps a throwaway server small and quiet.
	args := []string{
		"-D", s.data,
		"-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + s.dir,
		"-c", "fsync=on",
		"-c", "synchronous_commit=on",
		"-c", "track_commit_timestamp=on",
		"-c", "shared_buffers=16MB",
		"-c", "max_connections=50",
		"-c", "max_wal_size=256MB",
		"-c", "logging_collector=off",
		"-c", "log_min_messages=warning",
		"-c", "log_line_prefix=%m [%p] ",
	}
	s.out = &testutil.SyncBuffer{}
	cmd := s.command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgx.Connect(ctx, s.DSN())
		cancel()
		if err == nil {
			c.Close(context.Background())
			return nil
		}
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("postgres exited during start-up: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not accepting connections on port %d after %v: %w", s.port, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signal sends sig to the postmaster and waits up to timeout for it to exit.
func (s *Server) signal(sig syscall.Signal, timeout time.Duration) error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil {
		return err
	}
	select {
	case <-done:
	case <-time.After(timeout):
		return fmt.Errorf("postgres still running %v after %v", timeout, sig)
	}
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
	return nil
}

// cleanup stops the server with an immediate shutdown (SIGQUIT: fast, and
// unlike SIGKILL it removes the server's System V shared memory segment)
// and removes its files.
func (s *Server) cleanup() {
	if err := s.signal(unix.SIGQUIT, 10*time.Second); err != nil {
		s.Kill()
	}
	if s.t.Failed() && s.out != nil {
		out := s.out.String()
		if len(out) > 8000 {
			out = "..." + out[len(out)-8000:]
		}
		s.t.Logf("---- postgres log ----\n%s", out)
	}
	removeShm(s.data)
	os.RemoveAll(s.dir)
}

// removeShm deletes the System V shared memory segment a killed postmaster
// leaves behind (its id is on line 7 of postmaster.pid); without this every
// Kill not followed by Start would leak one until the host reboots.
func removeShm(data string) {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return
	}
	f := strings.Fields(lines[6])
	if len(f) != 2 {
		return
	}
	if id, err := strconv.Atoi(f[1]); err == nil {
		_, _ = unix.SysvShmCtl(id, unix.IPC_RMID, nil)
	}
}

// command runs path as the server user, in its own process group (so Kill
// reaches the backends too), from the temporary root (initdb and postgres
// fail when they cannot access the current directory). If the test process
// dies without its cleanups (a test timeout panics), the parent-death
// signal makes postgres do an immediate shutdown instead of running on.
func (s *Server) command(path string, args ...string) *exec.Cmd {
	cmd := exec.Command(path, args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred, Pdeathsig: syscall.SIGQUIT}
	return cmd
}

func findBin() (string, error) {
	dirs := binDirs
	if d := os.Getenv("PGTEST_BIN"); d != "" {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL 15 server binaries not found in %s: install Debian's postgresql package "+
		"(apt-get install postgresql; .ci/run does) or point PGTEST_BIN at a directory holding initdb and postgres",
		strings.Join(dirs, ", "))
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func freePort(t testing.TB) int {
	addr := testutil.FreePort(t)
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Logger returns a logger that writes to t.Log, at debug level. Lines
// logged after the test finished (by goroutines still winding down) are
// dropped instead of panicking in t.Log.
func Logger(t testing.TB) *logrus.Entry {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.over = true
		w.mu.Unlock()
	})
	l := logrus.New()
	l.Out = w
	l.SetLevel(logrus.DebugLevel)
	return logrus.NewEntry(l)
}

type tWriter struct {
	t    testing.TB
	mu   sync.Mutex
	over bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.over {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
