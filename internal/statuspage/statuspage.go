// Package statuspage is what the status pages of brokerd and handover have
// in common: a page for people at GET / on the admin port, rendered on the
// server from html/template (so it reads without JavaScript, and
// refreshes itself), with its style sheet embedded in the binary.
package statuspage

import (
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"time"
)

//go:embed style.css
var style string

// layout wraps a page's "body" template.
const layout = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{{.Refresh}}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title><style>{{.Style}}</style></head>
<body><header><h1>{{.Title}}</h1><p class="when">{{.Now}} &middot; refreshes every {{.Refresh}} s &middot; <a href="/status">JSON</a> &middot; <a href="/metrics">metrics</a></p></header>
{{template "body" .Data}}
</body></html>`

// Page is one status page: a title and the template of its body, which is
// executed with the value Handler's data function returns.
type Page struct {
	tmpl  *template.Template
	title string
}

// Funcs are the helpers page bodies may use besides html/template's.
var Funcs = template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
	"bytes": Bytes,
	"rate":  func(f float64) string { return fmt.Sprintf("%.1f/s", f) },
}

// Bytes writes n bytes for people: 512 B, 3.2 MiB.
func Bytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f, u := float64(n), "B"
	for _, next := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if f < 1024 {
			break
		}
		f, u = f/1024, next
	}
	return fmt.Sprintf("%.1f %s", f, u)
}

// New parses body (which defines nothing: it is the "body" template) into a
// page.
func New(title, body string) *Page {
	t := template.Must(template.New("page").Funcs(Funcs).Parse(layout))
	template.Must(t.New("body").Parse(body))
	return &Page{tmpl: t, title: title}
}

// Handler serves the page with what data returns, refreshing every refresh.
func (p *Page) Handler(data func() any, refresh time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		err := p.tmpl.Execute(w, struct {
			Title   string
			Refresh int
			Style   template.CSS
			Now     string
			Data    any
		}{p.title, max(1, int(refresh.Seconds())), template.CSS(style), time.Now().Format("2006-01-02 15:04:05 MST"), data()})
		if err != nil {
			// Headers are gone: all that is left is to say so in the page.
			w.Write([]byte("<p class=error>rendering failed: " + template.HTMLEscapeString(err.Error()) + "</p>"))
		}
	})
}
