package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"handover/frame"
	"handover/internal/testutil"
	"handover/stompclient"
)

// Failover through the sidecar (issue 3, "Benchmark"): two brokerd sharing
// a data directory and handover in front of them with the sample
// proxy.toml (http checks of /readyz every 1s, timeout 500ms, rise 2, fall
// 3, 50ms polls while there is no master). Each round kills the master with
// SIGKILL and times how long a legacy client, one that reconnects at once
// after any error, takes to get a RECEIPT for a persistent SEND through the
// sidecar; then the killed broker comes back as the slave.

// foKillsDefault is how many times BenchmarkFailover kills the master unless
// FAILOVER_KILLS says otherwise.
const foKillsDefault = 20

// foAttemptTimeout bounds one client attempt (connect, CONNECT, SEND,
// RECEIPT). Short, as a client with a socket timeout would be, but longer
// than a healthy attempt, which takes milliseconds, so that a connection
// the sidecar holds until the new master is up is not abandoned for nothing.
const foAttemptTimeout = 500 * time.Millisecond

type foBroker struct {
	name, listen, admin string
	proc                *testutil.Process
}

type foCluster struct {
	data, bin     string
	brokers       [2]*foBroker
	sidecar       *testutil.Process
	listen, admin string // the sidecar's client and admin addresses
	master, slave *foBroker
	http          *http.Client
	sendSeq       int
}

// foKill is one round: when each step of the failover happened, from the
// processes' logs (millisecond timestamps) and the client's clock.
type foKill struct {
	killed   time.Time
	down     time.Time // the sidecar took the old master down
	locked   time.Time // the slave acquired the lock
	replayed time.Time // ... opened the store (read its tail)
	serving  time.Time // ... opened its STOMP port (and /readyz turned 200)
	elected  time.Time // the sidecar made it master
	done     time.Time // the client's first receipted SEND
}

func (k foKill) total() time.Duration { return k.done.Sub(k.killed) }

func foStartCluster(b *testing.B) *foCluster { return foStartClusterWith(b, nil) }

