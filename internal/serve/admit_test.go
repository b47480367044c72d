package serve

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"handover/proxy/proxytest"
)

// TestAdmission: the caps as Admit and Release apply them, with their
// defaults (0 for MaxConnections is 10,000, not "no cap").
func TestAdmission(t *testing.T) {
	a1, a2 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	type step struct {
		release bool // release src instead of admitting it
		src     netip.Addr
		want    string // Admit's answer
	}
	tests := []struct {
		name           string
		max, perSource int
		wantMax        int // the cap in force
		steps          []step
	}{
		{"zero is the default cap", 0, 0, DefaultMaxConnections, nil},
		{"no cap", NoLimit, 0, 0, []step{{src: a1}, {src: a1}, {src: a1}}},
		{"max", 2, 0, 2, []step{
			{src: a1}, {src: a2}, {src: a1, want: RejectMax},
			{release: true, src: a1}, {src: a2},
		}},
		{"per source", 0, 2, DefaultMaxConnections, []step{
			{src: a1}, {src: a1}, {src: a1, want: RejectPerSource}, {src: a2},
			{release: true, src: a1}, {src: a1}, {src: a1, want: RejectPerSource},
		}},
		{"max before per source", 2, 1, 2, []step{
			{src: a1}, {src: a1, want: RejectPerSource}, {src: a2}, {src: a2, want: RejectMax},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rejected := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"service", "reason"})
			a := NewAdmission(Settings{Name: "s", MaxConnections: tt.max, MaxConnectionsPerSource: tt.perSource}, proxytest.Log(t), rejected)
			if a.max != tt.wantMax {
				t.Fatalf("cap %d, want %d", a.max, tt.wantMax)
			}
			live := 0
			for i, s := range tt.steps {
				if s.release {
					a.Release(s.src)
					live--
					continue
				}
				if got := a.Admit(s.src); got != s.want {
					t.Fatalf("step %d: Admit(%v) = %q, want %q", i, s.src, got, s.want)
				}
				if s.want == "" {
					live++
				}
			}
			if got := a.live.Load(); got != int64(live) {
				t.Fatalf("live %d, want %d", got, live)
			}
		})
	}
}

// TestAdmissionLogsSparingly: every refusal is counted, but a burst of them
// is one log line, and the next line says how many were not logged.
func TestAdmissionLogsSparingly(t *testing.T) {
	log := proxytest.Log(t)
	hook := logtest.NewLocal(log.Logger)
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"service", "reason"})
	a := NewAdmission(Settings{Name: "s", MaxConnections: 1}, log, rejected)
	for range 100 {
		a.Refused(RejectMax, func() string { return "127.0.0.1:1" })
	}
	if got := proxytest.Counter(t, rejected.WithLabelValues("s", RejectMax)); got != 100 {
		t.Errorf("counted %v refusals, want 100", got)
	}
	if n := len(hook.AllEntries()); n != 1 {
		t.Fatalf("%d log lines for a burst of 100 refusals, want 1", n)
	}
	// As if the last line were older than rejectLogEvery.
	a.lastLog.Store(a.lastLog.Load() - int64(rejectLogEvery))
	a.Refused(RejectMax, func() string { return "127.0.0.1:1" })
	if e := hook.LastEntry(); len(hook.AllEntries()) != 2 || e.Data["not_logged"] != int64(99) {
		t.Fatalf("next line: %v entries, last %v, want one saying 99 were not logged", len(hook.AllEntries()), e.Data)
	}
}
