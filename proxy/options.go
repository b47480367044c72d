package proxy

import (
	"errors"
	"fmt"
	"time"

	"handover/internal/serve"
)

// OnFailover modes: what happens to live connections when the Picker's
// answer changes.
const (
	// OnFailoverClose closes, at once, every connection whose backend is no
	// longer among the targets, so its client reconnects (through us) to the
	// new master instead of talking to a broker that has stepped down.
	OnFailoverClose = "close"
	// OnFailoverKeep leaves live connections alone; only new connections
	// follow the new targets.
	OnFailoverKeep = "keep"
)

// DefaultMaxConnections and NoLimit are the values of MaxConnections
// (serve.Settings) that callers name: the sidecar's configuration checks
// use them.
const (
	DefaultMaxConnections = serve.DefaultMaxConnections
	NoLimit               = serve.NoLimit
)

// Options configure one proxied service: one listener and where its
// connections go. The zero value of every field but Name and Listen means
// the default given on the field; New applies them.
type Options struct {
	// Settings are what this package shares with stompproxy.Options: the
	// name, the listener and its connection caps, the reconnect fields
	// (ActiveMQ's failover transport's), KeepAlive, ShutdownGrace and TLS.
	// See serve.Settings for each. A service with TLS serves every
	// connection on goroutines: the event loops move bytes with raw
	// system calls and splice(2), which cannot encrypt.
	serve.Settings

	// IdleTimeout closes a proxied connection after this long with no bytes
	// in either direction; zero means never. Checking it costs nothing on
	// the data path (see meter.go).
	IdleTimeout time.Duration
	// OnFailover is OnFailoverClose (the default) or OnFailoverKeep.
	OnFailover string

	// goroutines serves every connection on goroutines (pair.go), even
	// where the event loops could (evloop_linux.go): tests cover that
	// path with it.
	goroutines bool
}

// Validate reports every problem with o at once. Zero values are valid:
// they mean the defaults.
func (o Options) Validate() error {
	errs := []error{o.Settings.Validate()}
	if o.IdleTimeout < 0 {
		errs = append(errs, fmt.Errorf("idle_timeout: must not be negative, got %v", o.IdleTimeout))
	}
	switch o.OnFailover {
	case "", OnFailoverClose, OnFailoverKeep:
	default:
		errs = append(errs, fmt.Errorf("on_failover: want %q or %q, got %q", OnFailoverClose, OnFailoverKeep, o.OnFailover))
	}
	return errors.Join(errs...)
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	o.Settings = o.Settings.WithDefaults()
	if o.OnFailover == "" {
		o.OnFailover = OnFailoverClose
	}
	return o
}
