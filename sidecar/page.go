package sidecar

import (
	"sort"
	"time"

	"handover/health"
	"handover/internal/statuspage"
	"handover/proxy"
	"handover/stompproxy"
)

// The sidecar's status page (GET / on the admin port): what /status says,
// for a person on call. Every value goes through html/template, which
// escapes it for where it lands (a service may be named anything, a check
// error quotes what the backend answered).

const pageBody = `
<p>handover {{.Version}} ({{.Build}}) &middot; started {{ago .Started}} &middot; configuration generation {{.Generation}}
{{- with .LastReload}} &middot; last reload {{ago .Time}}: {{if .OK}}applied{{else}}<span class="state error">rejected</span> {{.Error}}{{end}}{{end}}</p>
{{range .Services}}
<h2>{{.Name}}</h2>
<p>{{if .Health.Ready}}<span class="state master" id="ready-{{.Name}}">ready</span>{{else}}<span class="state down" id="ready-{{.Name}}">not ready</span>{{end}}
{{if .Master}}master <b id="master-{{.Name}}">{{.Master}}</b> since {{ago .MasterSince}}
{{- else if .Health.Ready}}{{len .Health.Targets}} of {{len .Health.Backends}} backends take clients
{{- else}}no {{if eq .Health.Mode "any"}}healthy backend{{else}}master{{end}} for {{ago .Health.NoMasterSince}}: new clients wait for one{{end}}</p>
<dl>
<dt>listen</dt><dd>{{.Listen}}</dd>
<dt>protocol</dt><dd>{{.Protocol}}</dd>
<dt>mode</dt><dd>{{.Health.Mode}}</dd>
<dt>connections</dt><dd>{{.Active}} open{{if .Waiting}}, {{.Waiting}} waiting for a master{{end}}; {{.Accepted}} accepted since start</dd>
{{with .Discovery}}<dt>discovery</dt><dd>{{.Name}}: {{len .Backends}} backends, last lookup {{ago .LastLookup}}{{with .LastError}} <span class="state error">{{.}}</span>{{end}}</dd>{{end}}
</dl>
<table id="backends-{{.Name}}"><tr><th>backend</th><th>state</th><th>since</th><th>epoch</th><th>news by</th><th>last check</th><th>latency</th><th>connections</th><th>last error</th></tr>
{{range .Backends}}<tr><td>{{.Addr}}</td><td><span class="state {{.Class}}">{{.State}}</span>{{with .Health}} (checks: {{.}}){{end}}</td><td>{{if .Since.IsZero}}start{{else}}{{ago .Since}}{{end}}</td><td class=n>{{.Epoch}}</td><td>{{if eq .Watch "watched"}}watch, heard {{ago .LastSpoke}}{{else}}polling{{with .WatchError}} <span title="{{.}}">(no watch)</span>{{end}}{{end}}</td><td>{{ago .LastCheck}}</td><td class=n>{{.Latency}}</td><td class=n>{{.Connections}}</td><td>{{.LastError}}</td></tr>
{{end}}</table>
{{with .Unlisted}}<p>Set by an operator, for backends not listed now: {{range .}}{{.Addr}} {{.State}}; {{end}}enable them to clear it.</p>{{end}}
{{end}}`

var sidecarPage = statuspage.New("handover", pageBody)

// pageView is what the page shows: Status, with each service's
// connections counted per backend.
type pageView struct {
	Status
	Services []pageService
}

type pageService struct {
	ServiceStatus
	// Active counts open client connections (STOMP: sessions); Waiting
	// those held for a master (STOMP: paused sessions); Accepted every
	// one accepted.
	Active, Waiting int
	Accepted        uint64
	Backends        []pageBackend
	// Unlisted are operator settings for addresses not in the list.
	Unlisted []pageAdmin
}

type pageBackend struct {
	health.BackendStatus
	// Class is the style sheet's class for State: master, standby and
	// down as themselves, up as master (it serves), an operator's state
	// as warn.
	Class       string
	Latency     string
	Connections int
}

type pageAdmin struct{ Addr, State string }

func stateClass(state string) string {
	switch state {
	case health.StateMaster, health.StateUp:
		return "master"
	case health.StateStandby, health.StateDown:
		return state
	}
	return "warn"
}

func (sc *Sidecar) pageData() any {
	st := sc.status()
	v := pageView{Status: st}
	for _, s := range st.Services {
		ps := pageService{ServiceStatus: s}
		var byBackend map[string]int
		switch c := s.Connections.(type) {
		case proxy.ServiceStatus:
			ps.Active, ps.Waiting, ps.Accepted, byBackend = c.Active, c.Held, c.Accepted, c.Backends
		case stompproxy.Status:
			ps.Active, ps.Waiting, ps.Accepted, byBackend = c.Active, c.Paused, c.Accepted, c.Backends
		}
		listed := map[string]bool{}
		for _, b := range s.Health.Backends {
			listed[b.Addr] = true
			pb := pageBackend{BackendStatus: b, Class: stateClass(b.State), Connections: byBackend[b.Addr], Latency: "-"}
			if !b.LastCheck.IsZero() {
				pb.Latency = roundLatency(b.LastLatency).String()
			}
			ps.Backends = append(ps.Backends, pb)
		}
		for addr, state := range s.Health.Admin {
			if !listed[addr] {
				ps.Unlisted = append(ps.Unlisted, pageAdmin{addr, state})
			}
		}
		sort.Slice(ps.Unlisted, func(i, j int) bool { return ps.Unlisted[i].Addr < ps.Unlisted[j].Addr })
		v.Services = append(v.Services, ps)
	}
	return v
}

// roundLatency keeps three significant digits or so: 1.23ms, 412µs.
func roundLatency(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
