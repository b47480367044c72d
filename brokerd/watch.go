package brokerd

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"handover/internal/rawsock"
)

// A watch is one long-lived HTTP stream (server-sent events, GET /watch)
// on which the broker pushes its state at once, on every change, and a
// heartbeat every watchBeat: so that thousands of sidecars learn of a
// promotion, a demotion or a coming stop without polling. A broker about
// to stop serving (SIGTERM, a lost lease) says so before it closes its
// STOMP port: publishing a stopping state returns only once every
// watcher's socket has it.
//
// A watcher costs the broker a socket and a few hundred bytes, and no work
// between changes but the shared heartbeat: the handler takes the
// connection over from net/http (Hijack) and returns, so that no goroutine,
// no bufio buffers and no timer stay behind per watcher (with them, a
// watcher cost tens of KB and a goroutine wake-up per heartbeat). The hub's
// one loop writes every event and heartbeat to every socket itself, with a
// non-blocking send per watcher.

// watchBeat is the heartbeat interval. Each heartbeat is a send to every
// watcher, and a send is a system call and a TCP segment (on loopback, the
// receiver's processing too), some microseconds of CPU: the interval is
// what 10,000 idle watchers cost (issue 18 wants under 5 % of a core; see
// bench/watch_test.go). It also sets how soon a watcher notices a broker
// that froze without closing its sockets: health/watch's default bound is
// two of them and a second. A frozen master loses its lease sooner
// (lease_timeout) and its successor's promotion is pushed at once, so the
// failover does not wait for this.
const watchBeat = 3 * time.Second

// watchShard is the fewest watchers worth a goroutine of their own in a
// fan-out: below it, starting one costs more than the sends it takes over.
const watchShard = 512

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

// watchHead is the response head of every watch. The body is delimited by
// the connection's close (RFC 9112 §6.3, rule 8), not chunked: each event
// then goes to the socket as it is, and the hub needs no per-watcher
// writer state.
const watchHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"

var heartbeat = []byte(": beat\n\n")

// watcher is one watch stream's connection.
type watcher struct {
	nc  net.Conn
	raw syscall.RawConn // nil when nc is not a plain socket
	src string          // the client's IP address
	i   int             // index in watchHub.list
	// sent is the generation of the last state sent. Only add (before the
	// watcher is listed) and then the hub's passes, one at a time, touch it.
	sent uint64
}

// send writes b to the watcher without blocking, and says whether all of
// it went: a watcher whose socket cannot take a small event at once has
// not read for a long time (the kernel buffers hundreds of KB, and the
// stream carries a few bytes a second), and a torn event cannot be
// completed later without a buffer per watcher, so it is cut off; it then
// misses heartbeats and falls back to polling.
func (w *watcher) send(b []byte) bool {
	if w.raw == nil {
		w.nc.SetWriteDeadline(time.Now().Add(watchBeat))
		_, err := w.nc.Write(b)
		return err == nil
	}
	var n int
	var werr error
	err := w.raw.Write(func(fd uintptr) bool {
		n, werr = rawsock.Send(fd, b)
		return true // never wait for the socket to become writable
	})
	return err == nil && werr == nil && n == len(b)
}

// watchHub fans state out to the watchers. Its loop (run, in beatLoop)
// does all the sending but the first state of a new watcher: a state
// change is a pass over every watcher, a heartbeat another. A pass works
// on a copy of the list, so that new watchers are not held up, and gives
// way to a newer state: a pass stops when set publishes again, and the
// next one sends the newest state to whoever has not had it, so that a
// state that lasted a moment (brokerd is master and not yet serving while
// its store opens) costs only the sends made before it was replaced.
type watchHub struct {
	mu    sync.Mutex
	cond  sync.Cond // on mu: done moved, or the loop stopped
	state []byte    // the current event, encoded
	gen   uint64    // state's generation, counting from 1
	// latest is gen, read by passes without mu to notice a newer state.
	latest atomic.Uint64
	// done is the newest generation every watcher has been sent.
	done   uint64
	list   []*watcher
	kick   chan struct{} // a new state waits for the loop
	closed bool          // the loop has ended: no new watchers
	snap   []*watcher    // the loop's copy of list for a pass
	// limit caps len(list) (max_watchers; 0: no cap), and perSource the
	// watchers from one IP address (max_watchers_per_source), counted in
	// sources; refused counts the watches turned away by each.
	limit, perSource int
	sources          map[string]int
	refused          [2]atomic.Uint64 // by refusal: refusedMax, refusedPerSource
}

