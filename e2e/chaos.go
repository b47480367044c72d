package e2e

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// ScheduleOptions is a chaos run.
type ScheduleOptions struct {
	// Faults are injected in this order, each run to recovery before the
	// next.
	Faults []FaultKind
	// Pace is the mean wait between one fault's recovery and the next
	// fault; each wait is drawn from [Pace/2, 3·Pace/2) so faults land at
	// different points of the workload. Zero means 1s.
	Pace time.Duration
	// Warmup is how long the workload runs before the first fault; zero
	// means Pace.
	Warmup time.Duration
	// Freeze is how long sigstop-master keeps the master stopped at least
	// (it stays stopped until a slave took over by lease in any case);
	// zero means 3s.
	Freeze time.Duration
	// Drain bounds the wait, after the producers stop, for every receipted
	// message to be delivered; zero means 60s.
	Drain time.Duration
	// Seed drives every random choice (which slave, each pause), so a run
	// is reproducible from it.
	Seed uint64
}

func (o *ScheduleOptions) defaults() {
	if o.Pace == 0 {
		o.Pace = time.Second
	}
	if o.Warmup == 0 {
		o.Warmup = o.Pace
	}
	if o.Freeze == 0 {
		o.Freeze = 3 * time.Second
	}
	if o.Drain == 0 {
		o.Drain = 60 * time.Second
	}
}

// RandomSchedule draws n faults from mix, reproducibly from seed.
func RandomSchedule(n int, mix []FaultKind, seed uint64) []FaultKind {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]FaultKind, n)
	for i := range out {
		out[i] = mix[rng.IntN(len(mix))]
	}
	return out
}

// Chaos runs a schedule of faults against a cluster under a workload.
type Chaos struct {
	c      *Cluster
	w      *Workload
	opts   ScheduleOptions
	rng    *rand.Rand
	faults []*Fault
}

// Run injects every fault of the schedule, each to recovery, then stops the
// producers, drains, stops the consumers and returns the report. logf
// (t.Logf) hears about each fault as it recovers. The error is the first
// fault that did not recover, or a failure to stop the clients; the report
// is complete either way, so that the verdicts can still be read.
func Run(c *Cluster, w *Workload, opts ScheduleOptions, logf func(string, ...any)) (*Report, error) {
	opts.defaults()
	ch := &Chaos{c: c, w: w, opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, opts.Seed+1))}
	start := time.Now()
	var runErr error
	pause(ch.jitter(opts.Warmup), nil) // the workload gets going: deliberate pacing
	for i, kind := range opts.Faults {
		f, err := ch.inject(kind)
		if f != nil {
			ch.faults = append(ch.faults, f)
		}
		if err != nil {
			runErr = err
			break
		}
		logf("fault %d/%d %-15s on %-10s takeover %-8v rerouted %-8v no-master %-8v restarted %v",
			i+1, len(opts.Faults), kind, f.Target, ms(f.Takeover), ms(f.Rerouted), ms(f.NoMaster), ms(f.Restarted))
		if i < len(opts.Faults)-1 {
			pause(ch.jitter(opts.Pace), nil) // deliberate pacing between faults
		}
	}
	faultsDone := time.Now()
	prodErr := w.StopProducers()
	missing := w.Drain(opts.Drain)
	drained := time.Since(faultsDone)
	consErr := w.StopConsumers()
	rep := ch.report(missing)
	rep.Took, rep.Drain = time.Since(start), drained
	rep.Health = c.Healthz()
	rep.Problems = c.Problems()
	for _, f := range c.logs.races() {
		rep.Problems = append(rep.Problems, "race detector report in "+f)
	}
	rep.SidecarStarts, rep.BrokerStarts = c.sidecarStarts, 0
	for _, b := range c.Brokers {
		rep.BrokerStarts += b.starts
	}
	if runErr == nil {
		runErr = prodErr
	}
	if runErr == nil {
		runErr = consErr
	}
	return rep, runErr
}

