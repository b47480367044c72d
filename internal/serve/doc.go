// Package serve is what both of the sidecar's data paths stand on, proxy
// (protocol "tcp") and stompproxy (protocol "stomp"): the settings they
// share, a listener's life from bind to drained, the connection caps
// applied at accept, and finding a backend (hold, dial, back off, TLS).
// What a connection is and how its bytes move stays with each data path;
// this package knows neither bytes nor STOMP.
//
// It sits beneath them, not inside proxy, so that stompproxy uses the
// listener and the connector without proxy exporting their insides (a
// mutex, the admission counters) for it.
//
// Reading order: settings.go (Settings, shared by proxy.Options and
// stompproxy.Options), lifecycle.go (bind, accept, drain, shutdown),
// admit.go (the connection caps), connect.go (hold, dial, back off),
// tls.go (the TLS handshake with a backend), sockopt_linux.go (listener
// and dialer socket options, the check that a port is free).
package serve
