package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// stompSessionWorkload is clients that never reconnect (one connection
// each for the whole run) behind a sidecar in protocol = "stomp": two Go
// producers and a stomp.py producer, a Go and a stomp.py consumer, each
// consumer on a queue of its own so that a message the new master
// redelivers can only go back to the session that had it.
var stompSessionWorkload = WorkloadOptions{
	Queue:       "/queue/session",
	GoProducers: 2, PyProducers: 1, GoConsumers: 1, PyConsumers: 1,
	Pace:             5 * time.Millisecond,
	NoReconnect:      true,
	QueuePerConsumer: true,
}

// PauseTarget is issue 7's target for the client-visible pause of a resumed
// session: p99 over 100 kills.
const PauseTarget = 300 * time.Millisecond

// runStompSession kills the master kills times (each killed broker comes
// back as a slave) under stompSessionWorkload, and asserts what transparent
// failover promises against brokerd: every client finishes on its first
// connection (it never ended, no ERROR, no RECEIPT missing), lost = 0,
// phantom = 0 and duplicates = 0.
func runStompSession(t *testing.T, kills int, pace time.Duration, seed uint64) *Report {
	t.Helper()
	requirePython(t)
	c := StartCluster(t, ClusterOptions{Protocol: "stomp"})
	w, err := StartWorkload(c, stompSessionWorkload)
	if err != nil {
		t.Fatal(err)
	}
	sopts := ScheduleOptions{Faults: slices.Repeat([]FaultKind{Kill9Master}, kills), Pace: pace, Seed: seed, Drain: 30 * time.Second}
	rep, err := Run(c, w, sopts, t.Logf)
	t.Logf("logs in %s\n%s", c.LogDir(), rep)
	t.Log(pauseSummary(rep))
	if err != nil {
		t.Error(err)
	}
	if err := rep.Verdict(); err != nil {
		t.Error(err)
	}
	if rep.Duplicates != 0 {
		t.Errorf("%d duplicate deliveries of %d messages: against brokerd a resumed session delivers each message once", rep.Duplicates, rep.DuplicatedSeqs)
	}
	for client, n := range rep.Reconnects {
		if n != 0 {
			t.Errorf("%s connected %d times more than once", client, n)
		}
	}
	for _, p := range []string{"go-producer-0", "go-producer-1", "py-producer-0"} {
		if rep.ReceiptedBy[p] == 0 {
			t.Errorf("producer %s got no RECEIPT", p)
		}
	}
	for _, cs := range []string{"go-consumer-0", "py-consumer-0"} {
		if rep.ByConsumer[cs] == 0 {
			t.Errorf("consumer %s got no MESSAGE", cs)
		}
	}
	return rep
}

// pauseSummary renders the per-kill pauses (Fault.Pause: the longest
// RECEIPT wait of a SEND outstanding around the kill) as p50/p99/max.
func pauseSummary(rep *Report) string {
	var ps []time.Duration
	for _, f := range rep.Faults {
		if !f.Recovered.IsZero() {
			ps = append(ps, f.Pause)
		}
	}
	if len(ps) == 0 {
		return "session pause: no recovered kill"
	}
	slices.Sort(ps)
	p99 := percentile(ps, 99)
	verdict := "met"
	if p99 >= PauseTarget {
		verdict = "MISSED"
	}
	return fmt.Sprintf("session pause over %d kills: p50 %v, p99 %v, max %v (target p99 < %v: %s)",
		len(ps), ms(percentile(ps, 50)), ms(p99), ms(ps[len(ps)-1]), PauseTarget, verdict)
}

// TestStompSessionShort is the transparent-failover scenario in go test:
// twenty kill -9s of the master (the count) under clients that never
// reconnect, about 20 s with -race. Timing is only held to a sanity bound
// here (-race binaries); TestStompSessionLong measures it.
func TestStompSessionShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and kills its master twenty times")
	}
	rep := runStompSession(t, 20, 500*time.Millisecond, 7)
	for _, f := range rep.Faults {
		if f.Pause > 10*time.Second {
			t.Errorf("kill %d: a client waited %v for a RECEIPT, sanity bound 10s", f.N, f.Pause)
		}
	}
}

// TestStompSessionLong is the long transparent-failover run, configured by
// the environment:
//
//	CHAOS_STOMP_KILLS  number of kill -9s of the master (required; the figures use 100)
//	CHAOS_SEED         seed of the pauses between kills (default: the clock; printed)
//	CHAOS_PACE         mean pause between kills (default 1s)
//
// Run it without -race for realistic timing:
//
//	CHAOS_STOMP_KILLS=100 go test -count=1 -run '^TestStompSessionLong$' -v -timeout 60m ./e2e/
//
// It asserts the same verdicts as TestStompSessionShort and reports the
// pause p50/p99/max against PauseTarget; the target is reported, and fails
// the test only when CHAOS_STOMP_STRICT is set.
func TestStompSessionLong(t *testing.T) {
	env := os.Getenv("CHAOS_STOMP_KILLS")
	if env == "" {
		t.Skip("set CHAOS_STOMP_KILLS to run the long transparent-failover schedule")
	}
	kills, err := strconv.Atoi(env)
	if err != nil || kills <= 0 {
		t.Fatalf("CHAOS_STOMP_KILLS=%q: want a positive number", env)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", s, err)
		}
	}
	pace := time.Second
	if s := os.Getenv("CHAOS_PACE"); s != "" {
		if pace, err = time.ParseDuration(s); err != nil || pace <= 0 {
			t.Fatalf("CHAOS_PACE=%q: want a positive duration", s)
		}
	}
	fmt.Printf("stomp session chaos: %d kill -9s of the master, seed %d (reproduce with CHAOS_SEED=%d)\n", kills, seed, seed)
	rep := runStompSession(t, kills, pace, seed)
	if os.Getenv("CHAOS_STOMP_STRICT") != "" {
		var ps []time.Duration
		for _, f := range rep.Faults {
			ps = append(ps, f.Pause)
		}
		slices.Sort(ps)
		if p99 := percentile(ps, 99); p99 >= PauseTarget {
			t.Errorf("session pause p99 %v, target < %v", ms(p99), PauseTarget)
		}
	}
}
