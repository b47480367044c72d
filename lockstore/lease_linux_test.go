//go:build linux

package lockstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"handover/internal/pgtest"
)

// The lease tests freeze a real process that holds the lock (SIGSTOP),
// because that is what the lease is for: a holder that is alive, keeps its
// kernel lock or database session, and does nothing.
const (
	leaseRenew   = 50 * time.Millisecond
	leaseTimeout = 500 * time.Millisecond
	// leaseSlack is what a takeover may take beyond leaseTimeout on a
	// loaded machine (the race detector, a few renew intervals).
	leaseSlack = 2 * time.Second
)

const (
	leaseHelperDir = "LOCKSTORE_LEASE_HELPER_DIR"
	leaseHelperDSN = "LOCKSTORE_LEASE_HELPER_DSN"
)

// TestLeaseHelperProcess is not a real test: TestFrozenHolderReplaced runs
// it as the holder it freezes. It acquires the lock, prints "locked
// EPOCH", then checks Verify every 5 ms. After a gap (it was frozen) it
// prints what the first check after it said, "resumed ok" or "resumed
// invalid: ...", before anything else can run on its behalf; when the
// lease ends it prints the error and exits 3.
func TestLeaseHelperProcess(t *testing.T) {
	var locker Locker
	var err error
	switch dir, dsn := os.Getenv(leaseHelperDir), os.Getenv(leaseHelperDSN); {
	case dir != "":
		locker, err = NewFile(FileOptions{Dir: dir, CheckInterval: leaseRenew, LeaseTimeout: leaseTimeout})
	case dsn != "":
		locker, err = NewPostgres(PostgresOptions{DSN: dsn, Retry: leaseRenew, LeaseTimeout: leaseTimeout})
	default:
		t.Skip("helper process for TestFrozenHolderReplaced")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	lease, err := locker.Acquire(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("locked %d\n", lease.Epoch())
	last := time.Now()
	for {
		select {
		case <-lease.Done():
			fmt.Printf("lost: %v\n", lease.Err())
			os.Exit(3)
		case <-time.After(5 * time.Millisecond):
		}
		err := lease.Verify()
		if time.Since(last) > 10*leaseRenew {
			if err == nil {
				fmt.Println("resumed ok")
			} else {
				fmt.Printf("resumed invalid: %v\n", err)
			}
		}
		last = time.Now()
		if time.Since(last) > time.Minute {
			os.Exit(4)
		}
	}
}

// TestFrozenHolderReplaced: a holder frozen with SIGSTOP keeps its kernel
// lock (or database session), yet another locker takes over once the lease
// times out, with the next epoch. Thawed, the old holder finds its lease
// invalid at its first check, before its renewal can say so, and then
// loses it. The new holder gets the kernel lock once the old one is gone.
func TestFrozenHolderReplaced(t *testing.T) {
	for _, backend := range []string{"file", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			var env string
			var newLocker func() Locker
			var locked func() bool // nil: the backend has no kernel lock to adopt
			switch backend {
			case "file":
				dir := t.TempDir()
				env = leaseHelperDir + "=" + dir
				newLocker = func() Locker {
					f, err := NewFile(FileOptions{Dir: dir, CheckInterval: leaseRenew, LeaseTimeout: leaseTimeout})
					if err != nil {
						t.Fatal(err)
					}
					return f
				}
				locked = func() bool { return strings.Contains(readFile(t, filepath.Join(dir, "lease")), " lock\n") }
			case "postgres":
				srv := pgtest.Start(t)
				env = leaseHelperDSN + "=" + srv.DSN()
				newLocker = func() Locker {
					p, err := NewPostgres(PostgresOptions{DSN: srv.DSN(), Retry: leaseRenew, LeaseTimeout: leaseTimeout, Log: pgtest.Logger(t)})
					if err != nil {
						t.Fatal(err)
					}
					return p
				}
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestLeaseHelperProcess$")
			cmd.Env = append(os.Environ(), env)
			cmd.Stderr = os.Stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = cmd.Process.Signal(syscall.SIGCONT)
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			})
			lines := make(chan string, 16)
			go func() {
				defer close(lines)
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					lines <- sc.Text()
				}
			}()
			next := func() string {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatal("the helper ended without a word")
					}
					return l
				case <-time.After(testTimeout):
					t.Fatal("the helper said nothing")
					return ""
				}
			}
			if l := next(); !strings.HasPrefix(l, "locked ") {
				t.Fatalf("helper: %q, want locked EPOCH", l)
			}

			ch := acquireAsync(context.Background(), newLocker())
			assertBlocked(t, ch) // the holder renews: nobody takes over
			frozen := time.Now()
			if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			r := awaitResult(t, ch)
			if r.err != nil {
				t.Fatal(r.err)
			}
			defer r.lease.Release()
			took := r.at.Sub(frozen)
			t.Logf("%s: took over %v after the freeze (lease_timeout %v)", backend, took.Round(time.Millisecond), leaseTimeout)
			// The lease runs from the holder's last renewal, which is one
			// interval before the freeze on a quiet machine, and more on a
			// busy one (a renewal 68 ms late was seen): the lower bound
			// catches a takeover that ignores the lease (one lock retry).
			if took < leaseTimeout/2 || took > leaseTimeout+leaseSlack {
				t.Errorf("took over %v after the freeze, want between half the lease_timeout %v and %v more", took, leaseTimeout, leaseSlack)
			}
			if err := r.lease.Verify(); err != nil {
				t.Fatalf("the new holder's lease: %v", err)
			}

			if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			// Thawed, its first check finds the lease invalid, or its
			// renewal finds it lost first; it is never valid again.
			for l := next(); !strings.HasPrefix(l, "lost: "); l = next() {
				if !strings.HasPrefix(l, "resumed invalid: ") {
					t.Fatalf("the thawed holder said %q after the takeover, want its lease invalid", l)
				}
			}
			err = cmd.Wait()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 3 {
				t.Fatalf("the thawed holder ended with %v, want exit status 3", err)
			}
			if err := r.lease.Verify(); err != nil {
				t.Fatalf("the new holder's lease after the old one stopped: %v", err)
			}
			if locked != nil {
				eventually(t, testTimeout, "the new holder to hold the kernel lock too", locked)
			}
		})
	}
}

