// Takeover with a backlog (issue 13): how long a slave takes to serve after
// `kill -9` of its master when the master had a large backlog of persistent
// messages, what the backlog costs in memory, and how fast it drains.
//
// BenchmarkTakeoverBacklog runs, for each backlog size (BACKLOG_SIZES,
// default "100000,1000000") × layout (one queue; spread over 1,000 queues)
// × store (the journal on a shared data directory; PostgreSQL, a throwaway
// server from internal/pgtest, skipped without PostgreSQL 15's binaries):
//
//  1. two brokerd processes on 127.0.0.1 sharing the store; the first one
//     started is the master;
//  2. fill: persistent 1 KiB messages on 4 connections, in transactions of
//     1,000 SENDs whose COMMIT carries the only receipt, so the backlog is
//     durable when the last receipt arrives (fill-msgs/s);
//  3. the slave catches up: when its /status has a "standby" object
//     (brokerd's warm standby), it is polled until two catch-ups after
//     the wait began found nothing left to read; a slave without one (a
//     cold slave, brokerd before issue 13) gets a fixed 2 s (blSettle)
//     once its role is "slave"; the log says which;
//  4. RSS (VmRSS) of master and slave with the backlog in place;
//  5. BACKLOG_KILLS times (default 10): kill -9 the master; the time from
//     the kill to a STOMP CONNECTED from the new master, polling both
//     listen addresses with new connections; then the killed broker starts
//     again as the slave and catches up as in 3 (p50/p99/max-ms; lock-ms is
//     the median from the kill to the new master's "acquired the lock" log
//     line, a 1 ms resolution timestamp);
//  6. RSS again (a master that took over, a slave restarted beside it);
//  7. drain the backlog on the final master with client-individual acks
//     (drain-msgs/s), then, as the reference from the same run, fill a
//     fresh set of queues of the same layout with a backlog small enough
//     for its bodies to stay in memory (the same size up to 100,000, and
//     within the cache share of max_memory that brokerd keeps bodies in,
//     /status's cache_limit: 21,845 with the default 256 MiB), and drain
//     it at once (ref-drain-msgs/s); drain-of-ref is the ratio (issue 13:
//     ≥ 0.8).
//
// BenchmarkTakeoverBacklogActiveMQ runs the same steps with a 100,000
// backlog on one queue against brokerd (journal) and then ActiveMQ 5.17
// (Debian's activemq package, skipped when it is not installed: apt-get
// install activemq): two brokers sharing one KahaDB directory with the
// shared-file locker polling every 500 ms (lockKeepAlivePeriod 500 ms too),
// STOMP connectors on 127.0.0.1, the JVM options of Debian's
// /usr/share/activemq/activemq-options. A cold ActiveMQ slave has nothing to
// follow: it is ready once it logs that it waits for the lock. It reports
// both brokers' figures side by side and the ratios (issue 13: takeover ≥
// 10 × faster, drain ≥ 2 × ActiveMQ's).
//
// Each case runs once, whatever b.N, and reports ns/op 0; the figures are
// custom metrics, and the log has every takeover. A case takes minutes (a
// 1,000,000 backlog on a broker that replays it all at each takeover, an
// hour), so both benchmarks skip unless go test's -timeout is 0 or at
// least an hour (make bench's default 10m would otherwise panic midway and
// lose every figure of the run). To re-run (BACKLOG_KILLS=3 for a quicker
// look; BACKLOG_AMQ_SIZE sets the ActiveMQ comparison's backlog):
//
//	BACKLOG_SIZES=100000 go test -run '^$' -bench TakeoverBacklog -benchtime 1x -timeout 0 ./bench/
//	go test -run '^$' -bench 'TakeoverBacklog/size=100000/queues=1$/store=journal' -benchtime 1x -timeout 0 ./bench/
//	go test -run '^$' -bench TakeoverBacklogActiveMQ -benchtime 1x -timeout 0 ./bench/

package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"handover/frame"
	"handover/internal/pgtest"
	"handover/internal/testutil"
	"handover/stompclient"
)

