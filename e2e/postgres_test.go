package e2e

import (
	"testing"
	"time"
)

// TestChaosPostgres runs a short schedule on the database topology: every
// brokerd with -store DSN of one throwaway PostgreSQL, so the lock lives in
// the database and a slave takes over only when its poll (-lock-retry,
// 500ms by default) finds the lock free. The verdicts are the file
// topology's: lost = 0, phantom = 0, no process ended on its own, every
// client back after each fault, every survivor healthy at the end. It ends
// with a restart of PostgreSQL itself, after which the master, its lock
// session gone, must exit with status 3 and come back as a slave.
func TestChaosPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a cluster and injects faults for half a minute")
	}
	sopts := ScheduleOptions{
		Faults: []FaultKind{Kill9Master, Kill9Master, SigtermMaster, Kill9Slave, Kill9Master, DBRestart},
		Pace:   time.Second, Seed: 1, Drain: 30 * time.Second,
	}
	rep, _ := runChaos(t, ClusterOptions{Store: StorePostgres}, defaultWorkload, sopts)
	checkSanity(t, rep, 0)
}
