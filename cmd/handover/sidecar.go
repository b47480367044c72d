package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"handover/health"
	"handover/internal/conf"
	"handover/proxy"
)

// sidecar is one running handover: a health monitor and a proxy service per
// [[service]], and the admin HTTP server.
type sidecar struct {
	cfg      *Config
	log      *logrus.Entry
	reg      *prometheus.Registry
	services []*service
	adminLn  net.Listener
	started  time.Time
}

// service pairs a listener with the monitor that tells it where to go.
type service struct {
	name    string
	monitor *health.Monitor
	proxy   *proxy.Service
}

// newSidecar builds everything and binds every listener, so a bad address
// fails at start, not at the first client.
func newSidecar(cfg *Config, logOut io.Writer) (*sidecar, error) {
	logger, err := conf.NewLogger(logOut, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return nil, err
	}
	sc := &sidecar{cfg: cfg, log: logger.WithField("component", "handover"), reg: prometheus.NewRegistry(), started: time.Now()}
	sc.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	hm, pm := health.NewMetrics(sc.reg), proxy.NewMetrics(sc.reg)
	for _, s := range cfg.Services {
		svc, err := sc.newService(s, hm, pm)
		if err != nil {
			sc.closeListeners()
			return nil, fmt.Errorf("service %q: %w", s.Name, err)
		}
		sc.services = append(sc.services, svc)
	}
	if cfg.Admin.Listen != "" {
		addr, err := conf.ResolveAddr(cfg.Admin.Listen)
		if err == nil {
			sc.adminLn, err = net.Listen("tcp", addr)
		}
		if err != nil {
			sc.closeListeners()
			return nil, fmt.Errorf("admin listener: %w", err)
		}
	}
	return sc, nil
}

func (sc *sidecar) newService(s ServiceConfig, hm *health.Metrics, pm *proxy.Metrics) (*service, error) {
	checker, err := health.NewChecker(s.Check.Kind)
	if err != nil {
		return nil, err
	}
	backends := make([]health.Backend, len(s.Backends))
	for i, b := range s.Backends {
		backends[i] = health.Backend{Addr: b.Addr, CheckURL: b.CheckURL}
	}
	log := sc.log.WithField("service", s.Name)
	mon := health.NewMonitor(s.Name, health.Config{
		Interval:         s.Check.Interval.D(),
		Timeout:          s.Check.Timeout.D(),
		Rise:             s.Check.Rise,
		Fall:             s.Check.Fall,
		Mode:             s.Mode,
		Randomize:        s.Random,
		NoMasterInterval: s.Check.NoMasterInterval.D(),
	}, backends, checker, nil, log.WithField("component", "health"), hm)
	listen, err := listenAddr(s.Listen)
	if err != nil {
		return nil, err
	}
	p, err := proxy.New(proxy.Options{
		Name:                  s.Name,
		Listen:                listen,
		Timeout:               s.Timeout.D(),
		InitialReconnectDelay: s.InitialReconnectDelay.D(),
		MaxReconnectDelay:     s.MaxReconnectDelay.D(),
		BackoffMultiplier:     s.BackoffMultiplier,
		MaxReconnectAttempts:  s.MaxReconnectAttempts,
		DialTimeout:           s.DialTimeout.D(),
		IdleTimeout:           s.IdleTimeout.D(),
		KeepAlive:             s.KeepAlive.D(),
		MaxConnections:        s.MaxConnections,
		OnFailover:            s.OnFailover,
		ShutdownGrace:         sc.cfg.ShutdownGrace.D(),
	}, mon, log.WithField("component", "proxy"), pm)
	if err != nil {
		return nil, err
	}
	return &service{name: s.Name, monitor: mon, proxy: p}, nil
}

func (sc *sidecar) closeListeners() {
	for _, s := range sc.services {
		s.proxy.Shutdown(context.Background())
	}
	if sc.adminLn != nil {
		sc.adminLn.Close()
	}
}

// run serves until ctx is cancelled, then shuts down in order: stop
// accepting and drain client connections (for shutdown_grace), then stop the
// health checks (the drain still needs them to close connections on a
// failover), then the admin server.
func (sc *sidecar) run(ctx context.Context) error {
	monCtx, stopMonitors := context.WithCancel(context.Background())
	defer stopMonitors()
	var monWG, svcWG sync.WaitGroup
	errs := make(chan error, len(sc.services))
	for _, s := range sc.services {
		monWG.Add(1)
		go func() {
			defer monWG.Done()
			s.monitor.Run(monCtx)
		}()
		svcWG.Add(1)
		go func() {
			defer svcWG.Done()
			if err := s.proxy.Serve(ctx); err != nil {
				errs <- fmt.Errorf("service %q: %w", s.name, err)
			}
		}()
		sc.log.WithFields(logrus.Fields{"service": s.name, "listen": s.proxy.Addr().String()}).Info("listening")
	}
	var admin *http.Server
	adminDone := make(chan struct{})
	if sc.adminLn != nil {
		admin = &http.Server{Handler: sc.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
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

	var runErr error
	select {
	case <-ctx.Done():
		sc.log.WithField("grace", sc.cfg.ShutdownGrace.D()).Info("shutting down: stop accepting, drain connections")
	case runErr = <-errs:
		sc.log.WithError(runErr).Error("a service failed; shutting down")
	}
	grace, cancel := context.WithTimeout(context.Background(), sc.cfg.ShutdownGrace.D())
	var wg sync.WaitGroup
	for _, s := range sc.services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.proxy.Shutdown(grace)
		}()
	}
	wg.Wait()
	cancel()
	svcWG.Wait()
	stopMonitors()
	monWG.Wait()
	if admin != nil {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		admin.Shutdown(actx)
		acancel()
	}
	<-adminDone
	sc.log.Info("stopped")
	return runErr
}

// Status is the JSON document served at GET /status.
type Status struct {
	Version  string          `json:"version"`
	Started  time.Time       `json:"started"`
	Services []ServiceStatus `json:"services"`
}

// ServiceStatus is one service in Status: where it listens, what the health
// checks see and which master it routes to, and its connections.
type ServiceStatus struct {
	Name        string                 `json:"name"`
	Listen      string                 `json:"listen"`
	Master      string                 `json:"master"`
	MasterSince time.Time              `json:"master_since"`
	Health      health.ServiceStatus   `json:"health"`
	Connections proxy.ServiceStatus    `json:"connections"`
	Backends    []health.BackendStatus `json:"backends"`
}

func (sc *sidecar) status() Status {
	st := Status{Version: Version, Started: sc.started}
	for _, s := range sc.services {
		h := s.monitor.Status()
		st.Services = append(st.Services, ServiceStatus{
			Name:        s.name,
			Listen:      s.proxy.Addr().String(),
			Master:      h.Master,
			MasterSince: h.MasterSince,
			Health:      h,
			Connections: s.proxy.Status(),
		})
	}
	return st
}

func (sc *sidecar) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(sc.status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(sc.reg, promhttp.HandlerOpts{}))
	return mux
}