const (
	// blSizesDefault are the backlog sizes unless BACKLOG_SIZES says
	// otherwise.
	blSizesDefault = "100000,1000000"
	// blKillsDefault is how many takeovers each case times unless
	// BACKLOG_KILLS says otherwise.
	blKillsDefault = 10
	// blAMQSizeDefault is the backlog of the ActiveMQ comparison unless
	// BACKLOG_AMQ_SIZE says otherwise.
	blAMQSizeDefault = 100000
	// blRefMax bounds the reference backlog, whose bodies should still be
	// in memory when it is drained. brokerd keeps persistent bodies cached
	// within a share of max_memory (brokerd/memory.go); where /status
	// tells that share (cache_limit), the reference is also held to it at
	// blRefMsgBytes a message (a 1 KiB body, its headers, and a margin).
	blRefMax      = 100000
	blRefMsgBytes = 1536

	// blFillConns and blFillTx: the fill runs on this many connections, in
	// transactions of this many SENDs, each COMMIT with a receipt.
	blFillConns = 4
	blFillTx    = 1000
	// blPrefetch is the drain's per-subscription prefetch, set explicitly
	// (activemq.prefetchSize) so both brokers get the same.
	blPrefetch = 1000

	// blSettle is how long a slave is given to catch up when its /status
	// has no "standby" object to poll (a cold slave: brokerd before issue
	// 13's warm standby); it only lets the restarted process settle.
	blSettle = 2 * time.Second
	// blTakeoverLimit bounds one takeover: a slave that replays a large
	// backlog cold takes minutes.
	blTakeoverLimit = 10 * time.Minute
	// blCatchUpLimit bounds a slave's start and catch-up.
	blCatchUpLimit = 10 * time.Minute
	// blStall fails a fill or drain that makes no progress for this long.
	blStall = 2 * time.Minute
	// blMinTimeout is the shortest go test -timeout the benchmarks run
	// under: a timeout panics and loses the whole run's figures, the
	// other benchmarks' too, so they skip rather than risk it.
	blMinTimeout = 60 * time.Minute
	// blDialTimeout bounds one connection attempt (connect, CONNECT,
	// CONNECTED) while polling for the new master: a port that accepts
	// belongs to a broker that is serving, which answers in milliseconds.
	blDialTimeout = 5 * time.Second
)

// blLayouts: the whole backlog on one queue, or spread evenly over 1,000.
var blLayouts = []int{1, 1000}

// blResult is what one case measured.
type blResult struct {
	size, queues int
	fill         time.Duration
	takeovers    []time.Duration // kill → CONNECTED from the new master
	locks        []time.Duration // kill → the new master logged the lock, where it does
	// RSS in MB with the backlog in place: before the first kill (the
	// master that took the sends, the slave beside it), and after the
	// last (a master that took over, the slave restarted beside it).
	masterRSS, slaveRSS, newMasterRSS, newSlaveRSS float64
	refSize                                        int
	refCached                                      int64 // bodies cached after the reference's fill, -1 if not told
	drain, refDrain                                time.Duration
	readiness                                      string // how slave readiness was judged
}

func (r *blResult) rate(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

// blMetric is one figure as b.ReportMetric takes it.
type blMetric struct {
	v    float64
	unit string
}

// metrics returns the case's figures, in report order.
func (r *blResult) metrics() []blMetric {
	ts := slices.Sorted(slices.Values(r.takeovers))
	m := []blMetric{
		{blMS(lgPercentile(ts, 50)), "p50-ms"},
		{blMS(lgPercentile(ts, 99)), "p99-ms"},
		{blMS(ts[len(ts)-1]), "max-ms"},
	}
	if len(r.locks) == len(r.takeovers) {
		ls := slices.Sorted(slices.Values(r.locks))
		m = append(m, blMetric{blMS(lgPercentile(ls, 50)), "lock-ms"})
	}
	drain, ref := r.rate(r.size, r.drain), r.rate(r.refSize, r.refDrain)
	return append(m,
		blMetric{r.rate(r.size, r.fill), "fill-msgs/s"},
		blMetric{r.masterRSS, "master-MB"},
		blMetric{r.slaveRSS, "slave-MB"},
		blMetric{r.newMasterRSS, "new-master-MB"},
		blMetric{r.newSlaveRSS, "new-slave-MB"},
		blMetric{drain, "drain-msgs/s"},
		blMetric{ref, "ref-drain-msgs/s"},
		blMetric{drain / ref, "drain-of-ref"},
	)
}

// report reports r's metrics on b, each unit prefixed with prefix.
func (r *blResult) report(b *testing.B, prefix string) {
	for _, m := range r.metrics() {
		b.ReportMetric(m.v, prefix+m.unit)
	}
}

// String is the case in one log line.
func (r *blResult) String() string {
	var s strings.Builder
	for _, m := range r.metrics() {
		fmt.Fprintf(&s, "%s %.4g, ", m.unit, m.v)
	}
	fmt.Fprintf(&s, "takeovers (ms) %v, locks taken after (ms) %v, ref backlog %d", blMillis(r.takeovers), blMillis(r.locks), r.refSize)
	if r.refCached >= 0 {
		fmt.Fprintf(&s, " (bodies cached after its fill: %.1f MB)", float64(r.refCached)/(1<<20))
	}
	fmt.Fprintf(&s, ", slave readiness: %s", r.readiness)
	return s.String()
}

func blMS(d time.Duration) float64 { return float64(d) / 1e6 }

func blMillis(ds []time.Duration) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = d.Milliseconds()
	}
	return out
}

