package brokerd

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"

	"handover/brokerd/journal"
	"handover/brokerd/store"
	"handover/frame"
	"handover/lockstore"
)

// StoreOpener opens a standby reader of the store where persistent
// messages live (handover/brokerd/store): the broker follows it while it
// is a slave and promotes it once it holds the master lock. It is called
// again after a failure, until it succeeds.
type StoreOpener func(log *logrus.Entry) (store.Standby, error)

// nowAppender is a store that can commit on the caller's goroutine when it
// is idle (the journal's AppendNow).
type nowAppender interface {
	AppendNow(recs []store.Record, done func(error))
}

// openJournal is the default StoreOpener: the file journal in Data.
func (s *Server) openJournal(log *logrus.Entry) (store.Standby, error) {
	return journal.Follow(journal.Options{
		Dir:         filepath.Join(s.opts.Data, "journal"),
		SegmentSize: s.opts.SegmentSize,
		MaxBytes:    s.opts.MaxDisk,
		Reserve:     s.opts.DiskReserve,
		Log:         log.WithField("component", "journal"),
	})
}

// openStandby opens a standby reader of the configured store (Options.Store,
// or the journal in Data).
func (s *Server) openStandby() (store.Standby, error) {
	if s.opts.Store != nil {
		return s.opts.Store(s.log)
	}
	return s.openJournal(s.log)
}

// putRecord is the store record of a persistent message to queue dest: its
// MESSAGE frame encoded as STOMP 1.2, so the store keeps exactly what will
// be delivered.
func putRecord(m *message, dest string) store.Record {
	return store.Record{Kind: store.KindPut, ID: m.id, Queue: dest, Data: frame.Append(nil, m.frame, frame.V12)}
}