// TestKernelLockYieldsToLiveLease: after a takeover by lease, the frozen
// holder dies and frees the kernel lock. Whichever waiter the kernel gives
// it to, a slave must not depose the live master that holds the lease
// without it: it gives the kernel lock back until the master has it, and
// takes over only once that master lets go.
func TestKernelLockYieldsToLiveLease(t *testing.T) {
	dir := t.TempDir()
	newFile := func() *File {
		f, err := NewFile(FileOptions{Dir: dir, CheckInterval: leaseRenew, LeaseTimeout: leaseTimeout})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeaseHelperProcess$")
	cmd.Env = append(os.Environ(), leaseHelperDir+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if l, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || !strings.HasPrefix(l, "locked ") {
		t.Fatalf("helper: %q, %v", l, err)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	b := awaitResult(t, acquireAsync(context.Background(), newFile()))
	if b.err != nil {
		t.Fatal(b.err)
	}
	defer b.lease.Release()
	c := acquireAsync(context.Background(), newFile())
	if err := cmd.Process.Kill(); err != nil { // frees the kernel lock
		t.Fatal(err)
	}
	_ = cmd.Wait()
	eventually(t, testTimeout, "the lease holder to get the kernel lock", func() bool {
		return strings.Contains(readFile(t, filepath.Join(dir, "lease")), " lock\n")
	})
	select {
	case r := <-c:
		t.Fatalf("a slave took over from a live master: %v, %v", r.lease, r.err)
	case <-time.After(3 * leaseTimeout):
	}
	if err := b.lease.Verify(); err != nil {
		t.Fatalf("the master's lease: %v", err)
	}
	released := time.Now()
	release(t, b.lease)
	r := awaitResult(t, c)
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.lease.Release()
	if d := r.at.Sub(released); d > takeoverBound {
		t.Errorf("takeover after the release took %v, want < %v", d, takeoverBound)
	}
}
