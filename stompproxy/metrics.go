package stompproxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the STOMP-mode Prometheus series, shared by every Service of
// a process and labelled by service (Options.Name). A nil *Metrics given to
// New is replaced by an unregistered one.
type Metrics struct {
	accepted    *prometheus.CounterVec   // service
	rejected    *prometheus.CounterVec   // service, reason
	active      *prometheus.GaugeVec     // service
	paused      *prometheus.GaugeVec     // service
	resumed     *prometheus.CounterVec   // service
	replayed    *prometheus.CounterVec   // service
	duplicates  *prometheus.CounterVec   // service
	suppressed  *prometheus.CounterVec   // service
	unresumable *prometheus.CounterVec   // service, reason
	closed      *prometheus.CounterVec   // service, reason
	dialErrors  *prometheus.CounterVec   // service, backend
	pause       *prometheus.HistogramVec // service
}

// NewMetrics creates the series and registers them with reg, if reg is not
// nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_sessions_accepted_total",
			Help: "Client connections accepted in STOMP mode (within the connection caps)."}, []string{"service"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_sessions_rejected_total",
			Help: "Client connections sent an ERROR and closed at accept for a cap, by reason: max_connections, max_connections_per_source."},
			[]string{"service", "reason"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "handover_stomp_sessions_active",
			Help: "STOMP sessions open now, paused ones included."}, []string{"service"}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "handover_stomp_sessions_paused",
			Help: "STOMP sessions that lost their broker connection and are waiting for a master now."}, []string{"service"}),
		resumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_sessions_resumed_total",
			Help: "Upstream losses survived: the session was carried on to a (new) master without closing the client."}, []string{"service"}),
		replayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_frames_replayed_total",
			Help: "Frames re-sent to a new master on resume: SUBSCRIBEs, open transactions, frames awaiting their RECEIPT."}, []string{"service"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_duplicates_dropped_total",
			Help: "Replayed SENDs the new master confirmed. Against brokerd, each one that the old master had already " +
				"persisted was dropped as a duplicate, so this bounds the duplicates dropped from above."}, []string{"service"}),
		suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_redeliveries_suppressed_total",
			Help: "Redeliveries, after a failover, of messages the client already had: not passed on again."}, []string{"service"}),
		unresumable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_sessions_unresumable_total",
			Help: "Sessions closed because an upstream loss could not be resumed, by reason: over_limit (MaxReplayBytes), " +
				"commit_unknown (a COMMIT in flight), no_master (none reached within Timeout), version_mismatch, connect_rejected, " +
				"credentials (the sidecar's passcode could not be read)."},
			[]string{"service", "reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_sessions_closed_total",
			Help: "STOMP sessions that ended, by reason."}, []string{"service", "reason"}),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_stomp_dial_errors_total",
			Help: "Failed dials or CONNECT handshakes to a backend (each one also asks for a health re-check)."}, []string{"service", "backend"}),
		pause: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "handover_stomp_resume_pause_seconds",
			Help:    "How long resumed sessions were paused: from the upstream loss to the replay sent to the new master.",
			Buckets: []float64{.01, .025, .05, .1, .2, .3, .5, 1, 2, 5, 10, 30}}, []string{"service"}),
	}
	if reg != nil {
		reg.MustRegister(m)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.accepted, m.rejected, m.active, m.paused, m.resumed, m.replayed, m.duplicates,
		m.suppressed, m.unresumable, m.closed, m.dialErrors, m.pause}
}
