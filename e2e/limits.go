package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"handover/frame"
	"handover/stompclient"
)

// This file is the machinery of the limits case (issue 14): producers that
// meet a full disk, a consumer that pauses and drains, and a topic
// subscriber that never reads, against brokers whose limits are set small
// through ClusterOptions.BrokerConfig.

// diskFullText is what brokerd's ERROR for a persistent SEND refused past
// max_disk (or under disk_reserve) says.
const diskFullText = "disk is full"

// Metric reads one unlabelled series (a counter or a gauge) of b's
// /metrics. Each brokerd process counts from zero.
func (c *Cluster) Metric(b *Broker, name string) (float64, error) {
	resp, err := c.http.Get("http://" + b.Admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s/metrics: %s", b.Admin, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("GET %s/metrics: %w", b.Admin, err)
	}
	return 0, fmt.Errorf("%s/metrics has no %s", b.Admin, name)
}

// MasterKill is one SIGKILL of the master and its recovery.
type MasterKill struct {
	From, To string
	At       time.Time
	// Takeover is from the kill to the other broker serving master with a
	// higher epoch; Restarted how long the killed one then took to be a
	// slave again.
	Takeover, Restarted time.Duration
}

// kill9Master SIGKILLs m, the master at epoch st.Epoch, waits for another
// broker to serve master with a higher epoch, and starts m again as a
// slave, as a supervisor would. The caller finds the master beforehand, so
// that the kill can land at a chosen moment.
func (c *Cluster) kill9Master(m *Broker, st BrokerStatus) (MasterKill, error) {
	var k MasterKill
	k.From = m.Name
	m.proc.expected.Store(true)
	k.At = time.Now()
	if err := m.proc.signal(syscall.SIGKILL); err != nil {
		return k, err
	}
	nm, nst, err := c.waitMaster(m, takeoverTimeout)
	if err != nil {
		return k, fmt.Errorf("no takeover after %s was killed: %w", m.Name, err)
	}
	k.Takeover, k.To = time.Since(k.At), nm.Name
	if nst.Epoch <= st.Epoch {
		return k, fmt.Errorf("%s took over with epoch %d, not above %s's %d", nm.Name, nst.Epoch, m.Name, st.Epoch)
	}
	if _, err := m.proc.wait(exitTimeout); err != nil {
		return k, err
	}
	start := time.Now()
	if err := c.startBroker(m); err != nil {
		return k, err
	}
	if err := c.waitRole(m, "slave", restartTimeout); err != nil {
		return k, fmt.Errorf("restarted %s: %w", m.Name, err)
	}
	k.Restarted = time.Since(start)
	return k, nil
}

// DiskProducerOptions shape the producers of the full-disk case.
type DiskProducerOptions struct {
	// Producers is how many connections produce at once; zero means 1.
	Producers int
	// Queue is the destination; default /queue/limits.
	Queue string
	// BodySize is each message's body size; zero means 1 KiB.
	BodySize int
	// Rate caps each producer's SENDs per second, so that a consumer
	// that drains outruns the producers whatever the machine; zero means
	// as fast as the broker takes them.
	Rate int
	// Backoff is how long a producer refused for a full disk waits
	// before it connects again; zero means 50ms.
	Backoff time.Duration
}

func (o *DiskProducerOptions) defaults() {
	if o.Producers == 0 {
		o.Producers = 1
	}
	if o.Queue == "" {
		o.Queue = "/queue/limits"
	}
	if o.BodySize == 0 {
		o.BodySize = 1024
	}
	if o.Backoff == 0 {
		o.Backoff = 50 * time.Millisecond
	}
}

