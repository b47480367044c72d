package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"handover/internal/pgtest"
	"handover/internal/testutil"
)

// ClusterOptions shapes a cluster. The zero value is three brokers.
type ClusterOptions struct {
	// Brokers is how many brokerd share the store; zero means 3.
	Brokers int
	// Protocol is the sidecar service's protocol: "" (the default, tcp) or
	// "stomp" (transparent failover: sessions survive the master's death).
	Protocol string
	// Store is where the brokers keep their lock and messages: "" or
	// StoreFile (the default: one shared data directory, an OFD lock on
	// it) or StorePostgres (a throwaway PostgreSQL started for the test,
	// every broker with -store DSN and a -data of its own; the lock is in
	// the database and slaves poll it every -lock-retry, 500ms).
	Store string
	// BrokerConfig, when set, is the text of a brokerd TOML config file
	// given to every broker as -config (limits such as max_disk); the
	// harness's flags (addresses, data, store, log level) override it.
	BrokerConfig string
	// Secure turns TLS and logins on: each broker serves STOMP over TLS
	// only (its Listen is a TLS listener, with a certificate from a CA
	// made for the test) and requires a login (a users file); the sidecar
	// speaks TLS to the brokers, verifying them against that CA, and logs
	// in with its own [service.credentials]. It needs Protocol "stomp":
	// the workload's clients send no login and stay plain on localhost,
	// as a legacy application beside the sidecar would. On StorePostgres
	// the logins are in the store's users table (users_table), which
	// every broker reads.
	Secure bool
}

// The stores a cluster can run on.
const (
	StoreFile     = "file"
	StorePostgres = "postgres"
)

// Broker is one brokerd of the cluster. Its addresses are fixed for the
// test, so a restarted broker comes back where the sidecar looks for it.
type Broker struct {
	Name          string
	Listen, Admin string
	data          string // -data: the shared directory, or its own with postgres
	config        string // -config: the cluster's, or with Secure this broker's own
	proc          *proc
	starts        int
}

// Cluster is N brokerd on one data directory and the handover sidecar in
// front of them, as real processes on 127.0.0.1.
type Cluster struct {
	t          testing.TB
	logs       *logSet
	data       string
	brokerBin  string
	brokerCfg  string // -config of every broker ("" for none): ClusterOptions.BrokerConfig
	sidecarBin string
	sidecarCfg string
	// pg is the database of a StorePostgres cluster (nil otherwise): its
	// DSN is every broker's -store.
	pg *pgtest.Server
	// sec are a Secure cluster's certificates and logins (nil otherwise).
	sec *secrets

	Brokers []*Broker
	// Listen is the sidecar's client address: the only address the
	// workload knows. Admin is the sidecar's admin address.
	Listen, Admin string
	sidecar       *proc
	sidecarStarts int

	http *http.Client

	mu       sync.Mutex
	problems []string // processes that ended without being told to
}

