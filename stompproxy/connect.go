package stompproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sirupsen/logrus"
)

// Why a session could not reach a backend.
var (
	errTimeout     = errors.New("no backend reached within the timeout")
	errAttempts    = errors.New("max reconnect attempts used up")
	errNoTarget    = errors.New("no target (no master now) and timeout is negative: closed at once")
	errUnreachable = errors.New("no target could be reached and timeout is negative: closed at once")
	errShutdown    = errors.New("shutting down")
)

// connect finds a backend for a session, as proxy's data path does for a
// new client and ActiveMQ's failover transport for its application: while
// there is no target it waits for the Picker's answer to change; it dials
// the targets in preference order; after a round of failures it asks for a
// health re-check and pauses, growing the pause from InitialReconnectDelay
// by BackoffMultiplier up to MaxReconnectDelay. It gives up at end (zero:
// negative Timeout, so a single round and no waiting), after
// MaxReconnectAttempts rounds, or when ctx ends (the session closing, or
// shutdown).
//
// try is the whole attempt on one address: the dial and, for a STOMP
// session, the CONNECT handshake, so a broker that accepts and then fails
// counts as a failed round like a refused dial. A try error wrapping
// errFinal ends the search at once (a broker's ERROR reply to CONNECT is an
// answer, not an outage).
func (s *Service) connect(ctx context.Context, log *logrus.Entry, end time.Time,
	try func(nc *net.TCPConn, backend string) error) (string, error) {
	var deadline <-chan time.Time
	if !end.IsZero() {
		t := time.NewTimer(time.Until(end))
		defer t.Stop()
		deadline = t.C
	}
	delay := s.opts.InitialReconnectDelay
	var lastErr error
	giveUp := func(why error) error {
		if lastErr != nil && !errors.Is(why, errShutdown) {
			return fmt.Errorf("%w (last error: %v)", why, lastErr)
		}
		return why
	}
	for round := 1; ; round++ {
		targets, changed := s.picker.Targets()
		if len(targets) == 0 && end.IsZero() {
			return "", giveUp(errNoTarget)
		}
		for len(targets) == 0 {
			select {
			case <-changed:
			case <-deadline:
				return "", giveUp(errTimeout)
			case <-ctx.Done():
				return "", errShutdown
			}
			targets, changed = s.picker.Targets()
		}
		for _, addr := range targets {
			nc, err := s.dial(ctx, addr, end)
			if err == nil {
				err = try(nc, addr)
				if err == nil {
					return addr, nil
				}
				nc.Close()
				if errors.Is(err, errFinal) {
					return addr, err
				}
			}
			if ctx.Err() != nil {
				return "", errShutdown
			}
			lastErr = err
			s.metrics.dialErrors.WithLabelValues(s.opts.Name, addr).Inc()
			log.WithField("backend", addr).WithError(err).Debug("backend not reached")
		}
		// Passive health: the failure may be news the periodic checks
		// have not caught yet.
		s.picker.Recheck()
		if end.IsZero() {
			return "", giveUp(errUnreachable)
		}
		if n := s.opts.MaxReconnectAttempts; n > 0 && round >= n {
			return "", giveUp(errAttempts)
		}
		pause := time.NewTimer(delay)
		select {
		case <-pause.C:
		case <-changed:
			pause.Stop()
		case <-deadline:
			pause.Stop()
			return "", giveUp(errTimeout)
		case <-ctx.Done():
			pause.Stop()
			return "", errShutdown
		}
		delay = min(time.Duration(float64(delay)*s.opts.BackoffMultiplier), s.opts.MaxReconnectDelay)
	}
}

// errFinal marks a try error that ends the search for a backend.
var errFinal = errors.New("final")

// dial makes one attempt at addr, bounded by DialTimeout, by end (unless
// zero) and by ctx.
func (s *Service) dial(ctx context.Context, addr string, end time.Time) (*net.TCPConn, error) {
	limit := time.Now().Add(s.opts.DialTimeout)
	if !end.IsZero() && end.Before(limit) {
		limit = end
	}
	ctx, cancel := context.WithDeadline(ctx, limit)
	defer cancel()
	c, err := s.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}
