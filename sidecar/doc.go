// Package sidecar is the handover sidecar behind cmd/handover: its
// configuration file (Config, LoadConfig), the running process (Sidecar:
// per [[service]] a pool of backends with its health monitor and DNS
// discovery, and a data path from proxy or stompproxy), reloads, the admin
// HTTP API with its status page and runtime control, and `handover ctl`.
//
// The data path of one client connection is in proxy (protocol "tcp") or
// stompproxy (protocol "stomp"); this package decides which listener serves
// which backends and changes that while clients are connected.
package sidecar

// Version is the sidecar's version, reported by -version, /status and the
// handover_build_info metric.
var Version = "0.1.0"
