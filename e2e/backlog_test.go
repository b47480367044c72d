package e2e

import (
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"handover/stompclient"
)

// backlogKill is one kill of the backlog case and what was seen of it.
type backlogKill struct {
	N      int
	Target string
	// Depth and Live are the old master's queue depth and journal live
	// count read just before the kill; Standby the slaves' indexed
	// messages (the smallest) in the check before it.
	Depth, Live, Standby int
	Takeover
	// Recovery is what the new master logged of its promotion; After is
	// its queue depth once serving.
	Recovery
	After int
	// Producing is from the kill to a producer's first CONNECTED.
	Producing time.Duration
}

// TestChaosBacklog grows a backlog with no consumer while it kills the
// master again and again (issue 13): each takeover must read only the tail
// the warm standby had not yet read, so it must not grow with the backlog.
// Then a consumer drains the queue: nothing receipted may be lost, nothing
// unsent delivered.
//
// Timing is held only to a sanity bound (-race binaries on shared cores);
// the first and last takeover are logged with their backlogs so that their
// flatness shows, and make bench has the targets.
func TestChaosBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and grows a backlog of tens of thousands of messages through five kills")
	}
	const (
		kills     = 5
		queue     = "/queue/backlog"
		producers = 2
		txSize    = 100
		// rate caps each producer (messages/s), so that the backlog is
		// tens of thousands of messages on a fast machine too; -race
		// brokers on two cores take about that much.
		rate = 3000
		// warmup is the backlog before the first kill, step how much it
		// must grow before each further one.
		warmup, step = 4000, 6000
		// minInterval paces the kills: at least this long after one
		// recovery before the next kill.
		minInterval = time.Second
		// takeoverBound is checkSanity's bound.
		takeoverBound = 10 * time.Second
		// drainBound is a sanity bound on the drain: -race brokers on
		// two busy cores drain this backlog, read back from the journal,
		// in well under half of it.
		drainBound = 60 * time.Second
	)
	start := time.Now()
	c := StartCluster(t, ClusterOptions{Brokers: 2})
	t.Logf("logs in %s", c.LogDir())
	rec := newRecorder()
	prod := StartBacklogProducers(c, rec, BacklogProducerOptions{Producers: producers, Queue: queue, TxSize: txSize, Rate: rate})
	// A slave may have indexed one batch the master has not counted yet
	// (it counts a batch once it is durable; a reader sees it written).
	slack := producers * txSize

	var killsSeen []backlogKill
	target := warmup
	var lastRecovery time.Time
	for i := range kills {
		// The backlog grows to its target; kills are paced.
		m, err := waitBacklog(c, queue, target, 60*time.Second)
		if err != nil {
			t.Fatalf("kill %d: %v; producer errors: %q", i+1, err, prod.Errors())
		}
		if d := minInterval - time.Since(lastRecovery); d > 0 {
			pause(d, nil) // deliberate pacing between kills
		}
		// Every slave's standby follows the journal: it has indexed at
		// least what the master had before we looked.
		sbMin, err := checkStandbys(t, c, m, slack, 20*time.Second)
		if err != nil {
			t.Fatalf("kill %d: %v", i+1, err)
		}
		k := backlogKill{N: i + 1, Target: m.Name, Standby: sbMin}
		mst, err := c.BacklogStatus(m)
		if err != nil {
			t.Fatalf("kill %d: master %s: %v", i+1, m.Name, err)
		}
		k.Depth, k.Live = mst.Depth(queue), mst.Live()
		_, receiptedBefore := countRecorder(rec)

		m.proc.expected.Store(true)
		at := time.Now()
		if err := m.proc.signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		k.Takeover, err = c.probeTakeover(c.Slaves(m), at, 2*takeoverBound)
		if err != nil {
			t.Fatalf("kill %d of %s (backlog %d): %v", i+1, m.Name, k.Depth, err)
		}
		nm, nst, err := c.waitMaster(m, takeoverTimeout)
		if err != nil {
			t.Fatalf("kill %d: no takeover: %v", i+1, err)
		}
		if nst.Epoch <= mst.Epoch {
			t.Errorf("kill %d: %s took over with epoch %d, not above %s's %d", i+1, nm.Name, nst.Epoch, m.Name, mst.Epoch)
		}
		if k.Ready > takeoverBound || k.Connected > takeoverBound {
			t.Errorf("kill %d: takeover took %v to /readyz, %v to CONNECTED, with a backlog of %d: bound %v",
				i+1, ms(k.Ready), ms(k.Connected), k.Depth, takeoverBound)
		}
		lockAfter := "?" // the log lines are for the record only
		if r, ok := c.lastRecovery(nm); ok {
			k.Recovery, lockAfter = r, r.Locked.Sub(at).Round(time.Millisecond).String()
		}
		// Nothing is consumed: the new master's queue holds at least every
		// message receipted before the kill, and no more than were sent.
		nms, err := c.BacklogStatus(nm)
		if err != nil {
			t.Fatalf("kill %d: new master %s: %v", i+1, nm.Name, err)
		}
		k.After = nms.Depth(queue)
		sent, _ := countRecorder(rec)
		if k.After < receiptedBefore || k.After > sent {
			t.Errorf("kill %d: new master %s has %d queued; %d were receipted before the kill and %d sent so far",
				i+1, nm.Name, k.After, receiptedBefore, sent)
		}
		// The killed broker comes back as a slave, as a supervisor
		// would restart it.
		if _, err := m.proc.wait(exitTimeout); err != nil {
			t.Fatal(err)
		}
		if err := c.startBroker(m); err != nil {
			t.Fatal(err)
		}
		if err := c.waitRole(m, "slave", restartTimeout); err != nil {
			t.Fatalf("kill %d: restarted %s: %v", i+1, m.Name, err)
		}
		lastRecovery = time.Now()
		if got, ok := prod.ConnectedSince(at); ok {
			k.Producing = got.Sub(at)
		}
		t.Logf("kill %d/%d of %s: backlog %d (journal live %d, standby %d): /readyz %v (%s), CONNECTED %v, producers back %v; "+
			"new master %s: lock after %s, promotion %s, %d messages, depth %d",
			k.N, kills, k.Target, k.Depth, k.Live, k.Standby, ms(k.Ready), k.ReadyBroker, ms(k.Connected), ms(k.Producing),
			nm.Name, lockAfter, k.Took, k.Messages, k.After)
		killsSeen = append(killsSeen, k)
		target = k.Depth + step
	}
	// The producers work after the last takeover: the backlog grows
	// beyond where it was.
	if _, err := waitBacklog(c, queue, killsSeen[len(killsSeen)-1].After+2*producers*txSize, 30*time.Second); err != nil {
		t.Fatalf("after the last kill: %v; producer errors: %q", err, prod.Errors())
	}
	prod.Stop()
	produced := time.Since(start)
	commits, inDoubt := prod.Commits()

	first, last := killsSeen[0], killsSeen[len(killsSeen)-1]
	t.Logf("takeover first vs last: backlog %d → %d: /readyz %v → %v, CONNECTED %v → %v, promotion %s → %s",
		first.Depth, last.Depth, ms(first.Ready), ms(last.Ready), ms(first.Connected), ms(last.Connected), first.Took, last.Took)

	// The cluster is whole: one master, the other a slave, the sidecar
	// routing to the master. The consumer goes through the sidecar.
	if err := c.Check(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	m, _, err := c.Master()
	if err != nil {
		t.Fatal(err)
	}
	mst, err := c.BacklogStatus(m)
	if err != nil {
		t.Fatal(err)
	}
	if mst.Journal == nil {
		t.Fatalf("master %s's /status has no journal", m.Name)
	}
	t.Logf("before the drain: %s has %d queued, journal %d live in %d segments (%d MB), memory cached %d KB pinned %d KB of %d MB",
		m.Name, mst.Depth(queue), mst.Live(), mst.Journal.Segments, mst.Journal.Bytes>>20, mst.Memory.Cached>>10, mst.Memory.Pinned>>10, mst.Memory.Limit>>20)

	drainStart := time.Now()
	drained, drainErr := drainBacklog(c, rec, m, queue, drainBound)
	drainTook := time.Since(drainStart)
	if drainErr != nil {
		t.Errorf("drain of %d messages: %v (%.0f deliveries/s)", mst.Depth(queue), drainErr, float64(drained)/drainTook.Seconds())
	}

	v := verdicts(rec)
	t.Logf("sent %d, receipted %d (%d COMMITs, %d transactions in doubt), delivered %d distinct in %d deliveries (%d flagged redelivered) in %v (%.0f/s); "+
		"duplicates %d of %d messages (%d unflagged), in-doubt delivered %d; run %v (producing %v)",
		v.sent, v.receipted, commits, inDoubt, v.delivered, drained, v.redelivered, ms(drainTook), float64(drained)/drainTook.Seconds(),
		v.duplicates, v.duplicatedSeqs, v.unflagged, v.inDoubtDelivered, ms(time.Since(start)), ms(produced))
	switch {
	case len(v.lost) > 0 && drainErr != nil:
		t.Errorf("%d receipted messages not delivered when the drain gave up, e.g. %v", len(v.lost), v.lost[:min(len(v.lost), 10)])
	case len(v.lost) > 0:
		t.Errorf("lost %d receipted messages: the queue is empty and they were never delivered, e.g. %v", len(v.lost), v.lost[:min(len(v.lost), 10)])
	}
	if len(v.phantoms) > 0 {
		t.Errorf("%d phantom messages (delivered, never sent), e.g. %v", len(v.phantoms), v.phantoms[:min(len(v.phantoms), 10)])
	}
	if v.receipted < warmup+kills*step/2 {
		t.Errorf("only %d messages receipted: the backlog did not grow as planned", v.receipted)
	}
	if drainErr == nil {
		// The acknowledgements are journaled and followed too: the
		// master's journal and the slave's standby empty out.
		if err := poll(20*time.Second, func() error {
			for _, b := range c.Brokers {
				st, err := c.BacklogStatus(b)
				switch {
				case err != nil:
					return err
				case b == m && st.Live() != 0:
					return fmt.Errorf("master %s's journal still has %d live after the drain", b.Name, st.Live())
				case b != m && (st.Standby == nil || st.Standby.Messages != 0):
					return fmt.Errorf("slave %s's standby still indexes messages after the drain: %+v", b.Name, st.Standby)
				}
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}
	for _, b := range c.Brokers {
		st, err := c.BacklogStatus(b)
		if err != nil {
			t.Errorf("%s: %v", b.Name, err)
			continue
		}
		if len(st.Damaged) > 0 {
			t.Errorf("%s reports damaged messages: %+v", b.Name, st.Damaged)
		}
	}
	if err := c.Healthz(); err != nil {
		t.Error(err)
	}
	if p := c.Problems(); len(p) > 0 {
		t.Errorf("processes ended on their own: %v", p)
	}
	if r := c.logs.races(); len(r) > 0 {
		t.Errorf("race detector reports in %v", r)
	}
}

// waitBacklog waits until the master's queue holds at least n messages and
// returns the master.
func waitBacklog(c *Cluster, queue string, n int, timeout time.Duration) (*Broker, error) {
	var m *Broker
	err := poll(timeout, func() error {
		if p := c.Problems(); len(p) > 0 {
			return stop(fmt.Errorf("%s", strings.Join(p, "; ")))
		}
		var err error
		if m, _, err = c.Master(); err != nil {
			return err
		}
		st, err := c.BacklogStatus(m)
		if err != nil {
			return err
		}
		if d := st.Depth(queue); d < n {
			return fmt.Errorf("%s has %d queued, want %d", m.Name, d, n)
		}
		return nil
	})
	return m, err
}

// checkStandbys waits until every slave's standby has indexed at least the
// live messages the master reported before it looked, and holds no more
// than the master reports afterwards (plus slack: a batch written but not
// yet counted). It returns the smallest standby count seen.
func checkStandbys(t *testing.T, c *Cluster, m *Broker, slack int, timeout time.Duration) (int, error) {
	t.Helper()
	smallest := -1
	for _, s := range c.Slaves(m) {
		before, err := c.BacklogStatus(m)
		if err != nil {
			return 0, fmt.Errorf("master %s: %w", m.Name, err)
		}
		var sst BacklogStatus
		err = poll(timeout, func() error {
			var err error
			if sst, err = c.BacklogStatus(s); err != nil {
				return err
			}
			sb := sst.Standby
			switch {
			case sst.Role != "slave":
				return stop(fmt.Errorf("%s is %s, want slave", s.Name, sst.Role))
			case sb == nil:
				return stop(fmt.Errorf("slave %s has no standby in /status", s.Name))
			case !sb.Following || sb.Error != "":
				return fmt.Errorf("slave %s's standby is not following: %+v", s.Name, *sb)
			case sb.Messages < before.Live():
				return fmt.Errorf("slave %s's standby has %d messages, the master had %d live (position %s, behind %d records, age %.2fs)",
					s.Name, sb.Messages, before.Live(), sb.Position, sb.BehindRecords, sb.AgeSeconds)
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("the standby does not follow: %w", err)
		}
		after, err := c.BacklogStatus(m)
		if err != nil {
			return 0, fmt.Errorf("master %s: %w", m.Name, err)
		}
		sb := sst.Standby
		if sb.Messages > after.Live()+slack {
			return 0, fmt.Errorf("slave %s's standby has %d messages, more than the master's %d live (+%d)", s.Name, sb.Messages, after.Live(), slack)
		}
		t.Logf("standby %s: %d messages (%d MB), master %d→%d live, last catch-up %.2fs ago read %d records, position %s, %d records read in all",
			s.Name, sb.Messages, sb.Bytes>>20, before.Live(), after.Live(), sb.AgeSeconds, sb.BehindRecords, sb.Position, sb.TotalRecords)
		if smallest < 0 || sb.Messages < smallest {
			smallest = sb.Messages
		}
	}
	return smallest, nil
}

// countRecorder returns how many SENDs were attempted and receipted.
func countRecorder(r *Recorder) (sent, receipted int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sentAt), len(r.receiptAt)
}

// drainBacklog consumes queue through the sidecar with a client-individual
// subscription, an ACK per MESSAGE, until master m reports the queue empty:
// every message it held, receipted, in doubt or phantom, was delivered and
// acknowledged (a delivery is recorded before its ACK is sent). It returns
// the deliveries.
func drainBacklog(c *Cluster, rec *Recorder, m *Broker, queue string, timeout time.Duration) (int, error) {
	conn, err := stompclient.Dial(c.t.Context(), c.Listen, stompclient.Options{ConnectTimeout: connectTimeout})
	if err != nil {
		return 0, fmt.Errorf("consumer: %w", err)
	}
	defer conn.Close()
	sub, err := conn.Subscribe(queue, stompclient.AckClientIndividual)
	if err != nil {
		return 0, fmt.Errorf("consumer: SUBSCRIBE: %w", err)
	}
	var deliveries atomic.Int64
	var consErr error
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for f := range sub.C() {
			rec.deliver("backlog-consumer", f.Value("seq"), f.Value("redelivered") == "true", time.Now().UnixNano())
			deliveries.Add(1)
			if err := conn.Ack(f); err != nil {
				consErr = fmt.Errorf("consumer: ACK: %w", err)
				return
			}
		}
		consErr = fmt.Errorf("consumer: the subscription ended: %v", conn.Err())
	}()
	// Polls the master, not the Recorder: its depth counts a message until
	// its ACK, so 0 means every delivery has been recorded.
	err = poll(timeout, func() error {
		if isDone(finished) {
			return stop(consErr)
		}
		st, err := c.BacklogStatus(m)
		if err != nil {
			return err
		}
		if d := st.Depth(queue); d > 0 {
			return fmt.Errorf("%s still has %d queued after %d deliveries", m.Name, d, deliveries.Load())
		}
		return nil
	})
	conn.Close()
	<-finished
	return int(deliveries.Load()), err
}

// backlogVerdicts are the drain's outcome.
type backlogVerdicts struct {
	sent, receipted, delivered, redelivered                 int
	duplicates, duplicatedSeqs, unflagged, inDoubtDelivered int
	lost, phantoms                                          []string
}

func verdicts(r *Recorder) backlogVerdicts {
	lost := r.undelivered()
	r.mu.Lock()
	defer r.mu.Unlock()
	v := backlogVerdicts{sent: len(r.sentAt), receipted: len(r.receiptAt), delivered: len(r.delivered),
		redelivered: r.redelivered, unflagged: r.unflaggedDups, lost: lost}
	for seq, n := range r.delivered {
		if n > 1 {
			v.duplicates += n - 1
			v.duplicatedSeqs++
		}
		if _, ok := r.sentAt[seq]; !ok {
			v.phantoms = append(v.phantoms, seq)
		} else if _, ok := r.receiptAt[seq]; !ok {
			v.inDoubtDelivered++
		}
	}
	return v
}
