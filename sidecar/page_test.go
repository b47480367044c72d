package sidecar

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"handover/internal/testutil"
)

// getPage fetches the status page as a browser without JavaScript would.
func getPage(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET %s: %s %s\n%s", url, resp.Status, resp.Header.Get("Content-Type"), b)
	}
	return string(b)
}

// TestStatusPage: GET / on the admin port shows each service (listen
// address, protocol, mode, ready, its master and since when) and each
// backend with its state as the style sheet's class, epoch, last check,
// latency, error and connections, every value HTML-escaped: a service
// named with markup, and a check error quoting a backend's HTML, show as
// text.
func TestStatusPage(t *testing.T) {
	a, b := newEchoBackend(t, "127.0.0.1:0"), newEchoBackend(t, "127.0.0.1:0")
	aCheck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"role":"master","epoch":7}`)
	}))
	defer aCheck.Close()
	bCheck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `<script>alert("x")</script>`, http.StatusInternalServerError)
	}))
	defer bCheck.Close()
	name := `<b>svc</b>&"x"`
	h := startSidecar(t, fmt.Sprintf(`[admin]
listen = "127.0.0.1:0"
[[service]]
name = %q
listen = "127.0.0.1:0"
backends = [{ addr = %q, check_url = %q }, { addr = %q, check_url = %q }]
[service.check]
kind = "http"
interval = "100ms"
`, name, a.addr, aCheck.URL, b.addr, bCheck.URL))
	h.waitMaster(name, a.addr)
	c, err := net.Dial("tcp", h.listenOf(name))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	escaped := `&lt;b&gt;svc&lt;/b&gt;&amp;&#34;x&#34;`
	aRow := regexp.MustCompile(`<tr><td>` + regexp.QuoteMeta(a.addr) + `</td><td><span class="state master">master</span></td>` +
		`<td>[^<]* ago</td><td class=n>7</td><td>polling <span title="[^"]*offers no watch[^"]*">\(no watch\)</span></td><td>[^<]* ago</td><td class=n>[0-9.]+[µm]?s</td><td class=n>1</td><td></td></tr>`)
	var page string
	testutil.Eventually(t, 5*time.Second, func() error {
		page = getPage(t, h.adminURL()+"/")
		for _, want := range []string{
			`<h2>` + escaped + `</h2>`,
			`<span class="state master" id="ready-` + escaped + `">ready</span>`,
			`master <b id="master-` + escaped + `">` + a.addr + `</b> since`,
			`<dt>listen</dt><dd>` + h.listenOf(name) + `</dd>`,
			`<dt>protocol</dt><dd>tcp</dd>`,
			`<dt>mode</dt><dd>master</dd>`,
			`<dt>connections</dt><dd>1 open;`,
			`<td>` + b.addr + `</td><td><span class="state down">down</span></td>`,
			`<td>` + b.addr + `</td><td><span class="state down">down</span></td><td>start</td>`,
			`&lt;script&gt;alert(`,
			`<meta http-equiv="refresh" content="2">`,
		} {
			if !strings.Contains(page, want) {
				return fmt.Errorf("the page lacks %s:\n%s", want, page)
			}
		}
		if !aRow.MatchString(page) {
			return fmt.Errorf("the page lacks the master's row %s", aRow)
		}
		return nil
	})
	if strings.Contains(page, "<script>") || strings.Contains(page, "<b>svc") {
		t.Errorf("unescaped markup on the page:\n%s", page)
	}
	if t.Failed() {
		t.Log(page)
	}
}
