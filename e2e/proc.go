package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// proc is one child process. Its output goes to a log file of its own in
// the test's log directory (appended across restarts, so one file tells a
// broker's whole story), not to memory: a long chaos run logs far more than
// a test should hold.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	err     error // Wait's result, set before done closes

	// expected is set before the harness stops the process on purpose, so
	// that its exit is not reported as a crash.
	expected atomic.Bool
}

// startProc starts bin with args. Stderr, and stdout unless onLine is set,
// go to logDir/name.log; with onLine, every stdout line is written there too
// and handed to onLine (from one goroutine, in order) before the process
// counts as done. onExit, when set, runs once the process has ended. The
// process is killed at test cleanup.
func startProc(t testing.TB, logDir, name string, onLine func(string), onExit func(*proc), bin string, args ...string) (*proc, error) {
	path := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "==== %s start %s: %s %q\n", time.Now().Format(time.RFC3339Nano), name, filepath.Base(bin), args)
	p := &proc{name: name, logPath: path, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	// A -race binary sleeps a second at exit by default, for goroutines
	// still reporting races; that second would show up as client outage
	// when a process is stopped gracefully. Reports are written as races
	// are found, so nothing is lost without it.
	p.cmd.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	p.cmd.Stderr = f
	var stdout io.ReadCloser
	if onLine == nil {
		p.cmd.Stdout = f
	} else if stdout, err = p.cmd.StdoutPipe(); err != nil {
		f.Close()
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.started = time.Now()
	go func() {
		if stdout != nil {
			// The file has O_APPEND, so these lines and the child's
			// stderr interleave whole.
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				f.WriteString(line + "\n")
				onLine(line)
			}
			io.Copy(io.Discard, stdout) // a line over the limit: keep the child unblocked
		}
		p.err = p.cmd.Wait()
		fmt.Fprintf(f, "==== %s %s exited: %v\n", time.Now().Format(time.RFC3339Nano), name, p.cmd.ProcessState)
		f.Close()
		close(p.done)
		if onExit != nil {
			onExit(p)
		}
	}()
	t.Cleanup(p.kill)
	return p, nil
}

// signal sends sig; a process that has exited is not an error.
func (p *proc) signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !isDone(p.done) {
		return fmt.Errorf("%s: %v: %w", p.name, sig, err)
	}
	return nil
}

// kill ends the process at once (SIGKILL works on a stopped process too)
// and waits for it.
func (p *proc) kill() {
	p.expected.Store(true)
	p.signal(syscall.SIGKILL)
	<-p.done
}

// wait waits up to timeout for the process to end and returns how it ended.
func (p *proc) wait(timeout time.Duration) (*os.ProcessState, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.cmd.ProcessState, nil
	case <-t.C:
		return nil, fmt.Errorf("%s still running %v after being told to stop", p.name, timeout)
	}
}

func (p *proc) running() bool { return !isDone(p.done) }

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// tail returns the last n lines of path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	b = bytes.TrimRight(b, "\n")
	i := len(b)
	for k := 0; k < n && i > 0; k++ {
		i = bytes.LastIndexByte(b[:i], '\n')
		if i < 0 {
			i = 0
			break
		}
	}
	return string(bytes.TrimLeft(b[i:], "\n"))
}

// logSet is a test's log directory and every log file written in it, so
// that a failed test can show the tail of each.
type logSet struct {
	dir   string
	mu    sync.Mutex
	files []string
}

// newLogSet makes the log directory: under $E2E_LOGDIR when set (kept after
// the test, for reading at leisure), else in the test's temporary directory.
// If the test fails, the tail of every file is logged at cleanup.
func newLogSet(t testing.TB) *logSet {
	dir := t.TempDir()
	if root := os.Getenv("E2E_LOGDIR"); root != "" {
		dir = filepath.Join(root, fmt.Sprintf("%s-%s", sanitize(t.Name()), time.Now().Format("20060102-150405")))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ls := &logSet{dir: dir}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ls.mu.Lock()
		defer ls.mu.Unlock()
		for _, f := range ls.files {
			t.Logf("---- tail of %s ----\n%s", f, tail(f, 60))
		}
		t.Logf("logs in %s", ls.dir)
	})
	return ls
}

// add registers a log file name (relative to dir) once.
func (ls *logSet) add(name string) {
	path := filepath.Join(ls.dir, name+".log")
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, f := range ls.files {
		if f == path {
			return
		}
	}
	ls.files = append(ls.files, path)
}

// races lists the log files holding a race detector report.
func (ls *logSet) races() []string {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var out []string
	for _, f := range ls.files {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			out = append(out, f)
		}
	}
	return out
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}
