package sidecar

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"handover/health"
	"handover/internal/adminmux"
	"handover/internal/conf"
	"handover/proxy"
	"handover/stompproxy"
)

// Config is the sidecar's TOML file (proxy.toml). Every field has a default,
// set by defaults(); the sample proxy.toml at the repository root documents
// each key.
type Config struct {
	Log           LogConfig     `toml:"log"`
	Admin         AdminConfig   `toml:"admin"`
	ShutdownGrace conf.Duration `toml:"shutdown_grace"`
	// GOMAXPROCS caps the CPUs that run Go code at once (the runtime's
	// GOMAXPROCS). 0, the default, leaves the runtime's choice: the
	// GOMAXPROCS environment variable if set, else the CPUs available to
	// the process. See proxy.toml for when 1 pays.
	GOMAXPROCS int             `toml:"gomaxprocs"`
	Services   []ServiceConfig `toml:"service"`
}

// LogConfig is the [log] table.
type LogConfig struct {
	Level  string `toml:"level"`  // debug, info, warn, error; default info
	Format string `toml:"format"` // text or json; default text
}

// AdminConfig is the [admin] table.
type AdminConfig struct {
	// Listen is the admin HTTP address (/status, /healthz, /metrics);
	// default 127.0.0.1:9090, an empty string after defaults disables it.
	Listen string `toml:"listen"`
	// Pprof serves the Go runtime's profiles under /debug/pprof/; off by
	// default, since they show the process's memory to whoever can reach
	// the port.
	Pprof bool `toml:"pprof"`
	// TokenFile holds the bearer token every admin request but /healthz
	// and /readyz must carry (Authorization: Bearer TOKEN); an admin
	// address beyond loopback needs one. Read at start.
	TokenFile string `toml:"token_file"`
}

// ServiceConfig is one [[service]]: a local listener and the brokers behind it.
type ServiceConfig struct {
	Name     string    `toml:"name"`
	Listen   string    `toml:"listen"` // default bind is loopback
	Backends []Backend `toml:"backends"`

	// Discovery adds the brokers named by DNS: "dns-srv:_stomp._tcp.brokers.example."
	// (instead of, or as well as, backends).
	Discovery  string        `toml:"discovery"`
	Resolver   string        `toml:"resolver"`    // "host:port"; default: /etc/resolv.conf
	MinRefresh conf.Duration `toml:"min_refresh"` // default 1s
	MaxRefresh conf.Duration `toml:"max_refresh"` // default 60s
	AllowEmpty bool          `toml:"allow_empty"` // an empty answer may empty the discovered list
	// CheckURL is, for discovered backends and check kind http, the URL
	// template: {host} and {port} are the backend's, e.g.
	// "http://{host}:8161/readyz".
	CheckURL string `toml:"check_url"`
	Mode     string `toml:"mode"` // "master" (default) or "any"
	// Protocol is "tcp" (default: bytes are copied, any protocol) or
	// "stomp": the sidecar keeps each client's STOMP session and resumes it
	// on the new master, so a client that never reconnects survives a
	// failover.
	Protocol string `toml:"protocol"`
	// MaxReplayBytes bounds what a STOMP session keeps to resume (default
	// 4 MiB); a session over it is closed at the next failover instead.
	MaxReplayBytes int  `toml:"max_replay_bytes"`
	Random         bool `toml:"randomize"` // mode any: shuffle

	// Failover behaviour, named as ActiveMQ's failover transport names it.
	Timeout               conf.Duration `toml:"timeout"`                 // hold a new client this long waiting for a master; default 30s
	InitialReconnectDelay conf.Duration `toml:"initial_reconnect_delay"` // default 10ms
	MaxReconnectDelay     conf.Duration `toml:"max_reconnect_delay"`     // default 1s
	BackoffMultiplier     float64       `toml:"backoff_multiplier"`      // default 2
	MaxReconnectAttempts  int           `toml:"max_reconnect_attempts"`  // 0: unlimited within timeout
	OnFailover            string        `toml:"on_failover"`             // "close" (default) or "keep"

	DialTimeout    conf.Duration `toml:"dial_timeout"`    // default 2s
	IdleTimeout    conf.Duration `toml:"idle_timeout"`    // default 0: none
	KeepAlive      conf.Duration `toml:"keepalive"`       // default 15s
	MaxConnections int           `toml:"max_connections"` // default 10,000; -1: no cap

	// MaxConnectionsPerSource caps the client connections from one IP
	// address (default 0: no cap, as clients on the sidecar's host all come
	// from loopback). A client over a cap is closed at accept, after an
	// ERROR frame in STOMP mode.
	MaxConnectionsPerSource int `toml:"max_connections_per_source"`
	// ConnectTimeout (protocol "stomp") is how long a client has from
	// accept to send its whole CONNECT frame (default 10s).
	ConnectTimeout conf.Duration `toml:"connect_timeout"`
	// ClientWriteTimeout (protocol "stomp") bounds each write to a client:
	// one that has not taken it in this time has stopped reading, and is
	// closed with its broker session (default 30s, brokerd's own bound).
	ClientWriteTimeout conf.Duration `toml:"client_write_timeout"`

	Check CheckConfig `toml:"check"`
	// TLS, when set, is TLS from the sidecar to the brokers, for the data
	// path and the tcp and stomp checks alike.
	TLS TLSConfig `toml:"tls"`
	// Credentials (protocol "stomp") are the login and passcode every
	// session presents to the brokers in place of its client's, so that a
	// legacy application holds no broker secret.
	Credentials LoginConfig `toml:"credentials"`
}

