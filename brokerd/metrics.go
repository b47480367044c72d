package brokerd

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"handover/internal/buildinfo"
)

// metrics are the server's Prometheus series. Each Server has its own
// registry, so several servers can live in one test process.
type metrics struct {
	reg            *prometheus.Registry
	accepted       prometheus.Counter
	received       prometheus.Counter
	delivered      prometheus.Counter
	protocolErrors prometheus.Counter
	duplicates     prometheus.Counter
	damaged        prometheus.Counter
	closes         *prometheus.CounterVec
	refused        *prometheus.CounterVec
	slowConsumers  prometheus.Counter
	diskFull       prometheus.Counter
	refusals       *prometheus.CounterVec
	receipt        *prometheus.HistogramVec
	storeAppend    prometheus.Histogram
	authFailures   prometheus.Counter
	denials        *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_connections_accepted_total", Help: "Client connections accepted."}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_messages_received_total", Help: "Messages accepted from producers (after journaling, for persistent ones)."}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_messages_delivered_total", Help: "MESSAGE frames queued to consumers, redeliveries included."}),
		protocolErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_protocol_errors_total", Help: "ERROR frames sent to clients for bad input."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_duplicate_sends_dropped_total", Help: "SENDs dropped because their (handover-producer, handover-seq) was already accepted."}),
		damaged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_damaged_messages_total", Help: "Stored messages whose body could not be read back (see /status damaged); they are not delivered."}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brokerd_connections_closed_total", Help: "Client connections closed, by reason."}, []string{"reason"}),
		receipt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "brokerd_receipt_seconds", Help: "From reading a SEND, ACK, NACK or COMMIT that asked for a receipt to queueing its RECEIPT (for persistent messages, the journal write and fsync included).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"command"}),
		storeAppend: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "brokerd_store_append_seconds", Help: "From handing records to the store to their being durable (group commit wait, write and fsync).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_authentication_failures_total", Help: "CONNECTs refused for a wrong or missing login."}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brokerd_authorization_denials_total", Help: "SENDs and SUBSCRIBEs refused by the authorization rules, by operation."}, []string{"op"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brokerd_refusals_total", Help: "Frames refused because a limit was reached (an ERROR, then the connection closes), by the limit's config key."}, []string{"limit"}),
		diskFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_disk_full_refusals_total", Help: "Persistent SENDs (or COMMITs) refused because the journal reached max_disk or the disk reserve."}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "brokerd_slow_consumers_dropped_total", Help: "Connections dropped because too many frames or bytes waited to be written to them."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brokerd_connections_refused_total", Help: "Client connections refused at accept, by the limit they were over."}, []string{"limit"}),
	}
	bi := buildinfo.Read()
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{Name: "brokerd_build_info", Help: "1, labelled with the running build.",
		ConstLabels: prometheus.Labels{"version": Version, "commit": bi.Commit, "go_version": bi.GoVersion}})
	buildInfo.Set(1)
	m.reg.MustRegister(buildInfo)
	m.reg.MustRegister(m.accepted, m.received, m.delivered, m.protocolErrors, m.duplicates, m.damaged, m.closes, m.refused, m.slowConsumers, m.diskFull, m.refusals, m.receipt, m.storeAppend, m.authFailures, m.denials,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		stateCollector{s})
	return m
}

// stateCollector reads gauges from the server's state at scrape time, so the
// data path keeps no extra counters for them.
type stateCollector struct{ s *Server }

