package discovery

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"handover/internal/promutil"
)

// Lookup results, the result label of lookups_total and Status.LastResult.
const (
	ResultOK    = "ok"    // the answer gave at least one backend
	ResultError = "error" // no usable answer: timeout, SERVFAIL, network error
	ResultEmpty = "empty" // NOERROR or NXDOMAIN without a usable SRV record
)

// Metrics are the Prometheus series of every Discoverer given them; the name
// label (the SRV name) tells discoverers apart, so one Metrics serves a whole
// process. A nil *Metrics records nothing.
//
// The series (all prefixed handover_discovery_):
//
//   - lookups_total{name,result}: resolutions by result ("ok", "error",
//     "empty"). An alert on increase(...{result="error"}) finds a DNS
//     outage that the kept list would otherwise hide.
//   - backends{name}: the number of backends in the list in use (the last
//     good one), not in the last answer.
//   - last_success_timestamp_seconds{name}: Unix time of the last lookup
//     that produced the list in use; time() minus it is how stale the list
//     may be.
type Metrics struct {
	lookups     *prometheus.CounterVec
	backends    *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec
}

// NewMetrics creates the series and registers them with reg; nil reg leaves
// them unregistered. Registering twice with one registry reuses the series
// already there, so every caller may simply ask for them.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "handover", "discovery"
	return &Metrics{
		lookups: promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "lookups_total",
			Help: "DNS SRV resolutions by result (ok, error, empty).",
		}, []string{"name", "result"})),
		backends: promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "backends",
			Help: "Backends in the discovered list in use.",
		}, []string{"name"})),
		lastSuccess: promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "last_success_timestamp_seconds",
			Help: "Unix time of the last lookup that produced the list in use.",
		}, []string{"name"})),
	}
}

// initName makes a name's counters exist at zero, so that rate() and
// increase() see the first error instead of a series appearing at 1.
func (x *Metrics) initName(name string) {
	if x == nil {
		return
	}
	for _, r := range []string{ResultOK, ResultError, ResultEmpty} {
		x.lookups.WithLabelValues(name, r)
	}
}

func (x *Metrics) lookup(name, result string) {
	if x == nil {
		return
	}
	x.lookups.WithLabelValues(name, result).Inc()
}

// listInUse records a list that replaced the one in use.
func (x *Metrics) listInUse(name string, n int, at time.Time) {
	if x == nil {
		return
	}
	x.backends.WithLabelValues(name).Set(float64(n))
	x.lastSuccess.WithLabelValues(name).Set(float64(at.UnixNano()) / 1e9)
}
