package health

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"handover/internal/passcode"
	"handover/stompclient"
)

// Backend is one server a service's clients can be sent to.
type Backend struct {
	// Addr is the host:port that client connections are sent to. It also
	// identifies the backend: SetBackends keeps the state of an unchanged
	// Addr.
	Addr string
	// CheckURL is, for checks of kind "http", the URL to GET, for example
	// "http://127.0.0.1:8161/readyz". Other kinds ignore it.
	CheckURL string
	// WatchURL is the backend's watch stream (brokerd's
	// "http://HOST:ADMINPORT/watch"). "" means the one on CheckURL's
	// origin, if there is a CheckURL: a backend that offers none there is
	// polled (see Config.Watch).
	WatchURL string
	// Priority breaks election ties: lower first. Zero is the default.
	Priority int
	// Weight is reserved for weighted balancing in ModeAny; zero is the
	// default and nothing reads it yet.
	Weight int
}

// Result is the outcome of one check.
type Result struct {
	// OK is true when the backend passed.
	OK bool
	// Epoch is the backend's master epoch when the check learned it (the
	// "http" kind reads it from the body), else 0, meaning unknown. A
	// higher epoch is a newer master: the election prefers it.
	Epoch uint64
	// Latency is how long the check took. Zero lets the Monitor measure it.
	Latency time.Duration
	// Err says why the check failed; nil when OK.
	Err error
	// Definitive marks a failure that proves the backend is not serving,
	// rather than one that may pass on the next try: the connection was
	// refused (nothing listens: the process died, or it is a slave whose
	// port stays closed) or a readiness URL answered 503. A master that
	// fails definitively is taken down at once instead of after Fall
	// checks: waiting Fall intervals to believe a closed port only delays
	// the failover. Timeouts and other errors are never definitive.
	Definitive bool
	// Standby marks a failed check whose backend answered, alive, that it
	// is not serving: a slave waiting to take over (brokerd's /readyz
	// answers 503 with "role":"slave"). The monitor shows such a backend as
	// StateStandby, not down, and does not count the check as a failure;
	// it is never elected. Only the "http" kind can tell: a slave's client
	// port is closed, so to "tcp" and "stomp" it is as down as a dead one.
	// A Standby result is also Definitive (the backend says it does not
	// serve) and has Err set to what it answered.
	Standby bool
	// CredentialsRefused marks a failed check whose backend answered,
	// alive, that it refuses the check's login, passcode or virtual host:
	// the "stomp" kind's CONNECT got an ERROR (brokerd's "authentication
	// failed", RabbitMQ's "Virtual host ... access denied"). Err wraps
	// ErrCredentialsRefused and carries the broker's message. It is never
	// Definitive (a broker that refuses us may serve its clients, and is
	// fixed by fixing the check, not by a failover) and never OK (the
	// check cannot prove it serves); the monitor counts it as a failed
	// check and says why (see Monitor).
	CredentialsRefused bool
	// Unanswered marks a failed "stomp" check whose connection (and TLS
	// handshake) succeeded but whose CONNECT got no answer in time. After
	// a CredentialsRefused result it is most likely the same refusal,
	// answered late: brokers slow their answers to repeated failed logins
	// from one address (brokerd does) to slow password guessing, beyond a
	// check's timeout. The monitor then keeps showing the refusal.
	Unanswered bool
}

// ErrCredentialsRefused is wrapped by the Err of a CredentialsRefused
// result: "check credentials refused: <the broker's message>".
var ErrCredentialsRefused = errors.New("check credentials refused")

// refused reports whether err is a refused connection.
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// Checker probes one backend once.
type Checker interface {
	// Check probes b and reports the outcome. It must return by ctx's
	// deadline (the Monitor gives every check one) and soon after ctx is
	// cancelled, because Monitor.Run waits for running checks to end. It
	// is called concurrently, for different backends and, across time, for
	// the same one.
	Check(ctx context.Context, b Backend) Result
}

