package brokerd

import (
	"bytes"
	"fmt"

	"handover/brokerd/journal"
	"handover/frame"
)

// putRecord is the journal record of a persistent message: its MESSAGE frame
// encoded as STOMP 1.2, so the journal stores exactly what will be delivered.
func putRecord(m *message) journal.Record {
	return journal.Record{Kind: journal.KindPut, ID: m.id, Queue: m.dest, Data: frame.Append(nil, m.frame, frame.V12)}
}

// recover rebuilds the queues from the journal's unacknowledged messages, in
// the order they were sent.
func (s *Server) recover(live []journal.Record) error {
	byQueue := map[string][]*message{}
	var order []string
	for _, r := range live {
		f, err := frame.NewReader(bytes.NewReader(r.Data), frame.Limits{MaxBody: -1, MaxHeaders: -1, MaxLine: -1}).Read()
		if err != nil {
			return fmt.Errorf("journal record %s: %w", r.ID, err)
		}
		if _, ok := byQueue[r.Queue]; !ok {
			order = append(order, r.Queue)
		}
		byQueue[r.Queue] = append(byQueue[r.Queue], &message{id: r.ID, dest: r.Queue, frame: f, persistent: true})
	}
	for _, name := range order {
		s.queue(name).enqueue(byQueue[name]...)
	}
	return nil
}
