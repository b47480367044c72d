package sidecar

import (
	"github.com/prometheus/client_golang/prometheus"

	"handover/internal/buildinfo"
)

// buildInfoGauge is handover_build_info{version,commit,go_version}, always
// 1: joined on, it labels any series with the build that produced it.
func buildInfoGauge() prometheus.Gauge {
	bi := buildinfo.Read()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "handover_build_info",
		Help:        "Always 1; its labels say which build runs: version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": Version, "commit": bi.Commit, "go_version": bi.GoVersion},
	})
	g.Set(1)
	return g
}
