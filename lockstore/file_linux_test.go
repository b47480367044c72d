//go:build linux

package lockstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"
)

const (
	// takeoverBound is how quickly a waiting locker must take over.
	takeoverBound = time.Second
	// blockedFor is how long a waiter must stay blocked to count as blocked.
	blockedFor = 100 * time.Millisecond
	// testTimeout bounds every wait that is expected to succeed.
	testTimeout = 10 * time.Second
)

func newTestFile(t *testing.T, dir string, interval time.Duration) *File {
	t.Helper()
	f, err := NewFile(FileOptions{Dir: dir, CheckInterval: interval})
	if err != nil {
		t.Fatalf("NewFile(%q): %v", dir, err)
	}
	return f
}

func acquire(t *testing.T, l Locker) Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	lease, err := l.Acquire(ctx)
	if err != nil {
		t.Fatalf("%s: Acquire: %v", l, err)
	}
	return lease
}

func release(t *testing.T, lease Lease) {
	t.Helper()
	if err := lease.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// eventually polls cond until it is true or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// lockHeld reports whether anybody holds a lock on dir/lock, probing with
// F_OFD_GETLK from a fresh open file description.
func lockHeld(t *testing.T, dir string) bool {
	t.Helper()
	fd, err := unix.Open(filepath.Join(dir, "lock"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return false
	}
	if err != nil {
		t.Fatalf("open lock: %v", err)
	}
	defer unix.Close(fd)
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		t.Fatalf("F_OFD_GETLK: %v", err)
	}
	return lk.Type != unix.F_UNLCK
}

func liveWaiters(f *File) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live
}

type acquireResult struct {
	lease Lease
	err   error
	at    time.Time
}

func acquireAsync(ctx context.Context, l Locker) <-chan acquireResult {
	ch := make(chan acquireResult, 1)
	go func() {
		lease, err := l.Acquire(ctx)
		ch <- acquireResult{lease, err, time.Now()}
	}()
	return ch
}

// assertBlocked checks that ch yields nothing for blockedFor.
func assertBlocked(t *testing.T, ch <-chan acquireResult) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("Acquire returned while the lock was held elsewhere: lease=%v err=%v", r.lease, r.err)
	case <-time.After(blockedFor):
	}
}

func awaitResult(t *testing.T, ch <-chan acquireResult) acquireResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(testTimeout):
		t.Fatal("Acquire did not return")
		return acquireResult{}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNewFile(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    FileOptions
		wantErr string
	}{
		{"ok", FileOptions{Dir: dir}, ""},
		{"empty dir", FileOptions{}, "Dir is empty"},
		{"missing dir", FileOptions{Dir: filepath.Join(dir, "nope")}, "no such file"},
		{"not a directory", FileOptions{Dir: notDir}, "not a directory"},
		{"negative interval", FileOptions{Dir: dir, CheckInterval: -time.Second}, "negative CheckInterval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := NewFile(tt.opts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewFile: %v", err)
				}
				if got, want := f.String(), "file:"+filepath.Join(dir, "lock"); got != want {
					t.Errorf("String() = %q, want %q", got, want)
				}
				if f.interval != DefaultCheckInterval {
					t.Errorf("interval = %v, want default %v", f.interval, DefaultCheckInterval)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewFile error = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestEpochIncrementsAndPersists(t *testing.T) {
	dir := t.TempDir()
	f1 := newTestFile(t, dir, 0)
	f2 := newTestFile(t, dir, 0) // a second instance, as after a restart
	for i, f := range []*File{f1, f1, f2, f1, f2} {
		want := uint64(i + 1)
		lease := acquire(t, f)
		if got := lease.Epoch(); got != want {
			t.Fatalf("acquisition %d: Epoch() = %d, want %d", i+1, got, want)
		}
		if got, want := readFile(t, filepath.Join(dir, "epoch")), fmt.Sprintf("%d\n", want); got != want {
			t.Fatalf("epoch file = %q, want %q", got, want)
		}
		if err := lease.Err(); err != nil {
			t.Fatalf("Err() while held = %v", err)
		}
		release(t, lease)
	}
	// No temp files are left behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "lock" && e.Name() != "epoch" && e.Name() != "lease" && e.Name() != "takeover" {
			t.Errorf("unexpected file %q in data directory", e.Name())
		}
	}
}