// DiskProducers are Go producers of persistent messages, one SEND with a
// receipt at a time (seq headers "dpK-N", unique over the run). A SEND
// refused with brokerd's "disk is full" ERROR got no RECEIPT: its seq stays
// sent and never receipted in the Recorder, and it is noted as refused,
// which also means it must never be delivered. The broker closes the
// connection after its ERROR; the producer backs off and connects again. A
// SEND cut short by a dead master is in doubt, as in the other workloads.
// Producers dial the brokers directly, in turn (only the master's STOMP port
// is open).
type DiskProducers struct {
	c    *Cluster
	opts DiskProducerOptions
	rec  *Recorder
	body []byte

	stop chan struct{}
	ctx  context.Context
	quit context.CancelFunc
	wg   sync.WaitGroup

	mu sync.Mutex
	// refused maps each refused seq to when its ERROR came.
	refused map[string]time.Time
	// unexpected are ERROR frames other than a full disk: none should come.
	unexpected []string
	// errs are the last few reasons a connection was given up.
	errs []string
}

// StartDiskProducers starts the producers; Stop ends them.
func StartDiskProducers(c *Cluster, rec *Recorder, opts DiskProducerOptions) *DiskProducers {
	opts.defaults()
	p := &DiskProducers{c: c, opts: opts, rec: rec, body: bytes.Repeat([]byte("d"), opts.BodySize),
		stop: make(chan struct{}), refused: map[string]time.Time{}}
	p.ctx, p.quit = context.WithCancel(context.Background())
	for i := range opts.Producers {
		p.wg.Add(1)
		go p.run(fmt.Sprintf("disk-producer-%d", i), fmt.Sprintf("dp%d", i))
	}
	c.t.Cleanup(p.Stop)
	return p
}

// Stop ends every producer after its SEND in flight; idempotent.
func (p *DiskProducers) Stop() {
	p.mu.Lock()
	if !isDone(p.stop) {
		close(p.stop)
	}
	p.mu.Unlock()
	p.quit()
	p.wg.Wait()
}

// RefusedSince counts the SENDs refused for a full disk at or after t.
func (p *DiskProducers) RefusedSince(t time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, at := range p.refused {
		if !at.Before(t) {
			n++
		}
	}
	return n
}

// FirstRefusalSince is the first refusal at or after t.
func (p *DiskProducers) FirstRefusalSince(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var first time.Time
	for _, at := range p.refused {
		if !at.Before(t) && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first, !first.IsZero()
}

// Refused lists the seqs refused for a full disk.
func (p *DiskProducers) Refused() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.refused))
	for seq := range p.refused {
		out = append(out, seq)
	}
	return out
}

// Unexpected returns the ERROR frames producers got other than a full
// disk's.
func (p *DiskProducers) Unexpected() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.unexpected...)
}

// Errors returns the last reasons producers gave up a connection.
func (p *DiskProducers) Errors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.errs...)
}

// failed notes why name gave up its connection and reports whether it was
// a refusal for a full disk.
func (p *DiskProducers) failed(name, seq string, err error) (diskFull bool) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	var se *stompclient.ServerError
	if errors.As(err, &se) {
		if strings.Contains(se.Message, diskFullText) {
			p.refused[seq] = now
			return true
		}
		p.unexpected = append(p.unexpected, fmt.Sprintf("%s %s SEND %s: %s", now.Format("15:04:05.000"), name, seq, se.Message))
	}
	p.errs = append(p.errs, fmt.Sprintf("%s %s SEND %s: %v", now.Format("15:04:05.000"), name, seq, err))
	if len(p.errs) > 20 {
		p.errs = p.errs[len(p.errs)-20:]
	}
	return false
}

