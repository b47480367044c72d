// Producer flow control and slow consumers (issue 14): what max_memory
// costs a producer that outpaces its consumer, and how soon a topic
// subscriber that stops reading is dropped while the others carry on.
//
// BenchmarkFlowControl, for each consumer ack mode (auto, client-individual):
// one producer sends fcMessages non-persistent 1 KiB messages to one queue
// as fast as it can (fire and forget, then one SEND with a receipt as a
// fence) while one consumer drains the queue at its own pace (default
// prefetch). It runs twice, each on a fresh broker: with max_memory at
// fcLimit (8 MiB, about a thirteenth of what is sent; the queue's share,
// max_destination_memory, a quarter of it as by default), where flow
// control holds the producer; then, as the peer figure from the same run,
// with both at fcFree (1 GiB, more than everything sent), where flow
// control never engages and the queue grows instead. The order is free
// first, then limited. It reports, for the limited run:
//
//   - msgs/s, the producer's rate (to the fence's receipt), and
//     consumer-msgs/s (to the last message);
//   - peak-pinned-MiB, the peak of /status memory.pinned, sampled every
//     fcSample; peak-of-limit is it over max_memory, and peak-of-share the
//     queue's peak /status memory over its max_destination_memory (the
//     limit one queue meets first; it must stay near 1);
//   - waits, how many times a SEND was held (memory.flow_controlled);
//
// the same figures of the free run prefixed free-, and of-free, the
// producer's rate under flow control over its free rate: what the limit
// costs a producer whose consumer is slower.
//
// BenchmarkSlowConsumerDrop, for max_pending_bytes at its default (16 MiB)
// and at 1 MiB, and for two producers: two subscribers on one topic, one a
// raw connection that subscribes and then never reads ("slow"), one a
// stompclient auto-ack subscription that takes each message as it comes
// ("healthy"); one producer publishes 64 KiB messages without receipts:
//
//   - producer=paced as fast as the healthy subscriber takes them: never
//     more than half of max_pending_bytes ahead of it, so that only the
//     slow subscriber can be dropped. The healthy one must get every
//     message; the case fails if it is dropped.
//   - producer=unpaced as fast as it can. brokerd does not slow a topic's
//     producer for a subscriber that lags (only for max_memory, which the
//     dropping keeps far away), so a healthy subscriber that is slower
//     than the producer falls behind until it is dropped too; the case
//     reports that (healthy-dropped) instead of failing.
//
// A drop is seen by a hook on the broker's log, on its "dropping slow
// consumer" warning, which names the client's address; the count is
// checked against brokerd_slow_consumers_dropped_total. It reports the
// time from the first publish to the slow subscriber's drop (drop-ms),
// what the producer had published by then (published-MiB) and what waited
// for the slow subscriber when it was dropped (pending-MiB, from the
// warning), the producer's and the healthy subscriber's rates until the
// drop (msgs/s, healthy-msgs/s) and for scAfter after it (after-msgs/s,
// healthy-after-msgs/s), how much the slow subscriber's socket had been
// given (slow-MiB, read off it after the drop) and healthy-dropped (1 when
// the healthy subscriber was dropped too). The log says how the slow
// subscriber's connection ended (with the "slow consumer" ERROR frame or
// not) and the close reasons brokerd counted.
//
// Each case runs once for each -count, whatever b.N, and reports ns/op 0;
// the figures are custom metrics. Both benchmarks together take about
// 15 s on a 2-core machine:
//
//	go test -run '^$' -bench 'FlowControl|SlowConsumerDrop' -benchtime 1x -count 3 ./bench/

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"handover/brokerd"
	"handover/frame"
	"handover/stompclient"
)

const (
	// fcMessages is how many messages one flow-control run sends: about
	// 103 MiB of encoded frames.
	fcMessages = 100000
	// fcLimit is max_memory in the run where flow control engages, and
	// fcShare the queue's share of it; fcFree is both in the run where
	// flow control never engages (it holds every message sent).
	fcLimit = 8 << 20
	fcShare = fcLimit / 4
	fcFree  = 1 << 30
	// fcSample is how often /status memory is sampled for its peak.
	fcSample = time.Millisecond
	// fcQueue gets the messages; fcFence the producer's last SEND, whose
	// receipt means the broker has taken in everything before it (it
	// applies one connection's frames in order).
	fcQueue = "/queue/flow"
	fcFence = "/queue/flow-fence"

	// scBody is the size of each topic message.
	scBody = 64 << 10
	// scTopic is the topic of the slow-consumer cases.
	scTopic = "/topic/slow"
	// scAfter is how long the producer goes on after the drop.
	scAfter = time.Second
	// scDropLimit fails a case whose slow subscriber is not dropped in
	// this long.
	scDropLimit = 20 * time.Second

	// limStall fails a wait in which nothing moves for this long (a
	// producer held as long gives up: flow_control_timeout is 30 s by
	// default, then its SEND gets an ERROR).
	limStall = 30 * time.Second
	// limReceipt bounds a fence's round trip.
	limReceipt = time.Minute
)

