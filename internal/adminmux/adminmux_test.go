package adminmux

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNew(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "adminmux_test_total", Help: "a test counter"})
	reg.MustRegister(c)
	c.Add(3)
	srv := httptest.NewServer(New(func() any { return map[string]int{"epoch": 7} }, reg))
	defer srv.Close()
	for _, tt := range []struct {
		path, want, contentType string
	}{
		{"/status", "\"epoch\": 7", "application/json"},
		{"/healthz", "ok\n", ""},
		{"/metrics", "adminmux_test_total 3", ""},
		{"/debug/pprof/", "goroutine", ""},
		{"/debug/pprof/goroutine?debug=1", "goroutine profile", ""},
		{"/debug/pprof/cmdline", "adminmux.test", ""},
		{"/debug/pprof/profile?seconds=1", "", ""},
	} {
		resp, err := http.Get(srv.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), tt.want) || len(body) == 0 {
			t.Errorf("GET %s: %d, %d bytes; want 200 containing %q", tt.path, resp.StatusCode, len(body), tt.want)
		}
		if ct := resp.Header.Get("Content-Type"); tt.contentType != "" && ct != tt.contentType {
			t.Errorf("GET %s: Content-Type %q, want %q", tt.path, ct, tt.contentType)
		}
	}
	if resp, err := http.Post(srv.URL+"/status", "text/plain", nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /status: %v, %v; want 405", resp, err)
	}
}
