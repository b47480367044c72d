// Package debugz adds the Go runtime's profiling endpoints to an admin
// server, as nsqd and most Go daemons do: an operator chasing CPU or
// latency in production runs `go tool pprof http://ADMIN/debug/pprof/profile`
// against the live process instead of reproducing the load elsewhere. The
// admin listener binds loopback by default, which is what keeps these
// endpoints private.
package debugz

import (
	"net/http"
	"net/http/pprof"
)

// Register adds /debug/pprof/ and its sub-pages to mux.
func Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index) // also serves heap, goroutine, block, ...
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}
