package discovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"handover/health"
	"handover/internal/testutil"
)

const srvName = "_stomp._tcp.brokers.example."

// newTest returns a Discoverer of srvName asking addr, with opts' other
// fields, and its Metrics.
func newTest(t *testing.T, addr string, opts Options) (*Discoverer, *Metrics) {
	t.Helper()
	if opts.Name == "" {
		opts.Name = srvName
	}
	opts.Resolver = addr
	opts.Log = testLog(t)
	opts.Metrics = NewMetrics(prometheus.NewRegistry())
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return d, opts.Metrics
}

// lookups reads lookups_total{name=srvName,result}.
func lookups(m *Metrics, result string) float64 {
	var pb dto.Metric
	if err := m.lookups.WithLabelValues(srvName, result).Write(&pb); err != nil {
		panic(err)
	}
	return pb.GetCounter().GetValue()
}

func TestLookup(t *testing.T) {
	type B = health.Backend
	tests := []struct {
		name        string
		setup       func(z *zone)
		opts        Options
		want        []B
		wantTTL     time.Duration
		wantQueries []string // nil: not checked
		wantErr     error
	}{
		{
			name: "additional section used without extra queries",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 61613, prio: 10, weight: 5}}
				z.addrs["a.example."] = []string{"10.0.0.1", "fd00::1"}
			},
			want:        []B{{Addr: "10.0.0.1:61613", Priority: 10, Weight: 5}, {Addr: "[fd00::1]:61613", Priority: 10, Weight: 5}},
			wantTTL:     60 * time.Second,
			wantQueries: []string{"udp SRV " + srvName},
		},
		{
			name: "missing addresses looked up at the same server",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 1}, {target: "b.example.", port: 2}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
				z.addrs["b.example."] = []string{"10.0.0.2", "fd00::2"}
				z.noGlue["b.example."] = true
			},
			want:        []B{{Addr: "10.0.0.1:1"}, {Addr: "10.0.0.2:2"}, {Addr: "[fd00::2]:2"}},
			wantTTL:     60 * time.Second,
			wantQueries: []string{"udp SRV " + srvName, "udp A b.example.", "udp AAAA b.example."},
		},
		{
			name: "order: priority, weight descending, target, address",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{
					{target: "z.example.", port: 1, prio: 20, weight: 100},
					{target: "c.example.", port: 1, prio: 10, weight: 1},
					{target: "b.example.", port: 1, prio: 10, weight: 50},
					{target: "a.example.", port: 1, prio: 10, weight: 50},
				}
				z.addrs["z.example."] = []string{"10.0.0.1"}
				z.addrs["c.example."] = []string{"10.0.0.2"}
				z.addrs["b.example."] = []string{"fd00::3", "10.0.0.30", "10.0.0.4"}
				z.addrs["a.example."] = []string{"10.0.0.9"}
			},
			want: []B{
				{Addr: "10.0.0.9:1", Priority: 10, Weight: 50},
				{Addr: "10.0.0.4:1", Priority: 10, Weight: 50},
				{Addr: "10.0.0.30:1", Priority: 10, Weight: 50},
				{Addr: "[fd00::3]:1", Priority: 10, Weight: 50},
				{Addr: "10.0.0.2:1", Priority: 10, Weight: 1},
				{Addr: "10.0.0.1:1", Priority: 20, Weight: 100},
			},
			wantTTL: 60 * time.Second,
		},
		{
			name: "a repeated address is listed once, at its best place",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{{target: "b.example.", port: 1, prio: 2}, {target: "a.example.", port: 1, prio: 1}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
				z.addrs["b.example."] = []string{"10.0.0.1"}
			},
			want:    []B{{Addr: "10.0.0.1:1", Priority: 1}},
			wantTTL: 60 * time.Second,
		},
		{
			name: "check URL template",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 61613}}
				z.addrs["a.example."] = []string{"10.0.0.1", "fd00::1"}
			},
			opts: Options{CheckURL: "http://{host}:8161/readyz?port={port}"},
			want: []B{
				{Addr: "10.0.0.1:61613", CheckURL: "http://10.0.0.1:8161/readyz?port=61613"},
				{Addr: "[fd00::1]:61613", CheckURL: "http://[fd00::1]:8161/readyz?port=61613"},
			},
			wantTTL: 60 * time.Second,
		},
		{
			name: "TTL is the smallest of the records used",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 1}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
				z.srvTTL, z.addrTTL = 30, 7
			},
			want:    []B{{Addr: "10.0.0.1:1"}},
			wantTTL: 7 * time.Second,
		},
		{
			name: "truncated UDP answer retried over TCP",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 1}, {target: "b.example.", port: 2}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
				z.addrs["b.example."] = []string{"10.0.0.2"}
				z.truncateUDP = true
			},
			want:        []B{{Addr: "10.0.0.1:1"}, {Addr: "10.0.0.2:2"}},
			wantTTL:     60 * time.Second,
			wantQueries: []string{"udp SRV " + srvName, "tcp SRV " + srvName},
		},
		{
			name:    "NXDOMAIN is an empty list with the negative TTL",
			setup:   func(z *zone) { z.soaTTL = 15 },
			want:    []B{},
			wantTTL: 15 * time.Second,
		},
		{
			name:  "NOERROR without records is an empty list",
			setup: func(z *zone) { z.srv[srvName] = nil },
			want:  []B{},
		},
		{
			name:  "target \".\" means no service",
			setup: func(z *zone) { z.srv[srvName] = []srvRec{{target: ".", port: 1}} },
			want:  []B{},
		},
		{
			name: "a target without addresses is skipped",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 1}, {target: "gone.example.", port: 1}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
			},
			want:    []B{{Addr: "10.0.0.1:1"}},
			wantTTL: 60 * time.Second,
		},
		{
			name:    "SERVFAIL is an error",
			setup:   func(z *zone) { z.rcodes[dns.TypeNone] = dns.RcodeServerFailure },
			wantErr: ErrRcode,
		},
		{
			name: "a failed address lookup fails the whole lookup",
			setup: func(z *zone) {
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 1}, {target: "b.example.", port: 1}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
				z.addrs["b.example."] = []string{"10.0.0.2"}
				z.noGlue["b.example."] = true
				z.rcodes[dns.TypeAAAA] = dns.RcodeRefused
			},
			wantErr: ErrRcode,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := newZone()
			z.set(tt.setup)
			d, m := newTest(t, startServer(t, z), tt.opts)
			got, ttl, err := d.Lookup(context.Background())
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Lookup error = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				if n := lookups(m, ResultError); n != 1 {
					t.Errorf("error lookups counted = %v, want 1", n)
				}
				return
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Lookup =\n  %+v\nwant\n  %+v", got, tt.want)
			}
			if ttl != tt.wantTTL {
				t.Errorf("TTL = %v, want %v", ttl, tt.wantTTL)
			}
			if tt.wantQueries != nil {
				var qs []string
				for _, q := range z.log() {
					qs = append(qs, q.String())
				}
				if !slices.Equal(qs, tt.wantQueries) {
					t.Errorf("queries = %q, want %q", qs, tt.wantQueries)
				}
			}
		})
	}
}