// CheckConfig is a service's [service.check] table.
type CheckConfig struct {
	Kind             string        `toml:"kind"`               // tcp (default), stomp or http
	Interval         conf.Duration `toml:"interval"`           // default 1s
	Timeout          conf.Duration `toml:"timeout"`            // default: interval
	Rise             int           `toml:"rise"`               // default 2
	Fall             int           `toml:"fall"`               // default 3
	NoMasterInterval conf.Duration `toml:"no_master_interval"` // default 20ms
	// MinRecheckInterval spaces the passive re-checks of one backend that
	// failed dials and upstream resets ask for; default 20ms.
	MinRecheckInterval conf.Duration `toml:"min_recheck_interval"`
	// Watch is "auto" (default: follow each backend's watch stream, on
	// its check_url's admin port or its watch_url, where it offers one,
	// and poll the others) or "off" (poll all). WatchTimeout bounds a
	// silent watch (default 7s, two of brokerd's heartbeats and a second).
	Watch        string        `toml:"watch"`
	WatchTimeout conf.Duration `toml:"watch_timeout"`
	// Login, PasscodeFile and PasscodeEnv (kind stomp) are what the check
	// logs in with, as LoginConfig; Host is the CONNECT's host header
	// (RabbitMQ's virtual host; default "localhost").
	Login        string `toml:"login"`
	PasscodeFile string `toml:"passcode_file"`
	PasscodeEnv  string `toml:"passcode_env"`
	Host         string `toml:"host"`
}

// login is the check's login keys.
func (c CheckConfig) login() LoginConfig {
	return LoginConfig{Login: c.Login, PasscodeFile: c.PasscodeFile, PasscodeEnv: c.PasscodeEnv}
}

// Backend is one broker: "host:port", or a table {addr = "host:port",
// check_url = "http://…/readyz"} when the check is http (brokerd's watch
// is then followed on the same admin port), with watch_url for a watch
// elsewhere.
type Backend struct {
	Addr     string `toml:"addr"`
	CheckURL string `toml:"check_url"`
	WatchURL string `toml:"watch_url"`
}

// UnmarshalTOML accepts both spellings of a backend.
func (b *Backend) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		b.Addr = v
		return nil
	case map[string]any:
		for k, x := range v {
			s, ok := x.(string)
			if !ok {
				return fmt.Errorf("backend key %q must be a string", k)
			}
			switch k {
			case "addr":
				b.Addr = s
			case "check_url":
				b.CheckURL = s
			case "watch_url":
				b.WatchURL = s
			default:
				return fmt.Errorf("unknown backend key %q (want addr, check_url, watch_url)", k)
			}
		}
		return nil
	default:
		return fmt.Errorf("a backend is \"host:port\" or {addr = \"host:port\", check_url = \"http://…\"}, not %T", v)
	}
}

