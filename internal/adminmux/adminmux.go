// Package adminmux is what the admin servers of brokerd and handover have in
// common: GET /status (a JSON document), GET /healthz, GET /metrics
// (Prometheus) and, when enabled, the Go runtime's profiles under
// /debug/pprof/. Each binary adds its own routes (brokerd's /readyz, the
// sidecar's POST /reload) to the mux New returns, and serves it through
// Guard.
//
// The profiles are there as in nsqd and most Go daemons: an operator
// chasing CPU or latency in production runs `go tool pprof
// http://ADMIN/debug/pprof/profile` against the live process instead of
// reproducing the load elsewhere. They are off unless asked for: a profile
// shows the process's memory and code to whoever can reach the port. The
// command line profile is never served, because a -store URL on the command
// line may hold a password.
package adminmux

import (
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The admin servers' timeouts: a client that sends its request head
// slowly, or keeps a connection open without asking anything, would
// otherwise hold a goroutine and its buffers for as long as it likes
// (net/http keeps an idle connection forever when no timeout is set). A
// watch (brokerd's /watch) is taken over from net/http and not bound by
// them. Variables so that the tests can shorten them.
var (
	headerTimeout = 5 * time.Second
	idleTimeout   = 2 * time.Minute
)

// Server returns the http.Server of an admin port serving h.
func Server(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: headerTimeout, IdleTimeout: idleTimeout}
}

// Options says what New serves besides status, health and metrics.
type Options struct {
	// Pprof serves the runtime profiles under /debug/pprof/.
	Pprof bool
}

// New returns a mux serving status() as indented JSON at /status, "ok" at
// /healthz, metrics at /metrics and, if opts.Pprof, the profiles.
func New(status func() any, metrics prometheus.Gatherer, opts Options) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	// A metric that cannot be gathered (a bad label value, say) is left
	// out and logged by the registry's owner, never a 500 for the rest.
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	if opts.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index) // also serves heap, goroutine, block, ...
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("GET /debug/pprof/cmdline", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "not served: the command line may hold credentials", http.StatusNotFound)
		})
	}
	return mux
}

// Guard refuses state-changing requests (any method but GET and HEAD) that
// a web page could have made on an operator's behalf: those whose Host is
// not an IP address or localhost (DNS rebinding: a hostile name that
// resolves to the admin address) and those whose Origin is not their own
// Host (a cross-site form or fetch). curl sends no Origin; reads stay open
// to any Host, so that Prometheus and people can use the machine's name.
func Guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if !localHost(r.Host) {
				http.Error(w, "forbidden: address the admin port by IP address or localhost to change anything", http.StatusForbidden)
				return
			}
			if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
				http.Error(w, "forbidden: cross-origin request", http.StatusForbidden)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// RequireToken serves h only to requests that carry token as a bearer
// token (Authorization: Bearer TOKEN), except the health checks (/healthz,
// /readyz) that load balancers and sidecars make and brokerd's /watch,
// which streams what /readyz answers (role, epoch, serving) to the
// sidecars that follow it; with an empty token it is h. The comparison
// takes the same time whatever the guess.
func RequireToken(h http.Handler, token string) http.Handler {
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && r.URL.Path != "/watch" &&
			subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="handover admin"`)
			http.Error(w, "unauthorized: this admin port needs Authorization: Bearer <token>", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// LoadToken reads a token file: its first line, trimmed. A missing or
// empty file is an error.
func LoadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if tok = strings.TrimSpace(tok); tok == "" {
		return "", fmt.Errorf("admin token: %s is empty", path)
	}
	return tok, nil
}

// Client is the HTTP client of the command-line tools (brokerd ctl,
// handover ctl): it sends the token in tokenFile, if one is named, as a
// bearer on every request.
func Client(tokenFile string, timeout time.Duration) (*http.Client, error) {
	c := &http.Client{Timeout: timeout}
	if tokenFile != "" {
		tok, err := LoadToken(tokenFile)
		if err != nil {
			return nil, err
		}
		c.Transport = bearer{tok}
	}
	return c, nil
}

// bearer adds the admin token to every request.
type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// ParseCommand parses args with fs where flags may come before, between or
// after the words of a command (brokerd ctl browse /queue/x -n 5), and
// returns the words.
func ParseCommand(fs *flag.FlagSet, args []string) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var words []string
	for rest := fs.Args(); len(rest) > 0; rest = fs.Args() {
		words = append(words, rest[0])
		if err := fs.Parse(rest[1:]); err != nil {
			return nil, err
		}
	}
	return words, nil
}

// IsLoopback reports whether a listen address binds only the loopback
// interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// localHost reports whether a Host header names an IP address or
// localhost, with or without a port.
func localHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	return net.ParseIP(host) != nil
}

func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && strings.EqualFold(u.Host, host)
}
