package sidecar

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"

	"handover/discovery"
	"handover/health"
	"handover/internal/adminmux"
	"handover/internal/buildinfo"
	"handover/internal/conf"
	"handover/internal/sdnotify"
	"handover/internal/serve"
	"handover/proxy"
	"handover/stompproxy"
)

// Sidecar is one running handover: per [[service]] a health monitor and a
// proxy service, and the admin HTTP server. Its configuration can be
// reloaded while it runs (SIGHUP or POST /reload).
type Sidecar struct {
	adminToken string // [admin] token_file's, read at start
	path       string // the config file, re-read on reload
	logger     *logrus.Logger
	log        *logrus.Entry
	reg        *prometheus.Registry
	hm         *health.Metrics
	pm         *proxy.Metrics
	dm         *discovery.Metrics
	sm         *stompproxy.Metrics
	adminLn    net.Listener
	started    time.Time
	reloads    chan reloadRequest

	mu         sync.Mutex
	cfg        *Config
	services   map[string]*service
	generation int
	lastReload ReloadStatus
	drains     sync.WaitGroup // services being stopped in the background
}

// service pairs a listener with the pool of backends that tells it where
// to go. Each has its own lifetime, so one can be added, rebound or removed
// by a reload while the others serve; a rebound service shares its pool, so
// the health state and the master carry over.
type service struct {
	cfg       ServiceConfig
	pool      *pool
	proxy     dataPath
	proxyDone chan struct{}
}

// dataPath is a service's listener and what it does with each client
// connection: copy bytes (proxy, protocol "tcp") or keep a STOMP session
// that survives a failover (stompproxy, protocol "stomp").
type dataPath interface {
	Addr() net.Addr
	Serve(ctx context.Context) error
	StopAccepting()
	// StopAcceptingBecause is StopAccepting with the reason the logs
	// give, for a listener that drains while the sidecar runs on.
	StopAcceptingBecause(why string)
	Shutdown(ctx context.Context) error
	// FailoverCounts feeds the "master changed" log line.
	FailoverCounts() proxy.FailoverCounts
	// Connections is the data path's part of /status: its clients and
	// what failovers did to them.
	Connections() any
}

// tcpPath and stompPath are the two data paths. Each service's Status has
// its own type; Connections gives /status either one.
type (
	tcpPath   struct{ *proxy.Service }
	stompPath struct{ *stompproxy.Service }
)

// Connections is a proxy.ServiceStatus.
func (p tcpPath) Connections() any { return p.Status() }

// Connections is a stompproxy.Status.
func (p stompPath) Connections() any { return p.Status() }

// pool is a service's backends, static and discovered, and the monitor
// that checks them and elects the master.
type pool struct {
	name    string
	monitor *health.Monitor
	log     *logrus.Entry

	stopMonitor context.CancelFunc
	monitorDone chan struct{}

	mu         sync.Mutex
	static     []health.Backend
	discovered []health.Backend
	discovery  discoverySettings
	stopDisc   context.CancelFunc
	discDone   chan struct{}
	disc       *discovery.Discoverer

	// paths are the data paths serving from this pool (one, and after a
	// reload's rebind also the old listener while it drains), each with
	// its FailoverCounts().Closed at the last report. Guarded by pathsMu,
	// which the monitor's ConnReporter takes under the monitor's lock.
	pathsMu sync.Mutex
	paths   map[dataPath]uint64
}

// addPath and removePath track the data paths that report to the pool.
func (p *pool) addPath(d dataPath) {
	p.pathsMu.Lock()
	defer p.pathsMu.Unlock()
	if p.paths == nil {
		p.paths = map[dataPath]uint64{}
	}
	p.paths[d] = d.FailoverCounts().Closed
}

func (p *pool) removePath(d dataPath) {
	p.pathsMu.Lock()
	delete(p.paths, d)
	p.pathsMu.Unlock()
}

// report is the monitor's ConnReporter: what the data paths did to their
// clients since the previous change of master. It runs under the monitor's
// lock, so it reads only pathsMu (never held while calling the monitor) and
// the data paths' lock-free counters. Connections closed for a change
// without an outage (the master replaced while up) are closed just after it
// and counted at the next change; the data path's own "disconnected
// clients" line has them at once.
func (p *pool) report(string) health.ConnReport {
	p.pathsMu.Lock()
	defer p.pathsMu.Unlock()
	var r health.ConnReport
	for d, base := range p.paths {
		c := d.FailoverCounts()
		r.Closed += int(c.Closed - base)
		r.Held += c.Held
		p.paths[d] = c.Closed
	}
	return r
}

