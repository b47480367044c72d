package e2e

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"handover/frame"
	"handover/stompclient"
)

// Recorder is what the workload saw, from the clients' side only: every
// SEND attempted, every RECEIPT, every MESSAGE delivered. Seqs are
// "PRODUCER-N", unique over the run.
type Recorder struct {
	mu        sync.Mutex
	sentAt    map[string]int64 // seq → unix ns when its SEND was attempted
	receiptAt map[string]int64 // seq → unix ns when its RECEIPT arrived
	delivered map[string]int   // seq → how many times a consumer got it
	// deliveries counts MESSAGE frames; redelivered those flagged
	// redelivered:true; byConsumer splits deliveries by consumer.
	deliveries, redelivered int
	// unflaggedDups counts repeat deliveries that came without
	// redelivered:true.
	unflaggedDups int
	byConsumer    map[string]int
	byProducer    map[string]int   // producer → RECEIPTs
	reconnects    map[string]int   // client → connections made
	lastBy        map[string]int64 // client → its latest RECEIPT or delivery
	// broken lists, for clients that never reconnect, every end of a
	// connection the client did not ask for ("client: why").
	broken []string
}

func newRecorder() *Recorder {
	return &Recorder{
		sentAt:     map[string]int64{},
		receiptAt:  map[string]int64{},
		delivered:  map[string]int{},
		byConsumer: map[string]int{},
		byProducer: map[string]int{},
		reconnects: map[string]int{},
		lastBy:     map[string]int64{},
	}
}

func (r *Recorder) sending(seq string, at int64) {
	r.mu.Lock()
	r.sentAt[seq] = at
	r.mu.Unlock()
}

func (r *Recorder) receipted(producer, seq string, at int64) {
	r.mu.Lock()
	r.receiptAt[seq] = at
	r.byProducer[producer]++
	r.lastBy[producer] = max(r.lastBy[producer], at)
	r.mu.Unlock()
}

func (r *Recorder) deliver(consumer, seq string, redelivered bool, at int64) {
	r.mu.Lock()
	r.delivered[seq]++
	if r.delivered[seq] > 1 && !redelivered {
		r.unflaggedDups++
	}
	r.deliveries++
	r.byConsumer[consumer]++
	r.lastBy[consumer] = max(r.lastBy[consumer], at)
	if redelivered {
		r.redelivered++
	}
	r.mu.Unlock()
}

// idleSince lists the clients, of those named, with no RECEIPT or delivery
// at or after t.
func (r *Recorder) idleSince(clients []string, t int64) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range clients {
		if r.lastBy[c] < t {
			out = append(out, c)
		}
	}
	return out
}

// receiptsBetween counts RECEIPTs that arrived in [from, to).
func (r *Recorder) receiptsBetween(from, to int64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, at := range r.receiptAt {
		if at >= from && at < to {
			n++
		}
	}
	return n
}

// broke records that a client's only connection ended, or failed, unasked.
func (r *Recorder) broke(client, why string) {
	r.mu.Lock()
	r.broken = append(r.broken, client+": "+why)
	r.mu.Unlock()
}

func (r *Recorder) connected(client string) {
	r.mu.Lock()
	r.reconnects[client]++
	r.mu.Unlock()
}

// undelivered lists receipted seqs no consumer has got yet, sorted.
func (r *Recorder) undelivered() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for seq := range r.receiptAt {
		if r.delivered[seq] == 0 {
			out = append(out, seq)
		}
	}
	slices.Sort(out)
	return out
}

// WorkloadOptions shapes the clients. All of them know only the sidecar's
// address.
type WorkloadOptions struct {
	// Queue is the one destination; default /queue/chaos.
	Queue string
	// GoProducers and GoConsumers use stompclient; PyProducers and
	// PyConsumers run testdata/stomppy_*.py on Debian's stomp.py.
	GoProducers, GoConsumers, PyProducers, PyConsumers int
	// Pace is how long a producer waits after a RECEIPT before its next
	// SEND: it sets the load and the resolution of the measured gaps.
	Pace time.Duration
	// NoReconnect makes every client a legacy client that never reconnects
	// (for protocol = "stomp"): one connection for the whole run, and any
	// end of it, an ERROR or a RECEIPT that does not come is recorded as
	// broken (Report.Broken) and ends the client. stomp.py clients run
	// testdata/stomppy_oneconn.py instead.
	NoReconnect bool
	// QueuePerConsumer gives each consumer a queue of its own (Queue-0,
	// Queue-1, … in start order: stomp.py consumers first) and spreads the
	// producers over them round-robin (Go producers first). With one
	// consumer per queue, a message the new master redelivers after a
	// failover can only go back to the consumer that had it.
	QueuePerConsumer bool
}

