package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/brokerd"
	"handover/internal/brokertest"
)

func TestNewChecker(t *testing.T) {
	for _, kind := range []string{"", KindTCP, KindSTOMP, KindHTTP} {
		if _, err := NewChecker(kind); err != nil {
			t.Errorf("NewChecker(%q): %v", kind, err)
		}
	}
	if _, err := NewChecker("icmp"); err == nil {
		t.Error("NewChecker(icmp) succeeded")
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// silentServer accepts connections and never writes to them, like a hung
// process whose kernel still completes handshakes.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// startBroker runs an in-process brokerd with data in dir, STOMP on
// listen, until test cleanup.
func startBroker(t *testing.T, dir, listen string) *brokertest.Broker {
	t.Helper()
	return startBrokerWith(t, dir, listen, nil)
}

// startBrokerWith is startBroker with options changed by mod.
func startBrokerWith(t *testing.T, dir, listen string, mod func(*brokerd.Options)) *brokertest.Broker {
	t.Helper()
	return brokertest.Start(t, dir, func(o *brokerd.Options) {
		o.Listen = listen
		o.Log = testLog(t).WithField("broker", listen)
		if mod != nil {
			mod(o)
		}
	})
}

// checkCase is one probe of a real server.
type checkCase struct {
	name      string
	backend   func(t *testing.T) Backend
	timeout   time.Duration
	ok        bool
	epoch     uint64
	timedOut  bool   // the error must be a timeout
	errSubstr string // the error must contain this
	noLatency bool   // the check fails before probing anything
	// definitive: the failure proves the backend is not serving
	// (refused, 503), so a master is taken down at once.
	definitive bool
	// standby: the backend said it is alive but not serving.
	standby bool
	// unanswered: connected, but the CONNECT got no answer in time.
	unanswered bool
}

func runCheckCases(t *testing.T, kind string, tests []checkCase) {
	t.Helper()
	chk, err := NewChecker(kind)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.backend(t)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			r := chk.Check(ctx, b)
			took := time.Since(start)
			if r.OK != tt.ok || r.Epoch != tt.epoch {
				t.Fatalf("Check = %+v, want OK %v epoch %d", r, tt.ok, tt.epoch)
			}
			if r.OK != (r.Err == nil) {
				t.Errorf("OK %v with error %v", r.OK, r.Err)
			}
			if r.Definitive != tt.definitive {
				t.Errorf("Definitive = %v, want %v (error %v)", r.Definitive, tt.definitive, r.Err)
			}
			if r.Standby != tt.standby {
				t.Errorf("Standby = %v, want %v (error %v)", r.Standby, tt.standby, r.Err)
			}
			if r.Unanswered != tt.unanswered {
				t.Errorf("Unanswered = %v, want %v (%v)", r.Unanswered, tt.unanswered, r.Err)
			}
			if tt.timedOut && !isTimeout(r.Err) {
				t.Errorf("error %v is not a timeout", r.Err)
			}
			if !tt.timedOut && r.Err != nil && isTimeout(r.Err) {
				t.Errorf("error %v is a timeout, want an immediate failure", r.Err)
			}
			if tt.errSubstr != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.errSubstr)) {
				t.Errorf("error %v, want it to mention %q", r.Err, tt.errSubstr)
			}
			if took > timeout+time.Second {
				t.Errorf("check took %v with a %v deadline", took, timeout)
			}
			if r.Latency > took || r.Latency <= 0 && !tt.noLatency {
				t.Errorf("latency %v, check took %v", r.Latency, took)
			}
			t.Logf("result %+v in %v", r, took)
		})
	}
}

func TestTCPChecker(t *testing.T) {
	runCheckCases(t, KindTCP, []checkCase{
		{name: "listening", ok: true, backend: func(t *testing.T) Backend {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			return Backend{Addr: ln.Addr().String()}
		}},
		{name: "closed port", errSubstr: "refused", definitive: true, backend: func(t *testing.T) Backend {
			return Backend{Addr: closedAddr(t)}
		}},
	})
}

