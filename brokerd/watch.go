package brokerd

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// A watch is one long-lived HTTP stream (server-sent events, GET /watch)
// on which the broker pushes its state at once, on every change, and a
// heartbeat every watchBeat: so that thousands of sidecars learn of a
// promotion, a demotion or a coming stop without polling. A broker about
// to stop serving (SIGTERM, a lost lease) says so before it closes its
// STOMP port. A watcher costs a goroutine (its HTTP handler), a one-slot
// channel and nothing between changes but the shared heartbeat.

// watchBeat is the heartbeat interval; a watcher that hears nothing for a
// few of them takes the stream as dead.
const watchBeat = time.Second

// WatchState is what a watch pushes.
type WatchState struct {
	Role  string `json:"role"`
	Epoch uint64 `json:"epoch"`
	// Serving: the STOMP port is open (master, ready).
	Serving bool `json:"serving"`
	// Stopping: the broker is about to stop serving (its port closes next).
	Stopping bool `json:"stopping"`
	// StandbyReady: a slave that could take over now.
	StandbyReady bool   `json:"standby_ready"`
	Listen       string `json:"listen,omitempty"`
}

// watchHub fans state out to the watchers.
type watchHub struct {
	mu       sync.Mutex
	state    []byte // the current event, encoded
	watchers map[chan []byte]struct{}
}

// set publishes st if it differs from the last state.
func (h *watchHub) set(st WatchState) {
	b, _ := json.Marshal(st)
	ev := append(append([]byte("event: state\ndata: "), b...), "\n\n"...)
	h.mu.Lock()
	defer h.mu.Unlock()
	if string(ev) == string(h.state) {
		return
	}
	h.state = ev
	for ch := range h.watchers {
		offer(ch, ev)
	}
}

// offer puts ev in ch, replacing what waits there: a watcher needs the
// latest state, not every one in between.
func offer(ch chan []byte, ev []byte) {
	for {
		select {
		case ch <- ev:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

var heartbeat = []byte(": beat\n\n")

// beat sends the heartbeat to watchers with nothing waiting.
func (h *watchHub) beat() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.watchers {
		select {
		case ch <- heartbeat:
		default: // a state is waiting: that is news enough
		}
	}
}

func (h *watchHub) add() (chan []byte, []byte) {
	ch := make(chan []byte, 1)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.watchers == nil {
		h.watchers = map[chan []byte]struct{}{}
	}
	h.watchers[ch] = struct{}{}
	return ch, h.state
}

func (h *watchHub) remove(ch chan []byte) {
	h.mu.Lock()
	delete(h.watchers, ch)
	h.mu.Unlock()
}

func (h *watchHub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.watchers)
}

// publish pushes the broker's current state to its watchers.
func (s *Server) publish() {
	s.mu.Lock()
	st := WatchState{Role: s.role, Epoch: s.epoch, Serving: s.isReady}
	select {
	case <-s.stopping:
		st.Stopping, st.Serving = true, false
	default:
	}
	if s.ln != nil && st.Serving {
		st.Listen = s.ln.Addr().String()
	}
	s.mu.Unlock()
	if st.Role == RoleSlave {
		s.sbMu.Lock()
		st.StandbyReady = s.standby.Following && s.standby.Error == "" && s.bindErr == ""
		s.sbMu.Unlock()
	}
	s.watch.set(st)
}

// beatLoop sends the watchers' heartbeat until stop is closed.
func (s *Server) beatLoop(stop <-chan struct{}) {
	t := time.NewTicker(watchBeat)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.watch.beat()
		}
	}
}

// serveWatch is GET /watch.
func (s *Server) serveWatch(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	ch, first := s.watch.add()
	defer s.watch.remove(ch)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if first != nil {
		w.Write(first)
	}
	fl.Flush()
	rc := http.NewResponseController(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.adminDone:
			return
		case ev := <-ch:
			// A watcher that does not read is cut off: its heartbeat stops,
			// and it falls back to polling.
			rc.SetWriteDeadline(time.Now().Add(10 * watchBeat))
			if _, err := w.Write(ev); err != nil {
				return
			}
			fl.Flush()
		}
	}
}