// Why a watch is refused: the index in watchHub.refused, and the setting
// named in the 503 and the metric.
const (
	refusedMax = iota
	refusedPerSource
)

var refusedKey = [2]string{"max_watchers", "max_watchers_per_source"}

// lazyInit makes the zero hub usable. h.mu must be held.
func (h *watchHub) lazyInit() {
	if h.kick == nil {
		h.kick = make(chan struct{}, 1)
		h.cond.L = &h.mu
	}
}

// set publishes st if it differs from the last state. A stopping state is
// waited for: set returns once every watcher's socket has it (or a newer
// one), so that a broker says it stops before its STOMP port closes. That
// needs the loop (run) to be running or started, as Run starts it before
// anything can stop, or to have ended.
func (h *watchHub) set(st WatchState) {
	b, _ := json.Marshal(st)
	ev := append(append([]byte("event: state\ndata: "), b...), "\n\n"...)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lazyInit()
	if string(ev) == string(h.state) {
		return
	}
	h.state = ev
	h.gen++
	h.latest.Store(h.gen)
	select {
	case h.kick <- struct{}{}:
	default: // the loop has not taken the last kick yet: it sees this state too
	}
	for gen := h.gen; st.Stopping && !h.closed && h.done < gen; {
		h.cond.Wait()
	}
}

// run is the hub's loop: it sends states as they change and the heartbeat
// every watchBeat until stop is closed, then sends what state is pending
// and ends every watch (the streams are no longer net/http's, so the admin
// server's shutdown would not close them).
func (h *watchHub) run(stop <-chan struct{}) {
	h.mu.Lock()
	h.lazyInit()
	kick := h.kick
	h.mu.Unlock()
	t := time.NewTicker(watchBeat)
	defer t.Stop()
	for {
		select {
		case <-kick:
			h.pass(nil)
		case <-t.C:
			h.pass(heartbeat)
		case <-stop:
			// The last states ("stopped") go out before the streams end.
			for h.pending() {
				h.pass(nil)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			h.closed = true
			for _, w := range h.list {
				w.nc.Close()
			}
			h.list, h.sources = nil, nil
			h.cond.Broadcast()
			return
		}
	}
}

// pending says whether a state has yet to reach every watcher.
func (h *watchHub) pending() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.done < h.gen
}

// pass sends the current state to every watcher that lacks it, or (beat
// set) the heartbeat to every watcher, and drops those it cannot reach. A
// state goes out on up to GOMAXPROCS goroutines when there are enough
// watchers: each send is a system call that also delivers the bytes (on
// loopback, into the reader's socket), so a fleet hears of a promotion
// sooner on every core than on one. A heartbeat has no such hurry and goes
// from this goroutine alone.
func (h *watchHub) pass(beat []byte) {
	h.mu.Lock()
	gen, ev := h.gen, h.state
	h.snap = append(h.snap[:0], h.list...)
	h.mu.Unlock()
	ws := h.snap
	shards := 1
	if beat == nil {
		shards = max(1, min(runtime.GOMAXPROCS(0), len(ws)/watchShard))
	}
	dead := make([][]*watcher, shards)
	stale := make([]bool, shards)
	if shards == 1 {
		dead[0], stale[0] = h.sendAll(ws, gen, ev, beat)
	} else {
		var wg sync.WaitGroup
		for k := range shards {
			part := ws[k*len(ws)/shards : (k+1)*len(ws)/shards]
			wg.Add(1)
			go func() {
				defer wg.Done()
				dead[k], stale[k] = h.sendAll(part, gen, ev, beat)
			}()
		}
		wg.Wait()
	}
	clear(h.snap) // no closed watcher is kept alive by the copy
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range dead {
		h.drop(d)
	}
	if beat == nil && !slices.Contains(stale, true) && gen > h.done {
		h.done = gen
		h.cond.Broadcast()
	}
}