// StartCluster builds the binaries (once per test process, with -race when
// the test has it), starts PostgreSQL when opts.Store says so, starts the
// brokers one by one, the first as master, and
// then the sidecar with the default configuration but for addresses (and
// opts.Protocol): http
// checks of each broker's /readyz every 1s with a 500ms timeout. It returns
// once the sidecar routes to the master.
func StartCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if opts.Brokers == 0 {
		opts.Brokers = 3
	}
	switch opts.Store {
	case "", StoreFile, StorePostgres:
	default:
		t.Fatalf("ClusterOptions.Store %q: want %q or %q", opts.Store, StoreFile, StorePostgres)
	}
	c := &Cluster{
		t:          t,
		logs:       newLogSet(t),
		data:       t.TempDir(),
		brokerBin:  testutil.Binary(t, "handover/cmd/brokerd"),
		sidecarBin: testutil.Binary(t, "handover/cmd/handover"),
		Listen:     testutil.FreePort(t),
		Admin:      testutil.FreePort(t),
		// Short, so a frozen process answers with an error rather than
		// holding the harness up; long enough for a busy -race process.
		http: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}},
	}
	if opts.Store == StorePostgres {
		c.pg = pgtest.Start(t)
		testutil.InitBroker(t, "-store", c.pg.DSN())
	} else {
		testutil.InitBroker(t, "-data", c.data)
	}
	if opts.BrokerConfig != "" {
		c.brokerCfg = filepath.Join(c.logs.dir, "brokerd.toml")
		if err := os.WriteFile(c.brokerCfg, []byte(opts.BrokerConfig), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var sec *secrets
	if opts.Secure {
		if opts.Protocol != "stomp" {
			t.Fatal("ClusterOptions.Secure needs Protocol \"stomp\": only then does the sidecar log in for its clients")
		}
		sec = newSecrets(t, c.logs.dir)
		c.sec = sec
	}
	var backends []string
	for i := range opts.Brokers {
		b := &Broker{Name: fmt.Sprintf("brokerd-%d", i), Listen: testutil.FreePort(t), Admin: testutil.FreePort(t), data: c.data, config: c.brokerCfg}
		if c.pg != nil {
			b.data = t.TempDir()
		}
		if sec != nil {
			b.config = sec.brokerConfig(t, c.logs.dir, b, opts.BrokerConfig, c.pg != nil)
		}
		c.Brokers = append(c.Brokers, b)
		backends = append(backends, fmt.Sprintf("{ addr = %q, check_url = \"http://%s/readyz\" }", b.Listen, b.Admin))
		if err := c.startBroker(b); err != nil {
			t.Fatal(err)
		}
		want := "slave"
		if i == 0 {
			want = "master"
		}
		if err := c.waitRole(b, want, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if i == 0 && sec != nil && c.pg != nil {
			// The first master created the users table.
			if err := c.addTableUser(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if sec != nil && c.pg != nil {
		for _, b := range c.Brokers[1:] { // slaves read the table too
			if err := c.waitUsers(b, 1, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	protocol := ""
	if opts.Protocol != "" {
		protocol = fmt.Sprintf("protocol = %q\n", opts.Protocol)
	}
	if sec != nil {
		protocol += sec.sidecarTables()
	}
	cfg := fmt.Sprintf(`# written by the e2e harness: the defaults but for addresses
[log]
level = "debug"
[admin]
listen = %q
[[service]]
name = "stomp"
listen = %q
backends = [%s]
%s[service.check]
kind = "http"
interval = "1s"
timeout = "500ms"
`, c.Admin, c.Listen, strings.Join(backends, ", "), protocol)
	c.sidecarCfg = filepath.Join(c.logs.dir, "proxy.toml")
	if err := os.WriteFile(c.sidecarCfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.startSidecar(); err != nil {
		t.Fatal(err)
	}
	if err := c.waitSidecarMaster(c.Brokers[0].Listen, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	return c
}

// LogDir is where every process's log is.
func (c *Cluster) LogDir() string { return c.logs.dir }

// exited is every managed process's onExit: an end the harness did not ask
// for is a crash, and the run's verdict includes it.
func (c *Cluster) exited(p *proc) {
	if p.expected.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.problems = append(c.problems, fmt.Sprintf("%s exited on its own: %v", p.name, p.cmd.ProcessState))
}

// Problems lists the processes that ended without the harness asking.
func (c *Cluster) Problems() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.problems...)
}

func (c *Cluster) startBroker(b *Broker) error {
	if b.proc != nil && b.proc.running() {
		return fmt.Errorf("%s is still running", b.Name)
	}
	c.logs.add(b.Name)
	listen := b.Listen
	if b.config != c.brokerCfg {
		listen = "" // Secure: b.Listen is the config's tls_listen
	}
	args := []string{"-listen", listen, "-admin", b.Admin, "-data", b.data, "-log-level", "debug"}
	if c.pg != nil {
		args = append(args, "-store", c.pg.DSN())
	}
	if b.config != "" {
		args = append(args, "-config", b.config)
	}
	p, err := startProc(c.t, c.logs.dir, b.Name, nil, c.exited, c.brokerBin, args...)
	if err != nil {
		return err
	}
	b.proc = p
	b.starts++
	return nil
}

func (c *Cluster) startSidecar() error {
	if c.sidecar != nil && c.sidecar.running() {
		return errors.New("the sidecar is still running")
	}
	c.logs.add("handover")
	p, err := startProc(c.t, c.logs.dir, "handover", nil, c.exited, c.sidecarBin, "-config", c.sidecarCfg)
	if err != nil {
		return err
	}
	c.sidecar = p
	c.sidecarStarts++
	return nil
}

// BrokerStatus is the part of brokerd's /status the harness reads.
type BrokerStatus struct {
	Role  string `json:"role"`
	Epoch uint64 `json:"epoch"`
	Ready bool   `json:"ready"`
	Users *struct {
		Count int `json:"count"`
	} `json:"users"`
}

// SidecarStatus is the part of the sidecar's /status the harness reads.
type SidecarStatus struct {
	Services []struct {
		Name        string    `json:"name"`
		Master      string    `json:"master"`
		MasterSince time.Time `json:"master_since"`
		Connections struct {
			Active int `json:"active"`
			Held   int `json:"held"`
		} `json:"connections"`
	} `json:"services"`
}

func (c *Cluster) getJSON(url string, v any) error {
	resp, err := c.http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Status reads b's /status.
func (c *Cluster) Status(b *Broker) (BrokerStatus, error) {
	var st BrokerStatus
	err := c.getJSON("http://"+b.Admin+"/status", &st)
	return st, err
}

// SidecarMaster reads the sidecar's /status and returns the master it
// routes to ("" for none).
func (c *Cluster) SidecarMaster() (string, error) {
	var st SidecarStatus
	if err := c.getJSON("http://"+c.Admin+"/status", &st); err != nil {
		return "", err
	}
	if len(st.Services) != 1 {
		return "", fmt.Errorf("sidecar /status has %d services, want 1", len(st.Services))
	}
	return st.Services[0].Master, nil
}

// healthz checks one admin address's /healthz.
func (c *Cluster) healthz(admin string) error {
	resp, err := c.http.Get("http://" + admin + "/healthz")
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s/healthz: %s", admin, resp.Status)
	}
	return nil
}

// Healthz checks that the sidecar and every running broker answer /healthz.
func (c *Cluster) Healthz() error {
	var errs []error
	if err := c.healthz(c.Admin); err != nil {
		errs = append(errs, fmt.Errorf("sidecar: %w", err))
	}
	for _, b := range c.Brokers {
		if err := c.healthz(b.Admin); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", b.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Master asks every broker for its role and returns the one serving
// master. Two masters are an error at once; none is an error to retry.
func (c *Cluster) Master() (*Broker, BrokerStatus, error) {
	var master *Broker
	var mst BrokerStatus
	for _, b := range c.Brokers {
		st, err := c.Status(b)
		if err != nil || st.Role != "master" || !st.Ready {
			continue
		}
		if master != nil {
			return nil, mst, fmt.Errorf("%w: %s (epoch %d) and %s (epoch %d)", errTwoMasters, master.Name, mst.Epoch, b.Name, st.Epoch)
		}
		master, mst = b, st
	}
	if master == nil {
		return nil, mst, errors.New("no broker reports itself serving master")
	}
	return master, mst, nil
}

var errTwoMasters = errors.New("two brokers report themselves master")

// Slaves returns the brokers other than m.
func (c *Cluster) Slaves(m *Broker) []*Broker {
	var out []*Broker
	for _, b := range c.Brokers {
		if b != m {
			out = append(out, b)
		}
	}
	return out
}

// waitMaster waits for a serving master other than not (nil: any).
func (c *Cluster) waitMaster(not *Broker, timeout time.Duration) (*Broker, BrokerStatus, error) {
	var m *Broker
	var st BrokerStatus
	err := poll(timeout, func() error {
		var err error
		m, st, err = c.Master()
		if errors.Is(err, errTwoMasters) {
			return stop(err)
		}
		if err == nil && m == not {
			return fmt.Errorf("%s is still master", m.Name)
		}
		return err
	})
	return m, st, err
}

func (c *Cluster) waitRole(b *Broker, role string, timeout time.Duration) error {
	return poll(timeout, func() error {
		st, err := c.Status(b)
		if err != nil {
			return err
		}
		if st.Role != role || role == "master" && !st.Ready {
			return fmt.Errorf("%s is %s (ready %v), want %s", b.Name, st.Role, st.Ready, role)
		}
		return nil
	})
}

func (c *Cluster) waitSidecarMaster(addr string, timeout time.Duration) error {
	return poll(timeout, func() error {
		m, err := c.SidecarMaster()
		if err != nil {
			return err
		}
		if m != addr {
			return fmt.Errorf("sidecar routes to %q, want %q", m, addr)
		}
		return nil
	})
}

// Check waits up to timeout for the steady state that must hold between
// faults: every process runs, one broker is master, the others are slaves,
// and the sidecar routes to the master. A crashed process or two masters
// fail it at once.
func (c *Cluster) Check(timeout time.Duration) error {
	return poll(timeout, c.check)
}

func (c *Cluster) check() error {
	if p := c.Problems(); len(p) > 0 {
		return stop(errors.New(strings.Join(p, "; ")))
	}
	m, _, err := c.Master()
	if errors.Is(err, errTwoMasters) {
		return stop(err)
	}
	if err != nil {
		return err
	}
	for _, b := range c.Slaves(m) {
		st, err := c.Status(b)
		if err != nil {
			return fmt.Errorf("%s: %w", b.Name, err)
		}
		if st.Role != "slave" {
			return fmt.Errorf("%s is %s, want slave", b.Name, st.Role)
		}
	}
	sm, err := c.SidecarMaster()
	if err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}
	if sm != m.Listen {
		return fmt.Errorf("sidecar routes to %q, master is %s at %s", sm, m.Name, m.Listen)
	}
	return nil
}

// stopErr makes poll give up at once.
type stopErr struct{ error }

func stop(err error) error { return stopErr{err} }

// poll calls cond every 20ms until it returns nil, returns a stop(err), or
// timeout passes; it returns cond's last error, with how long it waited.
func poll(timeout time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		var s stopErr
		if errors.As(err, &s) {
			return s.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not within %v: %w", timeout, err)
		case <-tick.C:
		}
	}
}
