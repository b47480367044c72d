package bench

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"handover/internal/testutil"
)

// BenchmarkSidecarView (issue 18): with no client traffic, how long the
// sidecar's own view (its "master changed" line, hence /status, metrics and
// the routing of the next client) takes to follow a kill -9 of the master,
// over FAILOVER_KILLS kills (default 20), with the sample proxy.toml's
// watches on (watch = "auto": the slave's promotion is pushed) and off
// (polling every 1s, then every 20ms once the master is seen down), in the
// same run. Reports p50, p99 and max in ms, from kill to the sidecar's log
// line (1ms resolution).
func BenchmarkSidecarView(b *testing.B) {
	n := foKills(b)
	for _, mode := range []string{"auto", "off"} {
		c := foStartClusterWith(b, func(cfg string) string {
			if strings.Count(cfg, `watch = "auto"`) != 1 {
				b.Fatal(`../proxy.toml: want watch = "auto" once`)
			}
			return strings.Replace(cfg, `watch = "auto"`, fmt.Sprintf("watch = %q", mode), 1)
		})
		views := make([]time.Duration, 0, n)
		for range n {
			views = append(views, c.killQuiet(b))
		}
		c.sidecar.Kill()
		for _, br := range c.brokers {
			br.proc.Kill()
		}
		slices.Sort(views)
		ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
		b.Run(fmt.Sprintf("watch=%s/kills=%d", mode, n), func(b *testing.B) {
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(lgPercentile(views, 50)), "p50-ms")
			b.ReportMetric(ms(lgPercentile(views, 99)), "p99-ms")
			b.ReportMetric(ms(views[len(views)-1]), "max-ms")
		})
	}
}

// killQuiet kills the master at a random point of the sidecar's check
// cycle and, sending nothing through the sidecar, waits for its "master
// changed" line naming the slave; it returns the time from the kill to
// that line, then brings the killed broker back as the slave.
func (c *foCluster) killQuiet(b *testing.B) time.Duration {
	b.Helper()
	time.Sleep(rand.N(time.Second))
	old, next := c.master, c.slave
	killed := time.Now()
	if err := old.proc.Signal(os.Kill); err != nil {
		b.Fatal(err)
	}
	var elected time.Time
	testutil.Eventually(b, 30*time.Second, func() error {
		elected = foLogTimeMaybe(c.sidecar, "master changed", func(f map[string]any) bool {
			return f["new"] == next.listen && !foTime(f).Before(killed.Truncate(time.Millisecond))
		})
		if elected.IsZero() {
			return fmt.Errorf("the sidecar has not named %s master yet", next.listen)
		}
		return nil
	})
	<-old.proc.Done()
	c.master, c.slave = next, old
	c.start(b, old)
	c.waitRole(b, old, "slave")
	c.waitSteady(b)
	return elected.Sub(killed.Truncate(time.Millisecond))
}
