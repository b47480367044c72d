package health

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"handover/internal/testutil"
	"handover/stompclient"
)

// TestFailoverBetweenBrokers runs two real brokers on one data directory:
// the first takes the lock and serves, the second waits as a slave with its
// port closed and its /readyz answering 503. The Monitor checks both
// /readyz. Stopping the master must elect the slave once it has taken over.
//
// Two ways of noticing are tried: periodic checks alone (a short Interval,
// Fall failures needed), and the proxy's way, where a client losing its
// connection calls Recheck (default Interval, the fast path).
func TestFailoverBetweenBrokers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts brokers")
	}
	tests := []struct {
		name    string
		cfg     Config
		recheck bool
	}{
		{name: "periodic checks", cfg: Config{Interval: 100 * time.Millisecond}},
		{name: "recheck on client loss", cfg: Config{}, recheck: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			master := startBroker(t, dir, "127.0.0.1:0")
			master.WaitReady(t)
			// The slave's port must be known before it opens, so pick it
			// now; 127.0.0.1:0 would only be bound once it is master.
			slaveAddr := testutil.FreePort(t)
			slave := startBroker(t, dir, slaveAddr)

			bs := []Backend{
				{Addr: master.Addr(), CheckURL: "http://" + master.AdminAddr() + "/readyz"},
				{Addr: slaveAddr, CheckURL: "http://" + slave.AdminAddr() + "/readyz"},
			}
			chk, err := NewChecker(KindHTTP)
			if err != nil {
				t.Fatal(err)
			}
			mon := NewMonitor("brokers", tt.cfg, bs, chk, nil, testLog(t).WithField("component", "health"), nil)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			t.Cleanup(func() {
				cancel()
				wg.Wait()
			})
			wg.Go(func() { mon.Run(ctx) })

			waitTargets(t, mon, []string{master.Addr()}, 5*time.Second)
			oldEpoch := mon.Status().Backends[0].Epoch
			if oldEpoch == 0 {
				t.Fatalf("master's epoch not learned from /readyz: %+v", mon.Status())
			}

			if tt.recheck {
				// What the proxy does: a client connection to the master
				// ends, so the master is suspect.
				c, err := stompclient.Dial(ctx, master.Addr(), stompclient.Options{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				wg.Go(func() {
					select {
					case <-c.Done():
						mon.Recheck()
					case <-ctx.Done():
					}
				})
			}

			start := time.Now()
			master.Cancel()
			select {
			case <-slave.Ready():
				t.Logf("slave took over %v after the master was told to stop", time.Since(start))
			case <-slave.Done():
				t.Fatalf("slave stopped: %v", slave.Err())
			case <-time.After(10 * time.Second):
				t.Fatal("slave did not take over in 10s")
			}
			waitTargets(t, mon, []string{slaveAddr}, 2*time.Second)
			t.Logf("monitor elected the new master %v after the master was told to stop", time.Since(start))
			st := mon.Status()
			if st.Master != slaveAddr || st.Backends[1].Epoch <= oldEpoch {
				t.Errorf("after failover: master %q epoch %d, want %q with an epoch above %d", st.Master, st.Backends[1].Epoch, slaveAddr, oldEpoch)
			}
			// With periodic checks alone the slave, once it has risen, wins
			// on its newer epoch while the old master may still be counting
			// failures; the recheck takes the old master down at once.
			if tt.recheck && st.Backends[0].State != StateDown {
				t.Errorf("old master still %s after failing a recheck", st.Backends[0].State)
			}
		})
	}
}

// waitTargets waits, on the Targets channel rather than by sleeping, until
// the monitor's targets are want.
func waitTargets(t *testing.T, mon *Monitor, want []string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		ts, ch := mon.Targets()
		if slices.Equal(ts, want) {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("targets %v after %v, want %v; status %+v", ts, timeout, want, mon.Status())
		}
	}
}
