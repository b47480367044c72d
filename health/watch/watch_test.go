package watch_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"handover/brokerd"
	"handover/health/watch"
	"handover/internal/brokertest"
	"handover/internal/testutil"
)

// patience bounds every wait for something that should happen in
// milliseconds: generous, because other tests share the two cores.
const patience = 15 * time.Second

// follower runs Follow in the background for one test and collects what it
// reports.
type follower struct {
	updates chan watch.Update // events and losses
	beats   atomic.Int64      // heartbeats reported
	done    chan error
}

// follow starts Follow(o); it is stopped, and must have returned
// context.Canceled, when the test ends.
func follow(t *testing.T, o watch.Options) *follower {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{updates: make(chan watch.Update, 1024), done: make(chan error, 1)}
	go func() {
		f.done <- watch.Follow(ctx, o, func(u watch.Update) {
			if u.Beat {
				f.beats.Add(1)
				return
			}
			f.updates <- u
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-f.done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Follow returned %v, want context.Canceled", err)
			}
		case <-time.After(patience):
			t.Error("Follow did not return after its context was cancelled")
		}
	})
	return f
}

// next waits for an update that satisfies ok, failing on a loss first
// unless ok accepts losses.
func (f *follower) next(t *testing.T, what string, ok func(watch.Update) bool) watch.Update {
	t.Helper()
	deadline := time.After(patience)
	for {
		select {
		case u := <-f.updates:
			if ok(u) {
				return u
			}
			t.Logf("update %+v (waiting for %s)", u, what)
		case <-deadline:
			t.Fatalf("no %s within %v", what, patience)
		}
	}
}

func isEvent(ok func(watch.Event) bool) func(watch.Update) bool {
	return func(u watch.Update) bool { return u.Err == nil && ok(u.Event) }
}

func isLoss(target error) func(watch.Update) bool {
	return func(u watch.Update) bool { return errors.Is(u.Err, target) }
}

// broker is an in-process brokerd.
type broker struct{ *brokertest.Broker }

// startBroker runs a brokerd on 127.0.0.1 port 0 with data in dir (shared
// by a master and its slave).
func startBroker(t *testing.T, dir string) *broker {
	t.Helper()
	return &broker{brokertest.Start(t, dir, func(o *brokerd.Options) { o.Log = testutil.Logger(t) })}
}

func (b *broker) watchURL() string { return "http://" + b.AdminAddr() + "/watch" }

// TestFollowFailover: against a real brokerd pair, the slave's watcher
// hears at once that it is a ready standby, and its promotion when the
// master is shut down; the master's watcher hears that it is stopping
// before its stream closes.
func TestFollowFailover(t *testing.T) {
	dir := t.TempDir()
	m := startBroker(t, dir)
	select {
	case <-m.Ready():
	case <-time.After(patience):
		t.Fatal("the master did not become ready")
	}
	sl := startBroker(t, dir)
	fm := follow(t, watch.Options{URL: m.watchURL()})
	fs := follow(t, watch.Options{URL: sl.watchURL()})
	u := fm.next(t, "the master serving", isEvent(func(e watch.Event) bool { return e.Role == "master" }))
	if e := u.Event; !e.Serving || e.Stopping || e.Epoch != 1 || e.Listen != m.Addr() || e.At.IsZero() {
		t.Errorf("master's first event %+v, want serving epoch 1 on %s", e, m.Addr())
	}
	fs.next(t, "the slave ready to take over", isEvent(func(e watch.Event) bool {
		return e.Role == "slave" && e.StandbyReady && !e.Serving
	}))

	m.Cancel() // as SIGTERM: Run shuts down; the test's cleanup waits for it
	fm.next(t, "the master stopping", func(u watch.Update) bool {
		if u.Err != nil {
			t.Fatalf("the master's watch was lost (%v) before it said it was stopping", u.Err)
		}
		return u.Event.Stopping
	})
	fm.next(t, "the master's watch closing", isLoss(watch.ErrClosed))
	u = fs.next(t, "the slave's promotion", isEvent(func(e watch.Event) bool { return e.Role == "master" && e.Serving }))
	if e := u.Event; e.Epoch != 2 || e.Listen != sl.Addr() {
		t.Errorf("promotion %+v, want epoch 2 on %s", e, sl.Addr())
	}
}

// TestFollowHeader: Options.Header goes with every request, for a server
// that wants a bearer token; a refusal is a loss like any other.
func TestFollowHeader(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		sseHandler(w, slaveState)
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	without := follow(t, watch.Options{URL: srv.URL})
	u := without.next(t, "a refusal", func(u watch.Update) bool { return u.Err != nil })
	if !strings.Contains(u.Err.Error(), "401") || errors.Is(u.Err, watch.ErrNoWatch) {
		t.Errorf("without the token: %v, want a 401 that is not ErrNoWatch", u.Err)
	}
	with := follow(t, watch.Options{URL: srv.URL, Header: http.Header{"Authorization": {"Bearer s3cret"}}})
	with.next(t, "the state", isEvent(func(e watch.Event) bool { return e.Role == "slave" }))
}

