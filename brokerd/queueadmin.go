package brokerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"handover/brokerd/store"
	"handover/frame"
)

// The operator's view into one queue, as ActiveMQ's console gives it:
// browse the messages at its head without consuming them, and purge what
// waits in it. Both answer only on the master, which holds the queues.

// browsedMessage is one message as GET /api/browse shows it.
type browsedMessage struct {
	ID          string            `json:"id"`
	Size        int               `json:"size"`
	Persistent  bool              `json:"persistent"`
	Redelivered bool              `json:"redelivered"`
	Headers     map[string]string `json:"headers,omitempty"`
	Error       string            `json:"error,omitempty"` // its body could not be read back
}

// maxBrowse bounds one browse.
const maxBrowse = 1000

// browse returns up to limit messages waiting at the head of queue name
// (not those delivered and unacknowledged), with their headers.
func (s *Server) browse(name string, limit int) ([]browsedMessage, error) {
	q := s.existingQueue(name)
	if q == nil {
		return nil, fmt.Errorf("no queue %s", name)
	}
	type pick struct {
		id          string
		size        int32
		persistent  bool
		redelivered bool
		headers     []frame.Header
	}
	var picks []pick
	q.mu.Lock()
	for _, m := range q.pending[q.head:min(len(q.pending), q.head+limit)] {
		p := pick{id: m.id, size: m.size, persistent: m.persistent, redelivered: m.redelivered}
		if m.frame != nil {
			p.headers = append(p.headers, m.frame.Headers...)
		}
		picks = append(picks, p)
	}
	q.mu.Unlock()
	out := make([]browsedMessage, 0, len(picks))
	for _, p := range picks {
		b := browsedMessage{ID: p.id, Size: int(p.size), Persistent: p.persistent, Redelivered: p.redelivered}
		hs := p.headers
		if hs == nil && p.persistent {
			// Read back from the store, without touching the message,
			// which its queue may be delivering meanwhile.
			data, err := s.st.Read(p.id)
			var f *frame.Frame
			if err == nil {
				f, err = parseMessage(&message{id: p.id}, data)
			}
			if err != nil {
				b.Error = err.Error()
			} else {
				hs = f.Headers
			}
		}
		if len(hs) > 0 {
			b.Headers = make(map[string]string, len(hs))
			for _, h := range hs {
				if _, dup := b.Headers[h.Key]; !dup { // STOMP: the first occurrence counts
					b.Headers[h.Key] = h.Value
				}
			}
		}
		out = append(out, b)
	}
	return out, nil
}

// purge removes the messages waiting in queue name (deliveries not yet
// acknowledged stay with their consumers) and journals their removal; it
// returns how many it removed.
func (s *Server) purge(ctx context.Context, name string) (int, error) {
	q := s.existingQueue(name)
	if q == nil {
		return 0, fmt.Errorf("no queue %s", name)
	}
	q.mu.Lock()
	ms := append([]*message(nil), q.pending[q.head:]...)
	clear(q.pending)
	q.pending, q.head = q.pending[:0], 0
	q.unreadable = nil
	for _, m := range ms {
		m.release(q)
	}
	q.dequeued += uint64(len(ms))
	q.mu.Unlock()
	var recs []store.Record
	for _, m := range ms {
		if m.persistent {
			recs = append(recs, store.Record{Kind: store.KindAck, ID: m.id, Queue: q.name})
		}
	}
	if len(recs) > 0 {
		done := make(chan error, 1)
		s.st.Append(recs, func(err error) { done <- err })
		select {
		case err := <-done:
			if err != nil {
				return len(ms), fmt.Errorf("%d messages removed, but their removal could not be journaled (they come back after a restart): %w", len(ms), err)
			}
		case <-ctx.Done():
			return len(ms), ctx.Err()
		}
	}
	s.log.WithFields(map[string]any{"queue": name, "messages": len(ms)}).Warn("queue purged by an operator")
	return len(ms), nil
}

// existingQueue returns queue name if it exists, without creating it.
func (s *Server) existingQueue(name string) *queue {
	s.destMu.Lock()
	defer s.destMu.Unlock()
	return s.queues[name]
}

// queueAdmin adds the queue routes to the admin mux.
func (s *Server) queueAdmin(mux *http.ServeMux) {
	master := func(w http.ResponseWriter) bool {
		s.mu.Lock()
		ready := s.isReady
		s.mu.Unlock()
		if !ready {
			http.Error(w, "not the serving master: ask the master's admin port", http.StatusConflict)
		}
		return ready
	}
	queueArg := func(w http.ResponseWriter, r *http.Request) (string, bool) {
		name := r.URL.Query().Get("queue")
		if isQueue, err := splitDestination(name); err != nil || !isQueue {
			http.Error(w, "queue: want ?queue=/queue/NAME", http.StatusBadRequest)
			return "", false
		}
		return name, true
	}
	mux.HandleFunc("GET /api/browse", func(w http.ResponseWriter, r *http.Request) {
		name, ok := queueArg(w, r)
		if !ok || !master(w) {
			return
		}
		limit := 10
		if l := r.URL.Query().Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil || n <= 0 || n > maxBrowse {
				http.Error(w, fmt.Sprintf("limit: want 1 to %d", maxBrowse), http.StatusBadRequest)
				return
			}
			limit = n
		}
		ms, err := s.browse(name, limit)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"queue": name, "messages": ms})
	})
	mux.HandleFunc("POST /api/purge", func(w http.ResponseWriter, r *http.Request) {
		name, ok := queueArg(w, r)
		if !ok || !master(w) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		n, err := s.purge(ctx, name)
		code := http.StatusOK
		var msg string
		switch {
		case err != nil && errors.Is(err, context.DeadlineExceeded):
			code = http.StatusGatewayTimeout
			msg = err.Error()
		case err != nil && n == 0:
			code = http.StatusNotFound
			msg = err.Error()
		case err != nil:
			code = http.StatusInternalServerError
			msg = err.Error()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]any{"queue": name, "purged": n, "error": msg})
	})
}
