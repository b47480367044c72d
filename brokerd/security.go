package brokerd

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"handover/brokerd/auth"
	"handover/frame"
)

// Authentication at CONNECT and authorization of each SEND and SUBSCRIBE
// (package auth holds the users file and the rules). Without users (a
// users file or table) every client is let in as auth.Anonymous, and
// brokerd says so in its log at start; with them, a client must log in
// unless allow_anonymous is set.

// UsersSource is where logins are checked: the users file (the default,
// from UsersFile) or the PostgreSQL users table (pgstore.UsersTable).
// Every broker reads it again every usersRefreshEvery, and a new master
// once more before it serves, so that a change applies to the next logins
// without a restart (which for a master would be a failover).
type UsersSource interface {
	// Users returns the users in force: nil while none could be read.
	// It must not wait on the source.
	Users() *auth.Users
	// Refresh reads the users again if they changed, within ctx. Its
	// error says why the users in force are not all of what the source
	// holds now (the last good ones stay, or the valid part of them); it
	// is returned at every call until that changes.
	Refresh(ctx context.Context) error
	// String names the source for logs, without secrets.
	String() string
}

// usersRefreshEvery is how often the users are looked at; a users file as
// often as the TLS certificate.
const usersRefreshEvery = time.Second

// usersRepeat is how soon after one reason another is logged: a
// database's errors may name a new local port each time it is tried.
const usersRepeat = 10 * time.Second

// usersState is refreshUsers's: one refresh at a time (turn: a channel, so
// that a new master's wait for a slave's refresh under way can give up),
// and what it last logged.
type usersState struct {
	turn     chan struct{}
	err      error        // the last refresh's
	level    logrus.Level // err's level when it was logged
	loggedAt time.Time
	// shown is err's text for /status and /metrics, which must not wait
	// for a refresh under way: "" when the users were read in full.
	shown atomic.Pointer[string]
}

// refreshUsers reads the users again and logs what changed: a new set of
// users (at Info), and why they could not all be read (at Error on a
// master, Warn on a slave): once while the reason stays the same, again
// when this broker became master since, and at most once a usersRepeat
// for reasons that differ only in their details.
func (s *Server) refreshUsers(ctx context.Context) error {
	select {
	case s.usersSt.turn <- struct{}{}:
	case <-ctx.Done():
		err := fmt.Errorf("users: a read already under way did not end in time: %w", ctx.Err())
		s.log.WithError(err).WithField("users", s.users.Users().Len()).Warn("users not read again: logins are checked against the users in force")
		return err
	}
	defer func() { <-s.usersSt.turn }()
	st := &s.usersSt
	before := s.users.Users()
	err := s.users.Refresh(ctx)
	after := s.users.Users()
	log := s.log.WithFields(logrus.Fields{"users_from": s.users.String(), "users": after.Len()})
	switch {
	case before == nil && after != nil:
		log.Info("users read")
	case after != before:
		log.Info("users read again: the next logins use them")
	}
	level := logrus.WarnLevel
	s.mu.Lock()
	if s.role == RoleMaster {
		level = logrus.ErrorLevel
	}
	s.mu.Unlock()
	last := st.err
	st.err = err
	shown := ""
	if err != nil {
		shown = err.Error()
	}
	st.shown.Store(&shown)
	switch {
	case err != nil && (last == nil || level < st.level || last.Error() != err.Error() && time.Since(st.loggedAt) >= usersRepeat):
		log.WithError(err).Log(level, "users could not all be read: logins are checked against the users in force")
		st.level, st.loggedAt = level, time.Now()
	case err == nil && last != nil:
		log.Info("users read in full again")
	}
	return err
}

// usersError is why the users in force are not all the source holds, as
// the last refresh found: "" if they are.
func (s *Server) usersError() string {
	if p := s.usersSt.shown.Load(); p != nil {
		return *p
	}
	return ""
}

// usersLoop refreshes the users every usersRefreshEvery until ctx ends.
func (s *Server) usersLoop(ctx context.Context) {
	t := time.NewTicker(usersRefreshEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, 5*usersRefreshEvery)
			s.refreshUsers(rctx)
			cancel()
		}
	}
}

// authenticate decides who the client of CONNECT frame f is. It returns
// false, having answered with an ERROR, for a failed login.
func (c *conn) authenticate(f *frame.Frame) (auth.Principal, bool) {
	s := c.s
	if p, ok := c.certPrincipal(); ok {
		return p, true
	}
	login, hasLogin := f.Get("login")
	if s.users == nil || !hasLogin && s.opts.AllowAnonymous {
		return auth.Anonymous, true
	}
	p, err := s.users.Users().Authenticate(login, f.Value("passcode"))
	if err == nil {
		return p, true
	}
	src := sourceOf(c.nc)
	delay := s.failures.fail(src, time.Now())
	s.metrics.authFailures.Inc()
	c.log.WithFields(logrus.Fields{"login": login, "source": src, "delay": delay.String()}).Warn("authentication failed")
	// Repeated failures from one address are answered ever more slowly,
	// so that guessing passwords is slow; the wait holds only this
	// connection's goroutine.
	select {
	case <-time.After(delay):
	case <-s.stopping:
	}
	e := frame.New(frame.ERROR, "message", auth.ErrFailed.Error(), "content-type", "text/plain")
	c.send(outFrame{f: e, closeAfter: true, reason: "authentication"})
	return auth.Principal{}, false
}

// authorize says why the client may not do op on dest, or "".
func (c *conn) authorize(op auth.Op, dest string) string {
	if c.s.opts.Authorization.Allowed(c.principal, dest, op) {
		return ""
	}
	c.s.metrics.denials.WithLabelValues(string(op)).Inc()
	c.log.WithFields(logrus.Fields{"user": c.principal.User, "op": op, "destination": dest}).Warn("not authorized")
	return fmt.Sprintf("user %q is not authorized to %s %s", c.principal.User, op, dest)
}

// failures counts recent failed logins per source address.
type failures struct {
	mu sync.Mutex
	by map[string]failure
}

type failure struct {
	n    int
	last time.Time
}

// failForget is how long a source's failures are remembered.
const failForget = time.Minute

// fail records a failure from src at now and returns how long to wait
// before answering it: nothing for the first, then doubling from 100 ms
// up to 5 s.
func (f *failures) fail(src string, now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.by == nil {
		f.by = map[string]failure{}
	}
	if len(f.by) > 10000 { // bounded: forget the stale ones
		for k, v := range f.by {
			if now.Sub(v.last) > failForget {
				delete(f.by, k)
			}
		}
	}
	r := f.by[src]
	if now.Sub(r.last) > failForget {
		r.n = 0
	}
	r.n++
	r.last = now
	f.by[src] = r
	if r.n == 1 {
		return 0
	}
	return min(100*time.Millisecond<<min(r.n-2, 6), 5*time.Second)
}