// sseHandler starts an event stream and writes first to it.
func sseHandler(w http.ResponseWriter, first string) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, first)
	w.(http.Flusher).Flush()
}

const slaveState = "event: state\ndata: {\"role\":\"slave\",\"epoch\":0,\"standby_ready\":true}\n\n"

// hangingServer serves one state event and then nothing, holding the
// stream open: a broker frozen with SIGSTOP, as its watchers see it (the
// kernel keeps the connection open; nothing more comes).
func hangingServer(t *testing.T) *httptest.Server {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sseHandler(w, slaveState)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv
}

// TestFollowStalled: a stream that stays open but falls silent is lost
// with ErrStalled once HeartbeatTimeout has passed, not before; so is a
// server that accepts the connection and never answers.
func TestFollowStalled(t *testing.T) {
	const bound = 300 * time.Millisecond
	t.Run("silent stream", func(t *testing.T) {
		srv := hangingServer(t)
		f := follow(t, watch.Options{URL: srv.URL, HeartbeatTimeout: bound, RetryMin: time.Hour})
		got := f.next(t, "the first state", isEvent(func(e watch.Event) bool { return e.Role == "slave" }))
		u := f.next(t, "the stall", func(u watch.Update) bool { return u.Err != nil })
		lost := time.Now()
		if !errors.Is(u.Err, watch.ErrStalled) {
			t.Fatalf("lost with %v, want ErrStalled", u.Err)
		}
		if d := lost.Sub(got.Event.At); d < bound {
			t.Errorf("stall reported %v after the last event, before the bound of %v", d, bound)
		}
		t.Logf("stall reported %v after the last event (bound %v): %v", lost.Sub(got.Event.At), bound, u.Err)
	})
	t.Run("no answer", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		// The kernel completes the handshake; nobody ever reads the
		// request (ln.Accept is never called), as with a frozen process.
		f := follow(t, watch.Options{URL: "http://" + ln.Addr().String() + "/watch", HeartbeatTimeout: bound, RetryMin: time.Hour})
		f.next(t, "the stall", isLoss(watch.ErrStalled))
	})
}

// TestFollowHeartbeats: a stream that only beats, more often than the
// bound, stays watched however long it runs.
func TestFollowHeartbeats(t *testing.T) {
	const bound = 300 * time.Millisecond
	var beats atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sseHandler(w, slaveState)
		tick := time.NewTicker(bound / 6)
		defer tick.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
				fmt.Fprint(w, ": beat\n\n")
				w.(http.Flusher).Flush()
				beats.Add(1)
			}
		}
	}))
	t.Cleanup(srv.Close)
	f := follow(t, watch.Options{URL: srv.URL, HeartbeatTimeout: bound})
	f.next(t, "the first state", isEvent(func(watch.Event) bool { return true }))
	// Five bounds' worth of beats (about a second and a half).
	testutil.Eventually(t, patience, func() error {
		select {
		case u := <-f.updates:
			t.Fatalf("update %+v while the server beats", u)
		default:
		}
		if n := beats.Load(); n < 30 {
			return fmt.Errorf("%d beats sent", n)
		}
		return nil
	})
	// Each beat is reported (Update.Beat): the caller knows when the
	// backend last spoke. The last few may still be on their way.
	if got, sent := f.beats.Load(), beats.Load(); got < sent-5 {
		t.Errorf("%d heartbeats reported of %d sent", got, sent)
	}
}

