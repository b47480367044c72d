package brokerd

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"handover/internal/testutil"
)

// watchStream reads a /watch stream's events.
type watchStream struct {
	states chan WatchState
	beats  chan struct{}
	resp   *http.Response
}

func openWatch(t *testing.T, admin string) *watchStream {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/watch")
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("GET /watch: %d %s", resp.StatusCode, ct)
	}
	w := &watchStream{states: make(chan WatchState, 64), beats: make(chan struct{}, 64), resp: resp}
	t.Cleanup(func() { resp.Body.Close() })
	go func() {
		defer close(w.states)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "data: "):
				var st WatchState
				if json.Unmarshal([]byte(line[len("data: "):]), &st) == nil {
					w.states <- st
				}
			case strings.HasPrefix(line, ": beat"):
				select {
				case w.beats <- struct{}{}:
				default:
				}
			}
		}
	}()
	return w
}

// next waits for a state that satisfies ok.
func (w *watchStream) next(t *testing.T, what string, ok func(WatchState) bool) WatchState {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case st, open := <-w.states:
			if !open {
				t.Fatalf("the watch ended before %s", what)
			}
			if ok(st) {
				return st
			}
		case <-deadline:
			t.Fatalf("no %s on the watch", what)
		}
	}
}

// TestWatch: a watcher of a slave hears at once that it is a standby, then
// heartbeats, then its promotion the moment it serves; a watcher of the
// master hears that it is stopping before its port closes.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	m := startServer(t, dir, nil)
	m.waitReady(t)
	sl := startServer(t, dir, nil)
	ws := openWatch(t, sl.AdminAddr())
	ws.next(t, "the slave ready to take over", func(st WatchState) bool { return st.Role == RoleSlave && !st.Serving && st.StandbyReady })
	select {
	case <-ws.beats:
	case <-time.After(5 * watchBeat):
		t.Fatal("no heartbeat")
	}
	wm := openWatch(t, m.AdminAddr())
	wm.next(t, "the master serving", func(st WatchState) bool { return st.Role == RoleMaster && st.Serving && st.Listen == m.Addr() })

	stopped := make(chan error, 1)
	go func() { stopped <- m.stop(t) }()
	wm.next(t, "the master stopping", func(st WatchState) bool { return st.Stopping && !st.Serving })
	st := ws.next(t, "the slave's promotion", func(st WatchState) bool { return st.Role == RoleMaster && st.Serving })
	if st.Epoch != 2 || st.Listen != sl.Addr() {
		t.Errorf("promotion %+v, want epoch 2 on %s", st, sl.Addr())
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if n := sl.watch.count(); n != 1 {
		t.Errorf("%d watchers on the new master, want 1", n)
	}
}

// TestWatchersCapped: past max_watchers, or max_watchers_per_source from
// one IP address, a watch is answered 503 naming the limit (which
// health/watch takes as "poll, ask again later"), counted in /metrics by
// limit and shown with the open ones in /status; a watcher that leaves
// makes room.
func TestWatchersCapped(t *testing.T) {
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err != nil {
		t.Skipf("no second loopback address here (%v): Linux routes all of 127/8 to lo", err)
	} else {
		ln.Close()
	}
	s := startServer(t, t.TempDir(), func(o *Options) { o.MaxWatchers, o.MaxWatchersPerSource = 3, 2 })
	s.waitReady(t)
	// watch opens a watch from the loopback address from and returns its
	// response: a watch let in streams without end, so the client's
	// timeout is on the head alone.
	watch := func(from string) *http.Response {
		t.Helper()
		tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext, ResponseHeaderTimeout: 5 * time.Second}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("http://" + s.AdminAddr() + "/watch")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	var first *http.Response
	for _, tt := range []struct {
		from, refused string // "": let in
	}{
		{"127.0.0.1", ""},
		{"127.0.0.1", ""},
		{"127.0.0.1", "max_watchers_per_source"},
		{"127.0.0.2", ""},
		{"127.0.0.2", "max_watchers"},
	} {
		resp := watch(tt.from)
		if tt.refused == "" {
			if resp.StatusCode != 200 {
				t.Fatalf("a watch from %s: %s, want it let in", tt.from, resp.Status)
			}
			if first == nil {
				first = resp
			}
			continue
		}
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("a watch from %s: %s, want 503 naming %s", tt.from, resp.Status, tt.refused)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), "("+tt.refused+")") || resp.Header.Get("Handover-Watch-Full") != tt.refused {
			t.Fatalf("a watch from %s: %s %v %q, want 503 naming %s, with Handover-Watch-Full", tt.from, resp.Status, resp.Header, body, tt.refused)
		}
	}
	if n := getStatus(t, s.AdminAddr()).Watchers; n != 3 {
		t.Errorf("/status says %d watchers, want 3", n)
	}
	m := scrape(t, s.AdminAddr())
	for _, want := range []string{"brokerd_watchers 3\n", `brokerd_watchers_refused_total{limit="max_watchers"} 1` + "\n", `brokerd_watchers_refused_total{limit="max_watchers_per_source"} 1` + "\n"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The hub finds a closed stream at its next send (a heartbeat): its
	// place, and its source's, are freed.
	first.Body.Close()
	waitUntil(t, 5*watchBeat, "the closed watch's place was not freed", func() bool {
		return getStatus(t, s.AdminAddr()).Watchers == 2
	})
	if resp := watch("127.0.0.1"); resp.StatusCode != 200 {
		t.Fatalf("a watch from 127.0.0.1 after one of its watches closed: %s", resp.Status)
	}
}

