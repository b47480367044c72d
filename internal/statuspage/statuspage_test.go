package statuspage

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestPage(t *testing.T) {
	p := New("broker <x>", `<p id=role>{{.Role}}</p><p>{{bytes .Size}}</p>`)
	srv := httptest.NewServer(p.Handler(func() any {
		return struct {
			Role string
			Size int64
		}{"<master>", 3 << 20}
	}, 2*time.Second))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	for _, want := range []string{`<title>broker &lt;x&gt;</title>`, `content="2"`, `<p id=role>&lt;master&gt;</p>`, `3.0 MiB`, `.master {`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if resp, err := http.Get(srv.URL + "/other"); err != nil || resp.StatusCode != 404 {
		t.Errorf("GET /other: %v %v, want 404", resp, err)
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