func (o *WorkloadOptions) defaults() {
	if o.Queue == "" {
		o.Queue = "/queue/chaos"
	}
}

// consumerQueue is the queue of the k-th consumer (stomp.py ones first).
func (o *WorkloadOptions) consumerQueue(k int) string {
	if !o.QueuePerConsumer {
		return o.Queue
	}
	return fmt.Sprintf("%s-%d", o.Queue, k)
}

// producerQueue is the queue of the k-th producer (Go ones first).
func (o *WorkloadOptions) producerQueue(k int) string {
	if !o.QueuePerConsumer || o.GoConsumers+o.PyConsumers == 0 {
		return o.Queue
	}
	return o.consumerQueue(k % (o.GoConsumers + o.PyConsumers))
}

// Workload is the running clients.
type Workload struct {
	c    *Cluster
	opts WorkloadOptions
	rec  *Recorder

	// clients names every producer and consumer, for the check that
	// each of them works again after a fault.
	clients []string

	stopProd, stopCons       chan struct{}
	prodCtx, consCtx         context.Context
	cancelProd, cancelCons   context.CancelFunc
	prodWG, consWG           sync.WaitGroup
	pyProducers, pyConsumers []*proc
}

// Python is Debian's interpreter, which has python3-stomp.
const Python = "/usr/bin/python3"

// StartWorkload starts the consumers, then the producers.
func StartWorkload(c *Cluster, opts WorkloadOptions) (*Workload, error) {
	opts.defaults()
	w := &Workload{c: c, opts: opts, rec: newRecorder(), stopProd: make(chan struct{}), stopCons: make(chan struct{})}
	// The contexts only abort connecting (nothing is at stake while a
	// client waits for CONNECTED); a SEND in flight always finishes.
	w.prodCtx, w.cancelProd = context.WithCancel(context.Background())
	w.consCtx, w.cancelCons = context.WithCancel(context.Background())
	c.t.Cleanup(func() {
		w.stopGo()
	})
	host, port, _ := net.SplitHostPort(c.Listen)
	for i := range opts.PyConsumers {
		name := fmt.Sprintf("py-consumer-%d", i)
		c.logs.add(name)
		args := []string{"testdata/stomppy_consumer.py", host, port, opts.consumerQueue(i)}
		if opts.NoReconnect {
			args = []string{"testdata/stomppy_oneconn.py", "consumer", host, port, opts.consumerQueue(i)}
		}
		p, err := startProc(c.t, c.logs.dir, name, w.pyLine(name), c.exited, Python, args...)
		if err != nil {
			return nil, err
		}
		w.pyConsumers = append(w.pyConsumers, p)
		w.clients = append(w.clients, name)
	}
	for i := range opts.GoConsumers {
		name := fmt.Sprintf("go-consumer-%d", i)
		w.clients = append(w.clients, name)
		w.consWG.Add(1)
		go w.goConsumer(name, opts.consumerQueue(opts.PyConsumers+i))
	}
	for i := range opts.PyProducers {
		name := fmt.Sprintf("py-producer-%d", i)
		c.logs.add(name)
		args := []string{"testdata/stomppy_producer.py", host, port, opts.producerQueue(opts.GoProducers + i), fmt.Sprintf("py%d", i),
			strconv.Itoa(int(opts.Pace / time.Millisecond))}
		if opts.NoReconnect {
			args = append([]string{"testdata/stomppy_oneconn.py", "producer"}, args[1:]...)
		}
		p, err := startProc(c.t, c.logs.dir, name, w.pyLine(name), c.exited, Python, args...)
		if err != nil {
			return nil, err
		}
		w.pyProducers = append(w.pyProducers, p)
		w.clients = append(w.clients, name)
	}
	for i := range opts.GoProducers {
		name := fmt.Sprintf("go-producer-%d", i)
		w.clients = append(w.clients, name)
		w.prodWG.Add(1)
		go w.goProducer(name, fmt.Sprintf("go%d", i), opts.producerQueue(i))
	}
	return w, nil
}

