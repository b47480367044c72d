package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"sync"
	"time"

	"handover/frame"
	"handover/stompclient"
)

// BacklogStatus is the part of brokerd's /status the backlog case reads:
// the queues, the journal, the memory budget and, on a slave, the warm
// standby's view of the store (issue 13).
type BacklogStatus struct {
	Role   string `json:"role"`
	Epoch  uint64 `json:"epoch"`
	Ready  bool   `json:"ready"`
	Queues []struct {
		Name     string `json:"name"`
		Depth    int    `json:"depth"`
		Inflight int    `json:"inflight"`
		Enqueued uint64 `json:"enqueued"`
		Dequeued uint64 `json:"dequeued"`
	} `json:"queues"`
	Journal *struct {
		Segments  int   `json:"segments"`
		Bytes     int64 `json:"bytes"`
		Live      int   `json:"live"`
		LiveBytes int64 `json:"live_bytes"`
	} `json:"journal"`
	Memory struct {
		Limit  int64 `json:"limit"`
		Pinned int64 `json:"pinned"`
		Cached int64 `json:"cached"`
	} `json:"memory"`
	Standby *struct {
		Following     bool      `json:"following"`
		Messages      int       `json:"messages"`
		Bytes         int64     `json:"bytes"`
		LastCatchUp   time.Time `json:"last_catch_up"`
		AgeSeconds    float64   `json:"age_seconds"`
		BehindRecords int       `json:"behind_records"`
		BehindBytes   int64     `json:"behind_bytes"`
		Position      string    `json:"position"`
		Waiting       string    `json:"waiting"`
		Error         string    `json:"error"`
		TotalRecords  uint64    `json:"total_records"`
	} `json:"standby"`
	Damaged []struct {
		ID    string `json:"id"`
		Queue string `json:"queue"`
		Error string `json:"error"`
	} `json:"damaged"`
}

// Depth is queue's depth (pending and in flight), 0 if the broker has no
// such queue.
func (st *BacklogStatus) Depth(queue string) int {
	for _, q := range st.Queues {
		if q.Name == queue {
			return q.Depth
		}
	}
	return 0
}

// Live is the journal's live message count (-1 without a journal: a
// slave, or another store).
func (st *BacklogStatus) Live() int {
	if st.Journal == nil {
		return -1
	}
	return st.Journal.Live
}

// BacklogStatus reads b's /status in full.
func (c *Cluster) BacklogStatus(b *Broker) (BacklogStatus, error) {
	var st BacklogStatus
	err := c.getJSON("http://"+b.Admin+"/status", &st)
	return st, err
}

// BacklogProducerOptions shape the producers of the backlog case.
type BacklogProducerOptions struct {
	// Producers is how many connections produce at once; zero means 1.
	Producers int
	// Queue is the destination; default /queue/backlog.
	Queue string
	// TxSize is how many persistent SENDs a transaction holds; its
	// COMMIT is receipted; zero means 100.
	TxSize int
	// BodySize is each message's body size; zero means 1 KiB.
	BodySize int
	// Rate caps each producer's messages per second (a transaction
	// starts no sooner than TxSize/Rate after the previous one started),
	// so that the backlog a run builds does not depend much on how fast
	// the machine is; zero means as fast as the broker takes them.
	Rate int
}

func (o *BacklogProducerOptions) defaults() {
	if o.Producers == 0 {
		o.Producers = 1
	}
	if o.Queue == "" {
		o.Queue = "/queue/backlog"
	}
	if o.TxSize == 0 {
		o.TxSize = 100
	}
	if o.BodySize == 0 {
		o.BodySize = 1024
	}
}

// BacklogProducers are Go producers that grow a backlog as fast as the
// broker takes it: each sends transactions of TxSize persistent messages
// (seq headers "bpK-N", unique over the run) and waits for its COMMIT's
// RECEIPT, which makes every message of the transaction receipted. A
// COMMIT without its RECEIPT leaves the transaction in doubt: its messages
// stay "sent" in the Recorder, never receipted, so they can be neither
// lost nor phantom. After any error a producer closes its connection and
// dials the brokers directly, in turn, until one answers CONNECTED: only
// the master's STOMP port is open.
type BacklogProducers struct {
	c    *Cluster
	opts BacklogProducerOptions
	rec  *Recorder
	body []byte

	stop chan struct{}
	ctx  context.Context
	quit context.CancelFunc
	wg   sync.WaitGroup

	mu sync.Mutex
	// connects are every CONNECTED a producer got, in time order.
	connects []time.Time
	// commits counts receipted COMMITs; inDoubt the transactions with
	// SENDs whose outcome the producers cannot know (cut short, or no
	// RECEIPT for their COMMIT).
	commits, inDoubt int
	// errs are the last few reasons a connection was given up.
	errs []string
}

