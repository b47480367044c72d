package sidecar

import (
	"encoding/json"
	"errors"
	"net/http"

	"handover/health"
)

// Runtime control of backends, as HAProxy's runtime API ("set server
// ... state maint|drain|ready") and ActiveMQ's console: an operator takes a
// broker out for maintenance without editing the config file.
//
//	POST /backends/disable?service=NAME&backend=ADDR
//	POST /backends/drain?service=NAME&backend=ADDR
//	POST /backends/enable?service=NAME&backend=ADDR
//
// disable: the backend is never elected nor a target; its live connections
// are closed as on a failover (TCP with on_failover "close": closed, the
// clients reconnect to the master; STOMP: sessions resume on the master,
// clients stay connected). Disabling the only master leaves the service
// without one (clients held, /readyz 503) until another takes over or it
// is enabled.
//
// drain: no new connection goes to it; live ones stay while it passes its
// checks (and, in mode master, no other master is elected). In STOMP mode
// sessions move off it as with disable: that data path does not keep
// connections to a backend that is no longer a target.
//
// enable: undoes either; the backend is electable again at once.
//
// The setting shows in /status (the backend's state is "disabled" or
// "draining", its "health" what the checks say), on the page and in
// handover_health_backend_state. It is kept across reloads (SIGHUP, POST
// /reload), even if the backend leaves the list and comes back, until
// enabled; a restart forgets it. See health.Monitor.SetAdminState.
//
// The requests go through adminmux.Guard like every state-changing one: the
// Host must be an IP address or localhost, and a browser's Origin its own.

// controlActions maps the path's action to the state it sets.
var controlActions = map[string]string{
	"disable": health.StateDisabled,
	"drain":   health.StateDraining,
	"enable":  "",
}

// controlResult is the answer to a control request: the backend and its
// service after the change, or Error.
type controlResult struct {
	Service string `json:"service,omitempty"`
	Backend string `json:"backend,omitempty"`
	// State is the backend's state now: "disabled", "draining", or (after
	// enable) what the checks and the election make of it.
	State string `json:"state,omitempty"`
	// Health is what its checks say while disabled or draining.
	Health string `json:"health,omitempty"`
	// Master is the service's master now ("" without one; mode any: the
	// first healthy backend), Ready whether it has one.
	Master string `json:"master,omitempty"`
	Ready  bool   `json:"ready"`
	Error  string `json:"error,omitempty"`
}

func (sc *Sidecar) backendControl(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	name, addr := r.URL.Query().Get("service"), r.URL.Query().Get("backend")
	reply := func(code int, res controlResult) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(res)
	}
	state, ok := controlActions[action]
	if !ok {
		reply(http.StatusNotFound, controlResult{Error: "unknown action " + action + ": want disable, drain or enable"})
		return
	}
	if name == "" || addr == "" {
		reply(http.StatusBadRequest, controlResult{Error: "want ?service=NAME&backend=ADDR"})
		return
	}
	sc.mu.Lock()
	svc := sc.services[name]
	sc.mu.Unlock()
	if svc == nil {
		reply(http.StatusNotFound, controlResult{Service: name, Backend: addr, Error: "no service " + name})
		return
	}
	mon := svc.pool.monitor
	if err := mon.SetAdminState(addr, state, r.Method+" "+r.URL.Path+" from "+r.RemoteAddr); err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, health.ErrUnknownBackend) {
			code = http.StatusNotFound
		}
		reply(code, controlResult{Service: name, Backend: addr, Error: err.Error()})
		return
	}
	st := mon.Status()
	res := controlResult{Service: name, Backend: addr, Ready: st.Ready}
	if len(st.Targets) > 0 {
		res.Master = st.Targets[0]
	}
	for _, b := range st.Backends {
		if b.Addr == addr {
			res.State, res.Health = b.State, b.Health
		}
	}
	reply(http.StatusOK, res)
}