// stopGo stops the Go clients, if they still run.
func (w *Workload) stopGo() {
	w.cancelProd()
	w.cancelCons()
	for _, ch := range []chan struct{}{w.stopProd, w.stopCons} {
		if !isDone(ch) {
			close(ch)
		}
	}
	w.prodWG.Wait()
	w.consWG.Wait()
}

// pyLine parses a stomp.py client's stdout (see the scripts' docs).
func (w *Workload) pyLine(client string) func(string) {
	return func(line string) {
		f := strings.Fields(line)
		if len(f) == 0 {
			return
		}
		ns := func(i int) int64 {
			if i >= len(f) {
				return 0
			}
			n, _ := strconv.ParseInt(f[i], 10, 64)
			return n
		}
		switch {
		case f[0] == "sending" && len(f) == 3:
			w.rec.sending(f[1], ns(2))
		case f[0] == "receipted" && len(f) == 3:
			w.rec.receipted(client, f[1], ns(2))
		case f[0] == "delivered" && len(f) == 4:
			w.rec.deliver(client, f[1], f[2] == "true", ns(3))
		case f[0] == "connected":
			w.rec.connected(client)
		case f[0] == "broken":
			w.rec.broke(client, strings.Join(f[1:], " "))
		}
	}
}

// stopPy stops stomp.py clients with SIGTERM and waits for them.
func stopPy(ps []*proc) error {
	for _, p := range ps {
		p.expected.Store(true)
		if err := p.signal(syscall.SIGTERM); err != nil {
			return err
		}
	}
	for _, p := range ps {
		st, err := p.wait(20 * time.Second)
		if err != nil {
			return err
		}
		if !st.Success() {
			return fmt.Errorf("%s: %v", p.name, st)
		}
	}
	return nil
}

// StopProducers stops every producer after its SEND in flight.
func (w *Workload) StopProducers() error {
	close(w.stopProd)
	w.cancelProd()
	err := stopPy(w.pyProducers)
	w.prodWG.Wait()
	return err
}

// Drain waits until every receipted seq has been delivered or timeout
// passes, and returns those still undelivered.
func (w *Workload) Drain(timeout time.Duration) []string {
	var missing []string
	poll(timeout, func() error {
		missing = w.rec.undelivered()
		if len(missing) > 0 {
			return fmt.Errorf("%d undelivered", len(missing))
		}
		return nil
	})
	return missing
}

// StopConsumers stops every consumer.
func (w *Workload) StopConsumers() error {
	close(w.stopCons)
	w.cancelCons()
	err := stopPy(w.pyConsumers)
	w.consWG.Wait()
	return err
}

// reconnectDelay is how long a client waits after a failed connection
// before trying again, as a legacy client's reconnect loop would.
const reconnectDelay = 20 * time.Millisecond

// receiptTimeout bounds the wait for one RECEIPT: a persistent SEND needs
// one fsync, so this long without one means the connection is dead in all
// but name (a frozen broker behind it).
const receiptTimeout = 5 * time.Second

// onceReceiptTimeout bounds the wait for one RECEIPT for a client that
// never reconnects: longer than the sidecar holds a session waiting for a
// master (30s), so a slow resume shows in the figures rather than ending
// the client.
const onceReceiptTimeout = 40 * time.Second

// connectTimeout is longer than the sidecar holds a client while there is
// no master (30s), so a held client is given every chance.
const connectTimeout = 40 * time.Second

// pause waits d or until stop closes, whichever comes first.
func pause(d time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
	}
}

// goProducer is a legacy producer on stompclient: one receipted persistent
// SEND at a time, and after any error a new connection to the same address.
// A SEND without its RECEIPT is in doubt; its seq is never reused.
func (w *Workload) goProducer(name, id, queue string) {
	defer w.prodWG.Done()
	if w.opts.NoReconnect {
		w.goProducerOnce(name, id, queue)
		return
	}
	body := []byte(strings.Repeat("x", 100))
	n := 0
	for !isDone(w.stopProd) {
		conn, err := stompclient.Dial(w.prodCtx, w.c.Listen, stompclient.Options{ConnectTimeout: connectTimeout})
		if err != nil {
			pause(reconnectDelay, w.stopProd)
			continue
		}
		w.rec.connected(name)
		for !isDone(w.stopProd) {
			n++
			seq := id + "-" + strconv.Itoa(n)
			w.rec.sending(seq, time.Now().UnixNano())
			ctx, cancel := context.WithTimeout(context.Background(), receiptTimeout)
			err := conn.SendReceipt(ctx, queue, body,
				frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "seq", Value: seq})
			cancel()
			if err != nil {
				break
			}
			w.rec.receipted(name, seq, time.Now().UnixNano())
			if w.opts.Pace > 0 {
				pause(w.opts.Pace, w.stopProd)
			}
		}
		conn.Close()
	}
}