func TestHTTPChecker(t *testing.T) {
	serve := func(h http.HandlerFunc) func(t *testing.T) Backend {
		return func(t *testing.T) Backend {
			srv := httptest.NewServer(h)
			t.Cleanup(srv.Close)
			return Backend{Addr: "unused:1", CheckURL: srv.URL + "/readyz"}
		}
	}
	reply := func(code int, body string) func(t *testing.T) Backend {
		return serve(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			io.WriteString(w, body)
		})
	}
	runCheckCases(t, KindHTTP, []checkCase{
		{name: "200 with an epoch", ok: true, epoch: 3, backend: reply(200, `{"ready":true,"role":"master","epoch":3}`)},
		{name: "200 without JSON", ok: true, backend: reply(200, "ok\n")},
		{name: "200 with a garbage body", ok: true, backend: reply(200, "\x00\xff{\"epoch\":")},
		{name: "503 from a slave is standby", errSubstr: "503", definitive: true, standby: true, backend: reply(503, `{"ready":false,"role":"slave","epoch":0}`)},
		{name: "503 from a stopping broker is down", errSubstr: "503", definitive: true, backend: reply(503, `{"ready":false,"role":"stopped","epoch":4}`)},
		{name: "503 without a role is down", errSubstr: "503", definitive: true, backend: reply(503, "unavailable\n")},
		{name: "500 with a role is down", errSubstr: "500", backend: reply(500, `{"role":"slave"}`)},
		{name: "204 is not 200", errSubstr: "204", backend: reply(204, "")},
		{name: "redirect is not followed", errSubstr: "302", backend: serve(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		})},
		{name: "slow headers time out", timeout: 200 * time.Millisecond, timedOut: true, backend: serve(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		})},
		{name: "slow body times out", timeout: 200 * time.Millisecond, timedOut: true, backend: serve(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			io.WriteString(w, `{"epoch":`)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		})},
		{name: "closed port", errSubstr: "refused", definitive: true, backend: func(t *testing.T) Backend {
			return Backend{CheckURL: "http://" + closedAddr(t) + "/readyz"}
		}},
		{name: "no URL", noLatency: true, errSubstr: "no check URL", backend: func(t *testing.T) Backend { return Backend{Addr: "x:1"} }},
	})
}

func TestParseEpoch(t *testing.T) {
	tests := []struct {
		body string
		want uint64
	}{
		{`{"epoch":3}`, 3},
		{`{"ready":true,"role":"master","epoch":42}` + "\n", 42},
		{`{"epoch":18446744073709551615}`, 1<<64 - 1},
		{`{"epoch":18446744073709551616}`, 0},
		{`{"epoch":"3"}`, 0},
		{`{"epoch":-1}`, 0},
		{`{"epoch":3.5}`, 0},
		{`{"epoch":null}`, 0},
		{`{}`, 0},
		{`[3]`, 0},
		{`not json`, 0},
		{``, 0},
	}
	for _, tt := range tests {
		if got := parseEpoch([]byte(tt.body)); got != tt.want {
			t.Errorf("parseEpoch(%q) = %d, want %d", tt.body, got, tt.want)
		}
	}
}

func TestSTOMPChecker(t *testing.T) {
	runCheckCases(t, KindSTOMP, []checkCase{
		{name: "brokerd master", ok: true, backend: func(t *testing.T) Backend {
			s := startBroker(t, t.TempDir(), "127.0.0.1:0")
			s.WaitReady(t)
			return Backend{Addr: s.Addr()}
		}},
		{name: "accepts but never speaks", timeout: 200 * time.Millisecond, timedOut: true, unanswered: true, backend: func(t *testing.T) Backend {
			return Backend{Addr: silentServer(t)}
		}},
		{name: "not a STOMP server", backend: func(t *testing.T) Backend {
			srv := httptest.NewServer(http.NotFoundHandler())
			t.Cleanup(srv.Close)
			return Backend{Addr: strings.TrimPrefix(srv.URL, "http://")}
		}},
		{name: "closed port", errSubstr: "refused", definitive: true, backend: func(t *testing.T) Backend {
			return Backend{Addr: closedAddr(t)}
		}},
	})
}

func TestIsTimeout(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), true},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, false},
		{errors.New("boom"), false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := isTimeout(tt.err); got != tt.want {
			t.Errorf("isTimeout(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