// hubClient is the reading end of one watch connection made straight to a
// hub, without an HTTP server between.
type hubClient struct {
	nc net.Conn
	r  *bufio.Reader
}

// hubWatchers connects n watchers to h over loopback TCP and reads each
// one's response head.
func hubWatchers(t *testing.T, h *watchHub, n int) []*hubClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cs := make([]*hubClient, n)
	for i := range cs {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		h.add(sc)
		cs[i] = &hubClient{nc: nc, r: bufio.NewReader(nc)}
		for {
			line, err := cs[i].r.ReadString('\n')
			if err != nil {
				t.Fatalf("watcher %d: reading the head: %v", i, err)
			}
			if line == "\r\n" {
				break
			}
		}
	}
	return cs
}

// states reads c's events until one satisfies last, and returns them all.
func (c *hubClient) states(t *testing.T, last func(WatchState) bool) []WatchState {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(15 * time.Second))
	var got []WatchState
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %+v: %v", got, err)
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var st WatchState
		if err := json.Unmarshal([]byte(data), &st); err != nil {
			t.Fatal(err)
		}
		if got = append(got, st); last(st) {
			return got
		}
	}
}

// runHub runs h's loop until the test ends.
func runHub(t *testing.T, h *watchHub) {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { h.run(stop); close(done) }()
	t.Cleanup(func() { close(stop); <-done })
}

// TestWatchHubStates: states reach every watcher, more than one
// goroutine's worth, in the order published (a state replaced before it
// went out may be skipped, never sent after its successor); a stopping
// state is on every socket when set returns.
func TestWatchHubStates(t *testing.T) {
	h := &watchHub{}
	h.set(WatchState{Role: RoleSlave})
	cs := hubWatchers(t, h, 2*watchShard+10)
	runHub(t, h)
	for epoch := uint64(1); epoch <= 20; epoch++ {
		h.set(WatchState{Role: RoleMaster, Epoch: epoch})
	}
	h.set(WatchState{Role: RoleMaster, Epoch: 21, Stopping: true})
	h.mu.Lock()
	for i, w := range h.list {
		if w.sent != h.gen {
			t.Errorf("watcher %d: sent generation %d when set returned, want %d", i, w.sent, h.gen)
		}
	}
	h.mu.Unlock()
	for i, c := range cs {
		got := c.states(t, func(st WatchState) bool { return st.Stopping })
		if got[0].Role != RoleSlave {
			t.Errorf("watcher %d: first state %+v, want the slave's", i, got[0])
		}
		for k := 1; k < len(got); k++ {
			if got[k].Epoch <= got[k-1].Epoch {
				t.Fatalf("watcher %d: states out of order: %+v", i, got)
			}
		}
	}
}

// TestWatchHubDrops: a watcher that hung up is dropped by the next sends
// (the first may still be taken by its socket); one that stops reading is
// cut off once its socket cannot take an event whole, instead of holding
// up the others.
func TestWatchHubDrops(t *testing.T) {
	h := &watchHub{}
	h.set(WatchState{Role: RoleSlave})
	cs := hubWatchers(t, h, 3)
	cs[0].nc.Close()
	for range 2 {
		h.pass(heartbeat)
	}
	if n := h.count(); n != 2 {
		t.Fatalf("%d watchers after one hung up, want 2", n)
	}

	// cs[1] never reads; cs[2] does.
	big := []byte(": " + strings.Repeat("x", 64<<10) + "\n\n")
	var read atomic.Int64
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := cs[2].r.Read(buf)
			read.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	for i := 0; h.count() == 2; i++ {
		if i == 10000 {
			t.Fatal("a watcher that does not read was never cut off")
		}
		// The reader keeps up (it has read this pass before the next),
		// however slow the machine: only the one that never reads may
		// fall behind.
		before := read.Load()
		h.pass(big)
		testutil.Eventually(t, 10*time.Second, func() error {
			if h.count() == 2 && read.Load() < before+int64(len(big)) {
				return fmt.Errorf("the reader has read %d of the pass's %d bytes", read.Load()-before, len(big))
			}
			return nil
		})
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.list) != 1 || h.list[0].i != 0 {
		t.Fatalf("%d watchers left, want the reader", len(h.list))
	}
}

// TestWatchCostsNoGoroutine: a watch holds no goroutine in the broker once
// it is set up, so that ten thousand of them cost sockets, not stacks.
func TestWatchCostsNoGoroutine(t *testing.T) {
	s := startServer(t, t.TempDir(), nil)
	s.waitReady(t)
	before := runtime.NumGoroutine()
	const n = 200
	for range n {
		nc, err := net.Dial("tcp", s.AdminAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		fmt.Fprintf(nc, "GET /watch HTTP/1.1\r\nHost: %s\r\n\r\n", s.AdminAddr())
	}
	testutil.Eventually(t, 15*time.Second, func() error {
		if c := s.watch.count(); c != n {
			return fmt.Errorf("%d watchers", c)
		}
		if g := runtime.NumGoroutine() - before; g > n/10 {
			return fmt.Errorf("%d more goroutines with %d watchers", g, n)
		}
		return nil
	})
}