func (p *DiskProducers) run(name, id string) {
	defer p.wg.Done()
	var every time.Duration // between SEND starts, at most Rate a second
	if p.opts.Rate > 0 {
		every = time.Second / time.Duration(p.opts.Rate)
	}
	n := 0
	for !isDone(p.stop) {
		conn, err := dialAny(p.ctx, p.c.Brokers, p.stop)
		if err != nil {
			continue // stopped
		}
		p.rec.connected(name)
		for !isDone(p.stop) {
			began := time.Now()
			n++
			seq := id + "-" + strconv.Itoa(n)
			p.rec.sending(seq, began.UnixNano())
			ctx, cancel := context.WithTimeout(context.Background(), receiptTimeout)
			err := conn.SendReceipt(ctx, p.opts.Queue, p.body,
				frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "seq", Value: seq})
			cancel()
			if err != nil {
				if p.failed(name, seq, err) {
					conn.Close()
					pause(p.opts.Backoff, p.stop) // a refused producer backs off
				}
				break
			}
			p.rec.receipted(name, seq, time.Now().UnixNano())
			if d := every - time.Since(began); d > 0 {
				pause(d, p.stop) // the rate cap: deliberate pacing
			}
		}
		conn.Close()
	}
}

// PausableConsumer is a consumer with a client-individual subscription and
// an ACK per MESSAGE that can be paused: while paused it takes nothing from
// its subscription, so its client stops reading the socket, TCP pushes back,
// and the broker keeps the rest of the queue (its prefetch and
// max_pending_bytes bound what is in flight to it). While paused it does not
// reconnect either. It dials the brokers directly, in turn, and after the
// connection ends connects again.
type PausableConsumer struct {
	c     *Cluster
	rec   *Recorder
	name  string
	queue string

	stop chan struct{}
	ctx  context.Context
	quit context.CancelFunc
	wg   sync.WaitGroup

	mu sync.Mutex
	// resume is closed while the consumer runs; while it is paused it is
	// an open channel that Resume closes.
	resume     chan struct{}
	deliveries int
	// waiters are closed once deliveries reaches their count.
	waiters map[chan struct{}]int
	// serverErrs are the ERROR frames that ended its connections: none
	// should come, as its ACKs must work on a full disk too.
	serverErrs []string
}

// StartPausableConsumer starts a running consumer of queue; Stop ends it.
func StartPausableConsumer(c *Cluster, rec *Recorder, name, queue string) *PausableConsumer {
	p := &PausableConsumer{c: c, rec: rec, name: name, queue: queue, stop: make(chan struct{}), resume: make(chan struct{}),
		waiters: map[chan struct{}]int{}}
	close(p.resume)
	p.ctx, p.quit = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.run()
	c.t.Cleanup(p.Stop)
	return p
}

// Pause stops the consumer taking messages (after at most the one it is
// handling); idempotent.
func (p *PausableConsumer) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if isDone(p.resume) {
		p.resume = make(chan struct{})
	}
}

// Resume lets a paused consumer go on; idempotent.
func (p *PausableConsumer) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !isDone(p.resume) {
		close(p.resume)
	}
}

// Stop ends the consumer; idempotent.
func (p *PausableConsumer) Stop() {
	p.mu.Lock()
	if !isDone(p.stop) {
		close(p.stop)
	}
	p.mu.Unlock()
	p.quit()
	p.wg.Wait()
}

// Deliveries counts the MESSAGEs the consumer has taken.
func (p *PausableConsumer) Deliveries() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.deliveries
}

// AfterDeliveries returns a channel closed once the consumer has taken n
// MESSAGEs in all: a kill can then land mid-drain, not a poll later.
func (p *PausableConsumer) AfterDeliveries(n int) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := make(chan struct{})
	if p.deliveries >= n {
		close(ch)
	} else {
		p.waiters[ch] = n
	}
	return ch
}

// ServerErrors returns the ERROR frames that ended its connections.
func (p *PausableConsumer) ServerErrors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.serverErrs...)
}

// running waits while the consumer is paused; false once it is stopped.
func (p *PausableConsumer) running() bool {
	p.mu.Lock()
	resume := p.resume
	p.mu.Unlock()
	select {
	case <-resume:
		return !isDone(p.stop)
	case <-p.stop:
		return false
	}
}

func (p *PausableConsumer) run() {
	defer p.wg.Done()
	for p.running() {
		conn, err := dialAny(p.ctx, p.c.Brokers, p.stop)
		if err != nil {
			continue // stopped
		}
		p.rec.connected(p.name)
		sub, err := conn.Subscribe(p.queue, stompclient.AckClientIndividual)
		if err == nil {
			p.consume(conn, sub)
		}
		conn.Close()
	}
}

