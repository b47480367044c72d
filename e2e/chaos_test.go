package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// requirePython fails, rather than skips, without Debian's python3-stomp:
// the suite's promise is about unchanged third-party clients too.
func requirePython(t *testing.T) {
	t.Helper()
	if err := exec.Command(Python, "-c", "import stomp").Run(); err != nil {
		t.Fatalf("Debian's python3-stomp is required (apt-get install python3-stomp): %v", err)
	}
}

// defaultWorkload is two Go producers and one stomp.py producer, a Go and a
// stomp.py consumer, all on one queue.
var defaultWorkload = WorkloadOptions{GoProducers: 2, PyProducers: 1, GoConsumers: 1, PyConsumers: 1, Pace: 5 * time.Millisecond}

// runChaos starts a cluster and the workload, runs the schedule and asserts
// the verdicts that hold whatever the timing. It returns the report and the
// cluster, still running, for checks of its own.
func runChaos(t *testing.T, copts ClusterOptions, wopts WorkloadOptions, sopts ScheduleOptions) (*Report, *Cluster) {
	t.Helper()
	requirePython(t)
	c := StartCluster(t, copts)
	w, err := StartWorkload(c, wopts)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(c, w, sopts, t.Logf)
	t.Logf("logs in %s\n%s", c.LogDir(), rep)
	if err != nil {
		t.Error(err)
	}
	if err := rep.Verdict(); err != nil {
		t.Error(err)
	}
	return rep, c
}

// TestChaosShort runs one fault of each kind under the default workload.
// Timing is only held to sanity bounds here (-race binaries on shared CI
// cores); make chaos measures it.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and injects faults for half a minute")
	}
	sopts := ScheduleOptions{Faults: AllFaults, Pace: time.Second, Seed: 1, Drain: 30 * time.Second}
	rep, _ := runChaos(t, ClusterOptions{}, defaultWorkload, sopts)
	checkSanity(t, rep, 3*time.Second)
}

// checkSanity holds each fault's client-visible gap to a generous bound and
// checks that every client took part.
func checkSanity(t *testing.T, rep *Report, freeze time.Duration) {
	t.Helper()
	for _, f := range rep.Faults {
		bound := 10 * time.Second
		if f.Kind == SigstopMaster {
			bound += freeze
		}
		if f.Gap > bound {
			t.Errorf("fault %d %s: clients saw no RECEIPT for %v, bound %v", f.N, f.Kind, f.Gap, bound)
		}
	}
	for _, p := range []string{"go-producer-0", "go-producer-1", "py-producer-0"} {
		if rep.ReceiptedBy[p] == 0 {
			t.Errorf("producer %s got no RECEIPT", p)
		}
	}
	for _, c := range []string{"go-consumer-0", "py-consumer-0"} {
		if rep.ByConsumer[c] == 0 {
			t.Errorf("consumer %s got no MESSAGE", c)
		}
	}
}

// TestScenario runs each fault alone, for debugging one:
//
//	go test -race -v -run 'TestScenario/sigstop-master' ./e2e/
//
// It is skipped unless -run names it, since TestChaosShort covers the same
// faults.
func TestScenario(t *testing.T) {
	if f := flag.Lookup("test.run"); f == nil || !strings.Contains(f.Value.String(), "Scenario") {
		t.Skipf("run with -run 'TestScenario/<kind>', kinds: %v", AllFaults)
	}
	for _, kind := range AllFaults {
		t.Run(string(kind), func(t *testing.T) {
			sopts := ScheduleOptions{Faults: []FaultKind{kind}, Pace: time.Second, Seed: 1, Drain: 30 * time.Second}
			rep, _ := runChaos(t, ClusterOptions{}, defaultWorkload, sopts)
			checkSanity(t, rep, 3*time.Second)
		})
	}
}