func (c *Config) defaults() {
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = conf.Duration(10 * time.Second)
	}
	for i := range c.Services {
		s := &c.Services[i]
		setDefault := func(d *conf.Duration, v time.Duration) {
			if *d == 0 {
				*d = conf.Duration(v)
			}
		}
		if s.Mode == "" {
			s.Mode = "master"
		}
		if s.Protocol == "" {
			s.Protocol = "tcp"
		}
		if s.MaxReplayBytes == 0 {
			s.MaxReplayBytes = stompproxy.DefaultMaxReplayBytes
		}
		if s.MaxConnections == 0 {
			s.MaxConnections = proxy.DefaultMaxConnections
		}
		setDefault(&s.ConnectTimeout, stompproxy.DefaultConnectTimeout)
		setDefault(&s.ClientWriteTimeout, stompproxy.DefaultClientWriteTimeout)
		if s.OnFailover == "" {
			s.OnFailover = "close"
		}
		setDefault(&s.Timeout, 30*time.Second)
		setDefault(&s.InitialReconnectDelay, 10*time.Millisecond)
		setDefault(&s.MaxReconnectDelay, time.Second)
		setDefault(&s.DialTimeout, 2*time.Second)
		setDefault(&s.KeepAlive, 15*time.Second)
		if s.BackoffMultiplier == 0 {
			s.BackoffMultiplier = 2
		}
		if s.Check.Kind == "" {
			s.Check.Kind = "tcp"
		}
		setDefault(&s.Check.Interval, time.Second)
		setDefault(&s.Check.Timeout, s.Check.Interval.D())
		setDefault(&s.Check.NoMasterInterval, 20*time.Millisecond)
		setDefault(&s.Check.MinRecheckInterval, 20*time.Millisecond)
		if s.Check.Rise == 0 {
			s.Check.Rise = 2
		}
		if s.Check.Fall == 0 {
			s.Check.Fall = 3
		}
	}
}

// newConfig is a Config before the file is read: the defaults that an
// explicit empty value may override (admin.listen = "" disables the admin
// server).
func newConfig() *Config {
	var c Config
	c.Admin.Listen = "127.0.0.1:9090"
	return &c
}