// Check kinds accepted by NewChecker.
const (
	KindTCP   = "tcp"
	KindSTOMP = "stomp"
	KindHTTP  = "http"
)

// CheckOptions are what a checker needs beyond its kind.
type CheckOptions struct {
	// TLS, unless nil, makes the "tcp" and "stomp" kinds speak TLS to
	// Addr, as the data path does (proxy.Options.TLS): the broker's
	// certificate is verified with TLS.RootCAs, for TLS.ServerName or,
	// when that is "", for Addr's host. A handshake that fails (unknown
	// authority, expired, wrong name) fails the check, with the reason in
	// Result.Err, and is never Definitive: the broker may be fixed (a
	// renewed certificate) without its port closing. The "http" kind
	// ignores it (CheckURL's scheme says whether to use TLS).
	TLS *tls.Config

	// Login, Passcode and Host are for the "stomp" kind only (any of
	// them set for another kind is an error): what its CONNECT sends, so
	// that a broker requiring a login (brokerd with a users file,
	// ActiveMQ's authentication plugin, RabbitMQ) can be checked. A
	// broker that refuses them makes a CredentialsRefused result.
	//
	// Login is the login header; "" sends none (an anonymous check).
	Login string
	// Passcode, unless nil, returns the passcode header's value. It is
	// called at each check, so a rotated passcode file is read again
	// (passcode.File, passcode.Env), and once by
	// NewCheckerWith, so that a missing one fails a start or a reload. A
	// check whose Passcode fails, or answers "" or a value with a line
	// break, fails without dialing. It needs a Login.
	Passcode func() (string, error)
	// Host is the host header: the virtual host ("/" is RabbitMQ's
	// default one). "" means stompclient.DefaultHost ("localhost"), what
	// the check always sent before.
	Host string
}

// NewChecker returns the checker of a kind:
//
//   - "tcp" (also ""): connect to Addr, then close. Enough for brokers that,
//     like ActiveMQ and brokerd, open their client port only while master.
//   - "stomp": connect to Addr and complete a STOMP CONNECT/CONNECTED
//     exchange, then DISCONNECT. Proves the broker serves, not only that a
//     socket accepts (a hung process or a foreign server fails it). The
//     CONNECT carries CheckOptions' Login, Passcode and Host; an ERROR in
//     answer is a CredentialsRefused result.
//   - "http": GET CheckURL; healthy on 200 only. When the body is a JSON
//     object with a numeric "epoch" field (brokerd's /readyz), that is the
//     Result's Epoch. A 503 whose JSON body names a "role" other than
//     "stopped" (brokerd's slave: {"ready":false,"role":"slave"}) is a
//     Standby result: alive, not serving.
func NewChecker(kind string) (Checker, error) { return NewCheckerWith(kind, CheckOptions{}) }

// NewCheckerWith is NewChecker with options.
func NewCheckerWith(kind string, o CheckOptions) (Checker, error) {
	if o.TLS != nil && o.TLS.InsecureSkipVerify {
		return nil, errors.New("health: the broker's certificate is always verified (InsecureSkipVerify is refused)")
	}
	if kind != KindSTOMP && (o.Login != "" || o.Passcode != nil || o.Host != "") {
		return nil, fmt.Errorf("health: a check login, passcode or host is for the %q kind only, not %q", KindSTOMP, kind)
	}
	switch kind {
	case "", KindTCP:
		return tcpChecker{tls: o.TLS}, nil
	case KindSTOMP:
		if err := o.validateLogin(); err != nil {
			return nil, err
		}
		return stompChecker{tls: o.TLS, login: o.Login, passcode: o.Passcode, host: o.Host}, nil
	case KindHTTP:
		return newHTTPChecker(), nil
	default:
		return nil, fmt.Errorf("health: unknown check kind %q (want %q, %q or %q)", kind, KindTCP, KindSTOMP, KindHTTP)
	}
}

