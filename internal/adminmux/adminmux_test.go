package adminmux

import (
	"bufio"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestNew(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "adminmux_test_total", Help: "a test counter"})
	reg.MustRegister(c)
	c.Add(3)
	for _, pprofOn := range []bool{false, true} {
		srv := httptest.NewServer(New(func() any { return map[string]int{"epoch": 7} }, reg, Options{Pprof: pprofOn}))
		for _, tt := range []struct {
			path, want, contentType string
			pprof                   bool // served only with Options.Pprof
		}{
			{"/status", "\"epoch\": 7", "application/json", false},
			{"/healthz", "ok\n", "", false},
			{"/metrics", "adminmux_test_total 3", "", false},
			{"/debug/pprof/", "goroutine", "", true},
			{"/debug/pprof/goroutine?debug=1", "goroutine profile", "", true},
			{"/debug/pprof/profile?seconds=1", "", "", true},
		} {
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if tt.pprof && !pprofOn {
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("GET %s without Pprof: %d, want 404", tt.path, resp.StatusCode)
				}
				continue
			}
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), tt.want) || len(body) == 0 {
				t.Errorf("GET %s: %d, %d bytes; want 200 containing %q", tt.path, resp.StatusCode, len(body), tt.want)
			}
			if ct := resp.Header.Get("Content-Type"); tt.contentType != "" && ct != tt.contentType {
				t.Errorf("GET %s: Content-Type %q, want %q", tt.path, ct, tt.contentType)
			}
		}
		// The command line may hold a -store URL with a password.
		if code, body := get(t, srv.URL+"/debug/pprof/cmdline"); code != http.StatusNotFound || strings.Contains(body, "adminmux.test") {
			t.Errorf("GET /debug/pprof/cmdline (pprof %v): %d %q; want 404 without the command line", pprofOn, code, body)
		}
		if resp, err := http.Post(srv.URL+"/status", "text/plain", nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /status: %v, %v; want 405", resp, err)
		}
		srv.Close()
	}
}

// TestMetricsSurviveBadLabel: a label value that is not valid UTF-8 (a
// client-chosen destination name, say) costs that one series, never the
// whole /metrics page.
func TestMetricsSurviveBadLabel(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(byName{prometheus.NewDesc("adminmux_test_by_name_total", "by name", []string{"name"}, nil)})
	srv := httptest.NewServer(New(func() any { return nil }, reg, Options{}))
	defer srv.Close()
	code, body := get(t, srv.URL+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, `adminmux_test_by_name_total{name="good"} 1`) {
		t.Errorf("GET /metrics: %d\n%s\nwant 200 with the good series", code, body)
	}
}

func TestGuard(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("reloaded\n")) })
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{}\n")) })
	srv := httptest.NewServer(Guard(mux))
	defer srv.Close()
	for _, tt := range []struct {
		name, method, path, host, origin string
		want                             int
	}{
		{"curl by IP", "POST", "/reload", "", "", 200},
		{"localhost", "POST", "/reload", "localhost:9000", "", 200},
		{"IPv6 literal", "POST", "/reload", "[::1]:9000", "", 200},
		{"same origin", "POST", "/reload", "", "self", 200},
		{"foreign origin", "POST", "/reload", "", "http://evil.example", 403},
		{"null origin", "POST", "/reload", "", "null", 403},
		{"rebinding host", "POST", "/reload", "evil.example:9000", "", 403},
		{"read by name", "GET", "/status", "broker1.internal:9000", "", 200},
		{"read cross-origin", "GET", "/status", "", "http://evil.example", 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			if tt.host != "" {
				req.Host = tt.host
			}
			switch tt.origin {
			case "":
			case "self":
				req.Header.Set("Origin", srv.URL)
			default:
				req.Header.Set("Origin", tt.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s %s Host %q Origin %q: %d, want %d", tt.method, tt.path, tt.host, tt.origin, resp.StatusCode, tt.want)
			}
		})
	}
}

// byName collects one good series and one whose label is not UTF-8, as a
// collector of per-destination figures would if nothing checked names.
type byName struct{ desc *prometheus.Desc }