// BenchmarkTakeoverBacklog: see the top of this file.
func BenchmarkTakeoverBacklog(b *testing.B) {
	blNeedTime(b)
	stores := []struct {
		name  string
		start func(b *testing.B) blBroker
	}{
		{"journal", blNewBrokerdJournal},
		{"postgres", blNewBrokerdPostgres},
	}
	for _, size := range blSizes(b) {
		for _, queues := range blLayouts {
			for _, st := range stores {
				// The function runs again with a larger b.N when
				// -benchtime asks for more; the case runs once.
				var r *blResult
				b.Run(fmt.Sprintf("size=%d/queues=%d/store=%s", size, queues, st.name), func(b *testing.B) {
					if r == nil {
						r = blRunCase(b, st.start(b), size, queues)
					}
					b.ReportMetric(0, "ns/op")
					r.report(b, "")
				})
			}
		}
	}
}

// BenchmarkTakeoverBacklogActiveMQ: see the top of this file.
func BenchmarkTakeoverBacklogActiveMQ(b *testing.B) {
	blNeedTime(b)
	if err := blHaveActiveMQ(); err != nil {
		b.Skip(err)
	}
	size := blEnvInt(b, "BACKLOG_AMQ_SIZE", blAMQSizeDefault)
	var bd, amq *blResult
	b.Run(fmt.Sprintf("size=%d/queues=1", size), func(b *testing.B) {
		if bd == nil {
			bd = blRunCase(b, blNewBrokerdJournal(b), size, 1)
			amq = blRunCase(b, blNewActiveMQ(b), size, 1)
		}
		b.ReportMetric(0, "ns/op")
		bd.report(b, "brokerd-")
		amq.report(b, "amq-")
		bt := slices.Sorted(slices.Values(bd.takeovers))
		at := slices.Sorted(slices.Values(amq.takeovers))
		b.ReportMetric(float64(lgPercentile(at, 50))/float64(lgPercentile(bt, 50)), "amq/brokerd-p50")
		b.ReportMetric(float64(lgPercentile(at, 99))/float64(lgPercentile(bt, 99)), "amq/brokerd-p99")
		b.ReportMetric(bd.rate(size, bd.drain)/amq.rate(size, amq.drain), "drain-brokerd/amq")
		b.ReportMetric(bd.slaveRSS/amq.slaveRSS, "slave-MB-brokerd/amq")
	})
}

// blRunCase runs steps 1-7 (see the top of the file) against br.
func blRunCase(b *testing.B, br blBroker, size, queues int) *blResult {
	b.Helper()
	kills := blEnvInt(b, "BACKLOG_KILLS", blKillsDefault)
	r := &blResult{size: size, queues: queues, refSize: min(size, blRefMax)}
	p := blStartPair(b, br)
	defer p.stop()
	if limit, _ := br.memory(b, p.master); limit > 0 {
		r.refSize = min(r.refSize, int(limit/blRefMsgBytes))
	}

	start := time.Now()
	blFill(b, p.master.listen, "backlog", size, queues)
	r.fill = time.Since(start)
	b.Logf("%s: %d messages on %d queue(s) in %v (%.0f msgs/s)", br.name(), size, queues, r.fill.Round(time.Millisecond), r.rate(size, r.fill))
	r.readiness = br.waitSlave(b, p.slave)
	r.masterRSS, r.slaveRSS = p.rss(b)

	for range kills {
		took, lock := p.takeover(b)
		r.takeovers = append(r.takeovers, took)
		if lock > 0 {
			r.locks = append(r.locks, lock)
		}
	}
	r.newMasterRSS, r.newSlaveRSS = p.rss(b)

	if d := br.depth(b, p.master, "/queue/backlog-"); d >= 0 && d != size {
		b.Fatalf("%s: the master after %d takeovers has %d messages queued, want %d", br.name(), kills, d, size)
	}
	r.drain = blDrain(b, p.master.listen, "backlog", size, queues)
	blFill(b, p.master.listen, "ref", r.refSize, queues)
	_, r.refCached = br.memory(b, p.master)
	r.refDrain = blDrain(b, p.master.listen, "ref", r.refSize, queues)
	b.Logf("%s: %s", br.name(), r)
	return r
}