// StartBacklogProducers starts the producers; Stop ends them.
func StartBacklogProducers(c *Cluster, rec *Recorder, opts BacklogProducerOptions) *BacklogProducers {
	opts.defaults()
	p := &BacklogProducers{c: c, opts: opts, rec: rec, body: bytes.Repeat([]byte("b"), opts.BodySize), stop: make(chan struct{})}
	p.ctx, p.quit = context.WithCancel(context.Background())
	for i := range opts.Producers {
		p.wg.Add(1)
		go p.run(fmt.Sprintf("backlog-producer-%d", i), fmt.Sprintf("bp%d", i))
	}
	c.t.Cleanup(p.Stop)
	return p
}

// Stop ends every producer after its transaction in flight; idempotent.
func (p *BacklogProducers) Stop() {
	p.mu.Lock()
	if !isDone(p.stop) {
		close(p.stop)
	}
	p.mu.Unlock()
	p.quit()
	p.wg.Wait()
}

// Commits returns the receipted COMMITs and those in doubt so far.
func (p *BacklogProducers) Commits() (receipted, inDoubt int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.commits, p.inDoubt
}

// ConnectedSince is the first CONNECTED any producer got at or after t.
func (p *BacklogProducers) ConnectedSince(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, at := range p.connects {
		if !at.Before(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

// Errors returns the last reasons producers gave up a connection.
func (p *BacklogProducers) Errors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.errs...)
}

func (p *BacklogProducers) failed(name string, sent int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if sent > 0 {
		p.inDoubt++
	}
	p.errs = append(p.errs, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), name, err))
	if len(p.errs) > 20 {
		p.errs = p.errs[len(p.errs)-20:]
	}
}

// commitTimeout bounds the wait for one COMMIT's RECEIPT: a hundred 1 KiB
// records and one fsync, on a -race broker sharing two cores.
const commitTimeout = 10 * time.Second

func (p *BacklogProducers) run(name, id string) {
	defer p.wg.Done()
	n, tx := 0, 0
	var every time.Duration // between transaction starts, at most Rate
	if p.opts.Rate > 0 {
		every = time.Duration(p.opts.TxSize) * time.Second / time.Duration(p.opts.Rate)
	}
	for !isDone(p.stop) {
		conn, err := dialAny(p.ctx, p.c.Brokers, p.stop)
		if err != nil {
			continue // stopped
		}
		p.mu.Lock()
		p.connects = append(p.connects, time.Now())
		p.mu.Unlock()
		p.rec.connected(name)
		for !isDone(p.stop) {
			began := time.Now()
			tx++
			txID := id + "-tx-" + strconv.Itoa(tx)
			seqs := make([]string, 0, p.opts.TxSize)
			err := conn.Begin(txID)
			for i := 0; err == nil && i < p.opts.TxSize; i++ {
				n++
				seq := id + "-" + strconv.Itoa(n)
				seqs = append(seqs, seq)
				p.rec.sending(seq, time.Now().UnixNano())
				err = conn.Send(p.opts.Queue, p.body,
					frame.Header{Key: "persistent", Value: "true"},
					frame.Header{Key: "seq", Value: seq},
					frame.Header{Key: "transaction", Value: txID})
			}
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
				err = conn.SendFrame(ctx, frame.New(frame.COMMIT, "transaction", txID), true)
				cancel()
			}
			if err != nil {
				// The transaction is in doubt: its seqs stay sent, not
				// receipted, and are never reused.
				p.failed(name, len(seqs), fmt.Errorf("transaction %s: %w", txID, err))
				break
			}
			at := time.Now().UnixNano()
			for _, seq := range seqs {
				p.rec.receipted(name, seq, at)
			}
			p.mu.Lock()
			p.commits++
			p.mu.Unlock()
			if d := every - time.Since(began); d > 0 {
				pause(d, p.stop) // the rate cap: deliberate pacing
			}
		}
		conn.Close()
	}
}

