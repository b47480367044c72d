package conf

import (
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/go-sockaddr/template"
	"github.com/sirupsen/logrus"
)

// NewLogger returns a logrus logger writing to w at level ("debug", "info",
// "warn", "error") in format ("text" or "json"): one event per line, with
// fields, as both binaries log.
func NewLogger(w io.Writer, level, format string) (*logrus.Logger, error) {
	l := logrus.New()
	l.Out = w
	if err := SetLogging(l, level, format); err != nil {
		return nil, err
	}
	return l, nil
}

// SetLogging changes a logger's level and format, as a reload does: every
// entry derived from l follows at once. On an error l is unchanged.
func SetLogging(l *logrus.Logger, level, format string) error {
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	var f logrus.Formatter
	switch format {
	case "text", "":
		f = &logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000Z07:00", DisableColors: true}
	case "json":
		f = &logrus.JSONFormatter{TimestampFormat: "2006-01-02T15:04:05.000Z07:00"}
	default:
		return fmt.Errorf("log format %q: want text or json", format)
	}
	l.SetFormatter(durationFormatter{f})
	l.SetLevel(lv)
	return nil
}

// durationFormatter writes every time.Duration field as a Go duration
// string ("1.5s", "250ms") in both formats. logrus' JSON formatter would
// write integer nanoseconds and the text one a string, so one field
// (without_master, waited, took) changed form with the format, and a
// reader of JSON logs had to know which fields were nanoseconds.
type durationFormatter struct{ logrus.Formatter }

func (f durationFormatter) Format(e *logrus.Entry) ([]byte, error) {
	// e.Data is the entry's own copy (logrus clones it per event).
	for k, v := range e.Data {
		if d, ok := v.(time.Duration); ok {
			e.Data[k] = d.String()
		}
	}
	return f.Formatter.Format(e)
}

// ResolveAddr renders a go-sockaddr template in a listen address, such as
// "{{ GetPrivateIP }}:61613", so one config file serves every host. Plain
// addresses pass through unchanged. When the template is the host part,
// the port is joined with net.JoinHostPort, so an IPv6 result is bracketed
// ("[fd00::2]:61613") rather than made ambiguous.
func ResolveAddr(addr string) (string, error) {
	if !strings.Contains(addr, "{{") {
		return addr, nil
	}
	tmpl, port := addr, ""
	if i := strings.LastIndex(addr, "}}"); i >= 0 {
		if rest := addr[i+2:]; strings.HasPrefix(rest, ":") {
			tmpl, port = addr[:i+2], rest[1:]
		}
	}
	out, err := template.Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("address template %q: %w", addr, err)
	}
	host := strings.TrimSpace(out)
	if host == "" {
		return "", fmt.Errorf("address template %q matched no address", addr)
	}
	if port == "" {
		return host, nil
	}
	return net.JoinHostPort(host, port), nil
}
