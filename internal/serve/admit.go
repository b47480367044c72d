package serve

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
)

// Why a client connection was refused at accept: the reason label of
// handover_proxy_connections_rejected_total and
// handover_stomp_sessions_rejected_total, and the argument of
// LifecycleConfig.Reject.
const (
	// RejectMax: MaxConnections client connections were open already.
	RejectMax = "max_connections"
	// RejectPerSource: MaxConnectionsPerSource connections from the
	// client's IP address were open already.
	RejectPerSource = "max_connections_per_source"
)

// rejectLogEvery spaces the log lines about refused connections: a flood
// past a cap (the slowloris of issue 14 opened 5,000 connections) must not
// become a flood of log lines. The metric counts every one.
const rejectLogEvery = time.Second

// Admission decides at accept whether a client connection may stay, under
// MaxConnections and MaxConnectionsPerSource, and counts the connections it
// admitted until they are released. Every path that accepts (the
// Lifecycle's accept loop, proxy's event loops) asks one. Over a cap, the
// connection is accepted and closed at once rather than left in the listen
// backlog: the client learns now (in STOMP mode from an ERROR frame), and a
// client that never finishes its handshake cannot keep others waiting
// there unseen.
type Admission struct {
	max, perSource int // 0: no cap
	live           atomic.Int64

	mu       sync.Mutex
	bySource map[netip.Addr]int // only with perSource

	log      *logrus.Entry
	rejected map[string]prometheus.Counter // by reason
	// lastLog is when a refusal was last logged (unix nanos); quiet counts
	// the refusals since that were not.
	lastLog atomic.Int64
	quiet   atomic.Int64
}

// NewAdmission returns the Admission for the caps of o, a service's
// settings (0 is DefaultMaxConnections, NoLimit none). rejected is the
// counter vector (labels service, reason) of refused connections; log is
// the service's entry.
func NewAdmission(o Settings, log *logrus.Entry, rejected *prometheus.CounterVec) *Admission {
	a := &Admission{max: o.MaxConnections, perSource: o.MaxConnectionsPerSource, log: log,
		rejected: map[string]prometheus.Counter{
			RejectMax:       rejected.WithLabelValues(o.Name, RejectMax),
			RejectPerSource: rejected.WithLabelValues(o.Name, RejectPerSource),
		}}
	switch {
	case a.max == 0:
		a.max = DefaultMaxConnections
	case a.max < 0:
		a.max = 0
	}
	if a.perSource > 0 {
		a.bySource = map[netip.Addr]int{}
	} else {
		a.perSource = 0
	}
	return a
}

// BySource reports whether Admit looks at the source address: callers
// that must make a system call to learn it skip that otherwise.
func (a *Admission) BySource() bool { return a.perSource > 0 }

// SourceOf is c's remote IP address, as Admit and Release take it, or the
// zero Addr when the per-source cap is off.
func (a *Admission) SourceOf(c *net.TCPConn) netip.Addr {
	if !a.BySource() {
		return netip.Addr{}
	}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// Admit counts a new connection from src, or returns why it must be
// refused (RejectMax, RejectPerSource), counting nothing. Each connection
// admitted is released once, with the same src.
func (a *Admission) Admit(src netip.Addr) string {
	if n := a.live.Add(1); a.max > 0 && n > int64(a.max) {
		a.live.Add(-1)
		return RejectMax
	}
	if a.perSource == 0 {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.bySource[src] >= a.perSource {
		a.live.Add(-1)
		return RejectPerSource
	}
	a.bySource[src]++
	return ""
}

// Release ends what Admit began for a connection from src.
func (a *Admission) Release(src netip.Addr) {
	a.live.Add(-1)
	if a.perSource == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if n := a.bySource[src] - 1; n > 0 {
		a.bySource[src] = n
	} else {
		delete(a.bySource, src)
	}
}

// Refused counts a connection refused for why and logs it, unless another
// refusal was logged less than rejectLogEvery ago; the next line then
// says how many were not. client is called only for a line logged (it may
// cost a system call).
func (a *Admission) Refused(why string, client func() string) {
	a.rejected[why].Inc()
	now := time.Now().UnixNano()
	last := a.lastLog.Load()
	if now-last < int64(rejectLogEvery) || !a.lastLog.CompareAndSwap(last, now) {
		a.quiet.Add(1)
		return
	}
	limit := a.max
	if why == RejectPerSource {
		limit = a.perSource
	}
	a.log.WithFields(logrus.Fields{
		"client": client(), "reason": why, "limit": limit, "live": a.live.Load(),
		"not_logged": a.quiet.Swap(0),
	}).Warn("refusing a client connection: over " + why)
}
