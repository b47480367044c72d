package brokerd

import (
	"bytes"
	"fmt"

	"github.com/sirupsen/logrus"

	"handover/brokerd/journal"
	"handover/frame"
	"handover/lockstore"
)

// Store keeps the records of persistent messages: the file journal
// (handover/brokerd/journal, the default) or PostgreSQL. The broker needs
// three things of it, which the journal's own methods already are.
type Store interface {
	// Append makes recs durable, then calls done exactly once, in Append
	// order (group commit: concurrent Appends may share one flush). done
	// runs on the goroutine doing the commit (the store's own, or for the
	// journal a connection's reader that committed with AppendNow), one at
	// a time, and must not block. An Append with no records is a barrier:
	// its done runs after every earlier Append's.
	Append(recs []journal.Record, done func(error))
	// Close flushes pending Appends and releases the store; idempotent.
	Close() error
	// Stats reports the store's size and activity for /status and /metrics.
	Stats() journal.Stats
}

// StoreOpener opens the store once this broker is master, given the lease
// it holds (a store that can fence its writes by the lease's epoch must).
// It returns the store and the live (unacknowledged) Put records to
// recover, in the order they were appended.
type StoreOpener func(lease lockstore.Lease, log *logrus.Entry) (Store, []journal.Record, error)

// putRecord is the journal record of a persistent message: its MESSAGE frame
// encoded as STOMP 1.2, so the journal stores exactly what will be delivered.
func putRecord(m *message) journal.Record {
	return journal.Record{Kind: journal.KindPut, ID: m.id, Queue: m.dest, Data: frame.Append(nil, m.frame, frame.V12)}
}

// recover rebuilds the queues from the journal's unacknowledged messages, in
// the order they were sent. Each is marked redelivered: the store does not
// record deliveries, so any of them may have reached a consumer of the
// previous master before it died, and a consumer that de-duplicates must
// be told to check. Over-marking a message never delivered costs that
// consumer a look-up; under-marking one that was would hide a duplicate.
func (s *Server) recover(live []journal.Record) error {
	byQueue := map[string][]*message{}
	var order []string
	for _, r := range live {
		if r.Queue == dedupQueue {
			s.dedup.restore(r)
			continue
		}
		f, err := frame.NewReader(bytes.NewReader(r.Data), frame.Limits{MaxBody: -1, MaxHeaders: -1, MaxLine: -1}).Read()
		if err != nil {
			return fmt.Errorf("journal record %s: %w", r.ID, err)
		}
		if _, ok := byQueue[r.Queue]; !ok {
			order = append(order, r.Queue)
		}
		byQueue[r.Queue] = append(byQueue[r.Queue], &message{id: r.ID, dest: r.Queue, frame: f, persistent: true, redelivered: true})
	}
	for _, name := range order {
		s.queue(name).enqueue(byQueue[name]...)
	}
	return nil
}