// goConsumer is a legacy consumer on stompclient: a client-individual
// subscription, an ACK per MESSAGE, and after the connection ends a new one
// to the same address.
func (w *Workload) goConsumer(id, queue string) {
	defer w.consWG.Done()
	if w.opts.NoReconnect {
		w.goConsumerOnce(id, queue)
		return
	}
	for !isDone(w.stopCons) {
		conn, err := stompclient.Dial(w.consCtx, w.c.Listen, stompclient.Options{ConnectTimeout: connectTimeout})
		if err != nil {
			pause(reconnectDelay, w.stopCons)
			continue
		}
		w.rec.connected(id)
		sub, err := conn.Subscribe(queue, stompclient.AckClientIndividual)
		if err != nil {
			conn.Close()
			continue
		}
	recv:
		for {
			select {
			case m, ok := <-sub.C():
				if !ok {
					break recv // the connection ended
				}
				w.rec.deliver(id, m.Value("seq"), m.Value("redelivered") == "true", time.Now().UnixNano())
				// An ACK lost with the connection makes the broker
				// redeliver: counted as a duplicate, never as a loss.
				conn.Ack(m)
			case <-w.stopCons:
				break recv
			}
		}
		conn.Close()
	}
}

// goProducerOnce is goProducer for a client that never reconnects: one
// Dial for the whole run. Any error (the connection ended, an ERROR, no
// RECEIPT within receiptTimeout) is recorded as broken and ends it.
func (w *Workload) goProducerOnce(name, id, queue string) {
	conn, err := stompclient.Dial(w.prodCtx, w.c.Listen, stompclient.Options{ConnectTimeout: connectTimeout})
	if err != nil {
		w.rec.broke(name, "dial: "+err.Error())
		return
	}
	defer conn.Close()
	w.rec.connected(name)
	body := []byte(strings.Repeat("x", 100))
	for n := 1; !isDone(w.stopProd); n++ {
		seq := id + "-" + strconv.Itoa(n)
		w.rec.sending(seq, time.Now().UnixNano())
		ctx, cancel := context.WithTimeout(context.Background(), onceReceiptTimeout)
		err := conn.SendReceipt(ctx, queue, body,
			frame.Header{Key: "persistent", Value: "true"}, frame.Header{Key: "seq", Value: seq})
		cancel()
		if err != nil {
			w.rec.broke(name, fmt.Sprintf("SEND %s: %v", seq, err))
			return
		}
		w.rec.receipted(name, seq, time.Now().UnixNano())
		if w.opts.Pace > 0 {
			pause(w.opts.Pace, w.stopProd)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), receiptTimeout)
	defer cancel()
	if err := conn.Disconnect(ctx); err != nil {
		w.rec.broke(name, "DISCONNECT: "+err.Error())
	}
}

// goConsumerOnce is goConsumer for a client that never reconnects: the
// subscription ending before the consumer is stopped, or an ACK failing,
// is recorded as broken and ends it.
func (w *Workload) goConsumerOnce(id, queue string) {
	conn, err := stompclient.Dial(w.consCtx, w.c.Listen, stompclient.Options{ConnectTimeout: connectTimeout})
	if err != nil {
		w.rec.broke(id, "dial: "+err.Error())
		return
	}
	defer conn.Close()
	w.rec.connected(id)
	sub, err := conn.Subscribe(queue, stompclient.AckClientIndividual)
	if err != nil {
		w.rec.broke(id, "SUBSCRIBE: "+err.Error())
		return
	}
	for {
		select {
		case m, ok := <-sub.C():
			if !ok {
				w.rec.broke(id, fmt.Sprintf("the connection ended: %v", conn.Err()))
				return
			}
			w.rec.deliver(id, m.Value("seq"), m.Value("redelivered") == "true", time.Now().UnixNano())
			if err := conn.Ack(m); err != nil {
				w.rec.broke(id, "ACK: "+err.Error())
				return
			}
		case <-w.stopCons:
			ctx, cancel := context.WithTimeout(context.Background(), receiptTimeout)
			defer cancel()
			if err := conn.Disconnect(ctx); err != nil {
				w.rec.broke(id, "DISCONNECT: "+err.Error())
			}
			return
		}
	}
}
