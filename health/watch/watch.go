package watch

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"
)

// Defaults of Options' zero fields.
const (
	// DefaultHeartbeatTimeout is two of brokerd's heartbeats (it beats
	// every 3 s) and a second: a beat late by a whole interval (a busy
	// machine, a long pause) is not a stall, two missed in a row are.
	DefaultHeartbeatTimeout = 7 * time.Second
	// DefaultRetryMin is the first delay before reconnecting.
	DefaultRetryMin = 100 * time.Millisecond
	// DefaultRetryMax caps the delay between reconnections, which doubles
	// from RetryMin while they fail.
	DefaultRetryMax = 5 * time.Second
	// DefaultNoWatchRetry is how long Follow waits before asking again a
	// backend that offers no watch: long enough that a fleet polling an
	// ActiveMQ pair does not also knock on it for nothing, short enough
	// that a broker upgraded in place is watched soon.
	DefaultNoWatchRetry = time.Minute
)

// maxHeaderBytes bounds the response head (status line and headers):
// brokerd's is under 200 bytes, and a server that sends headers without end
// must not make us buffer them.
const maxHeaderBytes = 16 << 10

// Errors in Update.Err, wrapped with details: test with errors.Is.
var (
	// ErrNoWatch says the backend offers no watch: it answered 404, 405
	// or 501, or with something other than an event stream. Follow asks
	// again only after Options.NoWatchRetry; the caller polls meanwhile.
	ErrNoWatch = errors.New("the backend offers no watch")
	// ErrBusy says the backend offers a watch but has no room for another
	// watcher now: it answered 503 with a Handover-Watch-Full header
	// (brokerd over max_watchers or max_watchers_per_source, named in
	// the header and the error). Follow asks again after
	// Options.NoWatchRetry, as for ErrNoWatch, so that a full broker is not
	// asked again and again by a whole fleet; the caller polls meanwhile.
	// A 503 without the header (a proxy's passing outage) is retried like
	// any other failure.
	ErrBusy = errors.New("the backend's watch is full")
	// ErrStalled says the backend sent nothing for Options.HeartbeatTimeout
	// on an open connection (no heartbeat, no event; or no answer to the
	// request): a process that is frozen (SIGSTOP), hung, or behind a
	// network that drops packets without resetting connections.
	ErrStalled = errors.New("the watch stalled: no heartbeat")
	// ErrClosed says the backend ended the stream: it is stopping, or
	// the process died and the kernel closed its sockets.
	ErrClosed = errors.New("the watch was closed")
	// ErrBadEvent is a state event whose data is not the JSON object
	// expected. The stream is dropped: its sender cannot be trusted.
	ErrBadEvent = errors.New("bad watch event")
)

// Event is one state a backend pushed: brokerd's WatchState.
type Event struct {
	// Role is "master", "slave" or "stopped".
	Role string
	// Epoch is the master epoch: the one of the lock it holds (master),
	// or last held (stopped); 0 for a slave that never held it.
	Epoch uint64
	// Serving says the STOMP port is open and accepting clients.
	Serving bool
	// Stopping says the backend is about to stop serving (SIGTERM, a lost
	// lease): its port closes next, so no new client should be sent to it.
	Stopping bool
	// StandbyReady says a slave could take over now.
	StandbyReady bool
	// Listen is the STOMP address it serves on, while it serves.
	Listen string
	// At is when the event was read.
	At time.Time
}

// Update is what Follow reports: an Event, a heartbeat (Beat), or (Err
// set) the loss of the watch.
type Update struct {
	// Event is the state pushed, when Err is nil.
	Event Event
	// Err, when set, says why the backend is not watched now: the stream
	// could not be opened or was lost. It wraps ErrNoWatch, ErrBusy, ErrStalled,
	// ErrClosed, ErrBadEvent, ErrLineTooLong or ErrDataTooLarge, or is
	// the network's error (a refused connection, for one). Until the next
	// Event the backend's state is unknown: the caller checks it the
	// other way.
	Err error
	// RetryIn is, with Err, how long Follow waits before trying again.
	RetryIn time.Duration
	// Beat marks a heartbeat (Event and Err are zero): the backend spoke,
	// and nothing changed.
	Beat bool
}

