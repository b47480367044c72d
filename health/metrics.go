package health

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"handover/internal/promutil"
)

// Metrics are the Prometheus series of every Monitor given them; the
// service label tells monitors apart, so one Metrics serves a whole process.
// A nil *Metrics records nothing.
//
// The series (all prefixed handover_health_):
//
//   - check_duration_seconds{service,backend,result}: histogram of check
//     durations; result is "ok", "fail" or "timeout".
//   - backend_up{service,backend}: 1 while the backend is up, else 0.
//   - master_changes_total{service}: every change of the elected master,
//     including to and from none. ModeAny counts nothing here.
//   - failovers_total{service}: elections of a master other than the
//     previous one; the first election and the old master coming back are
//     not failovers.
//   - seconds_without_master_total{service}: a counter of seconds spent
//     with no master (ModeAny: no healthy backend). A counter rather than a
//     gauge of the current outage so that increase() over any window gives
//     the unavailability in it, and short outages between scrapes are not
//     lost. It is brought up to date on every monitor event, which while
//     there is no master happens at least every NoMasterInterval.
//   - has_master{service}: 1 while there is a master (ModeAny: a healthy
//     backend), for alerting on the current state.
type Metrics struct {
	checkDuration *prometheus.HistogramVec
	backendUp     *prometheus.GaugeVec
	masterChanges *prometheus.CounterVec
	failovers     *prometheus.CounterVec
	withoutMaster *prometheus.CounterVec
	hasMaster     *prometheus.GaugeVec
}

// NewMetrics creates the series and registers them with reg; nil reg leaves
// them unregistered. Registering twice with one registry reuses the series
// already there, so every caller may simply ask for them.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "handover", "health"
	return &Metrics{
		checkDuration: promutil.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "check_duration_seconds",
			Help: "Duration of health checks by outcome (ok, fail, timeout).",
			// Checks of local brokers take about a millisecond; the
			// top buckets catch timeouts at the default one second.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"service", "backend", "result"})),
		backendUp: promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "backend_up",
			Help: "1 while the backend is up by its health checks, else 0.",
		}, []string{"service", "backend"})),
		masterChanges: promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "master_changes_total",
			Help: "Changes of the elected master, including to and from none.",
		}, []string{"service"})),
		failovers: promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "failovers_total",
			Help: "Elections of a master other than the previous one.",
		}, []string{"service"})),
		withoutMaster: promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "seconds_without_master_total",
			Help: "Seconds spent with no master (mode any: no healthy backend).",
		}, []string{"service"})),
		hasMaster: promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "has_master",
			Help: "1 while there is a master (mode any: a healthy backend), else 0.",
		}, []string{"service"})),
	}
}

// initService makes a service's series exist at zero, so dashboards and
// rate() see them before the first event.
func (x *Metrics) initService(service string) {
	if x == nil {
		return
	}
	x.masterChanges.WithLabelValues(service)
	x.failovers.WithLabelValues(service)
	x.withoutMaster.WithLabelValues(service)
	x.hasMaster.WithLabelValues(service).Set(0)
}

func (x *Metrics) observe(service, backend string, r Result) {
	if x == nil {
		return
	}
	result := "ok"
	switch {
	case r.OK:
	case isTimeout(r.Err):
		result = "timeout"
	default:
		result = "fail"
	}
	x.checkDuration.WithLabelValues(service, backend, result).Observe(r.Latency.Seconds())
}

func (x *Metrics) setUp(service, backend string, up bool) {
	if x == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	x.backendUp.WithLabelValues(service, backend).Set(v)
}

// forget drops a backend removed by SetBackends, so its series do not linger
// at their last value.
func (x *Metrics) forget(service, backend string) {
	if x == nil {
		return
	}
	l := prometheus.Labels{"service": service, "backend": backend}
	x.checkDuration.DeletePartialMatch(l)
	x.backendUp.Delete(l)
}

func (x *Metrics) masterChanged(service string, failover bool) {
	if x == nil {
		return
	}
	x.masterChanges.WithLabelValues(service).Inc()
	if failover {
		x.failovers.WithLabelValues(service).Inc()
	}
}

func (x *Metrics) setHasMaster(service string, has bool) {
	if x == nil {
		return
	}
	v := 0.0
	if has {
		v = 1
	}
	x.hasMaster.WithLabelValues(service).Set(v)
}

func (x *Metrics) addWithoutMaster(service string, d time.Duration) {
	if x == nil || d <= 0 {
		return
	}
	x.withoutMaster.WithLabelValues(service).Add(d.Seconds())
}