func TestSecondLockerWaitsForRelease(t *testing.T) {
	dir := t.TempDir()
	a, b := newTestFile(t, dir, 0), newTestFile(t, dir, 0)

	la := acquire(t, a)
	ch := acquireAsync(context.Background(), b)
	assertBlocked(t, ch)

	released := time.Now()
	release(t, la)
	r := awaitResult(t, ch)
	if r.err != nil {
		t.Fatalf("second Acquire: %v", r.err)
	}
	defer r.lease.Release()
	if d := r.at.Sub(released); d > takeoverBound {
		t.Errorf("takeover took %v, want < %v", d, takeoverBound)
	}
	if got, want := r.lease.Epoch(), la.Epoch()+1; got != want {
		t.Errorf("second Epoch() = %d, want %d", got, want)
	}
}

func TestSameFileConcurrentAcquiresConflict(t *testing.T) {
	// Two Acquire calls on ONE File must also exclude each other: each
	// opens its own open file description.
	f := newTestFile(t, t.TempDir(), 0)
	l1 := acquire(t, f)
	ch := acquireAsync(context.Background(), f)
	assertBlocked(t, ch)
	release(t, l1)
	r := awaitResult(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.lease.Epoch() != 2 {
		t.Errorf("Epoch() = %d, want 2", r.lease.Epoch())
	}
	release(t, r.lease)
}

func TestAcquireCancelled(t *testing.T) {
	tests := []struct {
		name   string
		ctx    func() (context.Context, context.CancelFunc)
		want   error
		waiter bool // whether a waiter goroutine is left blocked
	}{
		{
			name: "cancelled before call",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx, cancel
			},
			want: context.Canceled,
		},
		{
			name: "deadline while waiting",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 20*time.Millisecond)
			},
			want:   context.DeadlineExceeded,
			waiter: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b, c := newTestFile(t, dir, 0), newTestFile(t, dir, 0), newTestFile(t, dir, 0)
			la := acquire(t, a)

			ctx, cancel := tt.ctx()
			defer cancel()
			lease, err := b.Acquire(ctx)
			if !errors.Is(err, tt.want) || lease != nil {
				t.Fatalf("Acquire = %v, %v; want nil, %v", lease, err, tt.want)
			}
			if tt.waiter {
				if n := liveWaiters(b); n != 1 {
					t.Fatalf("live waiters = %d, want 1 (blocked in the kernel)", n)
				}
			}

			release(t, la)
			// The abandoned waiter may grab the lock briefly; it must let go.
			eventually(t, testTimeout, "abandoned waiter to exit", func() bool { return liveWaiters(b) == 0 })
			eventually(t, testTimeout, "lock to be free", func() bool { return !lockHeld(t, dir) })

			lc := acquire(t, c)
			defer lc.Release()
			// The abandoned waiter must not have consumed an epoch.
			if got, want := lc.Epoch(), la.Epoch()+1; got != want {
				t.Errorf("third locker Epoch() = %d, want %d", got, want)
			}
		})
	}
}

func TestCancelledWaiterIsAdopted(t *testing.T) {
	dir := t.TempDir()
	a, b := newTestFile(t, dir, 0), newTestFile(t, dir, 0)
	la := acquire(t, a)

	// Repeated timed-out attempts, as in a retry loop, must not pile up
	// goroutines blocked in the kernel.
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		_, err := b.Acquire(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("attempt %d: err = %v, want DeadlineExceeded", i, err)
		}
		if n := liveWaiters(b); n != 1 {
			t.Fatalf("attempt %d: live waiters = %d, want 1", i, n)
		}
	}

	ch := acquireAsync(context.Background(), b)
	assertBlocked(t, ch)
	released := time.Now()
	release(t, la)
	r := awaitResult(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.lease.Release()
	if d := r.at.Sub(released); d > takeoverBound {
		t.Errorf("takeover took %v, want < %v", d, takeoverBound)
	}
	if r.lease.Epoch() != 2 {
		t.Errorf("Epoch() = %d, want 2", r.lease.Epoch())
	}
	if n := liveWaiters(b); n != 0 {
		t.Errorf("live waiters = %d, want 0", n)
	}
}