// LoadConfig reads, defaults and validates a config file. The error lists
// every problem at once, each with its line and key: syntax (then nothing
// else can be read), values of the wrong type, unknown keys, values out of
// range, addresses that are not addresses, and listen ports used twice
// (by two services, or a service and the admin server), so that an
// operator fixes them all in one pass.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	text := string(b)
	pos := conf.KeyPositions(text)
	c := newConfig()
	var errs []error
	var skip map[string]bool
	if _, err := conf.Decode(path, text, c); err != nil {
		// The decoder stops at the first value of a wrong type, and
		// then every key after it looks unknown: decode each key alone
		// to tell them apart, and the rest of the file to validate it.
		var keyErrs []error
		c, skip, keyErrs = decodeEachKey(path, text, pos)
		if c == nil || len(keyErrs) == 0 {
			return nil, err // a syntax error, or one only the whole file shows
		}
		errs = append(errs, keyErrs...)
	}
	c.defaults()
	errs = append(errs, c.validate(path, pos, skip)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// keyStep is one step of a key path: a key, and an index into an array of
// tables (-1 if it is not one).
type keyStep struct {
	key   string
	index int
}

func renderPath(steps []keyStep) string {
	var b strings.Builder
	for i, st := range steps {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(st.key)
		if st.index >= 0 {
			fmt.Fprintf(&b, "[%d]", st.index)
		}
	}
	return b.String()
}

// nestKey builds a document holding only value at steps.
func nestKey(steps []keyStep, value any) map[string]any {
	st := steps[0]
	v := value
	if len(steps) > 1 {
		v = nestKey(steps[1:], value)
	}
	if st.index >= 0 {
		m, _ := v.(map[string]any)
		v = []map[string]any{m}
	}
	return map[string]any{st.key: v}
}

// dropKey deletes the value at steps from doc.
func dropKey(doc map[string]any, steps []keyStep) {
	for _, st := range steps[:len(steps)-1] {
		switch v := doc[st.key].(type) {
		case map[string]any:
			doc = v
		case []map[string]any:
			doc = v[st.index]
		default:
			return
		}
	}
	delete(doc, steps[len(steps)-1].key)
}

// tomlPrefix is how the TOML decoder starts an error about a value: the
// line is that of the one-key document decodeEachKey made, so it goes.
var tomlPrefix = regexp.MustCompile(`^toml: line \d+ \(last key "[^"]*"\): `)

// decodeEachKey finds every key of a file that decodes badly on its own (a
// value of the wrong type, or a key Config has no field for), and decodes
// the rest: the Config, with the bad keys left at their defaults, the
// paths of the bad keys (validation says nothing more about them), and an
// error per bad key, in line order. It returns a nil Config if the text is
// not TOML at all.
func decodeEachKey(name, text string, pos conf.Positions) (*Config, map[string]bool, []error) {
	var raw map[string]any
	if _, err := toml.Decode(text, &raw); err != nil {
		return nil, nil, nil
	}
	type leaf struct {
		steps []keyStep
		value any
	}
	var leaves []leaf
	var walk func(steps []keyStep, m map[string]any)
	walk = func(steps []keyStep, m map[string]any) {
		for k, v := range m {
			s := append(slices.Clone(steps), keyStep{key: k, index: -1})
			switch v := v.(type) {
			case map[string]any:
				if len(v) > 0 {
					walk(s, v)
					continue
				}
			case []map[string]any:
				for i, e := range v {
					si := slices.Clone(s)
					si[len(si)-1].index = i
					if len(e) > 0 {
						walk(si, e)
					} else {
						leaves = append(leaves, leaf{si, e})
					}
				}
				if len(v) > 0 {
					continue
				}
			}
			leaves = append(leaves, leaf{s, v})
		}
	}
	walk(nil, raw)

	type keyErr struct {
		line int
		err  error
	}
	var found []keyErr
	bad := map[string]bool{}
	unknown := map[string]bool{}
	for _, l := range leaves {
		path := renderPath(l.steps)
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(nestKey(l.steps, l.value)); err != nil {
			continue // not ours to judge: the whole-file decode will say
		}
		md, err := toml.Decode(buf.String(), newConfig())
		switch {
		case err != nil:
			msg := err.Error()
			var perr toml.ParseError
			if errors.As(err, &perr) {
				msg = perr.Message
			}
			msg = tomlPrefix.ReplaceAllString(msg, "")
			bad[path] = true
			found = append(found, keyErr{pos.Line(path), fmt.Errorf("%s:%d: %s: %s", name, pos.Line(path), path, msg)})
		case len(md.Undecoded()) > 0:
			// The shortest undecoded key is the unknown one: an unknown
			// table's keys are not reported again.
			und := md.Undecoded()[0]
			for _, k := range md.Undecoded() {
				if len(k) < len(und) {
					und = k
				}
			}
			p := renderPath(l.steps[:min(len(und), len(l.steps))])
			bad[path] = true
			if !unknown[p] {
				unknown[p] = true
				hint := ""
				if und[len(und)-1] == "passcode" {
					hint = ": a passcode is never written in the config file; use passcode_file or passcode_env"
				}
				found = append(found, keyErr{pos.Line(p), fmt.Errorf("%s:%d: unknown key %q%s", name, pos.Line(p), strings.Join(und, "."), hint)})
			}
		}
	}
	slices.SortStableFunc(found, func(a, b keyErr) int { return a.line - b.line })
	errs := make([]error, len(found))
	for i, f := range found {
		errs[i] = f.err
	}
	for _, l := range leaves {
		if bad[renderPath(l.steps)] {
			dropKey(raw, l.steps)
		}
	}
	c := newConfig()
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(raw); err != nil {
		return nil, nil, nil
	}
	if _, err := toml.Decode(buf.String(), c); err != nil {
		return nil, nil, nil
	}
	return c, bad, errs
}

func (c *Config) validate(name string, pos conf.Positions, skip map[string]bool) []error {
	var errs []error
	bad := func(path, format string, args ...any) {
		if skip[path] {
			return // its value had the wrong type: said already
		}
		errs = append(errs, fmt.Errorf("%s:%d: %s: %s", name, pos.Line(path), path, fmt.Sprintf(format, args...)))
	}
	if _, err := conf.NewLogger(os.Stderr, c.Log.Level, c.Log.Format); err != nil {
		bad("log", "%v", err)
	}
	// Every listen address, to find ports used twice: each one binds with
	// SO_REUSEPORT, so the kernel would let them share the port and
	// spread clients over them, some landing on the admin server.
	type bound struct{ path, what, host, port string }
	var binds []bound
	if c.Admin.Listen != "" {
		if host, port, err := checkListen(c.Admin.Listen, false); err != nil {
			bad("admin.listen", "%v", err)
		} else {
			if c.Admin.TokenFile == "" && !adminmux.IsLoopback(net.JoinHostPort(host, port)) {
				bad("admin.listen", "%s is not a loopback address: set [admin] token_file (requests then need Authorization: Bearer TOKEN), or bind 127.0.0.1", c.Admin.Listen)
			}
			binds = append(binds, bound{"admin.listen", "the admin server", host, port})
		}
	}
	if c.ShutdownGrace < 0 {
		bad("shutdown_grace", "must not be negative")
	}
	if c.GOMAXPROCS < 0 || c.GOMAXPROCS > maxGOMAXPROCS {
		bad("gomaxprocs", "must be 0 (the runtime's choice) or 1 to %d, got %d", maxGOMAXPROCS, c.GOMAXPROCS)
	}
	if len(c.Services) == 0 {
		bad("service", "at least one [[service]] is required")
	}
	names := map[string]bool{}
	for i, s := range c.Services {
		p := fmt.Sprintf("service[%d]", i)
		if s.Name == "" {
			bad(p+".name", "required")
		} else if names[s.Name] {
			bad(p+".name", "%q is used by another service", s.Name)
		}
		names[s.Name] = true
		if s.Listen == "" {
			bad(p+".listen", "required (for example \"127.0.0.1:61600\")")
		} else if host, port, err := checkListen(s.Listen, true); err != nil {
			bad(p+".listen", "%v", err)
		} else {
			binds = append(binds, bound{p + ".listen", fmt.Sprintf("service %q", s.Name), host, port})
		}
		if len(s.Backends) == 0 && s.Discovery == "" {
			bad(p+".backends", "at least one backend, or a discovery, is required")
		}
		if s.Discovery != "" {
			if name, ok := strings.CutPrefix(s.Discovery, "dns-srv:"); !ok || name == "" {
				bad(p+".discovery", "%q: want dns-srv:NAME, e.g. dns-srv:_stomp._tcp.brokers.example.", s.Discovery)
			}
			if s.Resolver != "" {
				if err := checkHostPort(s.Resolver, false); err != nil {
					bad(p+".resolver", "%q: %v", s.Resolver, err)
				}
			}
			if s.MinRefresh < 0 || s.MaxRefresh < 0 || (s.MaxRefresh > 0 && s.MaxRefresh < s.MinRefresh) {
				bad(p+".max_refresh", "min_refresh and max_refresh must be positive, max at least min")
			}
			if s.Check.Kind == "http" && s.CheckURL == "" {
				bad(p+".check_url", "discovered backends need a check_url template for the http check, e.g. \"http://{host}:8161/readyz\"")
			}
		}
		seen := map[string]bool{}
		for j, b := range s.Backends {
			if err := checkHostPort(b.Addr, false); err != nil {
				bad(p+".backends", "backend %d %q: %v", j, b.Addr, err)
			}
			if seen[b.Addr] {
				bad(p+".backends", "backend %q is listed twice", b.Addr)
			}
			seen[b.Addr] = true
			if s.Check.Kind == "http" {
				if b.CheckURL == "" {
					bad(p+".backends", "backend %q needs a check_url for the http check", b.Addr)
				} else if u, err := url.Parse(b.CheckURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					bad(p+".backends", "backend %q: check_url %q is not an http(s) URL", b.Addr, b.CheckURL)
				} else if err := checkHostPort(hostPortOf(u), false); err != nil {
					bad(p+".backends", "backend %q: check_url %q: %v", b.Addr, b.CheckURL, err)
				}
			}
		}
		switch s.Mode {
		case "master", "any":
		default:
			bad(p+".mode", "%q: want master or any", s.Mode)
		}
		switch s.Protocol {
		case "tcp", "stomp":
		default:
			bad(p+".protocol", "%q: want tcp or stomp", s.Protocol)
		}
		if s.MaxReplayBytes < 0 {
			bad(p+".max_replay_bytes", "must be positive")
		}
		switch s.OnFailover {
		case "close", "keep":
		default:
			bad(p+".on_failover", "%q: want close or keep", s.OnFailover)
		}
		if s.InitialReconnectDelay <= 0 {
			bad(p+".initial_reconnect_delay", "must be positive")
		}
		if s.MaxReconnectDelay < s.InitialReconnectDelay {
			bad(p+".max_reconnect_delay", "must be at least initial_reconnect_delay (%s)", s.InitialReconnectDelay)
		}
		if s.BackoffMultiplier < 1 {
			bad(p+".backoff_multiplier", "must be at least 1, got %g", s.BackoffMultiplier)
		}
		if s.MaxReconnectAttempts < 0 {
			bad(p+".max_reconnect_attempts", "must be 0 (unlimited) or positive")
		}
		if s.DialTimeout <= 0 {
			bad(p+".dial_timeout", "must be positive")
		}
		if s.IdleTimeout < 0 {
			bad(p+".idle_timeout", "must not be negative")
		}
		if s.KeepAlive < 0 {
			bad(p+".keepalive", "must not be negative")
		}
		if s.MaxConnections < proxy.NoLimit {
			bad(p+".max_connections", "must be %d (no cap), 0 (the default, %d) or positive, got %d",
				proxy.NoLimit, proxy.DefaultMaxConnections, s.MaxConnections)
		}
		if s.MaxConnectionsPerSource < 0 {
			bad(p+".max_connections_per_source", "must be 0 (no cap, the default) or positive, got %d", s.MaxConnectionsPerSource)
		}
		if s.ConnectTimeout < 0 {
			bad(p+".connect_timeout", "must be positive (the default is %v), got %v", stompproxy.DefaultConnectTimeout, s.ConnectTimeout)
		}
		if s.ClientWriteTimeout < 0 {
			bad(p+".client_write_timeout", "must be positive (the default is %v), got %v", stompproxy.DefaultClientWriteTimeout, s.ClientWriteTimeout)
		}
		ck := p + ".check"
		switch s.Check.Kind {
		case "tcp", "stomp", "http":
		default:
			bad(ck+".kind", "%q: want tcp, stomp or http", s.Check.Kind)
		}
		if s.Check.Interval <= 0 {
			bad(ck+".interval", "must be positive")
		}
		if s.Check.Timeout <= 0 || s.Check.Timeout > s.Check.Interval {
			bad(ck+".timeout", "must be positive and at most the interval (%s)", s.Check.Interval)
		}
		if s.Check.NoMasterInterval <= 0 {
			bad(ck+".no_master_interval", "must be positive")
		}
		if s.Check.MinRecheckInterval < 0 {
			bad(ck+".min_recheck_interval", "must not be negative")
		}
		switch s.Check.Watch {
		case "", "auto", "off":
		default:
			bad(ck+".watch", "%q: want auto or off", s.Check.Watch)
		}
		if s.Check.WatchTimeout != 0 && s.Check.WatchTimeout.D() <= health.MinWatchTimeout {
			bad(ck+".watch_timeout", "must be longer than brokerd's heartbeat interval (%v), got %s", health.MinWatchTimeout, s.Check.WatchTimeout)
		}
		for j, b := range s.Backends {
			if b.WatchURL == "" {
				continue
			}
			if u, err := url.Parse(b.WatchURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad(p+".backends", "backend %d %q: watch_url %q is not an http(s) URL", j, b.Addr, b.WatchURL)
			}
		}
		if s.Check.Rise < 1 {
			bad(ck+".rise", "must be at least 1")
		}
		if s.Check.Fall < 1 {
			bad(ck+".fall", "must be at least 1")
		}
		if s.Check.Kind != "stomp" && (s.Check.login().set() || s.Check.Host != "") {
			bad(ck+".kind", "login, passcode_file, passcode_env and host are sent by the stomp check only, not %q", s.Check.Kind)
		} else if s.Check.login().set() {
			for _, k := range s.Check.login().problems(false) {
				bad(ck+"."+k.key, "%v", k.err)
			}
		}
		if _, err := s.TLS.load(); err != nil {
			bad(p+".tls", "%v", err)
		}
		if s.Credentials.set() {
			if s.Protocol != "stomp" {
				bad(p+".credentials", "needs protocol = \"stomp\": in tcp mode the sidecar copies bytes and never sees the client's CONNECT")
			}
			for _, k := range s.Credentials.problems(true) {
				bad(p+".credentials."+k.key, "%v", k.err)
			}
		}
	}
	for i, a := range binds {
		for _, b := range binds[:i] {
			if overlap(a.host, a.port, b.host, b.port) {
				bad(a.path, "port %s is also where %s listens (%s); each listener needs a port of its own", a.port, b.what, b.path)
				break
			}
		}
	}
	return errs
}

// maxGOMAXPROCS bounds the gomaxprocs key: far beyond any sidecar's need,
// low enough to catch a typo (a port number, say).
const maxGOMAXPROCS = 1024

// checkListen validates a listen address, rendering go-sockaddr templates,
// and returns the host and port it binds (for a service, a bare ":port"
// binds loopback: listenAddr).
func checkListen(addr string, service bool) (host, port string, err error) {
	a, err := conf.ResolveAddr(addr)
	if err != nil {
		return "", "", err
	}
	if service {
		a, _ = listenAddr(a)
	}
	if err := checkHostPort(a, true); err != nil {
		return "", "", fmt.Errorf("%q: %w", a, err)
	}
	host, port, _ = net.SplitHostPort(a)
	return host, port, nil
}

// checkHostPort validates "host:port": a port from 1 to 65535 (0 too for
// a listen address: the kernel picks one, as tests want), and a host that
// is an IP address, or a name, but not a dotted quad out of range such as
// 256.1.1.1, which a resolver would look up as a name and fail on only
// when the sidecar starts.
func checkHostPort(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	n, err := strconv.Atoi(port)
	switch {
	case err != nil:
		return fmt.Errorf("port %q is not a number", port)
	case n == 0 && listen:
	case n < 1 || n > 65535:
		return fmt.Errorf("port %d is out of range (1 to 65535)", n)
	}
	if host == "" {
		if !listen {
			return errors.New("the host is missing")
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if strings.Trim(host, "0123456789.") == "" {
		return fmt.Errorf("%s is not an IP address", host)
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
			return fmt.Errorf("%q is neither an IP address nor a host name", host)
		}
	}
	return nil
}

// hostPortOf is a URL's host:port, with the scheme's default port.
func hostPortOf(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// overlap reports whether two listen addresses would share a port: the same
// port, on the same host or with either on every interface.
func overlap(hostA, portA, hostB, portB string) bool {
	if portA != portB || portA == "0" {
		return false
	}
	norm := func(h string) string {
		if h == "localhost" {
			return "127.0.0.1"
		}
		if a, err := netip.ParseAddr(h); err == nil {
			if a.IsUnspecified() {
				return ""
			}
			return a.Unmap().String()
		}
		return h
	}
	a, b := norm(hostA), norm(hostB)
	return a == b || a == "" || b == ""
}

// listenAddr resolves a service's listen address. A bare ":port" binds
// loopback, not every interface: a sidecar serves the application beside it
// and must not be reachable from the network unless told so explicitly.
func listenAddr(addr string) (string, error) {
	a, err := conf.ResolveAddr(addr)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(a, ":") {
		a = "127.0.0.1" + a
	}
	return a, nil
}