// Options are what Follow needs to follow one backend's watch.
type Options struct {
	// URL is the watch's address, for example
	// "http://10.0.0.5:8161/watch" (brokerd's admin port). An "https" URL
	// is followed over TLS. The connection is made directly: an
	// HTTP_PROXY meant for the application must not sit between a sidecar
	// and its neighbours, and a proxy would hide a stall behind its own
	// buffering.
	URL string
	// TLS configures "https" URLs; nil means the system's roots and the
	// URL's host as the server name (also used when TLS.ServerName is "").
	// The certificate is always verified: InsecureSkipVerify is refused.
	// "http" URLs ignore it.
	TLS *tls.Config
	// Header is sent with every request, for example an Authorization
	// bearer for a server that wants one (brokerd's /watch does not, as
	// its /readyz does not).
	Header http.Header
	// HeartbeatTimeout is how long the stream may be silent (no event, no
	// heartbeat) before it is taken as stalled: the bound on detecting a
	// frozen backend. It also bounds connecting and the response's head.
	// Zero means DefaultHeartbeatTimeout; it must be longer than the
	// server's heartbeat interval (brokerd's is 3 s), or every stream is
	// taken as stalled between two beats.
	HeartbeatTimeout time.Duration
	// RetryMin and RetryMax bound the delay before reconnecting after a
	// loss (zero: DefaultRetryMin, DefaultRetryMax). It starts at RetryMin
	// after a stream that delivered an event, doubles while attempts fail,
	// and is drawn at random from its upper half, so that a fleet of
	// sidecars that lost the same broker does not reconnect in step.
	RetryMin, RetryMax time.Duration
	// NoWatchRetry is the delay after ErrNoWatch or ErrBusy (zero:
	// DefaultNoWatchRetry).
	NoWatchRetry time.Duration
	// Limits bound each stream's lines and events (zero fields:
	// DefaultLimits).
	Limits Limits
}