// blBroker is one kind of broker under test, as a master/slave pair on
// shared storage.
type blBroker interface {
	name() string
	// start starts n's process. The pair's other node may hold the lock,
	// then n is a slave.
	start(b *testing.B, n *blNode)
	// waitSlave waits until n is a slave ready to take over and says how
	// that was judged.
	waitSlave(b *testing.B, n *blNode) string
	// lockTime is when master n took the lock, by its log, or zero when
	// the broker does not log it.
	lockTime(n *blNode) time.Time
	// depth is how many messages master n has queued (inflight included)
	// on queues whose names start with prefix, or -1 when the broker does
	// not tell.
	depth(b *testing.B, n *blNode, prefix string) int
	// memory is how many bytes of bodies master n may cache and has
	// cached now, each -1 when the broker does not tell.
	memory(b *testing.B, n *blNode) (limit, cached int64)
}

// blNode is one broker process of a pair. Its STOMP address stays the same
// across restarts: a slave's port is closed until it takes over, so it
// must be chosen before.
type blNode struct {
	name   string
	listen string
	admin  string // brokerd's admin address, read from the running process's log
	proc   *testutil.Process
}

// blPair is a master and a slave; takeover swaps them.
type blPair struct {
	br            blBroker
	master, slave *blNode
}

// blStartPair starts the master, waits until it serves, then starts the
// slave and waits until it is ready.
func blStartPair(b *testing.B, br blBroker) *blPair {
	b.Helper()
	p := &blPair{br: br}
	p.master = &blNode{name: br.name() + "-a", listen: testutil.FreePort(b)}
	p.slave = &blNode{name: br.name() + "-b", listen: testutil.FreePort(b)}
	br.start(b, p.master)
	if _, err := blAwaitConnected([]*blNode{p.master}, blCatchUpLimit); err != nil {
		b.Fatalf("%s did not serve: %v\n%s", p.master.name, err, blTail(p.master.proc))
	}
	br.start(b, p.slave)
	br.waitSlave(b, p.slave)
	return p
}

// takeover kills the master with SIGKILL and returns the time until a
// STOMP CONNECTED from its successor, and until the successor's logged
// lock acquisition (zero when not logged); then it starts the killed
// broker again and waits until it is a ready slave.
func (p *blPair) takeover(b *testing.B) (took, lock time.Duration) {
	b.Helper()
	old := p.master
	killed := time.Now()
	if err := old.proc.Signal(os.Kill); err != nil {
		b.Fatal(err)
	}
	// Both addresses: that the slave is the one to answer is what is
	// being measured, not assumed.
	next, err := blAwaitConnected([]*blNode{p.slave, old}, blTakeoverLimit)
	took = time.Since(killed)
	if err != nil {
		b.Fatalf("no new master after kill -9 (limit %v): %v\n%s", blTakeoverLimit, err, blTail(p.slave.proc))
	}
	if next != p.slave {
		b.Fatalf("%s answered after its own kill -9", next.name)
	}
	if t := p.br.lockTime(next); !t.IsZero() {
		// The log has whole milliseconds: compare with the kill's.
		lock = t.Sub(killed.Truncate(time.Millisecond))
	}
	<-old.proc.Done()
	p.master, p.slave = next, old
	p.br.start(b, old)
	p.br.waitSlave(b, old)
	return took, lock
}

// rss returns master and slave RSS in MB.
func (p *blPair) rss(b *testing.B) (master, slave float64) {
	b.Helper()
	var err error
	if master, err = lgRSS(p.master.proc.Cmd.Process.Pid); err != nil {
		b.Fatal(err)
	}
	if slave, err = lgRSS(p.slave.proc.Cmd.Process.Pid); err != nil {
		b.Fatal(err)
	}
	return master, slave
}

// stop kills both processes, so that the next case runs on a quiet machine
// (b's cleanups would do it only when the whole benchmark ends).
func (p *blPair) stop() {
	for _, n := range []*blNode{p.master, p.slave} {
		if n.proc != nil {
			n.proc.Kill()
		}
	}
}

// blAwaitConnected polls nodes in turn, each with a new connection and a
// STOMP CONNECT, until one answers CONNECTED, and returns it. A refused
// connection on loopback fails in microseconds, so a 1 ms pause between
// rounds bounds the poll's resolution. It gives up early once every
// node's process has ended (a slave that failed to take over).
func blAwaitConnected(nodes []*blNode, limit time.Duration) (*blNode, error) {
	deadline := time.Now().Add(limit)
	for {
		var last error
		ended := 0
		for _, n := range nodes {
			ctx, cancel := context.WithTimeout(context.Background(), blDialTimeout)
			c, err := stompclient.Dial(ctx, n.listen, stompclient.Options{})
			cancel()
			if err == nil {
				c.Close()
				return n, nil
			}
			last = err
			if n.proc.ExitCode() >= 0 {
				ended++
			}
		}
		if ended == len(nodes) {
			return nil, fmt.Errorf("every broker polled has exited; last error: %w", last)
		}
		if time.Now().After(deadline) {
			return nil, last
		}
		time.Sleep(time.Millisecond)
	}
}