// discoverySettings are the keys of a service that configure DNS discovery.
type discoverySettings struct {
	Name, Resolver, CheckURL string
	MinRefresh, MaxRefresh   time.Duration
	AllowEmpty               bool
}

func discoveryOf(s ServiceConfig) discoverySettings {
	return discoverySettings{
		Name:       strings.TrimPrefix(s.Discovery, "dns-srv:"),
		Resolver:   s.Resolver,
		CheckURL:   s.CheckURL,
		MinRefresh: s.MinRefresh.D(),
		MaxRefresh: s.MaxRefresh.D(),
		AllowEmpty: s.AllowEmpty,
	}
}

// setStatic replaces the backends from the config file.
func (p *pool) setStatic(bs []health.Backend) {
	p.mu.Lock()
	p.static = bs
	p.mu.Unlock()
	p.apply()
}

// setDiscovered replaces the backends found in DNS.
func (p *pool) setDiscovered(bs []health.Backend) {
	p.mu.Lock()
	p.discovered = bs
	p.mu.Unlock()
	p.apply()
}

// apply gives the monitor the union: static backends first (list order is
// the election's last tie-break), then discovered ones by SRV priority.
func (p *pool) apply() {
	p.mu.Lock()
	all := append(append([]health.Backend(nil), p.static...), p.discovered...)
	p.mu.Unlock()
	p.monitor.SetBackends(all)
}