// foStartClusterWith is foStartCluster with the sidecar's config (the
// sample's) passed through edit, unless nil.
func foStartClusterWith(b *testing.B, edit func(cfg string) string) *foCluster {
	b.Helper()
	c := &foCluster{
		data:   b.TempDir(),
		bin:    testutil.Binary(b, "handover/cmd/brokerd"),
		listen: testutil.FreePort(b),
		admin:  testutil.FreePort(b),
		http:   &http.Client{Timeout: time.Second},
	}
	for i := range c.brokers {
		c.brokers[i] = &foBroker{name: fmt.Sprintf("brokerd-%d", i), listen: testutil.FreePort(b), admin: testutil.FreePort(b)}
	}
	c.master, c.slave = c.brokers[0], c.brokers[1]
	c.start(b, c.master)
	c.waitRole(b, c.master, "master")
	c.start(b, c.slave)
	c.waitRole(b, c.slave, "slave")

	cfg := lgSampleConfig(b, lgSampleAddrs{
		listen:   c.listen,
		admin:    c.admin,
		backends: [2]string{c.brokers[0].listen, c.brokers[1].listen},
		checks:   [2]string{"http://" + c.brokers[0].admin + "/readyz", "http://" + c.brokers[1].admin + "/readyz"},
	}, true)
	if edit != nil {
		cfg = edit(cfg)
	}
	path := filepath.Join(b.TempDir(), "proxy.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	c.sidecar = testutil.Start(b, "handover", testutil.Binary(b, "handover/cmd/handover"), "-config", path)
	c.waitSteady(b)
	return c
}

func (c *foCluster) start(b *testing.B, br *foBroker) {
	testutil.InitBroker(b, "-data", c.data)
	br.proc = testutil.Start(b, br.name, c.bin, "-listen", br.listen, "-admin", br.admin, "-data", c.data, "-log-format", "json")
}

func (c *foCluster) waitRole(b *testing.B, br *foBroker, role string) {
	b.Helper()
	testutil.Eventually(b, 20*time.Second, func() error {
		var st struct {
			Role string `json:"role"`
		}
		if err := c.getJSON("http://"+br.admin+"/status", &st); err != nil {
			return err
		}
		if st.Role != role {
			return fmt.Errorf("%s is %q, want %q", br.name, st.Role, role)
		}
		return nil
	})
}

func (c *foCluster) getJSON(url string, v any) error {
	resp, err := c.http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// waitSteady waits until the sidecar routes to c.master and a client gets
// through.
func (c *foCluster) waitSteady(b *testing.B) {
	b.Helper()
	testutil.Eventually(b, 20*time.Second, func() error {
		masters, err := lgSidecarMasters(c.admin)
		if err != nil {
			return err
		}
		if len(masters) != 1 || masters[0] != c.master.listen {
			return fmt.Errorf("sidecar master %q, want %s", masters, c.master.listen)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.sendOnce(ctx)
	})
}

// sendOnce is one attempt of a legacy client: a new connection through the
// sidecar, CONNECT, a persistent SEND with a receipt, and close.
func (c *foCluster) sendOnce(ctx context.Context) error {
	cl, err := stompclient.Dial(ctx, c.listen, stompclient.Options{})
	if err != nil {
		return err
	}
	defer cl.Close()
	c.sendSeq++
	return cl.SendReceipt(ctx, "/queue/failover", []byte("m"+strconv.Itoa(c.sendSeq)), frame.Header{Key: "persistent", Value: "true"})
}

// kill runs one round: SIGKILL the master, retry a client until it gets
// through, restart the killed broker as the slave, wait for steady state,
// and read the timeline from the logs.
func (c *foCluster) kill(b *testing.B) foKill {
	b.Helper()
	// The kill lands anywhere in the sidecar's 1s check cycle.
	time.Sleep(rand.N(time.Second))
	old, next := c.master, c.slave
	k := foKill{killed: time.Now()}
	if err := old.proc.Signal(os.Kill); err != nil {
		b.Fatal(err)
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), foAttemptTimeout)
		err := c.sendOnce(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Since(k.killed) > 30*time.Second {
			b.Fatalf("no client got through within 30s of the kill; last error: %v", err)
		}
	}
	k.done = time.Now()
	<-old.proc.Done()

	k.locked = foLogTime(b, next.proc, "master: acquired the lock", nil)
	k.replayed = foLogTime(b, next.proc, "store opened: backlog recovered", nil)
	k.serving = foLogTime(b, next.proc, "master: serving STOMP", nil)
	k.down = foLogTime(b, c.sidecar, "backend down", func(f map[string]any) bool {
		return f["backend"] == old.listen && !foTime(f).Before(k.killed.Truncate(time.Millisecond))
	})
	k.elected = foLogTime(b, c.sidecar, "master changed", func(f map[string]any) bool {
		return f["new"] == next.listen && !foTime(f).Before(k.killed.Truncate(time.Millisecond))
	})

	c.master, c.slave = next, old
	c.start(b, old)
	c.waitRole(b, old, "slave")
	c.waitSteady(b)
	return k
}

// foLogTime returns the time of the first JSON log event of p whose msg is
// msg and, if match is not nil, whose fields match.
func foLogTime(b *testing.B, p *testutil.Process, msg string, match func(map[string]any) bool) time.Time {
	b.Helper()
	t := foLogTimeMaybe(p, msg, match)
	if t.IsZero() {
		b.Fatalf("%s logged no %q event:\n%s", p.Name, msg, p.Out.String())
	}
	return t
}

// foLogTimeMaybe is foLogTime, but returns the zero time when there is no
// such event (yet).
func foLogTimeMaybe(p *testutil.Process, msg string, match func(map[string]any) bool) time.Time {
	sc := bufio.NewScanner(strings.NewReader(p.Out.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var f map[string]any
		if json.Unmarshal(sc.Bytes(), &f) != nil || f["msg"] != msg {
			continue
		}
		if match == nil || match(f) {
			return foTime(f)
		}
	}
	return time.Time{}
}

// foTime is a JSON log event's timestamp (internal/conf's format).
func foTime(f map[string]any) time.Time {
	s, _ := f["time"].(string)
	t, _ := time.Parse("2006-01-02T15:04:05.000Z07:00", s)
	return t
}

// foKills reads FAILOVER_KILLS.
func foKills(b *testing.B) int {
	v := os.Getenv("FAILOVER_KILLS")
	if v == "" {
		return foKillsDefault
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("FAILOVER_KILLS=%q: want a positive number", v)
	}
	return n
}

// BenchmarkFailover kills the master FAILOVER_KILLS times (default 20) and
// reports the time from kill -9 to the first receipted SEND through the
// sidecar: p50, p99 and max in ms, and the median of each step of the
// failover, so a slow p99 can be pinned on a component: kill → the slave
// holds the lock (lock-ms) → store opened, its tail read (replay-ms) → STOMP port open
// (open-ms) → the sidecar elects it (elect-ms) → the client's RECEIPT
// (client-ms). down-ms is kill → the sidecar takes the old master down. The
// log has p50, p99 and max of each step. The kills run once, in the parent;
// the sub-benchmark only reports them.
func BenchmarkFailover(b *testing.B) {
	n := foKills(b)
	c := foStartCluster(b)
	kills := make([]foKill, 0, n)
	for range n {
		kills = append(kills, c.kill(b))
	}

	steps := []struct {
		name string
		d    func(foKill) time.Duration
	}{
		{"total", foKill.total},
		{"down", func(k foKill) time.Duration { return k.down.Sub(k.killed) }},
		{"lock", func(k foKill) time.Duration { return k.locked.Sub(k.killed) }},
		{"replay", func(k foKill) time.Duration { return k.replayed.Sub(k.locked) }},
		{"open", func(k foKill) time.Duration { return k.serving.Sub(k.replayed) }},
		{"elect", func(k foKill) time.Duration { return k.elected.Sub(k.serving) }},
		{"client", func(k foKill) time.Duration { return k.done.Sub(k.elected) }},
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	var table strings.Builder
	fmt.Fprintf(&table, "%-7s %7s %7s %7s\n", "step", "p50", "p99", "max")
	p50 := map[string]float64{}
	for _, st := range steps {
		ds := make([]time.Duration, len(kills))
		for i, k := range kills {
			ds[i] = st.d(k)
		}
		slices.Sort(ds)
		p50[st.name] = ms(lgPercentile(ds, 50))
		fmt.Fprintf(&table, "%-7s %7.1f %7.1f %7.1f\n", st.name, p50[st.name], ms(lgPercentile(ds, 99)), ms(ds[len(ds)-1]))
	}
	totals := make([]time.Duration, len(kills))
	for i, k := range kills {
		totals[i] = k.total()
	}
	slices.Sort(totals)

	logged := false
	b.Run(fmt.Sprintf("kills=%d", n), func(b *testing.B) {
		if !logged { // the function runs once per b.N tried; log once
			logged = true
			b.Logf("kill -9 to the first receipted SEND through the sidecar, by step, in ms (from the processes' logs, 1ms resolution):\n%s", table.String())
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(ms(lgPercentile(totals, 50)), "p50-ms")
		b.ReportMetric(ms(lgPercentile(totals, 99)), "p99-ms")
		b.ReportMetric(ms(totals[len(totals)-1]), "max-ms")
		for _, st := range steps[1:] {
			b.ReportMetric(p50[st.name], st.name+"-ms")
		}
	})
}
