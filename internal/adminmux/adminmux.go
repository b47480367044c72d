// Package adminmux is what the admin servers of brokerd and handover have in
// common: GET /status (a JSON document), GET /healthz, GET /metrics
// (Prometheus) and the Go runtime's profiles under /debug/pprof/. Each
// binary adds its own routes (brokerd's /readyz, the sidecar's POST
// /reload) to the mux New returns.
//
// The profiles are there as in nsqd and most Go daemons: an operator
// chasing CPU or latency in production runs `go tool pprof
// http://ADMIN/debug/pprof/profile` against the live process instead of
// reproducing the load elsewhere. The admin listener binds loopback by
// default, which is what keeps them private.
package adminmux

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// New returns a mux serving status() as indented JSON at /status, "ok" at
// /healthz, metrics at /metrics and the profiles.
func New(status func() any, metrics prometheus.Gatherer) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/pprof/", pprof.Index) // also serves heap, goroutine, block, ...
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}
