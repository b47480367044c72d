// Package testutil holds helpers shared by tests that start real processes:
// building binaries once, picking free loopback ports, polling for a
// condition instead of sleeping, and capturing process output.
package testutil

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]string{}
)

// Binary builds the command at import path pkg (e.g. "handover/cmd/brokerd")
// once per test process and returns the binary's path.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "handover-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, filepath.Base(pkg))
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	if !raceEnabled {
		// As make build does: a static binary, without the C library's
		// pages in its resident set (the race detector needs cgo).
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// FreePort returns a loopback address with a port that was free a moment
// ago. Processes that must bind a known port (a slave's port, closed until it
// becomes master) need one chosen up front. A port is never returned twice
// in one test process: the kernel may hand a port just closed to the next
// bind, and two services given one port fail when the second binds it.
func FreePort(t testing.TB) string {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		freePorts.Lock()
		given := freePorts.given[addr]
		if !given {
			freePorts.given[addr] = true
		}
		freePorts.Unlock()
		if !given {
			return addr
		}
	}
	t.Fatal("no port not already handed out after 100 tries")
	return ""
}

// freePorts are the addresses FreePort has returned.
var freePorts = struct {
	sync.Mutex
	given map[string]bool
}{given: map[string]bool{}}

// Eventually polls cond every 10ms until it returns nil or timeout passes,
// then fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SyncBuffer is a bytes.Buffer safe for a process to write while a test reads.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Process is a started command whose output is kept for failure reports.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	Out  *SyncBuffer
	done chan struct{}
	err  error
}

// Start runs bin with args; the process is killed at test cleanup and its
// output is logged if the test failed.
func Start(t testing.TB, name, bin string, args ...string) *Process {
	t.Helper()
	p := &Process{Name: name, Cmd: exec.Command(bin, args...), Out: &SyncBuffer{}, done: make(chan struct{})}
	p.Cmd.Stdout, p.Cmd.Stderr = p.Out, p.Out
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("---- output of %s ----\n%s", name, p.Out.String())
		}
	})
	return p
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Process) Kill() {
	if p.Cmd.Process != nil {
		p.Cmd.Process.Kill()
	}
	<-p.done
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits up to timeout for the process to exit and returns its exit error.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %v", p.Name, timeout)
	}
}

// ExitCode is the exit code once the process has ended, -1 before.
func (p *Process) ExitCode() int {
	select {
	case <-p.done:
		return p.Cmd.ProcessState.ExitCode()
	default:
		return -1
	}
}

// InitBroker gives brokerd's storage a cluster identity, as an operator
// does once per cluster: `brokerd -init` with args (-data DIR, or -store
// URL). Storage that already has one is left as it is.
func InitBroker(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(Binary(t, "handover/cmd/brokerd"), append([]string{"-init"}, args...)...).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already initialized") {
		t.Fatalf("brokerd -init %v: %v\n%s", args, err, out)
	}
}
