package brokerd

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
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
