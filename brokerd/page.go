package brokerd

import (
	"sync"
	"time"

	"handover/internal/statuspage"
)

// The broker's status page (GET / on the admin port): what /status says,
// for a person. Rates are computed between two renderings at least a
// second apart.

const pageBody = `
<p>This broker is <span class="state {{.Role}}" id="role">{{.Role}}</span>
{{if eq .Role "master"}}{{if .Ready}}serving on {{.Listen}}{{else}}not serving yet{{end}}{{end}}
&middot; epoch {{.Epoch}} since {{ago .Since}} &middot; {{.Connections}} connections</p>
<dl>
<dt>cluster</dt><dd>{{.Cluster.ID}} (created {{.Cluster.Created.Format "2006-01-02"}})</dd>
<dt>lock</dt><dd>{{.Lock}}</dd>
<dt>store</dt><dd>{{.Store}}</dd>
<dt>version</dt><dd>{{.Version}}, pid {{.PID}}</dd>
<dt>memory</dt><dd>{{bytes .Memory.Pinned}} pinned, {{bytes .Memory.Cached}} cached of {{bytes .Memory.Limit}}{{if .Memory.ProducersWaiting}}; <span class="state warn">{{.Memory.ProducersWaiting}} producers held by flow control</span>{{end}}</dd>
{{with .Journal}}<dt>journal</dt><dd>{{.Segments}} segments, {{bytes .Bytes}} ({{bytes .LiveBytes}} live), {{.Live}} live records</dd>{{end}}
</dl>
{{with .Standby}}
<h2>Standby</h2>
<p id="standby">{{if .Ready}}<span class="state standby">ready to take over</span>{{else}}<span class="state down">not ready</span> {{.NotReady}}{{end}}</p>
<dl><dt>indexed</dt><dd>{{.Messages}} messages, {{bytes .Bytes}}</dd>
<dt>last read</dt><dd>{{ago .LastCatchUp}}, {{.BehindRecords}} records behind</dd></dl>
{{end}}
{{if .Queues}}
<h2>Queues</h2>
<table id="queues"><tr><th>queue</th><th>depth</th><th>in flight</th><th>consumers</th><th>in</th><th>out</th><th>memory</th></tr>
{{range .Queues}}<tr><td>{{.Name}}</td><td class=n>{{.Depth}}</td><td class=n>{{.Inflight}}</td><td class=n>{{.Consumers}}</td><td class=n>{{rate .InRate}}</td><td class=n>{{rate .OutRate}}</td><td class=n>{{bytes .Memory}}</td></tr>
{{end}}</table>{{end}}
{{if .Topics}}
<h2>Topics</h2>
<table id="topics"><tr><th>topic</th><th>subscribers</th><th>in</th><th>out</th></tr>
{{range .Topics}}<tr><td>{{.Name}}</td><td class=n>{{.Consumers}}</td><td class=n>{{rate .InRate}}</td><td class=n>{{rate .OutRate}}</td></tr>
{{end}}</table>{{end}}
{{if .Damaged}}
<h2>Damaged messages</h2>
<table><tr><th>message</th><th>error</th></tr>
{{range .Damaged}}<tr><td>{{.ID}}</td><td>{{.Error}}</td></tr>{{end}}</table>{{end}}
`

var brokerPage = statuspage.New("brokerd", pageBody)

// pageQueue is a queue or topic on the page: its figures and rates.
type pageQueue struct {
	queueStats
	InRate, OutRate float64
}

// pageView is what the page shows.
type pageView struct {
	Status
	Queues, Topics []pageQueue
}

// pageRates remembers the counters of the previous rendering.
type pageRates struct {
	mu   sync.Mutex
	at   time.Time
	prev map[string][2]uint64
}

func (s *Server) pageData() any {
	st := s.Status()
	v := pageView{Status: st}
	s.rates.mu.Lock()
	defer s.rates.mu.Unlock()
	now := time.Now()
	dt := now.Sub(s.rates.at).Seconds()
	rate := func(q queueStats) pageQueue {
		p := pageQueue{queueStats: q}
		if prev, ok := s.rates.prev[q.Name]; ok && dt > 0 {
			p.InRate = float64(q.Enqueued-min(prev[0], q.Enqueued)) / dt
			p.OutRate = float64(q.Dequeued-min(prev[1], q.Dequeued)) / dt
		}
		return p
	}
	for _, q := range st.Queues {
		v.Queues = append(v.Queues, rate(q))
	}
	for _, q := range st.Topics {
		v.Topics = append(v.Topics, rate(q))
	}
	if dt >= 1 || s.rates.prev == nil {
		s.rates.at = now
		s.rates.prev = make(map[string][2]uint64, len(st.Queues)+len(st.Topics))
		for _, q := range append(st.Queues, st.Topics...) {
			s.rates.prev[q.Name] = [2]uint64{q.Enqueued, q.Dequeued}
		}
	}
	return v
}
