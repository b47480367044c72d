package health

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"handover/health/watch"
)

// Pushed role changes (issue 18). A backend that offers a watch stream
// (brokerd's GET /watch) tells the monitor at once when it is promoted,
// demoted or about to stop, and its heartbeat proves it alive between
// changes; the monitor then stops polling it on the interval, which is
// what makes a fleet of thousands of sidecars cheap for the brokers.
// What a watch says goes through apply, as a check's result does, so the
// election has one set of rules whichever way news arrives:
//
//   - master and serving: up at once (a pushed promotion is the broker's
//     own word, not a sample that needs Rise of its kind);
//   - slave, or master not yet serving: standby, as the http check's 503;
//   - stopping (SIGTERM, a lost lease): down at once, before the broker's
//     port closes, so that no new client is sent there;
//   - the watch lost (closed, or silent past WatchTimeout: a broker killed
//     or frozen): down at once, and every backend is checked at once to
//     confirm it and find the new master.
//
// A backend without a watch (ActiveMQ, a brokerd behind something else; a
// 404) is polled as before; Follow asks it again now and then.

// Watch states of a backend, in BackendStatus.Watch.
const (
	// WatchWatched: its watch stream is open; checks on the interval are
	// skipped.
	WatchWatched = "watched"
	// WatchPolled: it is checked on the interval, having no watch (or a
	// lost one, being reconnected), or with watches off.
	WatchPolled = "polled"
)

// push is one watch update on its way to Run.
type push struct {
	b *backend
	u watch.Update
	// ctx is the watch's: a push that was on its way when reconcile
	// stopped the watch (cancelling ctx under m.mu) must not mark the
	// backend watched again, or its interval checks would stay skipped.
	ctx context.Context
}

// watchURLOf is the watch stream b is followed on, "" for none: its
// WatchURL, else /watch on its CheckURL's origin.
func (m *Monitor) watchURLOf(b *backend) string {
	if m.cfg.Watch == WatchOff {
		return ""
	}
	if b.WatchURL != "" {
		return b.WatchURL
	}
	if b.CheckURL == "" {
		return ""
	}
	u, err := url.Parse(b.CheckURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return ""
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: "/watch"}).String()
}

// watchers are Run's watch goroutines, one per followed backend.
type watchers struct {
	ctx     context.Context
	wg      sync.WaitGroup
	running map[*backend]watcher
}

type watcher struct {
	url     string
	timeout time.Duration // the HeartbeatTimeout it runs with
	cancel  context.CancelFunc
}

// reconcile starts a watch for each backend that has a watch URL and none
// yet, and stops those of removed backends or changed URLs. Only Run's
// goroutine calls it; m.mu is held.
func (m *Monitor) reconcile(ws *watchers) {
	if ws.ctx.Err() != nil {
		return
	}
	want := map[*backend]string{}
	for _, b := range m.backends {
		if u := m.watchURLOf(b); u != "" {
			want[b] = u
		}
	}
	timeout := m.cfg.WatchTimeout
	for b, w := range ws.running {
		if want[b] != w.url || w.timeout != timeout {
			w.cancel()
			delete(ws.running, b)
			if b.watch == WatchWatched {
				b.watch = WatchPolled // checked on the interval again
			}
		}
	}
	for b, u := range want {
		if _, ok := ws.running[b]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(ws.ctx)
		ws.running[b] = watcher{url: u, timeout: timeout, cancel: cancel}
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			report := func(u watch.Update) {
				select {
				case m.pushes <- push{b: b, u: u, ctx: ctx}:
				case <-ctx.Done():
				}
			}
			if err := watch.Follow(ctx, watch.Options{URL: u, HeartbeatTimeout: timeout}, report); err != nil && ctx.Err() == nil {
				log := m.log.WithFields(logrus.Fields{"backend": b.Addr, "url": u})
				log.WithError(err).Error("cannot follow the backend's watch; polling it")
			}
		}()
	}
}

// stop ends every watch and waits for their goroutines.
func (ws *watchers) stop() {
	for _, w := range ws.running {
		w.cancel()
	}
	ws.wg.Wait()
}

// applyPush runs a watch update through apply. m.mu is held.
func (m *Monitor) applyPush(p push) {
	b, u := p.b, p.u
	if b.removed || p.ctx.Err() != nil {
		return
	}
	if u.Beat {
		b.lastSpoke = m.clock.Now()
		return
	}
	// Checks started before this are older news (see apply).
	b.lastPush = m.clock.Now()
	log := m.log.WithField("backend", b.Addr)
	if u.Err != nil {
		was := b.watch == WatchWatched
		b.watch, b.watchErr = WatchPolled, u.Err.Error()
		if !was {
			// A failed reconnection, or no watch there at all: the
			// checks on the interval carry on as they were.
			switch {
			case b.noWatchLogged:
			case errors.Is(u.Err, watch.ErrNoWatch):
				b.noWatchLogged = true
				m.queue(func() { log.WithField("reason", u.Err.Error()).Info("backend offers no watch: polling it") })
			case errors.Is(u.Err, watch.ErrBusy):
				// The broker's cap on watchers (brokerd's max_watchers,
				// or max_watchers_per_source for this host's address) is
				// too low for this fleet: polling costs it more.
				b.noWatchLogged = true
				m.queue(func() { log.WithField("reason", u.Err.Error()).Warn("backend's watch is full: polling it") })
			}
			return
		}
		// It stopped speaking: killed (the stream closed), frozen (the
		// heartbeat missed), or its admin server went. Down at once if
		// it serves, and every backend checked now, to confirm and to
		// find who serves instead.
		m.queue(func() { log.WithError(u.Err).Warn("watch lost: checking the backends now") })
		m.recheckGen.Add(1)
		m.apply(outcome{b: b, r: Result{Err: fmt.Errorf("watch lost: %w", u.Err), Definitive: true}, pushed: true})
		return
	}
	ev := u.Event
	now := m.clock.Now() // the monitor's clock: checks are ordered by it
	if b.watch != WatchWatched {
		b.watchedSince = now
		m.queue(func() { log.WithField("role", ev.Role).Debug("watching the backend") })
	}
	b.watch, b.watchErr, b.lastEvent, b.lastSpoke, b.noWatchLogged = WatchWatched, "", now, now, false
	var r Result
	switch {
	case ev.Stopping:
		r = Result{Err: fmt.Errorf("pushed: %s stopping", ev.Role), Definitive: true}
	case ev.Role == "master" && ev.Serving:
		r = Result{OK: true, Epoch: ev.Epoch}
	case ev.Role == "stopped":
		r = Result{Err: errors.New("pushed: stopped"), Definitive: true}
	default:
		// A slave, or a master still opening its store: alive and
		// saying it does not serve.
		r = Result{Err: fmt.Errorf("pushed: role %s, not serving", ev.Role), Definitive: true, Standby: true}
	}
	m.apply(outcome{b: b, r: r, pushed: true})
}
