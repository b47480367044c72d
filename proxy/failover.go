package proxy

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
)

// FailoverCounts is what failovers have done to a data path's clients so
// far, for the sidecar's "master changed" log line (health.ConnReport).
type FailoverCounts struct {
	// Closed counts the client connections closed because their backend
	// stopped being a target (OnFailover "close"); in STOMP mode, the
	// sessions closed because they could not be resumed. It only grows.
	Closed uint64
	// Held counts the clients waiting for a backend now: accepted and not
	// yet connected (TCP), or paused (STOMP).
	Held int
}

// FailoverCounts returns what failovers have done to the service's clients.
// It takes no lock.
func (s *Service) FailoverCounts() FailoverCounts {
	return FailoverCounts{Closed: s.failoverClosed.Load(), Held: int(s.held.Load())}
}

// sweepTally adds up, over the goroutine path and every event loop, the
// connections one change of targets closes, so that the change is logged
// once, when the last of them has swept: how many clients were disconnected
// and from which backends. (The loops sweep on their own goroutines; one
// line per loop said little, none per client was worse.)
type sweepTally struct {
	mu      sync.Mutex
	from    map[string]int // backend → connections closed
	targets []string       // the answer the latest sweep followed
	pending int            // sweeps not yet reported
}

// begin starts a sweep, or joins one still under way: the goroutine path
// closed closed (by backend), and loops more sweeps will report (done).
// It counts them before any loop can report, so the line cannot be logged
// before every loop has swept.
func (s *Service) beginSweep(targets []string, closed map[string]int, loops int) {
	t := &s.tally
	t.mu.Lock()
	t.pending += loops
	t.targets = targets
	t.add(s, closed)
	t.mu.Unlock()
	if loops == 0 {
		s.endSweep(nil)
	}
}

// endSweep reports one loop's sweep (or one that never ran, closed nil) and,
// if it was the last one pending, logs what the sweeps closed, if anything.
func (s *Service) endSweep(closed map[string]int) {
	t := &s.tally
	t.mu.Lock()
	if closed != nil {
		t.add(s, closed)
	}
	if t.pending > 0 {
		t.pending--
	}
	if t.pending > 0 || len(t.from) == 0 {
		t.mu.Unlock()
		return
	}
	from, targets := t.from, t.targets
	t.from = nil
	t.mu.Unlock()
	n := 0
	for _, c := range from {
		n += c
	}
	s.log.WithFields(logrus.Fields{"disconnected": n, "from": fromField(from), "targets": targets}).
		Warn("disconnected clients: their backend is no longer a target, so they reconnect to the new one")
}

// add counts closed into the tally and FailoverCounts. t.mu is held.
func (t *sweepTally) add(s *Service, closed map[string]int) {
	for b, n := range closed {
		if n == 0 {
			continue
		}
		if t.from == nil {
			t.from = map[string]int{}
		}
		t.from[b] += n
		s.failoverClosed.Add(uint64(n))
	}
}

// fromField renders the backends connections were closed from: the address
// alone for one (the usual failover), "addr=n" pairs, sorted, for several.
func fromField(from map[string]int) string {
	keys := slices.Sorted(maps.Keys(from))
	if len(keys) == 1 {
		return keys[0]
	}
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Itoa(from[k])
	}
	return strings.Join(parts, " ")
}