// limCase says whether a benchmark function should run its case, or
// report the figures it has from the last: testing calls the function
// first with b.N 1, once for each -count, then again with a larger b.N
// when -benchtime asks for more time, and the case is run once for each
// -count.
func limCase(b *testing.B, none bool) bool { return b.N == 1 || none }

// limCounter counts the messages a subscription receives, acknowledging
// each when ack is set, and notes when the latest came.
type limCounter struct {
	n, last  atomic.Int64  // last: unix ns
	progress chan struct{} // a message came (coalesced)
	ended    chan error    // the subscription ended
}

func limCount(c *stompclient.Conn, sub *stompclient.Subscription, ack bool) *limCounter {
	k := &limCounter{progress: make(chan struct{}, 1), ended: make(chan error, 1)}
	go func() {
		for m := range sub.C() {
			if ack {
				if err := c.Ack(m); err != nil {
					k.ended <- fmt.Errorf("ACK: %w", err)
					return
				}
			}
			k.last.Store(time.Now().UnixNano())
			k.n.Add(1)
			select {
			case k.progress <- struct{}{}:
			default:
			}
		}
		k.ended <- fmt.Errorf("subscription ended after %d messages: %w", k.n.Load(), c.Err())
	}()
	return k
}

// wait waits until k has counted want messages and returns when the last
// came. It fails when the subscription ends first, when more came, or
// when the count stands still for limStall.
func (k *limCounter) wait(want int64) (time.Time, error) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	last, since := int64(-1), time.Now()
	for {
		v := k.n.Load()
		switch {
		case v > want:
			return time.Time{}, fmt.Errorf("%d messages, want %d", v, want)
		case v == want:
			return time.Unix(0, k.last.Load()), nil
		case v != last:
			last, since = v, time.Now()
		case time.Since(since) > limStall:
			return time.Time{}, fmt.Errorf("stalled at %d of %d for %v", v, want, limStall)
		}
		select {
		case err := <-k.ended:
			if k.n.Load() < want {
				return time.Time{}, err
			}
			k.ended <- err // for a later look
		case <-tick.C:
		}
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// fcResult is what one flow-control run measured.
type fcResult struct {
	limit, share       int64
	producer, consumer time.Duration // from the first SEND
	peakPinned         int64         // the budget's
	peakQueue          int64         // fcQueue's
	waits, timeouts    uint64
}

func (r *fcResult) rate(d time.Duration) float64 { return fcMessages / d.Seconds() }

// report reports r's figures on b, each unit prefixed with prefix.
func (r *fcResult) report(b *testing.B, prefix string) {
	b.ReportMetric(r.rate(r.producer), prefix+"msgs/s")
	b.ReportMetric(r.rate(r.consumer), prefix+"consumer-msgs/s")
	b.ReportMetric(mib(r.peakPinned), prefix+"peak-pinned-MiB")
	b.ReportMetric(float64(r.waits), prefix+"waits")
}

func (r *fcResult) String() string {
	return fmt.Sprintf("max_memory %.0f MiB (the queue's share %.0f MiB): producer %.0f msgs/s, consumer %.0f msgs/s, peak pinned %.2f MiB (%.2f of max_memory), the queue's peak %.2f MiB (%.2f of its share), %d waits, %d timeouts",
		mib(r.limit), mib(r.share), r.rate(r.producer), r.rate(r.consumer),
		mib(r.peakPinned), float64(r.peakPinned)/float64(r.limit),
		mib(r.peakQueue), float64(r.peakQueue)/float64(r.share), r.waits, r.timeouts)
}

// BenchmarkFlowControl: see the top of this file.
func BenchmarkFlowControl(b *testing.B) {
	for _, mode := range []stompclient.AckMode{stompclient.AckAuto, stompclient.AckClientIndividual} {
		var limited, free *fcResult
		b.Run("ack="+string(mode), func(b *testing.B) {
			if limCase(b, limited == nil) {
				free = fcRun(b, mode, fcFree, fcFree)
				limited = fcRun(b, mode, fcLimit, fcShare)
			}
			b.ReportMetric(0, "ns/op")
			limited.report(b, "")
			b.ReportMetric(float64(limited.peakPinned)/float64(limited.limit), "peak-of-limit")
			b.ReportMetric(float64(limited.peakQueue)/float64(limited.share), "peak-of-share")
			free.report(b, "free-")
			b.ReportMetric(limited.rate(limited.producer)/free.rate(free.producer), "of-free")
		})
	}
}

// fcRun runs one flow-control case on a fresh broker with max_memory limit
// and max_destination_memory share.
func fcRun(b *testing.B, mode stompclient.AckMode, limit, share int64) *fcResult {
	s := startBrokerWith(b, func(o *brokerd.Options) { o.MaxMemory, o.MaxDestinationMemory = limit, share })
	ctx, cancel := context.WithTimeout(context.Background(), limReceipt)
	defer cancel()
	r := &fcResult{limit: limit, share: share}

	c := dial(b, s.Addr())
	sub, err := c.SubscribeReceipt(ctx, fcQueue, mode)
	if err != nil {
		b.Fatal(err)
	}
	got := limCount(c, sub, mode != stompclient.AckAuto)

	// The sampler's figures are read after stopped is closed.
	stop, stopped := make(chan struct{}), make(chan struct{})
	stopSampling := sync.OnceFunc(func() { close(stop); <-stopped })
	defer stopSampling()
	go func() {
		defer close(stopped)
		tick := time.NewTicker(fcSample)
		defer tick.Stop()
		for {
			st := s.Status()
			r.peakPinned = max(r.peakPinned, st.Memory.Pinned)
			for _, q := range st.Queues {
				if q.Name == fcQueue {
					r.peakQueue = max(r.peakQueue, q.Memory)
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	p := dial(b, s.Addr())
	start := time.Now()
	for i := range fcMessages {
		if err := p.Send(fcQueue, body1K); err != nil {
			b.Fatalf("SEND %d: %v", i, err)
		}
	}
	if err := p.SendReceipt(ctx, fcFence, nil); err != nil {
		b.Fatalf("fence: %v", err)
	}
	r.producer = time.Since(start)
	last, err := got.wait(fcMessages)
	if err != nil {
		b.Fatalf("consumer: %v", err)
	}
	r.consumer = last.Sub(start)
	stopSampling()
	m := s.Status().Memory
	r.waits, r.timeouts = m.FlowControlled, m.FlowTimeouts
	b.Logf("ack=%s, %s", mode, r)
	return r
}

// scDrops is a hook on the broker's log that notes each slow consumer it
// drops, by the client's address, as the warning is logged.
type scDrops struct {
	mu    sync.Mutex
	at    map[string]time.Time
	bytes map[string]int64 // topic bytes that waited when dropped
	watch string           // whose drop closes dropped
	// dropped is closed when watch is dropped; onDrop runs then first.
	dropped chan struct{}
	onDrop  func()
}

func newSCDrops() *scDrops {
	return &scDrops{at: map[string]time.Time{}, bytes: map[string]int64{}, dropped: make(chan struct{})}
}

func (h *scDrops) Levels() []logrus.Level { return []logrus.Level{logrus.WarnLevel} }

func (h *scDrops) Fire(e *logrus.Entry) error {
	if !strings.HasPrefix(e.Message, "dropping slow consumer") {
		return nil
	}
	now := time.Now()
	remote, _ := e.Data["remote"].(string)
	pending, _ := e.Data["pending_topic_bytes"].(int64)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.at[remote], h.bytes[remote] = now, pending
	if remote == h.watch && h.onDrop != nil {
		h.onDrop()
		h.onDrop = nil
		close(h.dropped)
	}
	return nil
}

// get returns when addr was dropped and what waited for it then.
func (h *scDrops) get(addr string) (time.Time, int64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	at, ok := h.at[addr]
	return at, h.bytes[addr], ok
}

func (h *scDrops) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.at)
}

// scResult is what one slow-consumer case measured.
type scResult struct {
	drop                time.Duration // first publish → the slow subscriber's drop
	sentAtDrop          int64         // messages the producer had sent by the drop
	healthyAtDrop       int64         // messages the healthy subscriber had by the drop
	pending             int64         // topic bytes that waited for the slow subscriber when dropped
	after, healthyAfter time.Duration // drop → the fence's receipt; → the healthy subscriber's last message
	sentAfter           int64         // messages sent after the drop, the fence included
	healthyGotAfter     int64         // messages the healthy subscriber got after the drop
	healthyDropped      bool
	slowBytes           int64 // bodies the slow subscriber's socket had been given
}

func (r *scResult) report(b *testing.B) {
	per := func(n int64, d time.Duration) float64 {
		if d <= 0 { // a healthy subscriber dropped before the slow one
			return 0
		}
		return float64(n) / d.Seconds()
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(r.drop)/1e6, "drop-ms")
	b.ReportMetric(mib(r.sentAtDrop*scBody), "published-MiB")
	b.ReportMetric(mib(r.pending), "pending-MiB")
	b.ReportMetric(per(r.sentAtDrop, r.drop), "msgs/s")
	b.ReportMetric(per(r.healthyAtDrop, r.drop), "healthy-msgs/s")
	b.ReportMetric(per(r.sentAfter, r.after), "after-msgs/s")
	b.ReportMetric(per(r.healthyGotAfter, r.healthyAfter), "healthy-after-msgs/s")
	b.ReportMetric(mib(r.slowBytes), "slow-MiB")
	dropped := 0.0
	if r.healthyDropped {
		dropped = 1
	}
	b.ReportMetric(dropped, "healthy-dropped")
}

// BenchmarkSlowConsumerDrop: see the top of this file.
func BenchmarkSlowConsumerDrop(b *testing.B) {
	for _, pending := range []int64{brokerd.NewOptions().MaxPendingBytes, 1 << 20} {
		for _, paced := range []bool{true, false} {
			name := fmt.Sprintf("max_pending=%dMiB/producer=paced", pending>>20)
			if !paced {
				name = fmt.Sprintf("max_pending=%dMiB/producer=unpaced", pending>>20)
			}
			var r *scResult
			b.Run(name, func(b *testing.B) {
				if limCase(b, r == nil) {
					r = scRun(b, pending, paced)
				}
				r.report(b)
			})
		}
	}
}

// scRun runs one slow-consumer case on a fresh broker. A paced producer
// stays within half of maxPending of the healthy subscriber.
func scRun(b *testing.B, maxPending int64, paced bool) *scResult {
	drops := newSCDrops()
	s := startBrokerWith(b, func(o *brokerd.Options) {
		o.MaxPendingBytes = maxPending
		l := logrus.New()
		l.SetOutput(io.Discard)
		l.SetLevel(logrus.WarnLevel)
		l.AddHook(drops)
		o.Log = logrus.NewEntry(l)
	})
	ctx, cancel := context.WithTimeout(context.Background(), limReceipt)
	defer cancel()
	r := &scResult{}

	slow, slowR := scSubscribeRaw(b, s.Addr())
	hnc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		b.Fatal(err)
	}
	hc, err := stompclient.NewConn(ctx, hnc, stompclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { hc.Close() })
	sub, err := hc.SubscribeReceipt(ctx, scTopic, stompclient.AckAuto)
	if err != nil {
		b.Fatal(err)
	}
	healthy := limCount(hc, sub, false)
	p := dial(b, s.Addr())

	// The hook notes the producer's and the healthy subscriber's counts
	// at the moment of the drop, on the broker's goroutine that drops.
	var sent atomic.Int64
	drops.mu.Lock()
	drops.watch = slow.LocalAddr().String()
	drops.onDrop = func() { r.sentAtDrop, r.healthyAtDrop = sent.Load(), healthy.n.Load() }
	drops.mu.Unlock()

	window := max(1, maxPending/2/scBody)
	body := make([]byte, scBody)
	publish := func() {
		for paced && sent.Load()-healthy.n.Load() >= window {
			select {
			case <-healthy.progress:
			case err := <-healthy.ended:
				b.Fatalf("the healthy subscriber: %v", err)
			case <-time.After(limStall):
				b.Fatalf("the healthy subscriber got nothing for %v", limStall)
			}
		}
		if err := p.Send(scTopic, body); err != nil {
			b.Fatalf("SEND %d: %v", sent.Load(), err)
		}
		sent.Add(1)
	}
	start := time.Now()
	for drop := false; !drop; {
		select {
		case <-drops.dropped:
			drop = true
		default:
			if time.Since(start) > scDropLimit {
				b.Fatalf("the slow subscriber was not dropped within %v (%d messages sent)", scDropLimit, sent.Load())
			}
			publish()
		}
	}
	dropAt, pending, _ := drops.get(drops.watch)
	r.drop, r.pending = dropAt.Sub(start), pending
	for time.Since(dropAt) < scAfter {
		publish()
	}
	if err := p.SendReceipt(ctx, scTopic, body); err != nil {
		b.Fatalf("fence: %v", err)
	}
	sent.Add(1)
	r.after = time.Since(dropAt)
	r.sentAfter = sent.Load() - r.sentAtDrop

	last, err := healthy.wait(sent.Load())
	_, _, r.healthyDropped = drops.get(hnc.LocalAddr().String())
	switch {
	case err == nil:
	case r.healthyDropped && !paced:
		// Reported, not failed: see the top of the file.
		last = time.Unix(0, healthy.last.Load())
	default:
		b.Fatalf("the healthy subscriber: %v (dropped as slow: %v)", err, r.healthyDropped)
	}
	r.healthyAfter = last.Sub(dropAt)
	r.healthyGotAfter = healthy.n.Load() - r.healthyAtDrop

	frames, end := scDrainRaw(slow, slowR)
	r.slowBytes = int64(frames) * scBody
	metrics, err := scScrape(s.AdminAddr())
	if err != nil {
		b.Fatal(err)
	}
	var reasons []string
	var counted string
	for _, l := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(l, "brokerd_connections_closed_total"); ok {
			reasons = append(reasons, v)
		}
		if v, ok := strings.CutPrefix(l, "brokerd_slow_consumers_dropped_total "); ok {
			counted = v
		}
	}
	if n := strconv.Itoa(drops.count()); counted != n {
		b.Errorf("brokerd_slow_consumers_dropped_total %s, but the log has %s drops", counted, n)
	}
	b.Logf("max_pending_bytes %d MiB, paced %v: the slow subscriber dropped after %v with %.1f MiB waiting, %.1f MiB published by then; its socket had %d MESSAGEs (%.1f MiB), then %s; the healthy subscriber got %d of %d messages (dropped: %v); closes by reason: %s",
		maxPending>>20, paced, r.drop.Round(time.Millisecond), mib(r.pending), mib(r.sentAtDrop*scBody),
		frames, mib(r.slowBytes), end, healthy.n.Load(), sent.Load(), r.healthyDropped, strings.Join(reasons, ", "))
	return r
}

// scSubscribeRaw connects and subscribes to scTopic over a bare socket,
// which the caller then leaves unread.
func scSubscribeRaw(b *testing.B, addr string) (net.Conn, *frame.Reader) {
	b.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	r := frame.NewReader(nc, frame.Limits{MaxBody: -1})
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	for _, step := range []struct {
		f    *frame.Frame
		want string
	}{
		{frame.New(frame.CONNECT, "accept-version", "1.2", "host", "/"), frame.CONNECTED},
		{frame.New(frame.SUBSCRIBE, "id", "slow", "destination", scTopic, "receipt", "r"), frame.RECEIPT},
	} {
		if _, err := nc.Write(frame.Append(nil, step.f, frame.V12)); err != nil {
			b.Fatal(err)
		}
		f, err := r.Read()
		if err != nil {
			b.Fatal(err)
		}
		if f.Command != step.want {
			b.Fatalf("%s: got %v, want %s", step.f.Command, f, step.want)
		}
		r.SetVersion(frame.V12)
	}
	nc.SetDeadline(time.Time{})
	return nc, r
}

// scDrainRaw reads the MESSAGEs the slow subscriber's socket holds until
// the connection ends, and says how it ended.
func scDrainRaw(nc net.Conn, r *frame.Reader) (messages int, end string) {
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := r.Read()
		switch {
		case err != nil:
			return messages, "no ERROR frame: " + err.Error()
		case f.Command == frame.ERROR:
			return messages, fmt.Sprintf("an ERROR frame %q", f.Value("message"))
		}
		messages++
	}
}

// scScrape returns the text of admin's /metrics.
func scScrape(admin string) (string, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + admin + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New("GET /metrics: " + resp.Status)
	}
	return string(text), nil
}