// consume handles sub's messages until the connection ends or the
// consumer stops.
func (p *PausableConsumer) consume(conn *stompclient.Conn, sub *stompclient.Subscription) {
	for p.running() {
		select {
		case m, ok := <-sub.C():
			if !ok {
				var se *stompclient.ServerError
				if errors.As(conn.Err(), &se) {
					p.mu.Lock()
					p.serverErrs = append(p.serverErrs, fmt.Sprintf("%s: %s", time.Now().Format("15:04:05.000"), se.Message))
					p.mu.Unlock()
				}
				return
			}
			p.rec.deliver(p.name, m.Value("seq"), m.Value("redelivered") == "true", time.Now().UnixNano())
			p.mu.Lock()
			p.deliveries++
			for ch, n := range p.waiters {
				if p.deliveries >= n {
					close(ch)
					delete(p.waiters, ch)
				}
			}
			p.mu.Unlock()
			// An ACK lost with the connection makes the broker
			// redeliver: a duplicate, never a loss.
			conn.Ack(m)
		case <-p.stop:
			return
		}
	}
}

// TopicDrop is what dropSlowSubscriber saw on one master.
type TopicDrop struct {
	Broker string
	// Bytes is what the publisher had sent, every SEND receipted, when the
	// broker counted the subscriber that never reads as dropped; Took is
	// from the first SEND to that count in /metrics. Published counts
	// the topic messages, the few sent after the drop included.
	Bytes     int64
	Took      time.Duration
	Published int
	// Ended is how the dropped subscriber's connection ended, as it found
	// once it read again; SawError whether the broker's "slow consumer"
	// ERROR reached it (the broker gives the writer a second for it).
	Ended    error
	SawError bool
	// Reader is how many topic messages the subscriber that reads got:
	// every one published, the drop and after it.
	Reader int
}

// how says how the dropped subscriber learnt of it.
func (d TopicDrop) how() string {
	if d.SawError {
		return "it got the slow consumer ERROR"
	}
	return fmt.Sprintf("no ERROR reached it: %v", d.Ended)
}

// slowRcvBuf is the receive buffer of the subscriber that never reads,
// set before it connects so that its TCP window stays small: the broker's
// send buffer (up to net.ipv4.tcp_wmem's maximum) and max_pending_bytes
// are then most of what the publisher must fill before the drop.
const slowRcvBuf = 8 << 10

