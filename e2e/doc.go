// Package e2e is the chaos suite: it proves, with real processes, the
// promise handover makes to an unchanged client — it keeps working while
// masters die, and nothing acknowledged is lost.
//
// A Cluster is N brokerd sharing one data directory (fixed ports each, so a
// restarted broker comes back where it was) and the handover sidecar in
// front of them with its default configuration. With ClusterOptions.Store
// = StorePostgres the brokers share a throwaway PostgreSQL instead
// (internal/pgtest): each runs with -store DSN and a -data of its own, and
// the lock lives in the database. A Workload is legacy
// clients that know only the sidecar's address and reconnect to it after
// any error: producers SEND persistent messages with receipts, each with a
// unique seq header; consumers subscribe with ack client-individual and ACK
// each message. Some are Go (stompclient), some Debian's stomp.py
// (testdata/stomppy_*.py, read line by line from their stdout).
//
// Faults (FaultKind) are injected one at a time, each run to recovery:
// the master killed with SIGKILL or SIGTERM, a slave killed, the sidecar
// killed and restarted or restarted gracefully, the master frozen with
// SIGSTOP; on the database topology, PostgreSQL restarted (the master, its
// lock session lost, exits 3 by design). Killed brokers are restarted
// as new slaves. After the schedule the producers stop, the consumers drain,
// and the Report gives the verdicts (lost and phantom messages must be
// zero, no process may have ended on its own, every survivor answers
// /healthz) and the client-visible gap per fault kind.
//
// Entry points: TestChaosShort runs in go test (a fault of each kind);
// TestChaosPostgres runs in go test too (master and slave kills and a
// database restart, on the database topology);
// TestChaosBacklog runs in go test too (a backlog that grows while the
// master is killed again and again, then is drained: nothing lost, and
// each slave's standby following the backlog before each kill);
// TestChaosLimits runs in go test too (brokers with a small max_disk: a
// disk that fills and drains as a consumer pauses and resumes, a topic
// subscriber that never reads dropped as a slow consumer, the master
// killed with the disk full and while it drains: nothing receipted lost,
// nothing refused delivered);
// TestScenario/<kind> runs one fault alone, when named with -run;
// TestChaosLong, behind CHAOS_KILLS, is `make chaos`.
//
// Each process logs to its own file in the test's log directory (under
// $E2E_LOGDIR when set, kept for reading); a failed test prints the tail of
// each.
package e2e