const helperEnv = "LOCKSTORE_TEST_HELPER_DIR"

// TestHelperProcess is not a real test: it is re-executed as a subprocess by
// TestTakeoverAfterSIGKILL. It acquires the lock, prints "locked", and then
// waits to be killed.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestTakeoverAfterSIGKILL")
	}
	f, err := NewFile(FileOptions{Dir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	lease, err := f.Acquire(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("locked %d\n", lease.Epoch())
	select {
	case <-lease.Done():
		fmt.Fprintln(os.Stderr, lease.Err())
		os.Exit(3)
	case <-time.After(time.Minute): // parent died without killing us
		os.Exit(4)
	}
}

func TestTakeoverAfterSIGKILL(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	lines := make(chan string, 1)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "locked") {
				lines <- sc.Text()
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line, ok := <-lines:
		if !ok || line != "locked 1" {
			t.Fatalf("helper said %q (ok=%v), want \"locked 1\"", line, ok)
		}
	case <-time.After(testTimeout):
		t.Fatal("helper process did not lock")
	}
	if !lockHeld(t, dir) {
		t.Fatal("lock not held while the helper process runs")
	}

	f := newTestFile(t, dir, 0)
	ch := acquireAsync(context.Background(), f)
	assertBlocked(t, ch)

	killed := time.Now()
	if err := cmd.Process.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r := awaitResult(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.lease.Release()
	if d := r.at.Sub(killed); d > takeoverBound {
		t.Errorf("takeover after SIGKILL took %v, want < %v", d, takeoverBound)
	}
	if r.lease.Epoch() != 2 {
		t.Errorf("Epoch() = %d, want 2", r.lease.Epoch())
	}
}

func TestLeaseLost(t *testing.T) {
	const interval = 10 * time.Millisecond
	tests := []struct {
		name       string
		mutate     func(t *testing.T, dir string)
		reason     string
		wantEpoch  uint64 // of the next acquisition; 0 = expect it to fail
		wantErrMsg string // if wantEpoch == 0
	}{
		{
			name: "epoch overwritten by another master",
			mutate: func(t *testing.T, dir string) {
				// Atomically, as another master would: the watcher must
				// not see a half-written file.
				tmp := filepath.Join(dir, "epoch.new")
				writeTestFile(t, tmp, "999\n")
				if err := os.Rename(tmp, filepath.Join(dir, "epoch")); err != nil {
					t.Fatal(err)
				}
			},
			reason:    "holds 999, ours is 1",
			wantEpoch: 1000,
		},
		{
			name:      "epoch file deleted",
			mutate:    func(t *testing.T, dir string) { removeTestFile(t, filepath.Join(dir, "epoch")) },
			reason:    "was deleted",
			wantEpoch: 1,
		},
		{
			name:       "epoch file corrupted",
			mutate:     func(t *testing.T, dir string) { writeTestFile(t, filepath.Join(dir, "epoch"), "garbage") },
			reason:     "corrupt",
			wantErrMsg: "corrupt",
		},
		{
			name:      "lock file deleted",
			mutate:    func(t *testing.T, dir string) { removeTestFile(t, filepath.Join(dir, "lock")) },
			reason:    "lock file",
			wantEpoch: 2,
		},
		{
			name: "lock file replaced",
			mutate: func(t *testing.T, dir string) {
				tmp := filepath.Join(dir, "lock.new")
				writeTestFile(t, tmp, "")
				if err := os.Rename(tmp, filepath.Join(dir, "lock")); err != nil {
					t.Fatal(err)
				}
			},
			reason:    "was replaced",
			wantEpoch: 2,
		},
		{
			name: "data directory replaced",
			mutate: func(t *testing.T, dir string) {
				if err := os.Rename(dir, dir+".old"); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			reason:    "was deleted",
			wantEpoch: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			logger, hook := logtest.NewNullLogger()
			f, err := NewFile(FileOptions{Dir: dir, CheckInterval: interval, Log: logrus.NewEntry(logger)})
			if err != nil {
				t.Fatal(err)
			}
			lease := acquire(t, f)
			select {
			case <-lease.Done():
				t.Fatalf("Done closed before the mutation: %v", lease.Err())
			default:
			}

			tt.mutate(t, dir)
			select {
			case <-lease.Done():
			case <-time.After(takeoverBound):
				t.Fatalf("Done not closed within %v", takeoverBound)
			}
			err = lease.Err()
			if !errors.Is(err, ErrLost) || errors.Is(err, ErrReleased) {
				t.Fatalf("Err() = %v, want wrapping ErrLost", err)
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("Err() = %q, want reason containing %q", err, tt.reason)
			}
			if lockHeld(t, dir) {
				t.Error("lock still held after the lease was lost")
			}
			assertLostLogged(t, hook, tt.reason)

			// Release after loss is a no-op that keeps the loss reason.
			if err := lease.Release(); err != nil {
				t.Errorf("Release after loss: %v", err)
			}
			if !errors.Is(lease.Err(), ErrLost) {
				t.Errorf("Err() after Release = %v, want ErrLost", lease.Err())
			}

			next := newTestFile(t, dir, 0)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			nl, err := next.Acquire(ctx)
			if tt.wantEpoch == 0 {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrMsg) {
					t.Fatalf("next Acquire err = %v, want containing %q", err, tt.wantErrMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("next Acquire: %v", err)
			}
			defer nl.Release()
			if nl.Epoch() != tt.wantEpoch {
				t.Errorf("next Epoch() = %d, want %d", nl.Epoch(), tt.wantEpoch)
			}
		})
	}
}

func assertLostLogged(t *testing.T, hook *logtest.Hook, reason string) {
	t.Helper()
	for _, e := range hook.AllEntries() {
		if e.Level != logrus.ErrorLevel {
			continue
		}
		r, _ := e.Data["reason"].(string)
		if e.Data["epoch"] == uint64(1) && strings.Contains(r, reason) && e.Data["lock"] != nil {
			return
		}
	}
	t.Errorf("no error-level log entry with epoch=1 and reason containing %q; entries: %v", reason, hook.AllEntries())
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func removeTestFile(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptEpoch(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{"letters", "abc\n", "corrupt"},
		{"empty", "", "corrupt"},
		{"whitespace only", " \n", "corrupt"},
		{"negative", "-1\n", "corrupt"},
		{"fraction", "1.5\n", "corrupt"},
		{"two numbers", "12 13\n", "corrupt"},
		{"overflow", "18446744073709551616\n", "corrupt"},
		{"too long", strings.Repeat("9", 100), "corrupt"},
		{"at maximum", "18446744073709551615\n", "maximum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			epochPath := filepath.Join(dir, "epoch")
			writeTestFile(t, epochPath, tt.content)
			f := newTestFile(t, dir, 0)
			lease, err := f.Acquire(context.Background())
			if err == nil {
				lease.Release()
				t.Fatalf("Acquire succeeded with epoch file %q", tt.content)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), epochPath) {
				t.Errorf("error %q should mention %q and %s", err, tt.want, epochPath)
			}
			if lockHeld(t, dir) {
				t.Error("lock left held after failed Acquire")
			}
			if got := readFile(t, epochPath); got != tt.content {
				t.Errorf("epoch file changed to %q", got)
			}
		})
	}
	// Surrounding whitespace, as left by a hand edit, is accepted.
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "epoch"), "  41 \n\n")
	lease := acquire(t, newTestFile(t, dir, 0))
	defer lease.Release()
	if lease.Epoch() != 42 {
		t.Errorf("Epoch() = %d, want 42", lease.Epoch())
	}
}

func TestReleaseIdempotent(t *testing.T) {
	dir := t.TempDir()
	lease := acquire(t, newTestFile(t, dir, time.Millisecond))
	select {
	case <-lease.Done():
		t.Fatal("Done closed while held")
	default:
	}

	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- lease.Release()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Release: %v", err)
		}
	}
	select {
	case <-lease.Done():
	default:
		t.Fatal("Done not closed after Release")
	}
	if err := lease.Err(); err != ErrReleased {
		t.Errorf("Err() = %v, want ErrReleased", err)
	}
	if err := lease.Release(); err != nil {
		t.Errorf("extra Release: %v", err)
	}
	// Release returns only once the lock is really free.
	if lockHeld(t, dir) {
		t.Error("lock still held after Release returned")
	}
	if lease.Epoch() != 1 {
		t.Errorf("Epoch() after Release = %d, want 1", lease.Epoch())
	}
}