// dial connects to addr, with conf (unless nil) completing a TLS
// handshake within ctx. A handshake error says so, and names the server
// name verified, so that "backend down" tells an operator what to fix.
func dial(ctx context.Context, addr string, conf *tls.Config) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil || conf == nil {
		return nc, err
	}
	c := conf
	if c.ServerName == "" {
		host, _, _ := net.SplitHostPort(addr)
		c = conf.Clone()
		c.ServerName = host
	}
	tc := tls.Client(nc, c)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("TLS handshake with %s (server name %q): %w", addr, c.ServerName, err)
	}
	return tc, nil
}

type tcpChecker struct{ tls *tls.Config }

func (t tcpChecker) Check(ctx context.Context, b Backend) Result {
	start := time.Now()
	c, err := dial(ctx, b.Addr, t.tls)
	lat := time.Since(start)
	if err != nil {
		return Result{Err: err, Latency: lat, Definitive: refused(err)}
	}
	c.Close()
	return Result{OK: true, Latency: lat}
}

// validateLogin checks the "stomp" kind's CONNECT headers, reading the
// passcode once. CONNECT headers are never escaped (STOMP 1.2 "Value
// Encoding"), so a line break cannot be sent.
func (o CheckOptions) validateLogin() error {
	var errs []error
	if !passcode.HeaderSafe(o.Login) || !passcode.HeaderSafe(o.Host) {
		errs = append(errs, errors.New("health: the check's login and host must not contain a line break or NUL"))
	}
	if o.Passcode != nil {
		if o.Login == "" {
			errs = append(errs, errors.New("health: a check passcode needs a login"))
		}
		if _, err := checkPasscode(o.Passcode); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkPasscode reads the check's passcode (passcode.Read).
func checkPasscode(src func() (string, error)) (string, error) {
	p, err := passcode.Read(src)
	if err != nil {
		return "", fmt.Errorf("check passcode: %w", err)
	}
	return p, nil
}

type stompChecker struct {
	tls         *tls.Config
	login, host string
	passcode    func() (string, error)
}

func (s stompChecker) Check(ctx context.Context, b Backend) Result {
	opts := stompclient.Options{Login: s.login, Host: s.host}
	if s.passcode != nil {
		// Read before dialing: a check that cannot log in need not
		// connect. It fails (the sidecar cannot tell whether the broker
		// serves), with the reason in the log.
		p, err := checkPasscode(s.passcode)
		if err != nil {
			return Result{Err: err}
		}
		opts.Passcode = p
	}
	start := time.Now()
	// ctx's deadline is shorter than stompclient's default connect timeout
	// and bounds the dial, the TLS handshake and waiting for CONNECTED.
	nc, err := dial(ctx, b.Addr, s.tls)
	var c *stompclient.Conn
	connected := err == nil
	if connected {
		c, err = stompclient.NewConn(ctx, nc, opts)
	}
	lat := time.Since(start)
	var refusal *stompclient.ServerError
	if errors.As(err, &refusal) {
		// An ERROR in answer to CONNECT: alive, but it will not let the
		// check in. STOMP has no error codes, so any such ERROR counts;
		// the broker's message, passed on, says which it was. The
		// passcode is in no part of it.
		return Result{Err: fmt.Errorf("%w: %s", ErrCredentialsRefused, refusalText(refusal)), Latency: lat, CredentialsRefused: true}
	}
	if err != nil {
		return Result{Err: err, Latency: lat, Definitive: refused(err), Unanswered: connected && isTimeout(err)}
	}
	// The check has passed; DISCONNECT (rather than a bare close) only
	// keeps the broker from logging every check as a dropped client, so its
	// error does not matter.
	c.Disconnect(ctx)
	return Result{OK: true, Latency: lat}
}

// refusalText is what a broker's ERROR says: its message header and,
// when it adds something, its body, cut short ("Bad CONNECT: Virtual host
// 'localhost' access denied" from RabbitMQ, which puts the reason in the
// body).
func refusalText(e *stompclient.ServerError) string {
	msg := e.Message
	body := strings.TrimSpace(e.Body)
	if len(body) > 200 {
		body = body[:200] + "…"
	}
	switch {
	case body == "" || body == msg:
	case msg == "":
		msg = body
	default:
		msg += ": " + body
	}
	if msg == "" {
		return "(an ERROR without a message)"
	}
	return msg
}

// maxHTTPBody bounds how much of a check response is read: /readyz answers
// in a few dozen bytes, and a misconfigured URL must not make us read a page.
const maxHTTPBody = 64 << 10

type httpChecker struct{ client *http.Client }

func newHTTPChecker() *httpChecker {
	return &httpChecker{client: &http.Client{
		Transport: &http.Transport{
			// Backends are neighbours; an HTTP_PROXY meant for the
			// application must not sit between us and them.
			Proxy:       nil,
			DialContext: (&net.Dialer{}).DialContext,
			// A fresh connection per check, as HAProxy's httpchk does:
			// it proves the admin port still accepts, and no idle
			// connection outlives the Monitor that made it.
			DisableKeepAlives:      true,
			MaxResponseHeaderBytes: maxHTTPBody,
		},
		// A redirect is not "200 OK" from the backend asked.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (h *httpChecker) Check(ctx context.Context, b Backend) Result {
	if b.CheckURL == "" {
		return Result{Err: errors.New("http check: backend has no check URL")}
	}
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.CheckURL, nil)
	if err != nil {
		return Result{Err: fmt.Errorf("http check: %w", err)}
	}
	req.Header.Set("User-Agent", "handover-health")
	resp, err := h.client.Do(req)
	if err != nil {
		return Result{Err: err, Latency: time.Since(start), Definitive: refused(err)}
	}
	defer resp.Body.Close()
	// Read the body within the deadline too: a backend that sends headers
	// and then hangs is not healthy.
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPBody))
	lat := time.Since(start)
	if err != nil {
		return Result{Err: fmt.Errorf("GET %s: reading body: %w", b.CheckURL, err), Latency: lat}
	}
	if resp.StatusCode != http.StatusOK {
		unavailable := resp.StatusCode == http.StatusServiceUnavailable
		return Result{Err: fmt.Errorf("GET %s: %s: %s", b.CheckURL, resp.Status, snippet(body)), Latency: lat,
			Definitive: unavailable, Standby: unavailable && isStandby(body)}
	}
	return Result{OK: true, Epoch: parseEpoch(body), Latency: lat}
}

// parseEpoch returns the top-level "epoch" of a JSON object body when it is
// a non-negative integer, else 0 (unknown): a body that is not JSON still
// passes the check, it just says nothing about the epoch.
func parseEpoch(body []byte) uint64 {
	var doc struct {
		Epoch json.RawMessage `json:"epoch"`
	}
	if json.Unmarshal(body, &doc) != nil || len(doc.Epoch) == 0 {
		return 0
	}
	e, err := strconv.ParseUint(string(doc.Epoch), 10, 64)
	if err != nil {
		return 0
	}
	return e
}

// isStandby reports whether a 503 body says the backend is alive in a role
// that does not serve: a JSON object whose "role" is a non-empty string
// other than "stopped" (brokerd's roles are "master", "slave" and
// "stopped"; a master that is not ready yet is not serving either).
func isStandby(body []byte) bool {
	var doc struct {
		Role string `json:"role"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return false
	}
	return doc.Role != "" && doc.Role != "stopped"
}

// snippet shortens a response body for an error message.
func snippet(body []byte) string {
	body = bytes.TrimSpace(body)
	if len(body) > 200 {
		return strconv.Quote(string(body[:200])) + "…"
	}
	return strconv.Quote(string(body))
}

// isTimeout tells a check that ran out of time from one that was refused,
// for the result label of the check duration metric.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}