// sendAll sends ev (generation gen) to those of ws that lack it, or beat
// to all of them, until a newer state is published (stale). It returns the
// watchers it could not reach.
func (h *watchHub) sendAll(ws []*watcher, gen uint64, ev, beat []byte) (dead []*watcher, stale bool) {
	for i, w := range ws {
		if i%64 == 0 && h.latest.Load() != gen {
			return dead, true
		}
		switch {
		case beat != nil:
			if !w.send(beat) {
				dead = append(dead, w)
			}
		case w.sent < gen:
			if !w.send(ev) {
				dead = append(dead, w)
			}
			w.sent = gen
		}
	}
	return dead, false
}

// drop closes the watchers in dead and removes them. h.mu must be held.
func (h *watchHub) drop(dead []*watcher) {
	for _, w := range dead {
		w.nc.Close()
		if h.sources[w.src]--; h.sources[w.src] <= 0 {
			delete(h.sources, w.src)
		}
		last := h.list[len(h.list)-1]
		h.list[w.i], last.i = last, w.i
		h.list[len(h.list)-1] = nil
		h.list = h.list[:len(h.list)-1]
	}
}

// watchFull is the answer to a watch over one of the hub's limits, named
// by key. Its Handover-Watch-Full header tells health/watch that this 503
// is a cap, not a proxy's passing outage: it then asks again only after
// 30-60 s (Retry-After is for other clients).
func watchFull(key string) []byte {
	body := "watchers at capacity (" + key + "): poll me\r\n"
	return fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nHandover-Watch-Full: %s\r\nRetry-After: 60\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", key, len(body), body)
}

// add takes nc on as a watcher: it sends the response head and the current
// state, under the lock so that no state published meanwhile comes first.
// Over a limit it answers 503 instead and closes nc.
func (h *watchHub) add(nc net.Conn) {
	w := &watcher{nc: nc, src: sourceOf(nc)}
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			w.raw = raw
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	why := -1
	switch {
	case h.closed:
	case h.limit > 0 && len(h.list) >= h.limit:
		why = refusedMax
	case h.perSource > 0 && h.sources[w.src] >= h.perSource:
		why = refusedPerSource
	}
	if why >= 0 {
		h.refused[why].Add(1)
		w.send(watchFull(refusedKey[why]))
		nc.Close()
		return
	}
	if h.closed || !w.send(append([]byte(watchHead), h.state...)) {
		nc.Close()
		return
	}
	w.sent = h.gen
	w.i = len(h.list)
	h.list = append(h.list, w)
	if h.sources == nil {
		h.sources = map[string]int{}
	}
	h.sources[w.src]++
}

func (h *watchHub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.list)
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

// beatLoop runs the watch hub's loop (states and heartbeats) until stop
// is closed, then ends every watch.
func (s *Server) beatLoop(stop <-chan struct{}) { s.watch.run(stop) }

// serveWatch is GET /watch.
func (s *Server) serveWatch(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodHead {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		return
	}
	nc, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 cannot hand its connection over; the admin port speaks
		// HTTP/1 only, so this is a server misconfigured in some new way.
		http.Error(w, "watch unavailable: "+err.Error(), http.StatusInternalServerError)
		return
	}
	// Whatever the client sent after its request is never read: a watch
	// only writes.
	s.watch.add(nc)
}
