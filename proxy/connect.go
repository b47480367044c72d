package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// Why a client connection was closed without reaching a backend. Each maps
// to a reason label of handover_proxy_connections_failed_total.
var (
	errTimeout     = errors.New("no backend reached within the timeout")
	errAttempts    = errors.New("max reconnect attempts used up")
	errNoTarget    = errors.New("no target (no master now) and timeout is negative: refused at once")
	errUnreachable = errors.New("no target could be dialed and timeout is negative: refused at once")
	errShutdown    = errors.New("shutting down")
)

// failReason is the metric label for an error returned by connect.
func failReason(err error) string {
	switch {
	case errors.Is(err, errTimeout):
		return "timeout"
	case errors.Is(err, errAttempts):
		return "attempts"
	case errors.Is(err, errNoTarget):
		return "no_target"
	case errors.Is(err, errUnreachable):
		return "unreachable"
	default:
		return "shutdown"
	}
}

// connect finds a backend for a new client, the way ActiveMQ's failover
// transport finds a broker for its application: while there is no target it
// holds the client and waits for the Picker's answer to change; it dials the
// targets in preference order; after a round of failed dials it asks for a
// health re-check and pauses, the pause growing from InitialReconnectDelay
// by BackoffMultiplier up to MaxReconnectDelay. It gives up at end (zero:
// negative Timeout, so no waiting and a single round), after
// MaxReconnectAttempts rounds, or at shutdown.
//
// The client's socket is not read meanwhile: whatever it sends waits in the
// kernel and is proxied once a backend is reached, so a STOMP client's
// CONNECT frame survives the wait. The flip side: a client that gives up
// and closes while held is not noticed (its FIN looks like a half-close)
// until a backend is reached, when its pair ends at once, or Timeout.
// Keep Timeout near the clients' own connect timeout.
func (s *Service) connect(log *connLog, end time.Time) (*net.TCPConn, string, error) {
	// The timer for end is made the first time there is something to wait
	// for: most connections dial their first target at once.
	var deadline <-chan time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	armDeadline := func() {
		if timer == nil && !end.IsZero() {
			timer = time.NewTimer(time.Until(end))
			deadline = timer.C
		}
	}
	delay := s.opts.InitialReconnectDelay
	var lastErr error
	// giveUp wraps why with the last dial error, which is what an operator
	// needs to see ("connection refused" or "i/o timeout").
	giveUp := func(why error) error {
		if lastErr != nil && !errors.Is(why, errShutdown) {
			return fmt.Errorf("%w (last dial error: %v)", why, lastErr)
		}
		return why
	}
	for round := 1; ; round++ {
		targets, changed := s.picker.Targets()
		if len(targets) == 0 {
			if end.IsZero() {
				return nil, "", giveUp(errNoTarget)
			}
			if s.debugging() {
				log.get().Debug("no target: holding the connection until there is one")
			}
			armDeadline()
		}
		for len(targets) == 0 {
			select {
			case <-changed:
			case <-deadline:
				return nil, "", giveUp(errTimeout)
			case <-s.ctx.Done():
				return nil, "", errShutdown
			}
			targets, changed = s.picker.Targets()
		}

		for _, addr := range targets {
			c, err := s.dial(addr, end)
			if err == nil {
				return c, addr, nil
			}
			if s.ctx.Err() != nil {
				return nil, "", errShutdown
			}
			lastErr = err
			s.metrics.dialErrors.WithLabelValues(s.opts.Name, addr).Inc()
			if s.debugging() {
				log.get().WithField("backend", addr).WithError(err).Debug("dial failed")
			}
		}
		// Passive health: a refused or timed-out dial may be news the
		// periodic checks have not caught yet. The re-check changes the
		// answer (and closes changed) sooner than the next check would.
		s.picker.Recheck()

		if end.IsZero() {
			return nil, "", giveUp(errUnreachable)
		}
		if n := s.opts.MaxReconnectAttempts; n > 0 && round >= n {
			return nil, "", giveUp(errAttempts)
		}
		armDeadline()
		pause := time.NewTimer(delay)
		select {
		case <-pause.C:
		case <-changed:
			// A new answer (often the re-check's): try it now rather
			// than sleeping out a backoff meant for the old one.
			pause.Stop()
		case <-deadline:
			pause.Stop()
			return nil, "", giveUp(errTimeout)
		case <-s.ctx.Done():
			pause.Stop()
			return nil, "", errShutdown
		}
		delay = min(time.Duration(float64(delay)*s.opts.BackoffMultiplier), s.opts.MaxReconnectDelay)
	}
}

// dial makes one attempt at addr, bounded by DialTimeout, by end (unless
// zero) and by shutdown.
func (s *Service) dial(addr string, end time.Time) (*net.TCPConn, error) {
	limit := time.Now().Add(s.opts.DialTimeout)
	if !end.IsZero() && end.Before(limit) {
		limit = end
	}
	ctx, cancel := context.WithDeadline(s.ctx, limit)
	defer cancel()
	c, err := s.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}