// blQueue names queue i of a layout.
func blQueue(prefix string, i int) string { return fmt.Sprintf("/queue/%s-%04d", prefix, i) }

// blFill sends n persistent 1 KiB messages to addr, message i to queue
// i % queues, on blFillConns connections in transactions of blFillTx
// SENDs; each connection waits for its COMMIT's receipt before the next
// transaction, so the connections keep the broker busy while one waits.
func blFill(b *testing.B, addr, prefix string, n, queues int) {
	b.Helper()
	names := make([]string, queues)
	for i := range names {
		names[i] = blQueue(prefix, i)
	}
	var sent atomic.Int64
	ended := make(chan error, blFillConns)
	lo := 0
	for w := range blFillConns {
		hi := lo + lgSplit(n, blFillConns, w)
		go func(lo, hi int) { ended <- blFillRange(addr, names, lo, hi, w, &sent) }(lo, hi)
		lo = hi
	}
	blWatch(b, "fill", &sent, int64(n), ended, blFillConns, func() error { return nil })
}

// blFillRange sends messages lo to hi-1 on one connection.
func blFillRange(addr string, names []string, lo, hi, w int, sent *atomic.Int64) error {
	ctx := context.Background()
	c, err := stompclient.Dial(ctx, addr, stompclient.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	for t := 0; lo < hi; t++ {
		tx := fmt.Sprintf("fill-%d-%d", w, t)
		txh := frame.Header{Key: "transaction", Value: tx}
		if err := c.Begin(tx); err != nil {
			return err
		}
		end := min(lo+blFillTx, hi)
		for i := lo; i < end; i++ {
			if err := c.Send(names[i%len(names)], body1K, persistent, txh); err != nil {
				return err
			}
		}
		cctx, cancel := context.WithTimeout(ctx, blStall)
		err := c.SendFrame(cctx, frame.New(frame.COMMIT, "transaction", tx), true)
		cancel()
		if err != nil {
			return fmt.Errorf("COMMIT %s: %w", tx, err)
		}
		sent.Add(int64(end - lo))
		lo = end
	}
	dctx, cancel := context.WithTimeout(ctx, blStall)
	defer cancel()
	return c.Disconnect(dctx)
}

// blDrain consumes n messages from the layout's queues at addr on one
// connection, a client-individual subscription per queue, acking each
// message, and returns the time from the first SUBSCRIBE to the receipt of
// the DISCONNECT that follows the last ACK (so every ACK was processed).
func blDrain(b *testing.B, addr, prefix string, n, queues int) time.Duration {
	b.Helper()
	ctx := context.Background()
	c, err := stompclient.Dial(ctx, addr, stompclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var got atomic.Int64
	var leaving atomic.Bool
	ended := make(chan error, queues)
	start := time.Now()
	for i := range queues {
		sub, err := c.Subscribe(blQueue(prefix, i), stompclient.AckClientIndividual,
			frame.Header{Key: "activemq.prefetchSize", Value: strconv.Itoa(blPrefetch)})
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for m := range sub.C() {
				if err := c.Ack(m); err != nil {
					ended <- err
					return
				}
				got.Add(1)
			}
			if !leaving.Load() {
				ended <- fmt.Errorf("subscription to %s ended: %v", sub.Destination(), c.Err())
				return
			}
			ended <- nil
		}()
	}
	blWatch(b, "drain", &got, int64(n), ended, queues, func() error {
		leaving.Store(true)
		dctx, cancel := context.WithTimeout(ctx, blStall)
		defer cancel()
		return c.Disconnect(dctx) // ends the subscriptions
	})
	return time.Since(start)
}

// blWatch waits until count reaches n, failing b at once when one of
// the workers ends with an error on ended, or when count stands still for
// blStall; then it calls finish and waits for every worker to end. A count
// past n is an error too (a drain that got more than the backlog).
func blWatch(b *testing.B, what string, count *atomic.Int64, n int64, ended <-chan error, workers int, finish func() error) {
	b.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	last, since := int64(-1), time.Now()
	for count.Load() < n {
		select {
		case err := <-ended:
			workers--
			if err != nil {
				b.Fatalf("%s: %v", what, err)
			}
		case <-tick.C:
			if v := count.Load(); v != last {
				last, since = v, time.Now()
			} else if time.Since(since) > blStall {
				b.Fatalf("%s: stalled at %d of %d for %v", what, v, n, blStall)
			}
		}
	}
	errs := []error{finish()}
	for ; workers > 0; workers-- {
		errs = append(errs, <-ended)
	}
	if err := errors.Join(errs...); err != nil {
		b.Fatalf("%s: %v", what, err)
	}
	if v := count.Load(); v != n {
		b.Fatalf("%s: %d messages, want %d", what, v, n)
	}
}

// blTail is the end of a process's output, for failure messages.
func blTail(p *testutil.Process) string {
	if p == nil {
		return ""
	}
	out := p.Out.String()
	if len(out) > 4000 {
		out = "..." + out[len(out)-4000:]
	}
	return "---- " + p.Name + " ----\n" + out
}

// blSizes reads BACKLOG_SIZES.
func blSizes(b *testing.B) []int {
	v := os.Getenv("BACKLOG_SIZES")
	if v == "" {
		v = blSizesDefault
	}
	var sizes []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("BACKLOG_SIZES=%q: want positive numbers separated by commas", v)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// blNeedTime skips b unless go test's -timeout is 0 or at least
// blMinTimeout.
func blNeedTime(b *testing.B) {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return
	}
	if d, _ := f.Value.(flag.Getter).Get().(time.Duration); d > 0 && d < blMinTimeout {
		b.Skipf("-timeout %v is too short: each case takes minutes; run with -timeout %v or more, or 0", d, blMinTimeout)
	}
}

// blEnvInt reads a positive number from the environment variable name,
// or returns def when it is not set.
func blEnvInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// ---- brokerd ----

// blBrokerd is brokerd with its journal in a shared data directory, or
// with a shared PostgreSQL database (dsn set).
type blBrokerd struct {
	bin  string
	data string // the journal's shared data directory; "" with dsn
	dsn  string
	http *http.Client
}

func blNewBrokerdJournal(b *testing.B) blBroker {
	return &blBrokerd{bin: testutil.Binary(b, "handover/cmd/brokerd"), data: b.TempDir(), http: &http.Client{Timeout: 5 * time.Second}}
}

// blNewBrokerdPostgres starts a throwaway PostgreSQL for the case, or
// skips it when PostgreSQL 15's binaries are missing.
func blNewBrokerdPostgres(b *testing.B) blBroker {
	if err := blHavePostgres(); err != nil {
		b.Skip(err)
	}
	srv := pgtest.Start(b)
	return &blBrokerd{bin: testutil.Binary(b, "handover/cmd/brokerd"), dsn: srv.DSN(), http: &http.Client{Timeout: 5 * time.Second}}
}

func (d *blBrokerd) name() string {
	if d.dsn != "" {
		return "brokerd-pg"
	}
	return "brokerd"
}

// start runs brokerd with its admin server on port 0 and reads the address
// it got from its log. With PostgreSQL each process gets a data directory
// of its own (unused), so that only the database is shared; the slaves
// poll the lock every 500 ms (-lock-retry's default).
func (d *blBrokerd) start(b *testing.B, n *blNode) {
	b.Helper()
	args := []string{"-listen", n.listen, "-admin", "127.0.0.1:0", "-log-format", "json"}
	if d.dsn != "" {
		testutil.InitBroker(b, "-store", d.dsn)
		args = append(args, "-store", d.dsn, "-data", b.TempDir())
	} else {
		testutil.InitBroker(b, "-data", d.data)
		args = append(args, "-data", d.data)
	}
	n.proc = testutil.Start(b, n.name, d.bin, args...)
	n.admin = ""
	testutil.Eventually(b, time.Minute, func() error {
		if n.admin = blLogField(n.proc, "admin", "slave: waiting for the master lock"); n.admin != "" {
			return nil
		}
		if n.proc.ExitCode() >= 0 {
			b.Fatalf("%s exited at start\n%s", n.name, blTail(n.proc))
		}
		return fmt.Errorf("%s has not logged its admin address", n.name)
	})
}

// blLogField is the first value of field key in p's JSON log events whose
// msg is msg, or "".
func blLogField(p *testutil.Process, key, msg string) string {
	sc := bufio.NewScanner(strings.NewReader(p.Out.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var f map[string]any
		if json.Unmarshal(sc.Bytes(), &f) != nil {
			continue
		}
		if v, ok := f[key].(string); ok && v != "" && f["msg"] == msg {
			return v
		}
	}
	return ""
}

// get decodes the JSON of n's admin path into v.
func (d *blBrokerd) get(n *blNode, path string, v any) error {
	resp, err := d.http.Get("http://" + n.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// blStandby is the "standby" object of a slave's /status (brokerd's warm
// standby, brokerd/backlog.go): what its last catch-up found to read, and
// when that was.
type blStandby struct {
	Following     bool      `json:"following"`
	Messages      int       `json:"messages"`
	LastCatchUp   time.Time `json:"last_catch_up"`
	BehindRecords int       `json:"behind_records"`
	BehindBytes   int64     `json:"behind_bytes"`
	Error         string    `json:"error"`
}

// waitSlave waits for role "slave", then, when /status has a standby, until
// two catch-ups after the wait began found nothing left to read (two, so
// that one already under way when the wait began does not count); the
// standby then holds everything appended before. A slave without a
// standby (brokerd before issue 13) has nothing to catch up on: a fixed
// blSettle lets the restarted process settle.
func (d *blBrokerd) waitSlave(b *testing.B, n *blNode) string {
	b.Helper()
	begun := time.Now()
	how := ""
	var settling, caughtUp time.Time
	for {
		var st struct {
			Role    string     `json:"role"`
			Standby *blStandby `json:"standby"`
		}
		err := d.get(n, "/status", &st)
		sb := st.Standby
		switch {
		case err != nil:
			how = err.Error()
		case st.Role != "slave":
			how = "role " + st.Role
		case sb == nil:
			if settling.IsZero() {
				settling = time.Now()
			}
			if time.Since(settling) >= blSettle {
				return fmt.Sprintf("no standby in /status: waited %v", blSettle)
			}
			how = "slave without a standby, settling"
		case !sb.Following || sb.Error != "" || sb.BehindRecords != 0 || sb.BehindBytes != 0 || sb.LastCatchUp.Before(begun):
			how = fmt.Sprintf("standby %+v", *sb)
		case caughtUp.IsZero():
			caughtUp = sb.LastCatchUp
		case !sb.LastCatchUp.Equal(caughtUp):
			return fmt.Sprintf("standby caught up (%d messages indexed)", sb.Messages)
		}
		if n.proc.ExitCode() >= 0 {
			b.Fatalf("%s exited\n%s", n.name, blTail(n.proc))
		}
		if time.Since(begun) > blCatchUpLimit {
			b.Fatalf("%s not a caught-up slave within %v: %s\n%s", n.name, blCatchUpLimit, how, blTail(n.proc))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *blBrokerd) lockTime(n *blNode) time.Time {
	sc := bufio.NewScanner(strings.NewReader(n.proc.Out.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var f map[string]any
		if json.Unmarshal(sc.Bytes(), &f) == nil && f["msg"] == "master: acquired the lock" {
			return foTime(f)
		}
	}
	return time.Time{}
}

func (d *blBrokerd) depth(b *testing.B, n *blNode, prefix string) int {
	b.Helper()
	var st struct {
		Queues []struct {
			Name  string `json:"name"`
			Depth int    `json:"depth"`
		} `json:"queues"`
	}
	if err := d.get(n, "/status", &st); err != nil {
		b.Fatal(err)
	}
	total := 0
	for _, q := range st.Queues {
		if strings.HasPrefix(q.Name, prefix) {
			total += q.Depth
		}
	}
	return total
}

func (d *blBrokerd) memory(b *testing.B, n *blNode) (limit, cached int64) {
	b.Helper()
	var st struct {
		Memory *struct {
			CacheLimit int64 `json:"cache_limit"`
			Cached     int64 `json:"cached"`
		} `json:"memory"`
	}
	if err := d.get(n, "/status", &st); err != nil {
		b.Fatal(err)
	}
	if st.Memory == nil {
		return -1, -1
	}
	return st.Memory.CacheLimit, st.Memory.Cached
}

// blHavePostgres says why internal/pgtest can't start a server here, or
// nil: it needs PostgreSQL 15's initdb and postgres (in PGTEST_BIN or
// Debian's directory) and, as root, the postgres system user.
func blHavePostgres() error {
	dirs := []string{"/usr/lib/postgresql/15/bin"}
	if d := os.Getenv("PGTEST_BIN"); d != "" {
		dirs = append([]string{d}, dirs...)
	}
	found := false
	for _, d := range dirs {
		_, e1 := os.Stat(filepath.Join(d, "initdb"))
		_, e2 := os.Stat(filepath.Join(d, "postgres"))
		found = found || e1 == nil && e2 == nil
	}
	if !found {
		return fmt.Errorf("no PostgreSQL 15 binaries in %s (apt-get install postgresql)", strings.Join(dirs, ", "))
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			return fmt.Errorf("running as root without a postgres system user: %v", err)
		}
	}
	return nil
}

// ---- ActiveMQ ----

// blAMQHome is where Debian's activemq package installs the broker.
const blAMQHome = "/usr/share/activemq"

// blAMQJVM are the JVM options of Debian's /usr/share/activemq/activemq-options.
var blAMQJVM = []string{"-Xms512M", "-Xmx512M", "-Dorg.apache.activemq.UseDedicatedTaskRunner=true"}

// blAMQConfig is one broker of the pair: KahaDB in the shared directory
// with the shared-file locker polling every 500 ms, the lock checked as
// often by the master, and one STOMP connector. Everything else is
// ActiveMQ's defaults, as in Debian's sample activemq.xml (JMX off).
const blAMQConfig = `<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="bench" dataDirectory="{{data}}">
    <persistenceAdapter>
      <kahaDB directory="{{kahadb}}" lockKeepAlivePeriod="500">
        <locker><shared-file-locker lockAcquireSleepInterval="500"/></locker>
      </kahaDB>
    </persistenceAdapter>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://{{listen}}"/>
    </transportConnectors>
  </broker>
</beans>
`

// blAMQLog4j sends ActiveMQ's log (log4j 1.2 in Debian's build) to stdout,
// where the slave's "waiting a lock" line is looked for.
const blAMQLog4j = `log4j.rootLogger=INFO, stdout
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d{ISO8601} %-5p %m%n
`

// blAMQSlaveLine is what a broker logs when it finds the lock taken and
// starts waiting for it (KahaDB's SharedFileLocker).
const blAMQSlaveLine = "is now in slave mode waiting a lock to be acquired"

// blHaveActiveMQ says why ActiveMQ can't run here, or nil.
func blHaveActiveMQ() error {
	if _, err := os.Stat(filepath.Join(blAMQHome, "bin", "activemq.jar")); err != nil {
		return fmt.Errorf("ActiveMQ is not installed (apt-get install activemq): %v", err)
	}
	if _, err := exec.LookPath("java"); err != nil {
		return fmt.Errorf("no java for ActiveMQ: %v", err)
	}
	return nil
}

type blActiveMQ struct {
	java string
	dir  string // the pair's root: kahadb/ shared, one directory per node
}

func blNewActiveMQ(b *testing.B) blBroker {
	if err := blHaveActiveMQ(); err != nil {
		b.Skip(err)
	}
	java, _ := exec.LookPath("java")
	return &blActiveMQ{java: java, dir: b.TempDir()}
}

func (a *blActiveMQ) name() string { return "activemq" }

// start writes n's configuration on its first start and runs the JVM in
// the foreground (as /usr/bin/activemq would, without daemonizing), so that
// kill -9 reaches the broker itself.
func (a *blActiveMQ) start(b *testing.B, n *blNode) {
	b.Helper()
	base := filepath.Join(a.dir, n.name)
	conf := filepath.Join(base, "conf")
	if _, err := os.Stat(conf); err != nil {
		if err := os.MkdirAll(conf, 0o755); err != nil {
			b.Fatal(err)
		}
		xml := strings.NewReplacer("{{data}}", filepath.Join(base, "data"), "{{kahadb}}", filepath.Join(a.dir, "kahadb"), "{{listen}}", n.listen).Replace(blAMQConfig)
		if err := os.WriteFile(filepath.Join(conf, "activemq.xml"), []byte(xml), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(conf, "log4j.properties"), []byte(blAMQLog4j), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	args := append(slices.Clone(blAMQJVM),
		"-Dactivemq.home="+blAMQHome, "-Dactivemq.base="+base, "-Dactivemq.conf="+conf,
		"-Dactivemq.data="+filepath.Join(base, "data"), "-Dlog4j.configuration=file:"+filepath.Join(conf, "log4j.properties"),
		"-jar", filepath.Join(blAMQHome, "bin", "activemq.jar"), "start", "xbean:file:"+filepath.Join(conf, "activemq.xml"))
	n.proc = testutil.Start(b, n.name, a.java, args...)
}

// waitSlave waits for the line a broker logs when it finds the lock held:
// an ActiveMQ slave is cold, with nothing to catch up on.
func (a *blActiveMQ) waitSlave(b *testing.B, n *blNode) string {
	b.Helper()
	testutil.Eventually(b, blCatchUpLimit, func() error {
		if strings.Contains(n.proc.Out.String(), blAMQSlaveLine) {
			return nil
		}
		if n.proc.ExitCode() >= 0 {
			b.Fatalf("%s exited\n%s", n.name, blTail(n.proc))
		}
		return fmt.Errorf("%s has not logged %q", n.name, blAMQSlaveLine)
	})
	return "logged that it waits for the lock"
}

func (a *blActiveMQ) lockTime(*blNode) time.Time                       { return time.Time{} }
func (a *blActiveMQ) depth(*testing.B, *blNode, string) int            { return -1 }
func (a *blActiveMQ) memory(*testing.B, *blNode) (limit, cached int64) { return -1, -1 }