func (ch *Chaos) jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(ch.rng.Int64N(int64(d)))
}

func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// Report is a run's verdicts and figures.
type Report struct {
	Seed   uint64
	Faults []*Fault
	Took   time.Duration
	Drain  time.Duration // from the last fault's recovery to the end of the drain

	// Sent counts SENDs attempted; Receipted those with a RECEIPT;
	// Delivered distinct seqs delivered; Deliveries MESSAGE frames.
	Sent, Receipted, Delivered, Deliveries int
	// Lost are receipted seqs never delivered: must be empty.
	Lost []string
	// Duplicates counts deliveries beyond the first of a seq, over
	// DuplicatedSeqs distinct seqs, UnflaggedDuplicates of them without
	// redelivered:true; Redelivered counts deliveries flagged
	// redelivered:true.
	Duplicates, DuplicatedSeqs, UnflaggedDuplicates, Redelivered int
	// Phantoms are seqs delivered but never sent: must be empty.
	Phantoms []string
	// InDoubtDelivered counts SENDs without a RECEIPT whose message was
	// delivered anyway (the broker had it when the connection died):
	// allowed, shown for interest.
	InDoubtDelivered int
	// ByConsumer counts deliveries per consumer, ReceiptedBy RECEIPTs per
	// producer, Reconnects connections per client after its first.
	ByConsumer, ReceiptedBy, Reconnects map[string]int

	// Broken lists the unasked ends of connections of clients that never
	// reconnect (WorkloadOptions.NoReconnect): must be empty.
	Broken []string

	// Health is the sidecar's and every broker's /healthz at the end;
	// Problems are processes that ended without being told to, and logs
	// with a race detector report (-race binaries). Both must be empty.
	Health   error
	Problems []string
	// SidecarStarts and BrokerStarts count process starts, restarts
	// included.
	SidecarStarts, BrokerStarts int
}