// TestChaosLong is make chaos: a long random schedule, configured by
// environment variables, reproducible from its seed.
//
//	CHAOS_KILLS    number of faults (required; make chaos defaults it to 100)
//	CHAOS_SEED     seed of the schedule and every random choice (default: the clock; printed)
//	CHAOS_FAULTS   the mix, comma-separated (default every broker fault:
//	               kill9-master,sigterm-master,kill9-slave,sigstop-master, so
//	               the run also shows the sidecar needs no restart)
//	CHAOS_PACE     mean pause between faults (default 1s)
//	CHAOS_FREEZE   how long sigstop-master freezes at least (default 3s;
//	               a slave takes over by lease meanwhile)
//	CHAOS_BROKERS  brokers in the cluster (default 3)
//	CHAOS_STORE    "file" (default) or "postgres" (then db-restart may be
//	               in CHAOS_FAULTS)
//
// It asserts what must hold whatever the timing (lost, phantom, crashes,
// health) and reports the timing against the targets.
func TestChaosLong(t *testing.T) {
	env := os.Getenv("CHAOS_KILLS")
	if env == "" {
		t.Skip("set CHAOS_KILLS (make chaos) to run the long schedule")
	}
	kills, err := strconv.Atoi(env)
	if err != nil || kills <= 0 {
		t.Fatalf("CHAOS_KILLS=%q: want a positive number", env)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", s, err)
		}
	}
	mix := []FaultKind{Kill9Master, SigtermMaster, Kill9Slave, SigstopMaster}
	if s := os.Getenv("CHAOS_FAULTS"); s != "" {
		if mix, err = ParseFaults(s); err != nil {
			t.Fatalf("CHAOS_FAULTS: %v", err)
		}
	}
	dur := func(name string, def time.Duration) time.Duration {
		s := os.Getenv(name)
		if s == "" {
			return def
		}
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive duration", name, s)
		}
		return d
	}
	brokers := 3
	if s := os.Getenv("CHAOS_BROKERS"); s != "" {
		if brokers, err = strconv.Atoi(s); err != nil || brokers < 2 {
			t.Fatalf("CHAOS_BROKERS=%q: want 2 or more", s)
		}
	}
	sopts := ScheduleOptions{
		Faults: RandomSchedule(kills, mix, seed),
		Pace:   dur("CHAOS_PACE", time.Second),
		Freeze: dur("CHAOS_FREEZE", 3*time.Second),
		Seed:   seed,
	}
	fmt.Printf("chaos: %d faults from %v, %d brokers, store %q, seed %d (reproduce with CHAOS_SEED=%d)\n", kills, mix, brokers, os.Getenv("CHAOS_STORE"), seed, seed)
	// The report goes to t.Log, which -v (make chaos) prints on stdout.
	runChaos(t, ClusterOptions{Brokers: brokers, Store: os.Getenv("CHAOS_STORE")}, defaultWorkload, sopts)
}

// TestChaosSecure runs one fault of each kind with TLS and logins on
// (ClusterOptions.Secure): brokers that serve only TLS and refuse clients
// without a login, and a sidecar in STOMP mode that encrypts and logs in for
// its clients, which send no login and reconnect after any error. Resumed
// sessions log in again on each new master; lost must stay 0.
func TestChaosSecure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and injects faults for half a minute")
	}
	runSecure(t, "", ScheduleOptions{Faults: AllFaults, Pace: time.Second, Seed: 3, Drain: 30 * time.Second})
}

// TestChaosSecurePostgres is TestChaosSecure on PostgreSQL, with the
// logins in the store's users table (users_table) rather than a file: a
// slave that takes over already holds them.
func TestChaosSecurePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and a cluster and injects faults for half a minute")
	}
	runSecure(t, StorePostgres, ScheduleOptions{Faults: []FaultKind{Kill9Master, SigtermMaster, Kill9Master}, Pace: time.Second, Seed: 5, Drain: 30 * time.Second})
}

// runSecure runs sopts on a Secure cluster on store, checks the verdicts,
// and that the brokers the workload went through were secure: the master
// refuses plain TCP, and over TLS a client without a login.
func runSecure(t *testing.T, store string, sopts ScheduleOptions) {
	rep, c := runChaos(t, ClusterOptions{Protocol: "stomp", Secure: true, Store: store}, defaultWorkload, sopts)
	checkSanity(t, rep, 3*time.Second)
	m, _, err := c.Master()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SecureRefusals(m); err != nil {
		t.Error(err)
	}
}
