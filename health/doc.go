// Package health checks backends and elects where a service's clients go.
//
// A Monitor checks every backend of one service with a Checker ("tcp",
// "stomp" or "http") and turns the results into targets: in ModeMaster the
// one master of a master/slave broker pair (brokers that, like ActiveMQ and
// brokerd, open their client port only while master); in ModeAny every
// healthy backend. The proxy asks Targets for where to dial, and calls
// Recheck when a dial or a connection fails, so that a dead master is
// noticed from client traffic instead of at the next periodic check.
//
// # Backend states
//
// What a backend is, as /status, the logs and the backend_state metric show
// it, is one of three: master (ModeAny: up), the backend clients go to;
// standby, alive and answering but not serving, such as a slave whose
// /readyz answers 503 with "role":"slave" (Result.Standby), or a backend
// that passes its checks while another one is elected (or has not yet
// passed Rise of them in a row); and down. A
// healthy slave is standby, never down, and its answers count as neither
// passes nor failures. Only the "http" kind tells a slave from a dead
// broker: a slave's client port is closed, so a "tcp" or "stomp" check sees
// both as down.
//
// An operator may take a backend out: draining (no new connections, live
// ones kept) or disabled (out of the election, its connections closed as
// on a failover). That state replaces the checked one until it is enabled
// again; the checks go on beneath it (SetAdminState, admin.go).
//
// Underneath, a backend is electable ("up") or not. It starts not, and
// after that:
//
//   - Rise consecutive passed checks bring it up and Fall consecutive failed
//     checks take it down (HAProxy's rise/fall, defaults 2 and 3), which
//     damps a flapping backend while another one serves.
//   - Start-up: a backend's very first check, if it passes, brings it up at
//     once. Waiting Rise*Interval before serving anything when the sidecar
//     starts would be an outage of our own making.
//   - Nothing serving: while there is no master (ModeAny: no backend up), one
//     passed check brings a backend up. After a failover the new master must
//     be used the moment it is seen; flap damping only matters when there is
//     something better to keep using.
//   - Recheck fast path: a check started by Recheck that fails takes a
//     current target (the master; ModeAny: any up backend) down at once,
//     without waiting for Fall failures. Recheck means a client just failed
//     to reach a backend; a check agreeing with it is confirmation enough,
//     and waiting Fall*Interval would keep sending clients to a dead broker.
//   - Standby answer: a backend that says it does not serve stops being
//     electable at once. A standby that then fails its checks goes down
//     after Fall failures, or at once when the failure is definitive.
//
// # Check schedule
//
// Every backend is checked every Interval, concurrently, each check bounded
// by Timeout, so a hung backend delays nobody else. A backend whose previous
// check still runs skips a round. While there is no master (ModeAny: no
// backend up) the schedule tightens to NoMasterInterval, so that the slave
// opening its port after a failover is seen within tens of milliseconds.
// Recheck checks every backend at once; calls made before those checks start
// share them.
//
// # Logs
//
// A service that loses its master (ModeAny: its last healthy backend), or
// has none once every backend has been checked, logs it at error level,
// with every backend's state; while the outage lasts a warning repeats it
// every OutageLogInterval with how long it has lasted. The end of it, or a
// change of master without one, is one info line: "master changed" with
// old and new, how long the service was without a master and, when the
// data path says (SetConnReporter), how many client connections were
// closed or held; "master elected" the first time, "master back" when the
// old one returns.
//
// A backend that refuses the "stomp" check's login (an ERROR in answer to
// its CONNECT: Result.CredentialsRefused) is alive, but the sidecar cannot
// prove it serves: its checks fail as any others do, it is never taken
// down at once for it (the result is not Definitive), and an error line
// "check credentials refused", with the broker's message as its reason,
// says so once, not at every check; BackendStatus.CredentialsRefused and
// the check_duration_seconds result "credentials_refused" show it too.
//
// # Election (ModeMaster)
//
// Among the up backends the master is the one with the highest Epoch (a
// newer master, as brokerd's /readyz reports it), then the lowest Priority,
// then the first in list order. Once every backend has been checked once, the
// current master stays master while it is up, unless another up backend
// reports a strictly higher epoch: equal candidates never take over, so
// clients are not bounced between brokers. (Before that, during the first
// round, the ranking alone decides, so the start-up answer does not depend on
// which check returned first.)
package health