// runner runs d.Run until the test ends and collects the lists it delivers.
type runner struct {
	updates chan []health.Backend
}

func startRun(t *testing.T, d *Discoverer) *runner {
	t.Helper()
	r := &runner{updates: make(chan []health.Backend, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(ctx, func(bs []health.Backend) { r.updates <- bs })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r
}

// next waits for the next delivered list and checks it holds want's
// addresses, in order.
func (r *runner) next(t *testing.T, want ...string) []health.Backend {
	t.Helper()
	select {
	case bs := <-r.updates:
		if got := addrsOf(bs); !slices.Equal(got, want) {
			t.Fatalf("delivered %q, want %q", got, want)
		}
		return bs
	case <-time.After(5 * time.Second):
		t.Fatalf("no list delivered within 5s; want %q", want)
		return nil
	}
}

// none checks that nothing was delivered.
func (r *runner) none(t *testing.T) {
	t.Helper()
	select {
	case bs := <-r.updates:
		t.Fatalf("unexpected delivery %q", addrsOf(bs))
	default:
	}
}

// waitLookups waits until n more lookups with result have been counted
// since the call; a lookup then has also been delivered, if it was going to
// be, since Run delivers before it looks up again.
func waitLookups(t *testing.T, m *Metrics, result string, n int) {
	t.Helper()
	target := lookups(m, result) + float64(n)
	testutil.Eventually(t, 5*time.Second, func() error {
		if got := lookups(m, result); got < target {
			return fmt.Errorf("%s lookups = %v, want %v", result, got, target)
		}
		return nil
	})
}

func TestRunFollowsZone(t *testing.T) {
	z := newZone()
	z.set(func(z *zone) {
		z.srvTTL, z.addrTTL = 0, 0
		z.srv[srvName] = []srvRec{{target: "a.example.", port: 1, weight: 10}}
		z.addrs["a.example."] = []string{"10.0.0.1"}
		z.addrs["b.example."] = []string{"10.0.0.2"}
	})
	d, m := newTest(t, startServer(t, z), Options{MinRefresh: 20 * time.Millisecond, MaxRefresh: 100 * time.Millisecond})
	r := startRun(t, d)
	r.next(t, "10.0.0.1:1")

	steps := []struct {
		name   string
		change func(z *zone)
		want   []string
	}{
		{"added", func(z *zone) {
			z.srv[srvName] = append(z.srv[srvName], srvRec{target: "b.example.", port: 2, weight: 5})
		}, []string{"10.0.0.1:1", "10.0.0.2:2"}},
		{"re-weighted", func(z *zone) { z.srv[srvName][1].weight = 20 }, []string{"10.0.0.2:2", "10.0.0.1:1"}},
		{"address changed", func(z *zone) { z.addrs["a.example."] = []string{"10.0.0.3"} }, []string{"10.0.0.2:2", "10.0.0.3:1"}},
		{"removed", func(z *zone) { z.srv[srvName] = z.srv[srvName][1:] }, []string{"10.0.0.2:2"}},
	}
	for _, s := range steps {
		z.set(s.change)
		bs := r.next(t, s.want...)
		if s.name == "re-weighted" && bs[0].Weight != 20 {
			t.Errorf("re-weighted backend has weight %d, want 20", bs[0].Weight)
		}
	}
	// An unchanged answer is not delivered again.
	waitLookups(t, m, ResultOK, 3)
	r.none(t)
	if st := d.Status(); len(st.Backends) != 1 || st.Backends[0].Target != "b.example." || st.LastResult != ResultOK {
		t.Errorf("Status = %+v", st)
	}
}

func TestRunRefreshInterval(t *testing.T) {
	tests := []struct {
		name     string
		ttl      uint32
		min, max time.Duration
		want     time.Duration
	}{
		{"TTL within bounds", 1, 10 * time.Millisecond, time.Minute, time.Second},
		{"TTL below MinRefresh", 0, 50 * time.Millisecond, time.Minute, 50 * time.Millisecond},
		{"TTL above MaxRefresh", 3600, 10 * time.Millisecond, 80 * time.Millisecond, 80 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := newZone()
			z.set(func(z *zone) {
				z.srvTTL, z.addrTTL = tt.ttl, tt.ttl
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 1}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
			})
			d, _ := newTest(t, startServer(t, z), Options{MinRefresh: tt.min, MaxRefresh: tt.max})
			r := startRun(t, d)
			r.next(t, "10.0.0.1:1")
			var st Status
			testutil.Eventually(t, 5*time.Second, func() error {
				if st = d.Status(); st.NextRefresh.IsZero() {
					return errors.New("no refresh scheduled")
				}
				return nil
			})
			if got := st.NextRefresh.Sub(st.LastLookup); got < tt.want || got > tt.want+500*time.Millisecond {
				t.Errorf("next refresh %v after the lookup, want %v", got, tt.want)
			}
			// The expiry, not anything else, makes Run see the change.
			z.set(func(z *zone) { z.addrs["a.example."] = []string{"10.0.0.2"} })
			r.next(t, "10.0.0.2:1")
		})
	}
}