// report computes the verdicts and each fault's gap.
func (ch *Chaos) report(missing []string) *Report {
	r := ch.w.rec
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := &Report{
		Seed:       ch.opts.Seed,
		Faults:     ch.faults,
		Sent:       len(r.sentAt),
		Receipted:  len(r.receiptAt),
		Delivered:  len(r.delivered),
		Deliveries: r.deliveries,
		Lost:       missing,

		Redelivered:         r.redelivered,
		UnflaggedDuplicates: r.unflaggedDups,
		ByConsumer:          maps.Clone(r.byConsumer),
		ReceiptedBy:         maps.Clone(r.byProducer),
		Reconnects:          map[string]int{},
		Broken:              slices.Clone(r.broken),
	}
	for k, v := range r.reconnects {
		rep.Reconnects[k] = v - 1
	}
	for seq, n := range r.delivered {
		if n > 1 {
			rep.Duplicates += n - 1
			rep.DuplicatedSeqs++
		}
		if _, ok := r.sentAt[seq]; !ok {
			rep.Phantoms = append(rep.Phantoms, seq)
		} else if _, ok := r.receiptAt[seq]; !ok {
			rep.InDoubtDelivered++
		}
	}
	slices.Sort(rep.Phantoms)

	ts := make([]int64, 0, len(r.receiptAt))
	for _, t := range r.receiptAt {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	for _, f := range ch.faults {
		if !f.Recovered.IsZero() {
			f.Gap = gap(ts, f.At.UnixNano(), f.Recovered.UnixNano())
			f.Pause = longestWait(r.sentAt, r.receiptAt, f.At.UnixNano(), f.Recovered.UnixNano())
		}
	}
	return rep
}

// gap is the longest interval between consecutive RECEIPTs (ts sorted) from
// the last one before at to the first one at or after recovered. It is not
// simply "last before to first after the fault": a SIGTERMed master still
// returns RECEIPTs while it drains, and the outage clients see comes after
// those.
func gap(ts []int64, at, recovered int64) time.Duration {
	i := sort.Search(len(ts), func(i int) bool { return ts[i] >= at }) - 1
	prev := at
	if i >= 0 {
		prev = ts[i]
	}
	var longest int64
	for k := i + 1; k < len(ts); k++ {
		longest = max(longest, ts[k]-prev)
		prev = ts[k]
		if ts[k] >= recovered {
			break
		}
	}
	return time.Duration(longest)
}

// longestWait is the longest SEND-to-RECEIPT wait of a SEND outstanding at
// some point in [at, recovered]: sent at or before recovered, receipted at
// or after at. A SEND with no RECEIPT does not count (its wait has no end;
// the verdicts deal with it).
func longestWait(sentAt, receiptAt map[string]int64, at, recovered int64) time.Duration {
	var longest int64
	for seq, r := range receiptAt {
		s, ok := sentAt[seq]
		if !ok || s > recovered || r < at {
			continue
		}
		longest = max(longest, r-s)
	}
	return time.Duration(longest)
}

// KindStats are one fault kind's figures over a run.
type KindStats struct {
	Kind                     FaultKind
	N                        int
	GapP50, GapP99, GapMax   time.Duration
	Takeover, Rerouted       time.Duration // max
	NoMasterMax, RestartedMx time.Duration
}

// ByKind summarizes the faults per kind, in report order (AllFaults, then
// PostgresFaults).
func (rep *Report) ByKind() []KindStats {
	var out []KindStats
	for _, k := range reportOrder {
		var gaps []time.Duration
		s := KindStats{Kind: k}
		for _, f := range rep.Faults {
			if f.Kind != k || f.Recovered.IsZero() {
				continue
			}
			s.N++
			gaps = append(gaps, f.Gap)
			s.Takeover = max(s.Takeover, f.Takeover)
			s.Rerouted = max(s.Rerouted, f.Rerouted)
			s.NoMasterMax = max(s.NoMasterMax, f.NoMaster)
			s.RestartedMx = max(s.RestartedMx, f.Restarted)
		}
		if s.N == 0 {
			continue
		}
		slices.Sort(gaps)
		s.GapP50, s.GapP99, s.GapMax = percentile(gaps, 50), percentile(gaps, 99), gaps[len(gaps)-1]
		out = append(out, s)
	}
	return out
}

// percentile is the nearest-rank percentile of sorted xs.
func percentile(xs []time.Duration, p int) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	rank := (p*len(xs) + 99) / 100
	return xs[max(rank, 1)-1]
}

// Targets are the failover gaps the product aims for with the default
// configuration: p99 per fault kind.
var Targets = map[FaultKind]time.Duration{
	Kill9Master:   500 * time.Millisecond,
	SigtermMaster: time.Second,
}