func (c byName) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c byName) Collect(ch chan<- prometheus.Metric) {
	for _, name := range []string{"good", "bad\xff"} {
		m, err := prometheus.NewConstMetric(c.desc, prometheus.CounterValue, 1, name)
		if err != nil {
			m = prometheus.NewInvalidMetric(c.desc, err)
		}
		ch <- m
	}
}

func TestRequireToken(t *testing.T) {
	mux := http.NewServeMux()
	for _, p := range []string{"/status", "/healthz", "/readyz", "/watch"} {
		mux.HandleFunc("GET "+p, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	}
	srv := httptest.NewServer(RequireToken(mux, "s3cret"))
	defer srv.Close()
	for _, tt := range []struct {
		path, auth string
		want       int
	}{
		{"/status", "", 401},
		{"/status", "Bearer wrong", 401},
		{"/status", "Bearer s3cret", 200},
		{"/healthz", "", 200},
		{"/readyz", "", 200},
		{"/watch", "", 200},
	} {
		req, _ := http.NewRequest("GET", srv.URL+tt.path, nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET %s with %q: %d, want %d", tt.path, tt.auth, resp.StatusCode, tt.want)
		}
	}
	for addr, want := range map[string]bool{"127.0.0.1:8161": true, "[::1]:1": true, "localhost:1": true, "0.0.0.0:8161": false, ":8161": false, "10.0.0.1:1": false} {
		if IsLoopback(addr) != want {
			t.Errorf("IsLoopback(%q) = %v", addr, !want)
		}
	}
}

func TestParseCommand(t *testing.T) {
	for _, tt := range []struct {
		args  []string
		words string
		n     int
	}{
		{[]string{"-n", "5", "browse", "/queue/x"}, "browse /queue/x", 5},
		{[]string{"browse", "/queue/x", "-n", "5"}, "browse /queue/x", 5},
		{[]string{"browse", "-n", "5", "/queue/x"}, "browse /queue/x", 5},
		{[]string{"status"}, "status", 10},
		{nil, "", 10},
	} {
		fs := flag.NewFlagSet("ctl", flag.ContinueOnError)
		n := fs.Int("n", 10, "")
		words, err := ParseCommand(fs, tt.args)
		if err != nil || strings.Join(words, " ") != tt.words || *n != tt.n {
			t.Errorf("ParseCommand(%q) = %q, -n %d, %v; want %q, -n %d", tt.args, words, *n, err, tt.words, tt.n)
		}
	}
}

// TestClientSendsToken: the tools' client gets past RequireToken with the
// token from its file, and not without it.
func TestClientSendsToken(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	srv := httptest.NewServer(RequireToken(mux, "s3cret"))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte("s3cret\n"), 0o600)
	for _, tt := range []struct {
		file string
		want int
	}{{file, 200}, {"", 401}} {
		c, err := Client(tt.file, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Get(srv.URL + "/status")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("token file %q: %d, want %d", tt.file, resp.StatusCode, tt.want)
		}
	}
	if _, err := Client(filepath.Join(t.TempDir(), "missing"), time.Second); err == nil {
		t.Error("a missing token file was accepted")
	}
}

// TestServerClosesIdle: a keep-alive connection left idle after its
// request is closed by the server after idleTimeout, and a request head
// sent too slowly after headerTimeout, instead of each holding a goroutine
// for as long as the client likes.
func TestServerClosesIdle(t *testing.T) {
	defer func(h, i time.Duration) { headerTimeout, idleTimeout = h, i }(headerTimeout, idleTimeout)
	headerTimeout, idleTimeout = 300*time.Millisecond, 300*time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := Server(New(func() any { return "up" }, prometheus.NewRegistry(), Options{}))
	go srv.Serve(ln)
	defer srv.Close()

	for _, tt := range []struct {
		name, send string
		answered   bool
	}{
		{"idle keep-alive", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"slow request head", "GET /healthz HTTP/1.1\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tt.send); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			if tt.answered {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.Close {
					t.Fatalf("status %d, close %v: want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
				}
			}
			// The server closes the connection: EOF, or a 408 for the slow head.
			rest, err := io.ReadAll(br)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection still open 10 s on (read %q)", rest)
			}
		})
	}
}