// startDiscovery (re)starts DNS discovery with the given settings; an empty
// name stops it and forgets what it found.
func (p *pool) startDiscovery(d discoverySettings, m *discovery.Metrics) error {
	p.stopDiscovery()
	p.mu.Lock()
	p.discovery = d
	p.mu.Unlock()
	if d.Name == "" {
		p.setDiscovered(nil)
		return nil
	}
	disc, err := discovery.New(discovery.Options{
		Name: d.Name, Resolver: d.Resolver, CheckURL: d.CheckURL,
		MinRefresh: d.MinRefresh, MaxRefresh: d.MaxRefresh, AllowEmpty: d.AllowEmpty,
		Log: p.log.WithField("component", "discovery"), Metrics: m,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	p.mu.Lock()
	p.stopDisc, p.discDone, p.disc = cancel, done, disc
	p.mu.Unlock()
	go func() {
		defer close(done)
		disc.Run(ctx, p.setDiscovered)
	}()
	return nil
}

func (p *pool) stopDiscovery() {
	p.mu.Lock()
	stop, done := p.stopDisc, p.discDone
	p.stopDisc, p.discDone, p.disc = nil, nil, nil
	p.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// discoveryStatus is the discovery part of /status, nil without discovery.
func (p *pool) discoveryStatus() *discovery.Status {
	p.mu.Lock()
	d := p.disc
	p.mu.Unlock()
	if d == nil {
		return nil
	}
	st := d.Status()
	return &st
}

// run starts the monitor; stop ends discovery and the monitor.
func (p *pool) run() {
	ctx, cancel := context.WithCancel(context.Background())
	p.stopMonitor, p.monitorDone = cancel, make(chan struct{})
	go func() {
		defer close(p.monitorDone)
		p.monitor.Run(ctx)
	}()
}

func (p *pool) stop() {
	p.stopDiscovery()
	if p.stopMonitor != nil {
		p.stopMonitor()
		<-p.monitorDone
	}
}

// ReloadStatus is the outcome of the last reload, for /status.
type ReloadStatus struct {
	Time  time.Time `json:"time"`
	OK    bool      `json:"ok"`
	Error string    `json:"error,omitempty"`
}

type reloadRequest struct{ reply chan error }

// New builds everything and binds every listener, so a bad address
// fails at start, not at the first client. path is re-read on reload.
func New(cfg *Config, path string, logOut io.Writer) (*Sidecar, error) {
	logger, err := conf.NewLogger(logOut, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return nil, err
	}
	sc := &Sidecar{
		path:     path,
		logger:   logger,
		log:      logger.WithField("component", "handover"),
		reg:      prometheus.NewRegistry(),
		started:  time.Now(),
		reloads:  make(chan reloadRequest),
		cfg:      cfg,
		services: map[string]*service{},
	}
	sc.setGOMAXPROCS(cfg.GOMAXPROCS)
	sc.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoGauge())
	sc.hm, sc.pm, sc.dm = health.NewMetrics(sc.reg), proxy.NewMetrics(sc.reg), discovery.NewMetrics(sc.reg)
	sc.sm = stompproxy.NewMetrics(sc.reg)
	for _, s := range cfg.Services {
		svc, err := sc.newService(s, cfg, nil)
		if err != nil {
			sc.closeListeners()
			return nil, fmt.Errorf("service %q: %w", s.Name, err)
		}
		sc.services[s.Name] = svc
	}
	if cfg.Admin.TokenFile != "" {
		tok, err := adminmux.LoadToken(cfg.Admin.TokenFile)
		if err != nil {
			sc.closeListeners()
			return nil, err
		}
		sc.adminToken = tok
	}
	if cfg.Admin.Listen != "" {
		addr, err := conf.ResolveAddr(cfg.Admin.Listen)
		if err == nil {
			// With SO_REUSEPORT, but never beside another process's
			// listener (ProbeFree): two sidecars must not share it.
			err = proxy.ProbeFree(addr)
		}
		if err == nil {
			sc.adminLn, err = conf.ListenReusePort(context.Background(), addr)
		}
		if err != nil {
			sc.closeListeners()
			return nil, fmt.Errorf("admin listener: %w", err)
		}
	}
	return sc, nil
}

func healthConfig(s ServiceConfig) health.Config {
	return health.Config{
		Interval:           s.Check.Interval.D(),
		Timeout:            s.Check.Timeout.D(),
		Rise:               s.Check.Rise,
		Fall:               s.Check.Fall,
		Mode:               s.Mode,
		Randomize:          s.Random,
		NoMasterInterval:   s.Check.NoMasterInterval.D(),
		MinRecheckInterval: s.Check.MinRecheckInterval.D(),
		Watch:              s.Check.Watch,
		WatchTimeout:       s.Check.WatchTimeout.D(),
	}
}

func healthBackends(s ServiceConfig) []health.Backend {
	bs := make([]health.Backend, len(s.Backends))
	for i, b := range s.Backends {
		bs[i] = health.Backend{Addr: b.Addr, CheckURL: b.CheckURL, WatchURL: b.WatchURL}
	}
	return bs
}

// dataPathSettings is what both data paths take of s (serve.Settings), the
// shutdown grace being c's (the file s is from: on a reload, the new one);
// newService adds what each protocol takes alone.
func dataPathSettings(s ServiceConfig, c *Config) (serve.Settings, error) {
	listen, err := listenAddr(s.Listen)
	if err != nil {
		return serve.Settings{}, err
	}
	tlsConf, err := s.TLS.load()
	if err != nil {
		return serve.Settings{}, fmt.Errorf("tls: %w", err)
	}
	return serve.Settings{
		TLS:                     tlsConf,
		Name:                    s.Name,
		Listen:                  listen,
		Timeout:                 s.Timeout.D(),
		InitialReconnectDelay:   s.InitialReconnectDelay.D(),
		MaxReconnectDelay:       s.MaxReconnectDelay.D(),
		BackoffMultiplier:       s.BackoffMultiplier,
		MaxReconnectAttempts:    s.MaxReconnectAttempts,
		DialTimeout:             s.DialTimeout.D(),
		KeepAlive:               s.KeepAlive.D(),
		MaxConnections:          s.MaxConnections,
		MaxConnectionsPerSource: s.MaxConnectionsPerSource,
		ShutdownGrace:           c.ShutdownGrace.D(),
	}, nil
}

// newService builds (and binds) a service s of configuration c. With pl
// set, the new listener shares that pool: a rebind keeps the health state
// and the master.
func (sc *Sidecar) newService(s ServiceConfig, c *Config, pl *pool) (*service, error) {
	log := sc.log.WithField("service", s.Name)
	settings, err := dataPathSettings(s, c)
	if err != nil {
		return nil, err
	}
	if pl == nil {
		checker, err := health.NewCheckerWith(s.Check.Kind, s.Check.options(settings.TLS))
		if err != nil {
			return nil, err
		}
		pl = &pool{name: s.Name, log: log, static: healthBackends(s)}
		pl.monitor = health.NewMonitor(s.Name, healthConfig(s), pl.static, checker, nil, log.WithField("component", "health"), sc.hm)
		pl.monitor.SetConnReporter(pl.report)
	}
	var p dataPath
	if s.Protocol == "stomp" {
		var sp *stompproxy.Service
		sp, err = stompproxy.New(stompproxy.Options{
			Settings:           settings,
			Credentials:        s.Credentials.credentials(),
			ConnectTimeout:     s.ConnectTimeout.D(),
			ClientWriteTimeout: s.ClientWriteTimeout.D(),
			MaxReplayBytes:     s.MaxReplayBytes,
		}, pl.monitor, log.WithField("component", "stompproxy"), sc.sm)
		p = stompPath{sp}
	} else {
		var tp *proxy.Service
		tp, err = proxy.New(proxy.Options{
			Settings:    settings,
			IdleTimeout: s.IdleTimeout.D(),
			OnFailover:  s.OnFailover,
		}, pl.monitor, log.WithField("component", "proxy"), sc.pm)
		p = tcpPath{tp}
	}
	if err != nil {
		return nil, err
	}
	return &service{cfg: s, pool: pl, proxy: p}, nil
}

// start runs the service's pool (unless it already runs, shared with the
// listener this one replaces) and proxy.
func (sc *Sidecar) start(s *service, poolRunning *service) {
	if poolRunning == nil {
		s.pool.run()
		if err := s.pool.startDiscovery(discoveryOf(s.cfg), sc.dm); err != nil {
			sc.log.WithError(err).WithField("service", s.cfg.Name).Error("DNS discovery not started")
		}
	}
	s.pool.addPath(s.proxy)
	s.proxyDone = make(chan struct{})
	go func() {
		defer close(s.proxyDone)
		if err := s.proxy.Serve(context.Background()); err != nil {
			sc.log.WithError(err).WithField("service", s.cfg.Name).Error("service stopped serving")
		}
	}()
	sc.log.WithFields(serviceSummary(s.cfg, s.proxy.Addr().String())).Info("listening")
}

// serviceSummary is what the start-up log says of a service: where it
// listens, how, and in front of which backends.
func serviceSummary(s ServiceConfig, listen string) logrus.Fields {
	addrs := make([]string, len(s.Backends))
	for i, b := range s.Backends {
		addrs[i] = b.Addr
	}
	f := logrus.Fields{"service": s.Name, "listen": listen, "protocol": s.Protocol, "mode": s.Mode,
		"check": s.Check.Kind, "backends": strings.Join(addrs, " ")}
	if s.Discovery != "" {
		f["discovery"] = s.Discovery
	}
	if s.TLS.enabled() {
		f["tls"] = "verify " + cmp.Or(s.TLS.ServerName, "each backend's host")
	}
	return f
}

// drain stops accepting and lets live connections finish within grace;
// with stopMonitor it then stops the health checks too (the drain still
// needs them: on a failover the connections to the old master close). why
// is what the logs say the listener drains for; "" when the sidecar shuts
// down.
func (sc *Sidecar) drain(s *service, grace time.Duration, stopMonitor bool, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if why != "" {
		s.proxy.StopAcceptingBecause(why)
	}
	s.proxy.Shutdown(ctx)
	if s.proxyDone != nil {
		<-s.proxyDone
	}
	s.pool.removePath(s.proxy)
	if stopMonitor {
		s.pool.stop()
	}
}

func (sc *Sidecar) closeListeners() {
	for _, s := range sc.services {
		s.proxy.Shutdown(context.Background())
	}
	if sc.adminLn != nil {
		sc.adminLn.Close()
	}
}

// Run serves until ctx is cancelled, applying reloads as they come, then
// shuts down in order: stop accepting and drain client connections (for
// shutdown_grace), stop the health checks, stop the admin server.
func (sc *Sidecar) Run(ctx context.Context) error {
	sc.mu.Lock()
	bi := buildinfo.Read()
	sc.log.WithFields(logrus.Fields{"version": Version, "build": bi.String(), "config": sc.path,
		"services": len(sc.cfg.Services), "admin": sc.cfg.Admin.Listen, "gomaxprocs": runtime.GOMAXPROCS(0)}).Info("handover starting")
	for _, s := range sc.services {
		sc.start(s, nil)
	}
	sc.mu.Unlock()
	var admin *http.Server
	adminDone := make(chan struct{})
	if sc.adminLn != nil {
		admin = adminmux.Server(adminmux.RequireToken(sc.adminHandler(), sc.adminToken))
		go func() {
			defer close(adminDone)
			if err := admin.Serve(sc.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				sc.log.WithError(err).Error("admin server failed")
			}
		}()
		sc.log.WithField("admin", sc.adminLn.Addr().String()).Info("admin listening")
	} else {
		close(adminDone)
	}
	// Every listener is bound (newSidecar) and served: a unit with
	// Type=notify is up now.
	sc.notify(sdnotify.Ready)

	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case req := <-sc.reloads:
			// systemd shows the unit reloading, and waits for
			// READY=1 again, whether the reload is applied or
			// rejected (the running configuration stays then).
			sc.notify(reloadingState())
			err := sc.reload()
			sc.notify(sdnotify.Ready)
			req.reply <- err
		}
	}
	sc.notify(sdnotify.Stopping)

	sc.mu.Lock()
	grace := sc.cfg.ShutdownGrace.D()
	services := make([]*service, 0, len(sc.services))
	for _, s := range sc.services {
		services = append(services, s)
	}
	sc.mu.Unlock()
	sc.log.WithField("grace", grace).Info("shutting down: stop accepting, drain connections")
	var wg sync.WaitGroup
	for _, s := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc.drain(s, grace, true, "")
		}()
	}
	wg.Wait()
	sc.drains.Wait()
	if admin != nil {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		admin.Shutdown(actx)
		acancel()
	}
	<-adminDone
	sc.log.Info("stopped")
	return nil
}