// dropSlowSubscriber runs the slow-consumer step against master m: a
// topic subscriber that never reads, one that reads, and a publisher of
// receipted, non-persistent bodySize messages, all connected to m. It
// publishes until m's /metrics counts a slow consumer dropped, then
// publishes a few more and checks that the publisher got every RECEIPT,
// the reading subscriber every message (it was not hurt), and the one that
// never reads had its connection closed.
func dropSlowSubscriber(c *Cluster, m *Broker, topic string, bodySize int, timeout time.Duration) (TopicDrop, error) {
	const metric = "brokerd_slow_consumers_dropped_total"
	d := TopicDrop{Broker: m.Name}
	ctx, cancel := context.WithTimeout(c.t.Context(), timeout)
	defer cancel()
	before, err := c.Metric(m, metric)
	if err != nil {
		return d, err
	}
	opts := stompclient.Options{ConnectTimeout: 5 * time.Second}

	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, slowRcvBuf)
		})
		return errors.Join(err, serr)
	}}
	nc, err := dialer.DialContext(ctx, "tcp", m.Listen)
	if err != nil {
		return d, fmt.Errorf("slow subscriber: %w", err)
	}
	slowOpts := opts
	slowOpts.Buffer = 1
	slow, err := stompclient.NewConn(ctx, nc, slowOpts)
	if err != nil {
		return d, fmt.Errorf("slow subscriber: %w", err)
	}
	defer slow.Close()
	// Its subscription's channel is never read until the drop: the
	// client's reader blocks on it and stops reading the socket.
	slowSub, err := slow.SubscribeReceipt(ctx, topic, stompclient.AckAuto)
	if err != nil {
		return d, fmt.Errorf("slow subscriber: SUBSCRIBE: %w", err)
	}

	reader, err := stompclient.Dial(ctx, m.Listen, opts)
	if err != nil {
		return d, fmt.Errorf("reading subscriber: %w", err)
	}
	defer reader.Close()
	readerSub, err := reader.SubscribeReceipt(ctx, topic, stompclient.AckAuto)
	if err != nil {
		return d, fmt.Errorf("reading subscriber: SUBSCRIBE: %w", err)
	}
	var (
		mu   sync.Mutex
		got  = map[string]int{}
		sent int64
	)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for f := range readerSub.C() {
			mu.Lock()
			got[f.Value("seq")]++
			mu.Unlock()
		}
	}()
	defer func() {
		reader.Close()
		<-readerDone
	}()

	pub, err := stompclient.Dial(ctx, m.Listen, opts)
	if err != nil {
		return d, fmt.Errorf("publisher: %w", err)
	}
	defer pub.Close()
	body := bytes.Repeat([]byte("t"), bodySize)
	publish := func() error {
		seq := "t-" + strconv.Itoa(d.Published)
		if err := pub.SendReceipt(ctx, topic, body, frame.Header{Key: "seq", Value: seq}); err != nil {
			return fmt.Errorf("publisher: SEND %s (%d KiB published): %w", seq, sent>>10, err)
		}
		d.Published++
		sent += int64(bodySize)
		return nil
	}
	start := time.Now()
	for dropped := false; !dropped; {
		for range 8 {
			if err := publish(); err != nil {
				if ctx.Err() != nil {
					return d, fmt.Errorf("no slow consumer dropped by %s after %d KiB published to a subscriber that never reads, in %v: %w",
						m.Name, sent>>10, time.Since(start).Round(time.Millisecond), err)
				}
				return d, err
			}
		}
		now, err := c.Metric(m, metric)
		if err != nil {
			return d, err
		}
		dropped = now > before
	}
	d.Took, d.Bytes = time.Since(start), sent
	// The others carry on: the publisher's next SENDs are receipted, and
	// the subscriber that reads gets every message.
	for range 16 {
		if err := publish(); err != nil {
			return d, err
		}
	}
	err = poll(time.Until(deadlineOf(ctx)), func() error {
		if isDone(readerDone) {
			return stop(fmt.Errorf("the subscriber that reads lost its connection: %v", reader.Err()))
		}
		mu.Lock()
		defer mu.Unlock()
		d.Reader = len(got)
		for i := range d.Published {
			switch n := got["t-"+strconv.Itoa(i)]; {
			case n == 0:
				return fmt.Errorf("the subscriber that reads has %d of %d topic messages, not t-%d", len(got), d.Published, i)
			case n > 1:
				return stop(fmt.Errorf("the subscriber that reads got t-%d %d times", i, n))
			}
		}
		return nil
	})
	if err != nil {
		return d, err
	}
	// The one that never read reads now: what was in its buffers, then
	// the end of the connection the broker closed.
	for open := true; open; {
		select {
		case _, open = <-slowSub.C():
		case <-ctx.Done():
			return d, fmt.Errorf("the subscriber that never read is still connected %v after a slow consumer was counted: %s's drop was someone else", time.Since(start), m.Name)
		}
	}
	d.Ended = slow.Err()
	var se *stompclient.ServerError
	d.SawError = errors.As(d.Ended, &se) && strings.Contains(se.Message, "slow consumer")
	return d, nil
}

// deadlineOf is ctx's deadline (ctx must have one).
func deadlineOf(ctx context.Context) time.Time {
	t, _ := ctx.Deadline()
	return t
}
