package proxy

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"handover/internal/serve"
)

// Metrics are the proxy's Prometheus series, shared by every Service of a
// process and labelled by service (Options.Name) and backend (the dialed
// address). A nil *Metrics given to New is replaced by an unregistered one.
type Metrics struct {
	accepted   *prometheus.CounterVec // service
	rejected   *prometheus.CounterVec // service, reason
	held       *prometheus.GaugeVec   // service
	failed     *prometheus.CounterVec // service, reason
	active     *prometheus.GaugeVec   // service, backend
	connected  *prometheus.CounterVec // service, backend
	dialErrors *prometheus.CounterVec // service, backend
	closed     *prometheus.CounterVec // service, backend, reason

	// Byte counters are read at scrape time rather than incremented by the
	// data path, which never sees the bytes it moves (splice(2)): finished
	// pairs leave their totals in done; live pairs are sampled (meter.go).
	mu   sync.Mutex
	done map[bytesKey]float64
	live map[liveConn]struct{}

	// series caches the per-backend children, so that a connection looks
	// its labels up once (backendSeries) rather than at every event.
	seriesMu sync.Mutex
	series   map[seriesKey]*backendSeries
}

type seriesKey struct{ service, backend string }

// backendSeries are one service's series for one backend. WithLabelValues
// hashes the labels and takes the vector's lock each time; a connection
// would pay that four times or more, a series taken from here once.
type backendSeries struct {
	connected prometheus.Counter
	active    prometheus.Gauge
	// closed holds the closed_total children by reason, made on first use
	// so that /metrics shows only reasons that happened.
	closed sync.Map // reason → prometheus.Counter
}

// serviceSeries are a service's own series, looked up once by New.
type serviceSeries struct {
	held prometheus.Gauge
}

func (m *Metrics) serviceSeries(service string) serviceSeries {
	return serviceSeries{held: m.held.WithLabelValues(service)}
}

// backendSeries returns the series of service and backend.
func (m *Metrics) backendSeries(service, backend string) *backendSeries {
	k := seriesKey{service, backend}
	m.seriesMu.Lock()
	defer m.seriesMu.Unlock()
	bs := m.series[k]
	if bs == nil {
		bs = &backendSeries{
			connected: m.connected.WithLabelValues(service, backend),
			active:    m.active.WithLabelValues(service, backend),
		}
		m.series[k] = bs
	}
	return bs
}

// closedFor counts a connection closed for reason.
func (bs *backendSeries) closedFor(m *Metrics, service, backend, reason string) prometheus.Counter {
	if c, ok := bs.closed.Load(reason); ok {
		return c.(prometheus.Counter)
	}
	c, _ := bs.closed.LoadOrStore(reason, m.closed.WithLabelValues(service, backend, reason))
	return c.(prometheus.Counter)
}

type bytesKey struct{ service, backend, direction string }

var descBytes = prometheus.NewDesc("handover_proxy_bytes_total",
	"Bytes proxied, by direction: up is client to backend, down is backend to client. "+
		"Live connections are included (sampled from the kernel where it keeps count, see proxy/meter.go).",
	[]string{"service", "backend", "direction"}, nil)

// NewMetrics creates the proxy's series and registers them with reg, if
// reg is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_proxy_connections_accepted_total",
			Help: "Client connections accepted (within the connection caps)."}, []string{"service"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_proxy_connections_rejected_total",
			Help: "Client connections closed at accept for a cap, by reason: max_connections, max_connections_per_source."},
			[]string{"service", "reason"}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "handover_proxy_connections_held",
			Help: "Client connections accepted and still looking for a backend: no master yet, or dials failing."}, []string{"service"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_proxy_connections_failed_total",
			Help: "Client connections closed without ever reaching a backend, by reason: " +
				"timeout (held for Timeout), attempts (MaxReconnectAttempts used up), " +
				"no_target and unreachable (negative Timeout: refused at once), shutdown."}, []string{"service", "reason"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "handover_proxy_connections_active",
			Help: "Client connections being proxied to a backend now."}, []string{"service", "backend"}),
		connected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_proxy_connections_total",
			Help: "Client connections that reached a backend."}, []string{"service", "backend"}),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_proxy_dial_errors_total",
			Help: "Failed dials to a backend (each one also asks for a health re-check)."}, []string{"service", "backend"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handover_proxy_connections_closed_total",
			Help: "Proxied connections that ended, by reason: eof (both sides finished), client_error, " +
				"upstream_error, failover (backend no longer a target), idle, shutdown."}, []string{"service", "backend", "reason"}),
		done:   map[bytesKey]float64{},
		live:   map[liveConn]struct{}{},
		series: map[seriesKey]*backendSeries{},
	}
	if reg != nil {
		reg.MustRegister(m)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.vecs() {
		c.Describe(ch)
	}
	ch <- descBytes
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.vecs() {
		c.Collect(ch)
	}
	m.mu.Lock()
	totals := make(map[bytesKey]float64, len(m.done)+len(m.live))
	for k, v := range m.done {
		totals[k] += v
	}
	for c := range m.live {
		service, backend := c.labels()
		up, down := c.sample()
		totals[bytesKey{service, backend, "up"}] += float64(up)
		totals[bytesKey{service, backend, "down"}] += float64(down)
	}
	m.mu.Unlock()
	for k, v := range totals {
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, v, k.service, k.backend, k.direction)
	}
}

func (m *Metrics) vecs() []prometheus.Collector {
	return []prometheus.Collector{m.accepted, m.rejected, m.held, m.failed, m.active, m.connected, m.dialErrors, m.closed}
}

// liveConn is a proxied connection as the byte counters see it: a pair
// (goroutines) or an event loop's conn.
type liveConn interface {
	labels() (service, backend string)
	// sample returns the bytes moved so far each way; called under
	// Metrics.mu, and once more when the connection has ended.
	sample() (up, down int64)
}

// started counts c, of backend series bs, as connected and live.
func (m *Metrics) started(c liveConn, bs *backendSeries) {
	m.mu.Lock()
	m.live[c] = struct{}{}
	m.mu.Unlock()
	bs.connected.Inc()
	bs.active.Inc()
}

// ended moves c's bytes from the live samples to the finished totals,
// under one lock so that no scrape sees them twice or not at all.
func (m *Metrics) ended(c liveConn, bs *backendSeries, reason string) {
	service, backend := c.labels()
	m.mu.Lock()
	delete(m.live, c)
	up, down := c.sample()
	m.done[bytesKey{service, backend, "up"}] += float64(up)
	m.done[bytesKey{service, backend, "down"}] += float64(down)
	m.mu.Unlock()
	bs.active.Dec()
	bs.closedFor(m, service, backend, reason).Inc()
}

// failReason is the reason label of handover_proxy_connections_failed_total
// for an error of serve.Connector.Connect.
func failReason(err error) string {
	switch {
	case errors.Is(err, serve.ErrTimeout):
		return "timeout"
	case errors.Is(err, serve.ErrAttempts):
		return "attempts"
	case errors.Is(err, serve.ErrNoTarget):
		return "no_target"
	case errors.Is(err, serve.ErrUnreachable):
		return "unreachable"
	default:
		return "shutdown"
	}
}