func TestRunKeepsList(t *testing.T) {
	tests := []struct {
		name       string
		breakZone  func(z *zone)
		allowEmpty bool
		result     string
		wantEmpty  bool // the empty list is delivered
	}{
		{"SERVFAIL", func(z *zone) { z.rcodes[dns.TypeNone] = dns.RcodeServerFailure }, false, ResultError, false},
		{"SERVFAIL with allow_empty", func(z *zone) { z.rcodes[dns.TypeNone] = dns.RcodeServerFailure }, true, ResultError, false},
		{"NXDOMAIN", func(z *zone) { delete(z.srv, srvName) }, false, ResultEmpty, false},
		{"NOERROR without records", func(z *zone) { z.srv[srvName] = nil }, false, ResultEmpty, false},
		{"NXDOMAIN with allow_empty", func(z *zone) { delete(z.srv, srvName) }, true, ResultEmpty, true},
		{"no address with allow_empty", func(z *zone) { delete(z.addrs, "a.example.") }, true, ResultEmpty, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := newZone()
			z.set(func(z *zone) {
				z.srvTTL, z.addrTTL = 0, 0
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 1}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
			})
			d, m := newTest(t, startServer(t, z), Options{MinRefresh: 10 * time.Millisecond,
				MaxRefresh: 40 * time.Millisecond, AllowEmpty: tt.allowEmpty})
			r := startRun(t, d)
			r.next(t, "10.0.0.1:1")

			z.set(tt.breakZone)
			waitLookups(t, m, tt.result, 2)
			st := d.Status()
			if tt.wantEmpty {
				r.next(t)
				if len(st.Backends) != 0 {
					t.Errorf("Status backends = %+v, want none", st.Backends)
				}
			} else {
				r.none(t)
				if len(st.Backends) != 1 || st.Backends[0].Addr != "10.0.0.1:1" {
					t.Errorf("Status backends = %+v, want the last good list", st.Backends)
				}
			}
			if tt.result == ResultError {
				if st.Failures < 2 || !strings.Contains(st.LastError, "SERVFAIL") || st.LastResult != ResultError {
					t.Errorf("Status = %+v, want failures and a SERVFAIL error", st)
				}
			}

			// Repaired, with a change: the new list arrives.
			z.set(func(z *zone) {
				clear(z.rcodes)
				z.srv[srvName] = []srvRec{{target: "a.example.", port: 2}}
				z.addrs["a.example."] = []string{"10.0.0.1"}
			})
			r.next(t, "10.0.0.1:2")
			if st := d.Status(); st.Failures != 0 || st.LastError != "" {
				t.Errorf("after repair, Status = %+v", st)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	addr, _ := blackHole(t)
	d, m := newTest(t, addr, Options{Timeout: 100 * time.Millisecond})
	start := time.Now()
	_, _, err := d.Lookup(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup error = %v, want a timeout", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Lookup took %v with a 100ms timeout", el)
	}
	if n := lookups(m, ResultError); n != 1 {
		t.Errorf("error lookups = %v, want 1", n)
	}
}

func TestCancelReturnsPromptly(t *testing.T) {
	tests := []struct {
		name string
		call func(ctx context.Context, d *Discoverer)
	}{
		{"Lookup", func(ctx context.Context, d *Discoverer) {
			if _, _, err := d.Lookup(ctx); !errors.Is(err, context.Canceled) {
				t.Errorf("Lookup error = %v, want context.Canceled", err)
			}
		}},
		{"Run", func(ctx context.Context, d *Discoverer) {
			d.Run(ctx, func(bs []health.Backend) { t.Errorf("unexpected delivery %v", bs) })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, got := blackHole(t)
			// A timeout far beyond the test's patience: only
			// cancellation can end the query.
			d, m := newTest(t, addr, Options{Timeout: time.Hour, MaxRefresh: time.Hour})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				tt.call(ctx, d)
			}()
			select {
			case <-got:
			case <-time.After(5 * time.Second):
				t.Fatal("no query reached the server")
			}
			cancel()
			select {
			case <-done:
			case <-time.After(time.Second):
				t.Fatal("did not return within 1s of cancellation")
			}
			// Giving up is not a DNS failure.
			if n := lookups(m, ResultError); n != 0 {
				t.Errorf("error lookups = %v after cancellation, want 0", n)
			}
		})
	}
}

