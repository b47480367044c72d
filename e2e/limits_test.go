package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// killPoint is where a round of TestChaosLimits kills the master.
type killPoint string

const (
	// killFull: with the disk full and the consumer paused; the new
	// master must refuse producers in its turn.
	killFull killPoint = "full"
	// killDraining: with the consumer draining the full disk, its ACKs
	// in flight.
	killDraining killPoint = "draining"
)

// TestChaosLimits is issue 14's chaos schedule: a disk that fills and
// drains, a consumer that pauses, and a topic subscriber that never reads,
// while the master is killed. Brokers run with a small max_disk; producers
// of receipted persistent messages meet its "disk is full" ERROR (no
// RECEIPT: such a SEND must never be delivered) and back off; ACKs must
// keep working on the full disk, so the consumer, resumed, drains it and
// producers are taken again. Each round:
//
//  1. the consumer pauses; the queue grows until the producers are
//     refused;
//  2. a topic subscriber that never reads is dropped by the master as a
//     slow consumer, while the publisher and a subscriber that reads
//     carry on;
//  3. the master is SIGKILLed with the disk full (killFull), or, after
//     the consumer resumes, while it drains (killDraining);
//  4. the disk drains: the queue falls to a few messages, the journal
//     under max_disk, and producers get RECEIPTs again.
//
// Then the producers stop and the consumer drains the queue: every
// receipted message delivered (lost 0), nothing unsent or refused
// delivered, the journal empty.
func TestChaosLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and fills its disk through three master kills")
	}
	const (
		queue = "/queue/limits"
		topic = "/topic/limits"
		// maxDisk is 8 segments: a few hundred messages of bodySize
		// fill it in about a second at the producers' rate.
		maxDisk     = 2 << 20
		segmentSize = 256 << 10
		bodySize    = 8 << 10
		// maxPending bounds what waits for one connection: the topic
		// subscriber that never reads is dropped past it.
		maxPending = 512 << 10
		topicBody  = 16 << 10
		// producers at rate each: a few times less than a -race
		// consumer drains on two busy cores, so the disk does drain.
		producers = 3
		rate      = 100
		// drainKill is how many deliveries after the resume a
		// killDraining round waits for before the kill.
		drainKill = 64
		// Sanity bounds on each step, for -race brokers on two busy
		// cores; a step normally takes a second or two.
		fillBound  = 30 * time.Second
		topicBound = 30 * time.Second
		drainBound = 30 * time.Second
	)
	schedule := []killPoint{killFull, killDraining, killFull}

	start := time.Now()
	cfg := fmt.Sprintf(`# written by TestChaosLimits
max_disk = %d
segment_size = %d
# no reserve of free space: refusals come from max_disk alone
disk_reserve = -1
max_pending_bytes = %d
`, maxDisk, segmentSize, maxPending)
	c := StartCluster(t, ClusterOptions{Brokers: 2, BrokerConfig: cfg})
	t.Logf("logs in %s", c.LogDir())
	rec := newRecorder()
	cons := StartPausableConsumer(c, rec, "limits-consumer", queue)
	prod := StartDiskProducers(c, rec, DiskProducerOptions{Producers: producers, Queue: queue, BodySize: bodySize, Rate: rate})

	// journal reads the master's journal bytes and queue depth.
	journal := func() (m *Broker, bytes int64, depth int, err error) {
		if m, _, err = c.Master(); err != nil {
			return nil, 0, 0, err
		}
		st, err := c.BacklogStatus(m)
		if err != nil {
			return nil, 0, 0, err
		}
		if st.Journal == nil {
			return nil, 0, 0, fmt.Errorf("master %s's /status has no journal", m.Name)
		}
		return m, st.Journal.Bytes, st.Depth(queue), nil
	}
	var (
		kills []MasterKill
		drops []TopicDrop
	)
	kill := func(round int, m *Broker, st BrokerStatus) MasterKill {
		t.Helper()
		k, err := c.kill9Master(m, st)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		kills = append(kills, k)
		return k
	}
	// capped checks the journal against max_disk: past it Puts are
	// refused, so it overshoots by at most the SENDs in flight when it
	// was reached (and an ACK or two): half a segment is generous.
	capped := func(round int, what string, m *Broker, bytes int64) {
		t.Helper()
		if bytes > maxDisk+segmentSize/2 {
			t.Errorf("round %d: %s: %s's journal is %d bytes, max_disk %d", round, what, m.Name, bytes, maxDisk)
		}
	}
	for i, when := range schedule {
		r := i + 1
		// 1. The consumer pauses and the disk fills: producers are
		// refused, and the journal is at max_disk. (Checked together:
		// the paused consumer's last ACK may let compaction free a
		// segment, which producers then fill again.)
		cons.Pause()
		paused := time.Now()
		var (
			m         *Broker
			fullBytes int64
			fullDepth int
		)
		if err := poll(fillBound, func() error {
			if n := prod.RefusedSince(paused); n == 0 {
				return fmt.Errorf("no SEND refused for a full disk since the consumer paused; producer errors %q", prod.Errors())
			}
			var err error
			if m, fullBytes, fullDepth, err = journal(); err != nil {
				return err
			}
			if fullBytes < maxDisk {
				return fmt.Errorf("producers refused for a full disk, %s's journal at %d bytes, max_disk %d", m.Name, fullBytes, maxDisk)
			}
			return nil
		}); err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		filled := time.Since(paused)
		capped(r, "full", m, fullBytes)

		// 2. A topic subscriber that never reads is dropped.
		drop, err := dropSlowSubscriber(c, m, topic, topicBody, topicBound)
		if err != nil {
			t.Fatalf("round %d: slow topic subscriber on %s: %v", r, m.Name, err)
		}
		drops = append(drops, drop)

		// 3. The master dies with the disk full, or while it drains.
		takenOver := ""
		m, st, err := c.Master()
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		if when == killFull {
			k := kill(r, m, st)
			// The new master holds the limit: the consumer is paused,
			// so nothing frees space, and producers are refused.
			if err := poll(fillBound, func() error {
				if prod.RefusedSince(k.At) == 0 {
					return fmt.Errorf("no SEND refused for a full disk since %s took over", k.To)
				}
				return nil
			}); err != nil {
				t.Fatalf("round %d: %v", r, err)
			}
			first, _ := prod.FirstRefusalSince(k.At)
			accepted := rec.receiptsBetween(k.At.UnixNano(), first.UnixNano())
			nm, b, _, err := journal()
			if err != nil {
				t.Fatalf("round %d: %v", r, err)
			}
			capped(r, "after the takeover", nm, b)
			takenOver = fmt.Sprintf("; killed %s full: %s took over in %v (restarted in %v), took %d SENDs before its first refusal, journal %d KiB",
				k.From, k.To, ms(k.Takeover), ms(k.Restarted), accepted, b>>10)
		}
		delivered := cons.Deliveries()
		midDrain := cons.AfterDeliveries(delivered + drainKill)
		cons.Resume()
		resumed := time.Now()
		if when == killDraining {
			select {
			case <-midDrain:
			case <-time.After(drainBound):
				t.Fatalf("round %d: %d deliveries in %v since the consumer resumed, want %d", r, cons.Deliveries()-delivered, drainBound, drainKill)
			}
			k := kill(r, m, st)
			takenOver = fmt.Sprintf("; killed %s draining after %d of %d queued were delivered: %s took over in %v (restarted in %v)",
				k.From, drainKill, fullDepth, k.To, ms(k.Takeover), ms(k.Restarted))
		}

		// 4. The disk drains and producers are taken again.
		since := time.Now()
		var lowBytes int64
		var lowDepth int
		if err := poll(drainBound, func() error {
			m, b, d, err := journal()
			if err != nil {
				return err
			}
			lowBytes, lowDepth = b, d
			switch {
			case d > max(fullDepth/4, 16):
				return fmt.Errorf("%s's queue holds %d, %d when full", m.Name, d, fullDepth)
			case b >= maxDisk:
				return fmt.Errorf("%s's journal is %d bytes, max_disk %d", m.Name, b, maxDisk)
			case rec.receiptsBetween(since.UnixNano(), time.Now().UnixNano()) == 0:
				return fmt.Errorf("no RECEIPT since the consumer resumed; producer errors %q", prod.Errors())
			}
			return nil
		}); err != nil {
			t.Fatalf("round %d: the disk did not drain: %v", r, err)
		}
		t.Logf("round %d (kill %s): full in %v: %s's journal %d KiB, %d queued; slow topic subscriber dropped after %d KiB in %v (%s), "+
			"the reader got all %d%s; drained in %v: journal %d KiB, %d queued",
			r, when, ms(filled), m.Name, fullBytes>>10, fullDepth, drop.Bytes>>10, ms(drop.Took), drop.how(), drop.Reader,
			takenOver, ms(time.Since(resumed)), lowBytes>>10, lowDepth)
	}

	// The producers stop; the consumer drains the queue to the end.
	prod.Stop()
	cons.Resume()
	drainStart := time.Now()
	var m *Broker
	if err := poll(drainBound, func() error {
		if missing := rec.undelivered(); len(missing) > 0 {
			return fmt.Errorf("%d receipted messages not delivered yet, e.g. %v", len(missing), missing[:min(len(missing), 5)])
		}
		var err error
		if m, _, err = c.Master(); err != nil {
			return err
		}
		st, err := c.BacklogStatus(m)
		switch {
		case err != nil:
			return err
		case st.Depth(queue) != 0:
			return fmt.Errorf("%s still has %d queued", m.Name, st.Depth(queue))
		case st.Live() != 0:
			return fmt.Errorf("%s's journal still has %d live", m.Name, st.Live())
		}
		return nil
	}); err != nil {
		t.Errorf("the final drain: %v", err)
	}
	drained := time.Since(drainStart)
	cons.Stop()

	v := verdicts(rec)
	refused := prod.Refused()
	var refusedDelivered []string
	rec.mu.Lock()
	for _, seq := range refused {
		if rec.delivered[seq] > 0 {
			refusedDelivered = append(refusedDelivered, seq)
		}
	}
	rec.mu.Unlock()
	var dropBytes int64
	for _, d := range drops {
		dropBytes += d.Bytes
	}
	t.Logf("sent %d, receipted %d, refused for a full disk %d, delivered %d distinct (%d flagged redelivered, %d duplicates of %d messages, %d unflagged), in-doubt delivered %d; "+
		"%d master kills, %d slow subscribers dropped (%d KiB published to them); final drain %v; run %v",
		v.sent, v.receipted, len(refused), v.delivered, v.redelivered, v.duplicates, v.duplicatedSeqs, v.unflagged, v.inDoubtDelivered-len(refusedDelivered),
		len(kills), len(drops), dropBytes>>10, ms(drained), ms(time.Since(start)))

	if len(v.lost) > 0 {
		t.Errorf("lost %d receipted messages, e.g. %v", len(v.lost), v.lost[:min(len(v.lost), 10)])
	}
	if len(v.phantoms) > 0 {
		t.Errorf("%d phantom messages (delivered, never sent), e.g. %v", len(v.phantoms), v.phantoms[:min(len(v.phantoms), 10)])
	}
	if len(refusedDelivered) > 0 {
		t.Errorf("%d SENDs refused for a full disk were delivered all the same, e.g. %v", len(refusedDelivered), refusedDelivered[:min(len(refusedDelivered), 10)])
	}
	// Not vacuous: the disk was full, the slow subscribers were dropped,
	// the masters died, and messages went through.
	if len(refused) == 0 {
		t.Error("no SEND was refused for a full disk")
	}
	if len(drops) != len(schedule) || len(kills) != len(schedule) {
		t.Errorf("%d slow subscribers dropped and %d masters killed, want %d each", len(drops), len(kills), len(schedule))
	}
	if v.receipted == 0 || v.delivered == 0 {
		t.Errorf("%d messages receipted and %d delivered", v.receipted, v.delivered)
	}
	if e := cons.ServerErrors(); len(e) > 0 {
		t.Errorf("the consumer got ERROR frames (its ACKs must work on a full disk): %q", e)
	}
	if e := prod.Unexpected(); len(e) > 0 {
		t.Errorf("producers got ERROR frames other than %q: %q", diskFullText, e)
	}
	if err := c.Check(20 * time.Second); err != nil {
		t.Error(err)
	}
	if err := c.Healthz(); err != nil {
		t.Error(err)
	}
	if p := c.Problems(); len(p) > 0 {
		t.Errorf("processes ended on their own: %s", strings.Join(p, "; "))
	}
	if r := c.logs.races(); len(r) > 0 {
		t.Errorf("race detector reports in %v", r)
	}
}
