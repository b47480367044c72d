package brokerd

import (
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"handover/brokerd/auth"
	"handover/frame"
)

// Authentication at CONNECT and authorization of each SEND and SUBSCRIBE
// (package auth holds the users file and the rules). Without a users file
// every client is let in as auth.Anonymous, and brokerd says so in its log
// at start; with one, a client must log in unless allow_anonymous is set.

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
