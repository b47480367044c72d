package conf

import (
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/hashicorp/go-sockaddr/template"
	"github.com/sirupsen/logrus"
)

// NewLogger returns a logrus logger writing to w at level ("debug", "info",
// "warn", "error") in format ("text" or "json"): one event per line, with
// fields, as both binaries log.
func NewLogger(w io.Writer, level, format string) (*logrus.Logger, error) {
	l := logrus.New()
	l.Out = w
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	l.SetLevel(lv)
	switch format {
	case "text", "":
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000Z07:00", DisableColors: true})
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: "2006-01-02T15:04:05.000Z07:00"})
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
	return l, nil
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