func TestServersTriedInOrder(t *testing.T) {
	hole, _ := blackHole(t)
	failing := newZone()
	failing.set(func(z *zone) { z.rcodes[dns.TypeNone] = dns.RcodeServerFailure })
	good := newZone()
	good.set(func(z *zone) {
		z.srv[srvName] = []srvRec{{target: "a.example.", port: 1}}
		z.addrs["a.example."] = []string{"10.0.0.1"}
		z.noGlue["a.example."] = true
	})
	d, _ := newTest(t, hole, Options{Timeout: 100 * time.Millisecond})
	d.servers = []string{hole, startServer(t, failing), startServer(t, good)}
	bs, _, err := d.Lookup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := addrsOf(bs); !slices.Equal(got, []string{"10.0.0.1:1"}) {
		t.Errorf("Lookup = %q", got)
	}
	// Every query, the address ones too, went down the list.
	if n := len(failing.log()); n != 3 {
		t.Errorf("failing server asked %d questions, want 3 (SRV, A, AAAA)", n)
	}

	// With every server failing, the error names each.
	d.servers = d.servers[:2]
	_, _, err = d.Lookup(context.Background())
	if !errors.Is(err, ErrRcode) || !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "\n") {
		t.Errorf("Lookup error = %v, want both servers' errors", err)
	}
}