// Follow follows the watch at o.URL until ctx is done, then returns
// ctx.Err(); it returns another error only at once, for options it cannot
// use. It reports every state event and every loss to report, from the
// calling goroutine, one at a time and in order: report should return
// quickly, since the stream is not read while it runs (the heartbeat bound
// is not counting then either).
//
// Follow reconnects by itself, after Update.RetryIn: the caller runs one
// Follow per backend and needs no loop of its own. A backend is watched from
// the first Event after a connection until the next Update with Err set,
// which always comes within HeartbeatTimeout of the backend falling silent,
// and at once when it closes the stream. While it is not watched the caller
// polls it; repeated losses (a dead backend refusing each reconnection, one
// without a watch) are reported once per attempt.
//
// The first event on every connection is the backend's current state, so a
// state may be reported twice across a reconnection; events on one
// connection are changes, in order, though a state that lasted only a
// moment may be skipped (brokerd sends the newest state to a watcher it
// had not reached yet). Only "state" events are read; other event types
// are skipped, so that a newer server may add them.
func Follow(ctx context.Context, o Options, report func(Update)) error {
	f, err := newFollower(o)
	if err != nil {
		return err
	}
	delay := time.Duration(0)
	for {
		got, err := f.stream(ctx, report)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case errors.Is(err, ErrNoWatch), errors.Is(err, ErrBusy):
			delay = f.o.NoWatchRetry
		case got || delay == 0:
			delay = f.o.RetryMin
		default:
			delay = min(2*delay, f.o.RetryMax)
		}
		wait := delay/2 + rand.N(delay/2+1)
		report(Update{Err: err, RetryIn: wait})
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// follower is Follow's validated options.
type follower struct {
	o    Options
	url  *url.URL
	addr string      // host:port to dial
	tls  *tls.Config // nil for http
}

func newFollower(o Options) (*follower, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	f := &follower{url: u}
	port := "80"
	switch u.Scheme {
	case "http":
	case "https":
		port = "443"
		if o.TLS != nil && o.TLS.InsecureSkipVerify {
			return nil, errors.New("watch: the backend's certificate is always verified (InsecureSkipVerify is refused)")
		}
		f.tls = &tls.Config{}
		if o.TLS != nil {
			f.tls = o.TLS.Clone()
		}
		if f.tls.ServerName == "" {
			f.tls.ServerName = u.Hostname()
		}
		// The stream is HTTP/1.1: an HTTP/2 server must not pick h2.
		f.tls.NextProtos = []string{"http/1.1"}
	default:
		return nil, fmt.Errorf("watch: URL %q: want an http or https URL", o.URL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("watch: URL %q has no host", o.URL)
	}
	f.addr = u.Host
	if u.Port() == "" {
		f.addr = net.JoinHostPort(u.Hostname(), port)
	}
	if o.HeartbeatTimeout <= 0 {
		o.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if o.RetryMin <= 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RetryMax <= 0 {
		o.RetryMax = DefaultRetryMax
	}
	o.RetryMax = max(o.RetryMax, o.RetryMin)
	if o.NoWatchRetry <= 0 {
		o.NoWatchRetry = DefaultNoWatchRetry
	}
	o.Limits = o.Limits.withDefaults()
	f.o = o
	return f, nil
}

// stream opens one connection and reads it until it is lost, reporting
// its events. It says whether any event came, and why it ended.
//
// It speaks HTTP/1.1 on a connection of its own instead of through an
// http.Client: the connection's read deadline, pushed forward before each
// block is read, is then the heartbeat bound itself (one runtime timer per
// stream, nothing running between beats), and it bounds the dial, the TLS
// handshake and the response's head the same way.
func (f *follower) stream(ctx context.Context, report func(Update)) (got bool, err error) {
	bound := f.o.HeartbeatTimeout
	dctx, cancel := context.WithTimeout(ctx, bound)
	nc, err := (&net.Dialer{}).DialContext(dctx, "tcp", f.addr)
	cancel()
	if err != nil {
		if dctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return false, fmt.Errorf("%w: connecting to %s took over %v", ErrStalled, f.addr, bound)
		}
		return false, err
	}
	raw := nc
	defer raw.Close()
	// Closing the connection is what wakes a read blocked on it.
	defer context.AfterFunc(ctx, func() { raw.Close() })()
	raw.SetDeadline(time.Now().Add(bound))
	if f.tls != nil {
		tc := tls.Client(raw, f.tls)
		if err := tc.Handshake(); err != nil {
			return false, f.lost(fmt.Errorf("TLS handshake with %s (server name %q): %w", f.addr, f.tls.ServerName, err))
		}
		nc = tc
	}
	req := &http.Request{
		Method: http.MethodGet, URL: f.url, Host: f.url.Host,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: f.o.Header.Clone(),
	}
	if req.Header == nil {
		req.Header = http.Header{}
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	req.Header.Set("User-Agent", "handover-watch")
	if err := req.Write(nc); err != nil {
		return false, f.lost(err)
	}
	lr := &limitReader{r: nc, n: maxHeaderBytes}
	resp, err := http.ReadResponse(bufio.NewReader(lr), req)
	if err != nil {
		if lr.n <= 0 {
			err = fmt.Errorf("response head over %d bytes", maxHeaderBytes)
		}
		return false, f.lost(err)
	}
	// resp.Body is not closed: its Close reads the rest of the body, to
	// reuse the connection, which a stream never has. Closing the
	// connection (deferred above) is what ends it.
	if err := checkResponse(resp); err != nil {
		return false, err
	}
	// The head was bounded; the body is bounded by the Reader's limits.
	lr.n = -1
	// Nothing more is written but what TLS itself may need to send (a
	// TLS 1.3 key update), which must not fail on the request's deadline.
	raw.SetWriteDeadline(time.Time{})
	r := NewReader(resp.Body, f.o.Limits)
	for {
		raw.SetReadDeadline(time.Now().Add(bound))
		m, err := r.Next()
		if err != nil {
			return got, f.lost(err)
		}
		if m.Event == "" {
			report(Update{Beat: true})
			continue
		}
		if m.Event != "state" {
			continue // a type this client does not know
		}
		ev, err := decode(m.Data)
		if err != nil {
			return got, err
		}
		got = true
		report(Update{Event: ev})
	}
}

// lost wraps a read or write error in the sentinel saying what it means
// for the watch.
func (f *follower) lost(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: nothing from %s for %v", ErrStalled, f.addr, f.o.HeartbeatTimeout)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w by %s", ErrClosed, f.addr)
	}
	return err
}

// checkResponse accepts a 200 event stream; a response that says there is
// no watch here wraps ErrNoWatch, and brokerd's 503 over its cap ErrBusy.
func checkResponse(resp *http.Response) error {
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
	case code == http.StatusNotFound || code == http.StatusMethodNotAllowed || code == http.StatusNotImplemented:
		return fmt.Errorf("%w: GET %s: %s", ErrNoWatch, resp.Request.URL.Path, resp.Status)
	case code == http.StatusServiceUnavailable && resp.Header.Get("Handover-Watch-Full") != "":
		return fmt.Errorf("%w: GET %s: %s (%s)", ErrBusy, resp.Request.URL.Path, resp.Status, resp.Header.Get("Handover-Watch-Full"))
	default:
		return fmt.Errorf("watch: GET %s: %s", resp.Request.URL.Path, resp.Status)
	}
	ct, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || ct != "text/event-stream" {
		return fmt.Errorf("%w: GET %s: content type %q, not an event stream", ErrNoWatch, resp.Request.URL.Path, resp.Header.Get("Content-Type"))
	}
	return nil
}

// state is brokerd's WatchState as it is encoded. Unknown fields are
// ignored, so that a newer broker may add some.
type state struct {
	Role         string `json:"role"`
	Epoch        uint64 `json:"epoch"`
	Serving      bool   `json:"serving"`
	Stopping     bool   `json:"stopping"`
	StandbyReady bool   `json:"standby_ready"`
	Listen       string `json:"listen"`
}

func decode(data []byte) (Event, error) {
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	if st.Role == "" {
		return Event{}, fmt.Errorf("%w: no role", ErrBadEvent)
	}
	return Event{Role: st.Role, Epoch: st.Epoch, Serving: st.Serving, Stopping: st.Stopping,
		StandbyReady: st.StandbyReady, Listen: st.Listen, At: time.Now()}, nil
}

// limitReader reads at most n bytes from r while n >= 0, then reports
// EOF; n < 0 lifts the limit.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(p)
	}
	if l.n == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), l.n)]
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
