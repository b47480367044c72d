package journal

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const killChildEnv = "JOURNAL_KILL_CHILD_DIR"

// TestHelperKillChild is not a test: it is the child process of TestSIGKILL.
// It appends puts and acks from several goroutines forever and prints
// "P id" / "A id" to stdout from done(nil), i.e. the moment the journal
// promises the record is durable. Before appending an ack it prints "a id",
// so the parent knows which puts may legitimately be gone: a kill between an
// ack's fsync and its "A" line is not a loss.
func TestHelperKillChild(t *testing.T) {
	dir := os.Getenv(killChildEnv)
	if dir == "" {
		t.Skip("helper process for TestSIGKILL")
	}
	prefix := os.Getenv("JOURNAL_KILL_CHILD_PREFIX")
	j, _, err := Open(Options{Dir: dir, SegmentSize: 64 << 10})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child Open:", err)
		os.Exit(2)
	}
	// Safety net: never outlive a parent that failed to kill us.
	time.AfterFunc(20*time.Second, func() { os.Exit(3) })
	report := func(tag, id string) func(error) {
		return func(err error) {
			if err != nil {
				fmt.Fprintln(os.Stderr, "child append:", err)
				os.Exit(2)
			}
			os.Stdout.WriteString(tag + " " + id + "\n") // unbuffered: one write(2)
		}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			var mine []string
			for i := 0; ; i++ {
				id := fmt.Sprintf("%s-g%d-%d", prefix, g, i)
				data := make([]byte, 100+rng.IntN(3000))
				data[0] = byte(i)
				ch := make(chan error, 1)
				j.Append([]Record{put(id, "q", data)}, func(err error) { report("P", id)(err); ch <- err })
				<-ch
				mine = append(mine, id)
				if len(mine) > 3 && rng.IntN(2) == 0 {
					k := rng.IntN(len(mine))
					a := mine[k]
					mine = append(mine[:k], mine[k+1:]...)
					os.Stdout.WriteString("a " + a + "\n")
					j.Append([]Record{ack(a)}, report("A", a)) // not waited for: keeps the pipeline full
				}
			}
		})
	}
	wg.Wait()
}

// TestSIGKILL kills a child that is appending as fast as it can, at a random
// moment, and checks that every record it was told is durable survived.
func TestSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	puts := map[string]bool{}   // reported durable puts
	acking := map[string]bool{} // acks the child was about to append
	acked := map[string]bool{}  // reported durable acks
	for round := range 6 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperKillChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), killChildEnv+"="+dir, fmt.Sprintf("JOURNAL_KILL_CHILD_PREFIX=r%d", round))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan []string)
		started := make(chan struct{})
		go func() {
			var got []string
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if len(got) == 0 {
					close(started)
				}
				got = append(got, sc.Text())
			}
			lines <- got
		}()
		// Kill at a random moment once the child is writing: how long its
		// replay takes depends on the machine's load, not on the test.
		select {
		case <-started:
		case <-time.After(time.Minute):
			t.Fatalf("round %d: child reported nothing in a minute", round)
		}
		time.Sleep(time.Duration(rand.IntN(500)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		got := <-lines
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: child was not killed: %v", round, err)
		}
		nP, nA := 0, 0
		for _, l := range got {
			tag, id, ok := strings.Cut(l, " ")
			switch {
			case ok && tag == "P":
				puts[id] = true
				nP++
			case ok && tag == "A":
				acked[id] = true
				nA++
			case ok && tag == "a":
				acking[id] = true
			}
		}
		if nP == 0 {
			t.Fatalf("round %d: child reported nothing", round)
		}
		j, live, err := Open(Options{Dir: dir, SegmentSize: 64 << 10})
		if err != nil {
			t.Fatalf("round %d: Open after SIGKILL: %v", round, err)
		}
		liveSet := map[string]bool{}
		for _, r := range live {
			liveSet[r.ID] = true
		}
		for id := range puts {
			if !acking[id] && !liveSet[id] {
				t.Errorf("round %d: put %s was reported durable but is lost", round, id)
			}
		}
		for id := range acked {
			if liveSet[id] {
				t.Errorf("round %d: ack of %s was reported durable but the put is live again", round, id)
			}
		}
		st := j.Stats()
		t.Logf("round %d: child reported %d puts, %d acks; replay: %d live, %d segments, %d bytes",
			round, nP, nA, len(live), st.Segments, st.Bytes)
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			return
		}
	}
}