func TestResolvers(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(conf, []byte("search example.\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := resolvConf
	resolvConf = conf
	t.Cleanup(func() { resolvConf = old })

	tests := []struct {
		in   string
		want []string
	}{
		{"127.0.0.1:8600", []string{"127.0.0.1:8600"}},
		{"127.0.0.1", []string{"127.0.0.1:53"}},
		{"::1", []string{"[::1]:53"}},
		{"[::1]:5353", []string{"[::1]:5353"}},
		{"dns.example:53", []string{"dns.example:53"}},
		{"", []string{"192.0.2.53:53", "[2001:db8::53]:53"}},
	}
	for _, tt := range tests {
		got, err := resolvers(tt.in)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("resolvers(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}

	if err := os.WriteFile(conf, []byte("# no servers\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Name: srvName}); err == nil {
		t.Error("New with no system resolvers succeeded")
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
		check   func(t *testing.T, d *Discoverer)
	}{
		{name: "empty name", opts: Options{}, wantErr: "empty SRV name"},
		{name: "bad name", opts: Options{Name: "a..b"}, wantErr: "not a domain name"},
		{name: "min above max", opts: Options{Name: srvName, MinRefresh: time.Minute, MaxRefresh: time.Second}, wantErr: "above max_refresh"},
		{name: "negative", opts: Options{Name: srvName, Timeout: -1}, wantErr: "negative"},
		{name: "bad check URL", opts: Options{Name: srvName, CheckURL: "http://{host}:%zz/"}, wantErr: "check URL"},
		{name: "defaults, name qualified", opts: Options{Name: "_STOMP._tcp.Brokers.example"}, check: func(t *testing.T, d *Discoverer) {
			if d.opts.MinRefresh != DefaultMinRefresh || d.opts.MaxRefresh != DefaultMaxRefresh || d.opts.Timeout != DefaultTimeout {
				t.Errorf("defaults not applied: %+v", d.opts)
			}
			if st := d.Status(); st.Name != srvName || st.Backends == nil {
				t.Errorf("Status = %+v", st)
			}
		}},
		{name: "max defaults to at least min", opts: Options{Name: srvName, MinRefresh: 2 * time.Minute}, check: func(t *testing.T, d *Discoverer) {
			if d.opts.MaxRefresh != 2*time.Minute {
				t.Errorf("MaxRefresh = %v", d.opts.MaxRefresh)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Resolver = "127.0.0.1:53"
			d, err := New(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, d)
		})
	}
}

func TestBackoffAndClamp(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, time.Second
	for n, want := range map[int]time.Duration{1: lo, 2: 2 * lo, 3: 4 * lo, 4: 8 * lo, 5: hi, 50: hi} {
		if got := backoff(n, lo, hi); got != want {
			t.Errorf("backoff(%d) = %v, want %v", n, got, want)
		}
	}
	for ttl, want := range map[time.Duration]time.Duration{0: lo, 500 * time.Millisecond: 500 * time.Millisecond, time.Hour: hi} {
		if got := clampTTL(ttl, lo, hi); got != want {
			t.Errorf("clampTTL(%v) = %v, want %v", ttl, got, want)
		}
	}
}

func TestMetricsShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, b := NewMetrics(reg), NewMetrics(reg)
	if a.lookups != b.lookups {
		t.Error("a second NewMetrics on one registry made new series")
	}
	var nilMetrics *Metrics
	nilMetrics.lookup(srvName, ResultOK) // must not panic
	nilMetrics.listInUse(srvName, 1, time.Now())
}
