// Package promutil holds what the packages that export Prometheus series
// share.
package promutil

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c with reg and returns the collector to use: c, or the
// one already registered under the same description, so that building a
// package's metrics twice on one registry (two monitors, a reload) shares
// the series instead of failing. A nil reg registers nothing. Any other
// registration error is a programming error and panics, as MustRegister
// does.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}