// setGOMAXPROCS applies the gomaxprocs key: n Ps, or for 0 the GOMAXPROCS
// environment variable if set, else one more than the CPUs available.
// The proxy runs an event loop per P but one, each waiting for its
// sockets in epoll_wait with its P (proxy/evloop_linux.go): the extra P
// gives every CPU a loop and leaves one for health checks, the admin
// server and STOMP sessions. (Set so, GOMAXPROCS no longer follows a
// cgroup limit that changes while the sidecar runs; a reload applies the
// new one, to services it adds or rebinds: a running service keeps its
// loops.)
func (sc *Sidecar) setGOMAXPROCS(n int) {
	prev := runtime.GOMAXPROCS(0)
	switch {
	case n > 0:
		runtime.GOMAXPROCS(n)
	case os.Getenv("GOMAXPROCS") != "":
		runtime.SetDefaultGOMAXPROCS()
	default:
		runtime.SetDefaultGOMAXPROCS()
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	}
	if now := runtime.GOMAXPROCS(0); now != prev || n > 0 {
		sc.log.WithFields(logrus.Fields{"gomaxprocs": now, "previous": prev, "configured": n}).Info("GOMAXPROCS set")
	}
}

// Log is the sidecar's logger, for its command to log through in the
// same format as everything else.
func (sc *Sidecar) Log() *logrus.Entry { return sc.log }