// TestFollowLosses: each way a stream can fail to start or go wrong is
// reported with its error, and the next attempt is scheduled after the
// delay that kind of loss calls for.
func TestFollowLosses(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		lim     watch.Limits
		want    error
		// retry bounds RetryIn.
		retryMin, retryMax time.Duration
	}{
		{name: "404", handler: http.NotFound, want: watch.ErrNoWatch, retryMin: 30 * time.Second, retryMax: time.Minute},
		{name: "503 from a full broker", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Handover-Watch-Full", "max_watchers")
			http.Error(w, "watchers at capacity", http.StatusServiceUnavailable)
		}, want: watch.ErrBusy, retryMin: 30 * time.Second, retryMax: time.Minute},
		{name: "not an event stream", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, "<html>")
		}, want: watch.ErrNoWatch, retryMin: 30 * time.Second, retryMax: time.Minute},
		{name: "closed", handler: func(w http.ResponseWriter, r *http.Request) { sseHandler(w, slaveState) },
			want: watch.ErrClosed, retryMin: 50 * time.Millisecond, retryMax: 100 * time.Millisecond},
		{name: "oversized line", handler: func(w http.ResponseWriter, r *http.Request) {
			sseHandler(w, slaveState+"data: ")
			chunk := []byte(strings.Repeat("x", 1024))
			// Until the client gives up: it must, after MaxLine.
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, lim: watch.Limits{MaxLine: 8 << 10}, want: watch.ErrLineTooLong, retryMin: 50 * time.Millisecond, retryMax: 100 * time.Millisecond},
		{name: "oversized event", handler: func(w http.ResponseWriter, r *http.Request) {
			sseHandler(w, "event: state\n")
			line := []byte("data: " + strings.Repeat("x", 1000) + "\n")
			for r.Context().Err() == nil {
				if _, err := w.Write(line); err != nil {
					return
				}
			}
		}, want: watch.ErrDataTooLarge, retryMin: 50 * time.Millisecond, retryMax: 100 * time.Millisecond},
		{name: "bad event", handler: func(w http.ResponseWriter, r *http.Request) {
			sseHandler(w, "event: state\ndata: {\"role\": \n\n")
			<-r.Context().Done()
		}, want: watch.ErrBadEvent, retryMin: 50 * time.Millisecond, retryMax: 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			f := follow(t, watch.Options{URL: srv.URL + "/watch", RetryMin: 100 * time.Millisecond, Limits: tt.lim})
			u := f.next(t, "a loss", func(u watch.Update) bool { return u.Err != nil })
			if !errors.Is(u.Err, tt.want) {
				t.Errorf("lost with %v, want %v", u.Err, tt.want)
			}
			if u.RetryIn < tt.retryMin || u.RetryIn > tt.retryMax {
				t.Errorf("RetryIn %v, want within [%v, %v]", u.RetryIn, tt.retryMin, tt.retryMax)
			}
		})
	}
}

// TestFollowReconnects: after a loss Follow connects again by itself, and
// the delay grows while attempts fail.
func TestFollowReconnects(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if conns.Add(1) > 2 {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		sseHandler(w, slaveState)
	}))
	t.Cleanup(srv.Close)
	f := follow(t, watch.Options{URL: srv.URL, RetryMin: 20 * time.Millisecond, RetryMax: 80 * time.Millisecond})
	for i := range 2 {
		f.next(t, fmt.Sprintf("state %d", i+1), isEvent(func(watch.Event) bool { return true }))
		u := f.next(t, fmt.Sprintf("loss %d", i+1), isLoss(watch.ErrClosed))
		if u.RetryIn > 20*time.Millisecond {
			t.Errorf("RetryIn %v after a stream that delivered, want the minimum", u.RetryIn)
		}
	}
	// 503s from here on, from a proxy before a broker that is down (not
	// brokerd's "full", which waits longer): 40 ms, then 80 ms (each drawn
	// from its upper half).
	var last time.Duration
	for i := range 4 {
		u := f.next(t, "a failed attempt", func(u watch.Update) bool { return u.Err != nil })
		if !strings.Contains(u.Err.Error(), "503") || errors.Is(u.Err, watch.ErrBusy) {
			t.Fatalf("attempt %d: %v, want a 503 that is not ErrBusy", i, u.Err)
		}
		if i >= 1 && (u.RetryIn < 40*time.Millisecond || u.RetryIn > 80*time.Millisecond) {
			t.Errorf("attempt %d: RetryIn %v, want 40-80ms", i, u.RetryIn)
		}
		last = u.RetryIn
	}
	if last < 40*time.Millisecond {
		t.Errorf("RetryIn %v after four failures, want at least half of RetryMax", last)
	}
}

// TestFollowTLS: an https URL is followed over TLS, verifying the server
// against Options.TLS's roots.
func TestFollowTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sseHandler(w, slaveState)
		<-r.Context().Done()
	}))
	srv.EnableHTTP2 = true // Follow must still get HTTP/1.1
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	f := follow(t, watch.Options{URL: srv.URL + "/watch", TLS: &tls.Config{RootCAs: roots}})
	f.next(t, "the state over TLS", isEvent(func(e watch.Event) bool { return e.Role == "slave" && e.StandbyReady }))

	untrusted := follow(t, watch.Options{URL: srv.URL + "/watch"})
	u := untrusted.next(t, "a refused certificate", func(u watch.Update) bool { return u.Err != nil })
	if !strings.Contains(u.Err.Error(), "certificate") {
		t.Errorf("with the system's roots: %v, want a certificate error", u.Err)
	}
}

// TestFollowBadOptions: options Follow cannot use are an error at once.
func TestFollowBadOptions(t *testing.T) {
	for _, o := range []watch.Options{
		{URL: "127.0.0.1:8161/watch"},
		{URL: "ftp://127.0.0.1/watch"},
		{URL: "http:///watch"},
		{URL: "https://127.0.0.1/watch", TLS: &tls.Config{InsecureSkipVerify: true}},
	} {
		err := watch.Follow(context.Background(), o, func(u watch.Update) { t.Errorf("%q: reported %+v", o.URL, u) })
		if err == nil || errors.Is(err, context.Canceled) {
			t.Errorf("%q: Follow returned %v, want an error", o.URL, err)
		}
	}
}
