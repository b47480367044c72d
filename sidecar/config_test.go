package sidecar

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"handover/internal/conf"
)

// TestConnectionDefaults: a service without the keys gets a cap of
// 10,000 connections, none per source, 10s for the CONNECT and 30s for a
// write to a client.
func TestConnectionDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.toml")
	os.WriteFile(path, []byte("[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\n"), 0o644)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Services[0]
	if s.MaxConnections != 10000 || s.MaxConnectionsPerSource != 0 || s.ConnectTimeout.D() != 10*time.Second ||
		s.ClientWriteTimeout.D() != 30*time.Second {
		t.Fatalf("max_connections %d, max_connections_per_source %d, connect_timeout %v, client_write_timeout %v; want 10000, 0, 10s, 30s",
			s.MaxConnections, s.MaxConnectionsPerSource, s.ConnectTimeout, s.ClientWriteTimeout)
	}
}

func TestSampleConfigIsValid(t *testing.T) {
	c, err := LoadConfig("../proxy.toml")
	if err != nil {
		t.Fatal(err)
	}
	s := c.Services[0]
	if s.Name != "stomp" || len(s.Backends) != 2 || s.Backends[1].CheckURL != "http://127.0.0.1:8162/readyz" || s.Check.Kind != "http" {
		t.Fatalf("sample decoded as %+v", s)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string // each must appear in the error; nil means valid
	}{
		{"minimal", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\n", nil},
		{"no services", "[log]\nlevel = \"info\"\n", []string{"at least one [[service]]"}},
		{"unknown key", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"h:2\"]\nbackend = 3\n", []string{`:5: unknown key "service.backend"`}},
		{"tls without ca", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"h:2\"]\n[service.tls]\nserver_name = \"b\"\n", []string{"service[0].tls: ca: required"}},
		{"tls ca missing", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"h:2\"]\n[service.tls]\nca = \"/nonexistent/ca.pem\"\n", []string{"service[0].tls: ca: open /nonexistent/ca.pem"}},
		{"tls ca not PEM", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"h:2\"]\n[service.tls]\nca = \"config_test.go\"\n", []string{"service[0].tls: ca:", "holds no PEM certificate"}},
		{"tls unknown key", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"h:2\"]\n[service.tls]\ninsecure = true\n", []string{`unknown key "service.tls.insecure"`}},
		{"unknown backend key", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [{adr = \"h:2\"}]\n", []string{`unknown backend key "adr"`}},
		{"every problem listed with lines", `[log]
level = "loud"

[[service]]
name = "a"
listen = "127.0.0.1:1"
backends = ["h:2"]

[[service]]
name = "a"
listen = "nonsense"
backends = ["nohost", "h:3", "h:3"]
mode = "leader"
on_failover = "pray"
backoff_multiplier = 0.5
[service.check]
kind = "http"
interval = "1s"
timeout = "2s"
rise = -1
`, []string{
			"f.toml:1: log:", "log level",
			"f.toml:10: service[1].name: \"a\" is used by another service",
			"f.toml:11: service[1].listen",
			"f.toml:12: service[1].backends: backend 0 \"nohost\": want host:port",
			`backend "h:3" is listed twice`,
			`needs a check_url for the http check`,
			"f.toml:13: service[1].mode: \"leader\"",
			"f.toml:14: service[1].on_failover",
			"f.toml:15: service[1].backoff_multiplier",
			"f.toml:19: service[1].check.timeout: must be positive and at most the interval",
			"f.toml:20: service[1].check.rise",
		}},
		{"gomaxprocs 1", "gomaxprocs = 1\n[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\n", nil},
		{"gomaxprocs 0 is the runtime's choice", "gomaxprocs = 0\n[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\n", nil},
		{"gomaxprocs negative", "gomaxprocs = -1\n[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\n", []string{"f.toml:1: gomaxprocs: must be 0 (the runtime's choice) or 1 to 1024, got -1"}},
		{"gomaxprocs too many", "gomaxprocs = 61600\n[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\n", []string{"gomaxprocs: must be 0", "got 61600"}},
		{"gomaxprocs in a table is unknown", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\ngomaxprocs = 1\n", []string{`unknown key "service.gomaxprocs"`}},
		{"connection caps", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\nmax_connections = -1\nmax_connections_per_source = 100\nconnect_timeout = \"5s\"\nclient_write_timeout = \"1s\"\n", nil},
		{"negative caps and timeouts", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\nmax_connections = -2\nmax_connections_per_source = -1\nconnect_timeout = \"-1s\"\nclient_write_timeout = \"-1s\"\n", []string{
			"f.toml:5: service[0].max_connections: must be -1 (no cap), 0 (the default, 10000) or positive, got -2",
			"f.toml:6: service[0].max_connections_per_source: must be 0 (no cap, the default) or positive, got -1",
			"f.toml:7: service[0].connect_timeout: must be positive (the default is 10s), got -1s",
			"f.toml:8: service[0].client_write_timeout: must be positive (the default is 30s), got -1s",
		}},
		{"bad duration", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"h:2\"]\ntimeout = \"forever\"\n", []string{"bad duration"}},
		{"listen port out of range", "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:99999\"\nbackends = [\"127.0.0.1:2\"]\n", []string{
			`f.toml:3: service[0].listen: "127.0.0.1:99999": port 99999 is out of range (1 to 65535)`}},
		{"listen address not an IP", "[[service]]\nname = \"a\"\nlisten = \"256.1.1.1:61600\"\nbackends = [\"127.0.0.1:2\"]\n", []string{
			`f.toml:3: service[0].listen: "256.1.1.1:61600": 256.1.1.1 is not an IP address`}},
		{"admin port out of range", "[admin]\nlisten = \"127.0.0.1:70000\"\n[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\n", []string{
			`f.toml:2: admin.listen: "127.0.0.1:70000": port 70000 is out of range`}},
		{"backend addresses", "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:0\", \"10.0.0.300:61613\", \"broker-1.example:x\"]\n", []string{
			`backend 0 "127.0.0.1:0": port 0 is out of range`,
			`backend 1 "10.0.0.300:61613": 10.0.0.300 is not an IP address`,
			`backend 2 "broker-1.example:x": port "x" is not a number`}},
		{"listen port 0 is for tests", "[admin]\nlisten = \"127.0.0.1:0\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"broker-1.example:61613\"]\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"[::1]:61613\"]\n", nil},
		{"two services on one port", "[[service]]\nname = \"a\"\nlisten = \":61600\"\nbackends = [\"127.0.0.1:2\"]\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:61600\"\nbackends = [\"127.0.0.1:2\"]\n", []string{
			`f.toml:7: service[1].listen: port 61600 is also where service "a" listens (service[0].listen)`}},
		{"a service on the admin port", "[admin]\nlisten = \"127.0.0.1:9090\"\n[[service]]\nname = \"a\"\nlisten = \"localhost:9090\"\nbackends = [\"127.0.0.1:2\"]\n", []string{
			`f.toml:5: service[0].listen: port 9090 is also where the admin server listens (admin.listen)`}},
		{"every interface overlaps loopback", "[admin]\nlisten = \"0.0.0.0:7000\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:7000\"\nbackends = [\"127.0.0.1:2\"]\n", []string{
			`service[0].listen: port 7000 is also where the admin server listens`}},
		{"one port on two loopback addresses", "[admin]\nlisten = \"\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:7000\"\nbackends = [\"127.0.0.1:2\"]\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.2:7000\"\nbackends = [\"127.0.0.1:2\"]\n", nil},
		{"type errors hide nothing", `[[service]]
name = 5
listen = ":1"
backends = ["127.0.0.1:2", {adr = "h:3"}]
bogus = 1
max_connections = "many"
[service.check]
kind = "tcp"
rise = "two"
interval = "-1s"
colour = "red"
[service.chek]
kind = "tcp"
`, []string{
			`f.toml:2: service[0].name: incompatible types: TOML value has type int64; destination has type string`,
			`f.toml:4: service[0].backends: unknown backend key "adr"`,
			`f.toml:5: unknown key "service.bogus"`,
			`f.toml:6: service[0].max_connections: incompatible types`,
			`f.toml:9: service[0].check.rise: incompatible types`,
			`f.toml:10: service[0].check.interval: must be positive`,
			`f.toml:11: unknown key "service.check.colour"`,
			`f.toml:12: unknown key "service.chek"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadText(t, tt.text)
			if !wantErrors(t, err, tt.want) {
				return
			}
			if strings.Contains(err.Error(), "name: required") {
				t.Errorf("a name of the wrong type is reported missing too:\n%v", err)
			}
		})
	}
}

// TestSetGOMAXPROCS: the gomaxprocs key sets the runtime's GOMAXPROCS, and
// 0 (as a reload to a file without the key does) sets the runtime's own
// choice plus one, a P for each event loop and one for the rest.
func TestSetGOMAXPROCS(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	logger, err := conf.NewLogger(t.Output(), "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	sc := &Sidecar{log: logger.WithField("component", "handover")}
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set in the environment: 0 means it")
	}
	for _, tt := range []struct{ set, want int }{{1, 1}, {3, 3}, {0, def + 1}} {
		sc.setGOMAXPROCS(tt.set)
		if got := runtime.GOMAXPROCS(0); got != tt.want {
			t.Errorf("gomaxprocs = %d: GOMAXPROCS is %d, want %d", tt.set, got, tt.want)
		}
	}
}

// loadText loads text as the config file f.toml.
func loadText(t *testing.T, text string) (*Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return LoadConfig(path)
}

// wantErrors checks a load's error: none when want is nil, else one that
// contains each of want. It reports whether there was an error to look at
// further.
func wantErrors(t *testing.T, err error, want []string) bool {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err == nil {
		t.Fatal("want errors")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
	return true
}