// RequestReload asks Run to reload the config file and waits for the
// outcome. It is what SIGHUP and POST /reload do.
func (sc *Sidecar) RequestReload(ctx context.Context) error {
	req := reloadRequest{reply: make(chan error, 1)}
	select {
	case sc.reloads <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reload re-reads the config file and applies it. A file that fails
// validation, or a new listen address that cannot be bound, rejects the
// reload as a whole: the running configuration stays, and the error names
// every problem. Otherwise:
//   - changed backends and checks apply in place, keeping every backend's
//     state, so live connections to a master still in the list live on;
//   - a service whose listen address or data-path options changed gets a new
//     listener sharing its monitor; the old one stops accepting and drains;
//   - a new service starts; a removed one stops accepting and drains.
//
// Only Run's goroutine calls it.
func (sc *Sidecar) reload() (err error) {
	start := time.Now()
	defer func() {
		sc.mu.Lock()
		sc.lastReload = ReloadStatus{Time: start, OK: err == nil}
		if err != nil {
			sc.lastReload.Error = err.Error()
		} else {
			sc.generation++
		}
		gen := sc.generation
		sc.mu.Unlock()
		if err != nil {
			sc.log.WithError(err).Error("reload rejected; the running configuration stays")
		} else {
			sc.log.WithField("generation", gen).Info("configuration reloaded")
		}
	}()
	next, err := LoadConfig(sc.path)
	if err != nil {
		return err
	}
	sc.mu.Lock()
	cur := sc.cfg
	sc.mu.Unlock()
	if next.Admin.Listen != cur.Admin.Listen {
		sc.log.WithFields(logrus.Fields{"old": cur.Admin.Listen, "new": next.Admin.Listen}).Warn("admin.listen changes take effect at the next restart")
	}

	// GOMAXPROCS first: a TCP service sizes its event loops by it. With
	// the key at 0 it follows the CPUs available now. A failed reload
	// puts the running configuration's back.
	sc.setGOMAXPROCS(next.GOMAXPROCS)

	// Bind every new listener first: if one fails, nothing has changed yet.
	type change struct {
		cfg      ServiceConfig
		old, new *service // old nil: added; new nil with rebind: same address
		rebind   bool
	}
	var changes []change
	fail := func(err error) error {
		for _, c := range changes {
			if c.new != nil && c.new != c.old {
				c.new.proxy.Shutdown(context.Background())
			}
		}
		sc.setGOMAXPROCS(cur.GOMAXPROCS)
		return err
	}
	for _, s := range next.Services {
		old := sc.services[s.Name]
		c := change{cfg: s, old: old, new: old}
		switch {
		case old == nil:
			svc, err := sc.newService(s, next, nil)
			if err != nil {
				return fail(fmt.Errorf("service %q: %w", s.Name, err))
			}
			c.new = svc
		case sc.needsRebind(old.cfg, s, cur, next) && sameListen(old.cfg, s):
			// The address is ours already: the new listener can only
			// bind once the old one is closed, below.
			c.new, c.rebind = nil, true
		case sc.needsRebind(old.cfg, s, cur, next):
			svc, err := sc.newService(s, next, old.pool)
			if err != nil {
				return fail(fmt.Errorf("service %q: %w", s.Name, err))
			}
			c.new = svc
		}
		changes = append(changes, c)
	}

	// Commit. The [log] table first, level and format, so that what
	// follows is logged as the new file says.
	if next.Log != cur.Log {
		if err := conf.SetLogging(sc.logger, next.Log.Level, next.Log.Format); err == nil {
			sc.log.WithFields(logrus.Fields{"level": next.Log.Level, "format": next.Log.Format}).Info("log settings reloaded")
		}
	}
	grace := next.ShutdownGrace.D()
	services := map[string]*service{}
	for _, c := range changes {
		log := sc.log.WithField("service", c.cfg.Name)
		switch {
		case c.old == nil:
			sc.start(c.new, nil)
			log.Info("service added")
		case c.rebind:
			sc.applyHealth(c.old, c.cfg)
			nw, err := sc.rebindSameAddress(c.old, c.cfg, next, grace)
			if err != nil {
				// The old listener is closed already. Keep the old
				// service (its monitor, its draining connections) so
				// shutdown still stops it, and say so loudly.
				log.WithError(err).Error("rebinding the listener failed; the service no longer accepts connections")
				nw = c.old
			}
			c.new = nw
		case c.new != c.old:
			sc.applyHealth(c.old, c.cfg)
			sc.start(c.new, c.old)
			sc.drainInBackground(c.old, grace, false, "listener replaced by a reload (new address "+c.new.proxy.Addr().String()+")")
			log.WithField("listen", c.new.proxy.Addr().String()).Info("service rebound")
		default:
			sc.applyHealth(c.old, c.cfg)
		}
		services[c.cfg.Name] = c.new
	}
	for name, old := range sc.services {
		if _, ok := services[name]; !ok {
			sc.log.WithField("service", name).Info("service removed: stop accepting, drain")
			sc.drainInBackground(old, grace, true, "service removed by a reload")
		}
	}
	sc.mu.Lock()
	sc.cfg = next
	for _, c := range changes {
		if svc := services[c.cfg.Name]; svc != nil {
			svc.cfg = c.cfg
		}
	}
	sc.services = services
	sc.mu.Unlock()
	return nil
}

// applyHealth gives a running service's pool the new backends, discovery
// and checks.
func (sc *Sidecar) applyHealth(old *service, s ServiceConfig) {
	if !reflect.DeepEqual(old.cfg.Backends, s.Backends) {
		old.pool.setStatic(healthBackends(s))
		sc.log.WithField("service", s.Name).Info("backends reloaded")
	}
	if discoveryOf(old.cfg) != discoveryOf(s) {
		if err := old.pool.startDiscovery(discoveryOf(s), sc.dm); err != nil {
			sc.log.WithError(err).WithField("service", s.Name).Error("DNS discovery not restarted")
		} else {
			sc.log.WithField("service", s.Name).Info("discovery reloaded")
		}
	}
	newTLS := old.cfg.TLS.fingerprint() != s.TLS.fingerprint()
	if !reflect.DeepEqual(old.cfg.Check, s.Check) || old.cfg.Mode != s.Mode || old.cfg.Random != s.Random || newTLS {
		var checker health.Checker
		if old.cfg.Check.Kind != s.Check.Kind || newTLS || old.cfg.Check.login() != s.Check.login() || old.cfg.Check.Host != s.Check.Host {
			tlsConf, _ := s.TLS.load() // validated already
			checker, _ = health.NewCheckerWith(s.Check.Kind, s.Check.options(tlsConf))
		}
		old.pool.monitor.SetConfig(healthConfig(s), checker)
		sc.log.WithField("service", s.Name).Info("health checks reloaded")
	}
}

// rebindSameAddress replaces a listener whose address stays the same but
// whose data-path options changed: the old listener must close before the
// new one can bind, so connection attempts in that instant are refused;
// live connections are not touched (they drain on the old service).
func (sc *Sidecar) rebindSameAddress(old *service, s ServiceConfig, c *Config, grace time.Duration) (*service, error) {
	// The listener binds with SO_REUSEPORT, so the new one could bind
	// beside the old; but connections queued on the old one when it closes
	// would be reset. Close first: a connection attempt in the instant
	// between is refused instead.
	old.proxy.StopAcceptingBecause("listener replaced by a reload (new options)")
	sc.drainInBackground(old, grace, false, "")
	var svc *service
	var err error
	for deadline := time.Now().Add(time.Second); ; {
		if svc, err = sc.newService(s, c, old.pool); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	sc.start(svc, old)
	sc.log.WithField("service", s.Name).Info("service options reloaded (listener replaced)")
	return svc, nil
}

func (sc *Sidecar) drainInBackground(s *service, grace time.Duration, stopMonitor bool, why string) {
	sc.drains.Add(1)
	go func() {
		defer sc.drains.Done()
		sc.drain(s, grace, stopMonitor, why)
	}()
}

// needsRebind reports whether the data-path options of a service changed
// (its listener must be replaced), as opposed to health settings only.
func (sc *Sidecar) needsRebind(a, b ServiceConfig, ca, cb *Config) bool {
	oa, _ := dataPathSettings(a, ca)
	ob, _ := dataPathSettings(b, cb)
	// Each load makes a new *tls.Config: compare what it was made from.
	oa.TLS, ob.TLS = nil, nil
	return oa != ob || a.TLS.fingerprint() != b.TLS.fingerprint() || a.Protocol != b.Protocol ||
		a.IdleTimeout != b.IdleTimeout || a.OnFailover != b.OnFailover ||
		a.MaxReplayBytes != b.MaxReplayBytes || a.ConnectTimeout != b.ConnectTimeout ||
		a.ClientWriteTimeout != b.ClientWriteTimeout || a.Credentials != b.Credentials
}

func sameListen(a, b ServiceConfig) bool {
	la, _ := listenAddr(a.Listen)
	lb, _ := listenAddr(b.Listen)
	return la == lb
}

// Status is the JSON document served at GET /status.
type Status struct {
	Version    string          `json:"version"`
	Build      string          `json:"build"` // commit, its date and the Go version
	Ready      bool            `json:"ready"` // every service has a master (GET /readyz)
	Started    time.Time       `json:"started"`
	Generation int             `json:"generation"` // successful reloads so far
	LastReload *ReloadStatus   `json:"last_reload,omitempty"`
	Services   []ServiceStatus `json:"services"`
}

// ServiceStatus is one service in Status: where it listens, what the health
// checks see and which master it routes to, and its connections.
type ServiceStatus struct {
	Name        string               `json:"name"`
	Listen      string               `json:"listen"`
	Protocol    string               `json:"protocol"` // "tcp" or "stomp"
	Master      string               `json:"master"`
	MasterSince time.Time            `json:"master_since"`
	Health      health.ServiceStatus `json:"health"`
	Connections any                  `json:"connections"` // proxy.ServiceStatus or stompproxy.Status
	Discovery   *discovery.Status    `json:"discovery,omitempty"`
}

func (sc *Sidecar) status() Status {
	sc.mu.Lock()
	st := Status{Version: Version, Build: buildinfo.Read().String(), Started: sc.started, Generation: sc.generation, Ready: true}
	if !sc.lastReload.Time.IsZero() {
		lr := sc.lastReload
		st.LastReload = &lr
	}
	names := make([]string, 0, len(sc.services))
	for name := range sc.services {
		names = append(names, name)
	}
	sort.Strings(names)
	services := make([]*service, len(names))
	for i, name := range names {
		services[i] = sc.services[name]
	}
	sc.mu.Unlock()
	for i, s := range services {
		h := s.pool.monitor.Status()
		st.Ready = st.Ready && h.Ready
		st.Services = append(st.Services, ServiceStatus{
			Name:        names[i],
			Listen:      s.proxy.Addr().String(),
			Protocol:    s.cfg.Protocol,
			Master:      h.Master,
			MasterSince: h.MasterSince,
			Health:      h,
			Connections: s.proxy.Connections(),
			Discovery:   s.pool.discoveryStatus(),
		})
	}
	return st
}

func (sc *Sidecar) adminHandler() http.Handler {
	sc.mu.Lock()
	pprofOn := sc.cfg.Admin.Pprof
	sc.mu.Unlock()
	mux := adminmux.New(func() any { return sc.status() }, sc.reg, adminmux.Options{Pprof: pprofOn})
	// POST /reload re-reads the config file, as SIGHUP does, and answers
	// with the outcome: 200, or 400 with every problem of a rejected file.
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if err := sc.RequestReload(r.Context()); err != nil {
			http.Error(w, "reload rejected: "+err.Error(), http.StatusBadRequest)
			return
		}
		sc.mu.Lock()
		gen := sc.generation
		sc.mu.Unlock()
		fmt.Fprintf(w, "reloaded: generation %d\n", gen)
	})
	mux.HandleFunc("GET /readyz", sc.readyz)
	// Runtime control (control.go): POST /backends/disable, /drain and
	// /enable?service=NAME&backend=ADDR.
	mux.HandleFunc("POST /backends/{action}", sc.backendControl)
	// The page for people (page.go).
	mux.Handle("GET /{$}", sidecarPage.Handler(sc.pageData, 2*time.Second))
	return adminmux.Guard(mux)
}

// readiness is the body of GET /readyz.
type readiness struct {
	// Ready: every service asked about has a master.
	Ready bool `json:"ready"`
	// Error says which services have none ("" when ready).
	Error    string             `json:"error,omitempty"`
	Services []serviceReadiness `json:"services"`
}

type serviceReadiness struct {
	Name  string `json:"name"`
	Ready bool   `json:"ready"`
	// Master is the master clients go to now ("" without one; in mode
	// any, the first of the healthy backends).
	Master string `json:"master,omitempty"`
	// NoMasterSince is when the service lost its master (or started
	// without one), set only while it has none.
	NoMasterSince *time.Time `json:"no_master_since,omitempty"`
}

// readyz answers 200 only while every service (with ?service=NAME, that
// one) has a master, so that a load balancer, an orchestrator or a
// monitoring probe can tell a sidecar that accepts connections from one
// that can serve them; 503 otherwise, with a JSON body naming the services
// without one; 404 for an unknown service. (/healthz says only that the
// process answers.)
func (sc *Sidecar) readyz(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("service")
	st := sc.status()
	body := readiness{Ready: true, Services: []serviceReadiness{}}
	var missing []string
	for _, s := range st.Services {
		if name != "" && s.Name != name {
			continue
		}
		sr := serviceReadiness{Name: s.Name, Ready: s.Health.Ready}
		if len(s.Health.Targets) > 0 {
			sr.Master = s.Health.Targets[0]
		}
		if !s.Health.Ready {
			since := s.Health.NoMasterSince
			sr.NoMasterSince = &since
			missing = append(missing, s.Name)
		}
		body.Services = append(body.Services, sr)
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case name != "" && len(body.Services) == 0:
		body.Ready = false
		body.Error = fmt.Sprintf("no service %q", name)
		w.WriteHeader(http.StatusNotFound)
	case len(missing) > 0:
		body.Ready = false
		body.Error = "no master for service " + strings.Join(missing, ", ")
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(body)
}