// dialAny dials every broker's STOMP address in turn until one answers
// CONNECTED (only a serving master's port is open), pausing a little after
// each round, until stop closes.
func dialAny(ctx context.Context, brokers []*Broker, stop <-chan struct{}) (*stompclient.Conn, error) {
	for {
		for _, b := range brokers {
			if isDone(stop) {
				return nil, context.Canceled
			}
			conn, err := stompclient.Dial(ctx, b.Listen, stompclient.Options{ConnectTimeout: 5 * time.Second})
			if err == nil {
				return conn, nil
			}
		}
		pause(10*time.Millisecond, stop)
	}
}

// Takeover is what probeTakeover saw after a master was killed.
type Takeover struct {
	// Ready is from the kill to the first /readyz 200 of a candidate;
	// Connected to the first STOMP CONNECTED from one.
	Ready, Connected time.Duration
	// ReadyBroker and ConnectedBroker name who answered.
	ReadyBroker, ConnectedBroker string
}

// probeTakeover polls, every 5ms and for each candidate, its /readyz and
// its STOMP port, from at until both have answered or timeout passes.
func (c *Cluster) probeTakeover(cands []*Broker, at time.Time, timeout time.Duration) (Takeover, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		mu sync.Mutex
		tk Takeover
		wg sync.WaitGroup
	)
	readyDone, connDone := make(chan struct{}), make(chan struct{})
	var readyOnce, connOnce sync.Once
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	every := func(done <-chan struct{}, f func() bool) {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if f() {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-tick.C:
			}
		}
	}
	for _, b := range cands {
		wg.Add(2)
		go every(readyDone, func() bool {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.Admin+"/readyz", nil)
			resp, err := hc.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false
			}
			readyOnce.Do(func() {
				mu.Lock()
				tk.Ready, tk.ReadyBroker = time.Since(at), b.Name
				mu.Unlock()
				close(readyDone)
			})
			return true
		})
		go every(connDone, func() bool {
			conn, err := stompclient.Dial(ctx, b.Listen, stompclient.Options{ConnectTimeout: time.Second})
			if err != nil {
				return false
			}
			d := time.Since(at)
			conn.Close()
			connOnce.Do(func() {
				mu.Lock()
				tk.Connected, tk.ConnectedBroker = d, b.Name
				mu.Unlock()
				close(connDone)
			})
			return true
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if !isDone(readyDone) || !isDone(connDone) {
		return tk, fmt.Errorf("no /readyz 200 (%v) or no STOMP CONNECTED (%v) from %d candidates within %v",
			isDone(readyDone), isDone(connDone), len(cands), timeout)
	}
	return tk, nil
}

// recoveredLine matches brokerd's log line of a promotion:
// msg="store opened: backlog recovered" messages=N took=D; lockLine the one
// of the lock taken, with its time (to the millisecond).
var (
	recoveredLine = regexp.MustCompile(`msg="store opened: backlog recovered".*\bmessages=(\d+).*\btook=(\S+)`)
	lockLine      = regexp.MustCompile(`time="([^"]+)" level=info msg="master: acquired the lock"`)
)

// Recovery is what a new master's log says of its latest promotion.
type Recovery struct {
	// Locked is when it took the master lock.
	Locked time.Time
	// Messages and Took are its "backlog recovered" line's fields: the
	// live messages after the promotion, and how long the promotion took.
	Messages int
	Took     string
}

// lastRecovery reads b's log for its latest promotion; ok=false if it has
// none.
func (c *Cluster) lastRecovery(b *Broker) (r Recovery, ok bool) {
	data, err := os.ReadFile(b.proc.logPath)
	if err != nil {
		return r, false
	}
	ms := recoveredLine.FindAllSubmatch(data, -1)
	ls := lockLine.FindAllSubmatch(data, -1)
	if len(ms) == 0 || len(ls) == 0 {
		return r, false
	}
	m := ms[len(ms)-1]
	r.Messages, _ = strconv.Atoi(string(m[1]))
	r.Took = string(m[2])
	r.Locked, _ = time.Parse(time.RFC3339Nano, string(ls[len(ls)-1][1]))
	return r, true
}
