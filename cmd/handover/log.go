package main

import (
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"handover/internal/buildinfo"
	"handover/internal/conf"
)

// newLogger is the sidecar's logger, as the [log] table says.
func newLogger(w io.Writer, c LogConfig) (*logrus.Logger, error) {
	l, err := conf.NewLogger(w, c.Level, c.Format)
	if err != nil {
		return nil, err
	}
	l.SetFormatter(durationFormatter{l.Formatter})
	return l, nil
}

// applyLog changes a running logger's level and format, as a reload does:
// every entry derived from it follows at once.
func applyLog(l *logrus.Logger, c LogConfig) error {
	n, err := conf.NewLogger(io.Discard, c.Level, c.Format)
	if err != nil {
		return err
	}
	l.SetFormatter(durationFormatter{n.Formatter})
	l.SetLevel(n.Level)
	return nil
}

// durationFormatter writes every time.Duration field as a Go duration
// string ("1.5s", "250ms") in both formats. logrus' JSON formatter would
// write integer nanoseconds and the text one a string, so one field
// (without_master, waited, grace) changed form with the format, and a
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

// buildInfoGauge is handover_build_info{version,commit,go_version}, always
// 1: joined on, it labels any series with the build that produced it.
func buildInfoGauge() prometheus.Gauge {
	bi := buildinfo.Read()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "handover_build_info",
		Help:        "Always 1; its labels say which build runs: version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": Version, "commit": bi.Commit, "go_version": bi.GoVersion},
	})
	g.Set(1)
	return g
}
