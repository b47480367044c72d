// Package watch follows a backend's watch: the long-lived stream of
// server-sent events on which brokerd pushes its role, epoch, readiness and
// serving state at once and on every change, with a heartbeat between
// changes (brokerd's GET /watch on its admin port, issue 18). A sidecar that
// follows it learns of a promotion, a demotion or a coming stop when it
// happens instead of at its next poll, and the broker does nothing for it
// between changes but a shared heartbeat.
//
// Follow runs for one backend until its context ends: it connects, reports
// each state as an Event, and reports the loss of the stream (the broker
// closed it, it fell silent for longer than the heartbeat bound, the backend
// has no watch) as an Update with Err set, then reconnects after a
// randomized backoff. The caller (health's Monitor) runs one Follow per
// backend and treats a backend as watched from an Event until the next
// loss, polling it meanwhile: a backend that offers no watch (ActiveMQ,
// brokerd behind something else) says so with ErrNoWatch and is asked
// again only rarely.
//
// It does not import package health: health imports it.
//
// Reading order: watch.go (Follow, the connection and what its errors
// mean), then sse.go (the event stream parser, which knows nothing of
// networks).
package watch
