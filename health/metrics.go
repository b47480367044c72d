package health

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"handover/internal/promutil"
)

// Metrics are the Prometheus series of every Monitor given them; the service
// label tells monitors apart, so one Metrics serves a whole process.
// A nil *Metrics records nothing.
//
// The series (all prefixed handover_health_):
//
//   - check_duration_seconds{service,backend,result}: histogram of check
//     durations; result is "ok", "standby", "fail", "timeout" or
//     "credentials_refused" (Result.CredentialsRefused: worth an alert of
//     its own, since only an operator fixes it).
//   - backend_state{service,backend,state}: 1 for the backend's current
//     state, 0 for the others. In mode master the states are "master",
//     "standby" and "down"; in mode any "up", "standby" and "down"; in
//     both, "draining" and "disabled" while an operator set them. An
//     alert on state="down" fires for a dead broker, never for a healthy
//     slave, nor for one an operator took out.
//   - backend_up{service,backend}: 1 while the backend answers its checks
//     (master, up or standby), 0 while they fail: Prometheus' own "up"
//     meaning, whatever an operator did. (Before, it was 1 only for a
//     backend that could be elected, so every healthy slave read 0.)
//   - master_changes_total{service}: every change of the elected master,
//     including to and from none. ModeAny counts nothing here.
//   - failovers_total{service}: elections of a master other than the
//     previous one; the first election and the old master coming back are
//     not failovers.
//   - without_master_seconds_total{service}: a counter of seconds spent
//     with no master (ModeAny: no healthy backend). A counter rather than a
//     gauge of the current outage so that increase() over any window gives
//     the unavailability in it, and short outages between scrapes are not
//     lost. It is brought up to date on every monitor event, which while
//     there is no master happens at least every NoMasterInterval. (It was
//     seconds_without_master_total: the unit goes before _total.)
//   - has_master{service}: 1 while there is a master (ModeAny: a healthy
//     backend), for alerting on the current state.
type Metrics struct {
	checkDuration *prometheus.HistogramVec
	backendUp     *prometheus.GaugeVec
	backendState  *prometheus.GaugeVec
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
			Help: "Duration of health checks by outcome (ok, standby, fail, timeout, credentials_refused).",
			// Checks of local brokers take about a millisecond; the
			// top buckets catch timeouts at the default one second.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"service", "backend", "result"})),
		backendUp: promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "backend_up",
			Help: "1 while the backend answers its health checks (master, up or standby), 0 while it is down.",
		}, []string{"service", "backend"})),
		backendState: promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "backend_state",
			Help: "1 for the backend's current state, else 0: master, standby or down (mode any: up, standby or down), or draining or disabled by an operator.",
		}, []string{"service", "backend", "state"})),
		masterChanges: promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "master_changes_total",
			Help: "Changes of the elected master, including to and from none.",
		}, []string{"service"})),
		failovers: promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "failovers_total",
			Help: "Elections of a master other than the previous one.",
		}, []string{"service"})),
		withoutMaster: promutil.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "without_master_seconds_total",
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
	case r.Standby:
		result = "standby"
	case r.CredentialsRefused:
		result = "credentials_refused"
	case isTimeout(r.Err):
		result = "timeout"
	default:
		result = "fail"
	}
	x.checkDuration.WithLabelValues(service, backend, result).Observe(r.Latency.Seconds())
}

// setState publishes a backend's state: backend_state 1 for state and 0 for
// the other states of mode (series of the other mode's states are deleted,
// for a reload that changed the mode), and backend_up, 1 if alive (its
// checks do not say down).
func (x *Metrics) setState(service, backend, mode, state string, alive bool) {
	if x == nil {
		return
	}
	for _, s := range []string{StateMaster, StateUp, StateStandby, StateDown, StateDraining, StateDisabled} {
		if s == StateMaster && mode == ModeAny || s == StateUp && mode != ModeAny {
			x.backendState.DeleteLabelValues(service, backend, s)
			continue
		}
		v := 0.0
		if s == state {
			v = 1
		}
		x.backendState.WithLabelValues(service, backend, s).Set(v)
	}
	up := 0.0
	if alive {
		up = 1
	}
	x.backendUp.WithLabelValues(service, backend).Set(up)
}

// forget drops a backend removed by SetBackends, so its series do not linger
// at their last value.
func (x *Metrics) forget(service, backend string) {
	if x == nil {
		return
	}
	l := prometheus.Labels{"service": service, "backend": backend}
	x.checkDuration.DeletePartialMatch(l)
	x.backendState.DeletePartialMatch(l)
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