// String renders the report for t.Log and make chaos.
func (rep *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos report (seed %d): %d faults in %v\n", rep.Seed, len(rep.Faults), ms(rep.Took))
	kinds := map[FaultKind]int{}
	for _, f := range rep.Faults {
		kinds[f.Kind]++
	}
	var parts []string
	for _, k := range reportOrder {
		if kinds[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, kinds[k]))
		}
	}
	fmt.Fprintf(&b, "  faults:     %s\n", strings.Join(parts, ", "))
	fmt.Fprintf(&b, "  messages:   sent %d, receipted %d, delivered %d (%d deliveries, %d flagged redelivered)\n",
		rep.Sent, rep.Receipted, rep.Delivered, rep.Deliveries, rep.Redelivered)
	fmt.Fprintf(&b, "  lost:       %d   (receipted, never delivered; must be 0)\n", len(rep.Lost))
	fmt.Fprintf(&b, "  phantom:    %d   (delivered, never sent; must be 0)\n", len(rep.Phantoms))
	fmt.Fprintf(&b, "  duplicated: %d deliveries of %d messages (%d without redelivered:true); in-doubt SENDs delivered anyway: %d\n",
		rep.Duplicates, rep.DuplicatedSeqs, rep.UnflaggedDuplicates, rep.InDoubtDelivered)
	fmt.Fprintf(&b, "  producers:  %s (receipted)\n", mapString(rep.ReceiptedBy))
	fmt.Fprintf(&b, "  consumers:  %s (deliveries)\n", mapString(rep.ByConsumer))
	fmt.Fprintf(&b, "  reconnects: %s\n", mapString(rep.Reconnects))
	fmt.Fprintf(&b, "  processes:  sidecar started %d times (restarts are faults), brokers %d; problems: %d; healthz at the end: %v\n",
		rep.SidecarStarts, rep.BrokerStarts, len(rep.Problems), errString(rep.Health))
	fmt.Fprintf(&b, "  drain:      %v after the last fault\n", ms(rep.Drain))
	fmt.Fprintf(&b, "  %-15s %4s %9s %9s %9s %10s %10s %10s %10s\n", "client gap", "n", "p50", "p99", "max", "takeover", "rerouted", "no-master", "restart")
	for _, s := range rep.ByKind() {
		fmt.Fprintf(&b, "  %-15s %4d %9v %9v %9v %10v %10v %10v %10v", s.Kind, s.N, ms(s.GapP50), ms(s.GapP99), ms(s.GapMax),
			ms(s.Takeover), ms(s.Rerouted), ms(s.NoMasterMax), ms(s.RestartedMx))
		if target, ok := Targets[s.Kind]; ok {
			verdict := "met"
			if s.GapP99 >= target {
				verdict = "MISSED"
			}
			fmt.Fprintf(&b, "   target p99 < %v: %s", target, verdict)
		}
		b.WriteString("\n")
	}
	b.WriteString("  (takeover, rerouted, no-master and restart are maxima; for sigstop-master they are from SIGSTOP)\n")
	if len(rep.Lost) > 0 {
		fmt.Fprintf(&b, "  LOST: %s\n", head(rep.Lost, 50))
	}
	if len(rep.Phantoms) > 0 {
		fmt.Fprintf(&b, "  PHANTOM: %s\n", head(rep.Phantoms, 50))
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(&b, "  PROBLEM: %s\n", p)
	}
	for _, p := range rep.Broken {
		fmt.Fprintf(&b, "  BROKEN: %s\n", p)
	}
	return b.String()
}

func mapString(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func errString(err error) string {
	if err == nil {
		return "all ok"
	}
	return err.Error()
}

func head(xs []string, n int) string {
	if len(xs) <= n {
		return strings.Join(xs, " ")
	}
	return strings.Join(xs[:n], " ") + fmt.Sprintf(" … (%d more)", len(xs)-n)
}

// Verdict returns what must hold after any run, whatever the timing: nothing
// receipted lost, nothing delivered that was never sent, no process ended
// on its own, every survivor healthy.
func (rep *Report) Verdict() error {
	var errs []string
	if n := len(rep.Lost); n > 0 {
		errs = append(errs, fmt.Sprintf("%d receipted messages lost: %s", n, head(rep.Lost, 20)))
	}
	if n := len(rep.Phantoms); n > 0 {
		errs = append(errs, fmt.Sprintf("%d messages delivered that were never sent: %s", n, head(rep.Phantoms, 20)))
	}
	if len(rep.Problems) > 0 {
		errs = append(errs, "process problems: "+strings.Join(rep.Problems, "; "))
	}
	if len(rep.Broken) > 0 {
		errs = append(errs, "connections of clients that never reconnect ended: "+head(rep.Broken, 20))
	}
	if rep.Health != nil {
		errs = append(errs, "healthz: "+rep.Health.Error())
	}
	if rep.Receipted == 0 {
		errs = append(errs, "no message was receipted at all")
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(errs, "\n"))
}