// follow keeps the slave's backlog current until ctx is done: every
// StandbyInterval it reads what the master appended since the last look,
// so that a takeover reads only the tail. It owns sb and s.backlog while
// it runs.
func (s *Server) follow(ctx context.Context, sb *store.Standby) {
	log := s.log.WithField("component", "standby")
	t := time.NewTicker(s.opts.StandbyInterval.D())
	defer t.Stop()
	lastErr, lastBind := "", ""
	var bindAt time.Time
	for {
		if time.Since(bindAt) >= bindCheckEvery {
			bindAt = time.Now()
			var err error
			for _, a := range []string{s.opts.Listen, s.opts.TLSListen} {
				if a != "" && err == nil {
					err = canBind(a)
				}
			}
			s.noteBind(err, &lastBind, log)
		}
		if *sb == nil {
			var err error
			if *sb, err = s.openStandby(); err != nil {
				*sb = nil
				s.noteStandby(store.Progress{}, err, &lastErr, log)
			}
		}
		if *sb != nil {
			p, err := (*sb).CatchUp(s.backlog)
			s.noteStandby(p, err, &lastErr, log)
		}
		s.publish() // readiness may have changed; unchanged states are not sent
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// bindCheckEvery is how often a slave checks that it could listen.
const bindCheckEvery = time.Second

// noteBind records whether the slave could listen, for /status, and logs
// a change.
func (s *Server) noteBind(err error, last *string, log *logrus.Entry) {
	msg := ""
	if err != nil {
		msg = "listen: " + err.Error()
	}
	if msg != *last {
		if err != nil {
			log.WithError(err).WithField("listen", s.opts.Listen).Error("standby: this slave could not serve if it took over: its listen address cannot be bound")
		} else if *last != "" {
			log.WithField("listen", s.opts.Listen).Info("standby: the listen address can be bound again")
		}
		*last = msg
	}
	s.sbMu.Lock()
	s.bindErr = msg
	s.sbMu.Unlock()
}

// noteStandby records a catch-up for /status, and logs its failures once
// each (a standby that cannot read retries every interval).
func (s *Server) noteStandby(p store.Progress, err error, lastErr *string, log *logrus.Entry) {
	s.sbMu.Lock()
	defer s.sbMu.Unlock()
	st := &s.standby
	st.Messages, st.Bytes = s.backlog.live, s.backlog.bytes
	if err != nil {
		st.Error = err.Error()
		if *lastErr != st.Error {
			log.WithError(err).Warn("standby: cannot read the store; retrying")
			*lastErr = st.Error
		}
		return
	}
	if *lastErr != "" {
		log.Info("standby: reading the store again")
		*lastErr = ""
	}
	st.Following, st.Error = true, ""
	st.LastCatchUp = time.Now()
	st.BehindRecords, st.BehindBytes = p.Records, p.Bytes
	st.TotalRecords += uint64(p.Records)
	st.Position, st.Waiting = p.Position, p.Waiting
}

// abdicate gives up the lease because a write found it could not be relied
// on; Run then stops the broker as for a lost lock. Only the first reason
// is kept.
func (s *Server) abdicate(lease lockstore.Lease, why error) {
	s.mu.Lock()
	first := s.abdicated == nil
	if first {
		s.abdicated = why
	}
	s.mu.Unlock()
	if first {
		// Not here: Release waits for the lock's watcher, and the caller
		// is a store's writer that shutdown will wait for.
		go lease.Release()
	}
}

// promote makes the standby the master's store and turns the backlog into
// queues. It reads only what was appended since the standby's last look.
func (s *Server) promote(lease lockstore.Lease, sb store.Standby) (store.Store, error) {
	if sb == nil {
		var err error
		if sb, err = s.openStandby(); err != nil {
			return nil, err
		}
	}
	// A lease that cannot be relied on ends this master's term: whatever
	// the reason (superseded, or not renewed in time because the process
	// was frozen or starved), a slave may be serving by now, so this
	// process stops and exits 3 rather than wait to find out.
	fence := func(check func() error) func() error {
		return func() error {
			err := check()
			if err != nil {
				s.abdicate(lease, err)
				return fmt.Errorf("%w: %v", ErrLeaseLost, err)
			}
			return nil
		}
	}
	st, err := sb.Promote(store.Promotion{
		Epoch:  lease.Epoch(),
		Fence:  fence(lease.Valid),
		Verify: fence(lease.Verify),
	}, s.backlog)
	if err != nil {
		return nil, err
	}
	s.adopt(s.backlog)
	s.sbMu.Lock()
	s.backlog = newBacklog()
	s.standby = standbyStatus{}
	s.sbMu.Unlock()
	return st, nil
}

// adopt turns a standby's backlog into the queues, in store order, with
// bodies left in the store. Each message is marked redelivered: the store
// does not record deliveries, so any of them may have reached a consumer
// of the previous master before it died, and a consumer that de-duplicates
// must be told to check. Over-marking a message never delivered costs that
// consumer a look-up; under-marking one that was would hide a duplicate.
func (s *Server) adopt(b *backlog) {
	for name, l := range b.queues {
		l.sweep()
		if len(l.ms) == 0 {
			continue
		}
		q := s.lockedQueue(name)
		q.pending = append(l.ms, q.pending[q.head:]...)
		q.head = 0
		q.enqueued += uint64(len(l.ms))
		q.mu.Unlock()
	}
	for id, seq := range b.producers {
		s.dedup.restore(id, seq)
	}
}

// readMessage reads a message's MESSAGE frame back from the store.
func (s *Server) readMessage(m *message) (*frame.Frame, error) {
	data, err := s.st.Read(m.id)
	if err != nil {
		return nil, err
	}
	return parseMessage(m, data)
}

// parseMessage parses a message's MESSAGE frame as the store keeps it.
func parseMessage(m *message, data []byte) (*frame.Frame, error) {
	if f := parseStored(data); f != nil {
		return f, nil
	}
	// A line is never longer than the record, so the reader's buffer is
	// the record's size, not the 1 MiB an unlimited line would take.
	lim := frame.Limits{MaxBody: -1, MaxHeaders: -1, MaxLine: len(data) + 1}
	f, err := frame.NewReaderSize(bytes.NewReader(data), lim, len(data)+16).Read()
	if err != nil {
		return nil, fmt.Errorf("%w: message %s: stored frame: %v", store.ErrCorrupt, m.id, err)
	}
	return f, nil
}

// parseStored parses what putRecord stored, as frame.Reader would, in one
// pass over data: the header keys and values share one string, and the
// body is data's own bytes, where the reader would copy both into
// allocations of their own for every delivery of a backlog read back from
// the store. It returns nil for anything it does not take, which the reader
// then parses (or rejects).
func parseStored(data []byte) *frame.Frame {
	end := bytes.Index(data, []byte("\n\n"))
	if end < 0 || bytes.IndexByte(data[:end], '\r') >= 0 {
		return nil // the reader drops a CR before LF; putRecord writes none
	}
	cmd, lines, _ := bytes.Cut(data[:end+1], []byte("\n"))
	if string(cmd) != frame.MESSAGE {
		return nil
	}
	// Unescape every key and value into buf, noting where each ends.
	buf := make([]byte, 0, len(lines))
	var endsBuf [32]int
	ends := endsBuf[:0]
	length := -1
	for len(lines) > 0 {
		var line []byte
		line, lines, _ = bytes.Cut(lines, []byte("\n"))
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return nil
		}
		kAt := len(buf)
		if buf, ok = unescapeHeader(buf, k); !ok {
			return nil
		}
		ends = append(ends, len(buf))
		vAt := len(buf)
		if buf, ok = unescapeHeader(buf, v); !ok {
			return nil
		}
		ends = append(ends, len(buf))
		if length < 0 && string(buf[kAt:vAt]) == "content-length" {
			n, err := strconv.Atoi(string(buf[vAt:]))
			if err != nil || n < 0 {
				return nil
			}
			length = n
		}
	}
	body := data[end+2:]
	if length < 0 || len(body) != length+1 || body[length] != 0 {
		return nil
	}
	s := string(buf)
	// The body is copied: data is often a slice of a read shared by the
	// neighbouring records (journal.ReadMany), which a body kept for a
	// later delivery would hold in memory, uncounted, whole.
	f := &frame.Frame{Command: frame.MESSAGE, Headers: make([]frame.Header, len(ends)/2), Body: bytes.Clone(body[:length])}
	at := 0
	for i := range f.Headers {
		k, v := ends[2*i], ends[2*i+1]
		f.Headers[i] = frame.Header{Key: s[at:k], Value: s[k:v]}
		at = v
	}
	return f
}

// unescapeHeader appends b to dst with STOMP 1.2's header escapes decoded
// ("Value Encoding"); ok is false for an escape 1.2 does not define.
func unescapeHeader(dst, b []byte) ([]byte, bool) {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		if i++; i == len(b) {
			return dst, false
		}
		switch b[i] {
		case 'n':
			dst = append(dst, '\n')
		case 'c':
			dst = append(dst, ':')
		case '\\':
			dst = append(dst, '\\')
		case 'r':
			dst = append(dst, '\r')
		default:
			return dst, false
		}
	}
	return dst, true
}

// damageReport is one message whose body the store could not give back.
type damageReport struct {
	ID    string    `json:"id"`
	Queue string    `json:"queue"`
	Error string    `json:"error"`
	At    time.Time `json:"at"`
}

// maxDamageReports bounds the reports /status keeps (the most recent).
const maxDamageReports = 20

// damaged reports a message of queue dest dropped because its body could
// not be read.
func (s *Server) damaged(m *message, dest string, err error) {
	s.log.WithFields(logrus.Fields{"id": m.id, "queue": dest}).WithError(err).
		Error("stored message cannot be read back; it is not delivered and stays in the store")
	s.metrics.damaged.Inc()
	s.dmgMu.Lock()
	defer s.dmgMu.Unlock()
	s.damage = append(s.damage, damageReport{ID: m.id, Queue: dest, Error: err.Error(), At: time.Now()})
	if len(s.damage) > maxDamageReports {
		s.damage = s.damage[len(s.damage)-maxDamageReports:]
	}
}