var (
	descMaster   = prometheus.NewDesc("brokerd_master", "1 while this broker is master and serving.", nil, nil)
	descEpoch    = prometheus.NewDesc("brokerd_epoch", "Fencing epoch of the held master lock (0 if none).", nil, nil)
	descConns    = prometheus.NewDesc("brokerd_connections", "Open client connections.", nil, nil)
	descWatchers = prometheus.NewDesc("brokerd_watchers", "Open watch streams (GET /watch on the admin port).", nil, nil)
	descWatchRef = prometheus.NewDesc("brokerd_watchers_refused_total", "Watch streams refused (503), by the limit reached: max_watchers or max_watchers_per_source.", []string{"limit"}, nil)
	descDepth    = prometheus.NewDesc("brokerd_queue_depth", "Messages in a queue, unacknowledged deliveries included.", []string{"destination"}, nil)
	descInflight = prometheus.NewDesc("brokerd_queue_inflight", "Messages delivered and not yet acknowledged.", []string{"destination"}, nil)
	descConsumer = prometheus.NewDesc("brokerd_destination_consumers", "Subscriptions on a destination.", []string{"destination"}, nil)
	descEnq      = prometheus.NewDesc("brokerd_destination_enqueued_total", "Messages sent to a destination.", []string{"destination"}, nil)
	descDeq      = prometheus.NewDesc("brokerd_destination_dequeued_total", "Messages acknowledged (queues) or delivered (topics).", []string{"destination"}, nil)
	descJSyncs   = prometheus.NewDesc("brokerd_journal_syncs_total", "fsyncs of the journal; with group commit, far fewer than records.", nil, nil)
	descJRecords = prometheus.NewDesc("brokerd_journal_records_total", "Records written to the journal.", nil, nil)
	descJBytes   = prometheus.NewDesc("brokerd_journal_bytes", "Bytes of journal segments on disk.", nil, nil)
	descJSegs    = prometheus.NewDesc("brokerd_journal_segments", "Journal segment files on disk.", nil, nil)
	descJLive    = prometheus.NewDesc("brokerd_store_live_bytes", "Bytes of the live messages in the store.", nil, nil)
	descMem      = prometheus.NewDesc("brokerd_memory_bytes", "Message bodies held in memory, by kind: pinned (cannot be dropped) or cached (persistent, also in the store).", []string{"kind"}, nil)
	descMemLimit = prometheus.NewDesc("brokerd_memory_limit_bytes", "The memory budget for message bodies (max_memory).", nil, nil)
	descFlowWait = prometheus.NewDesc("brokerd_flow_control_waits_total", "SENDs held by producer flow control because the memory budget was spent.", nil, nil)
	descFlowTO   = prometheus.NewDesc("brokerd_flow_control_timeouts_total", "SENDs refused after waiting flow_control_timeout for memory.", nil, nil)
	descSbMsgs   = prometheus.NewDesc("brokerd_standby_messages", "Live messages a slave's standby has indexed.", nil, nil)
	descSbAge    = prometheus.NewDesc("brokerd_standby_catch_up_age_seconds", "Seconds since a slave's standby last read the store.", nil, nil)
	descSbReady  = prometheus.NewDesc("brokerd_standby_ready", "1 while a slave could take over now: its standby reads the store and its listen address can be bound (see /status standby.not_ready).", nil, nil)
	descSbBehind = prometheus.NewDesc("brokerd_standby_behind_records", "Records the standby's last catch-up found to read.", nil, nil)
	descUsers    = prometheus.NewDesc("brokerd_users", "Users logins are checked against (with users_file or users_table).", nil, nil)
	descUsersOK  = prometheus.NewDesc("brokerd_users_current", "1 if the users in force are all the users file or table holds now; 0 if a change could not be read (see /status users.error).", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Status()
	master := 0.0
	if st.Ready {
		master = 1
	}
	ch <- constMetric(descMaster, prometheus.GaugeValue, master)
	ch <- constMetric(descEpoch, prometheus.GaugeValue, float64(st.Epoch))
	ch <- constMetric(descConns, prometheus.GaugeValue, float64(st.Connections))
	ch <- constMetric(descWatchers, prometheus.GaugeValue, float64(st.Watchers))
	for why, key := range refusedKey {
		ch <- constMetric(descWatchRef, prometheus.CounterValue, float64(c.s.watch.refused[why].Load()), key)
	}
	if st.Users != nil {
		current := 1.0
		if st.Users.Error != "" {
			current = 0
		}
		ch <- constMetric(descUsers, prometheus.GaugeValue, float64(st.Users.Count))
		ch <- constMetric(descUsersOK, prometheus.GaugeValue, current)
	}
	for _, q := range st.Queues {
		ch <- constMetric(descDepth, prometheus.GaugeValue, float64(q.Depth), q.Name)
		ch <- constMetric(descInflight, prometheus.GaugeValue, float64(q.Inflight), q.Name)
	}
	for _, d := range append(st.Queues, st.Topics...) {
		ch <- constMetric(descConsumer, prometheus.GaugeValue, float64(d.Consumers), d.Name)
		ch <- constMetric(descEnq, prometheus.CounterValue, float64(d.Enqueued), d.Name)
		ch <- constMetric(descDeq, prometheus.CounterValue, float64(d.Dequeued), d.Name)
	}
	if j := st.Journal; j != nil {
		ch <- constMetric(descJSyncs, prometheus.CounterValue, float64(j.Syncs))
		ch <- constMetric(descJRecords, prometheus.CounterValue, float64(j.Records))
		ch <- constMetric(descJBytes, prometheus.GaugeValue, float64(j.Bytes))
		ch <- constMetric(descJSegs, prometheus.GaugeValue, float64(j.Segments))
		ch <- constMetric(descJLive, prometheus.GaugeValue, float64(j.LiveBytes))
	}
	m := st.Memory
	ch <- constMetric(descMem, prometheus.GaugeValue, float64(m.Pinned), "pinned")
	ch <- constMetric(descMem, prometheus.GaugeValue, float64(m.Cached), "cached")
	ch <- constMetric(descMemLimit, prometheus.GaugeValue, float64(m.Limit))
	ch <- constMetric(descFlowWait, prometheus.CounterValue, float64(m.FlowControlled))
	ch <- constMetric(descFlowTO, prometheus.CounterValue, float64(m.FlowTimeouts))
	if sb := st.Standby; sb != nil {
		ch <- constMetric(descSbMsgs, prometheus.GaugeValue, float64(sb.Messages))
		ch <- constMetric(descSbAge, prometheus.GaugeValue, sb.AgeSeconds)
		ch <- constMetric(descSbBehind, prometheus.GaugeValue, float64(sb.BehindRecords))
		ready := 0.0
		if sb.Ready {
			ready = 1
		}
		ch <- constMetric(descSbReady, prometheus.GaugeValue, ready)
	}
}

// constMetric is prometheus.MustNewConstMetric without the panic: a label
// value the registry refuses (a destination name recovered from an old
// store that is not UTF-8, say) costs that one series, which promhttp
// leaves out, not the whole scrape.
func constMetric(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}
