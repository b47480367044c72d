// Package discovery finds a service's brokers with DNS SRV records (RFC 2782)
// and follows them as DNS changes, so that sidecars track brokers that are
// replaced or added without a restart or a config edit.
//
// A Discoverer resolves one SRV name. Each SRV record names a target host,
// a port, a priority and a weight; the target's A and AAAA records, taken
// from the answer's additional section when the server put them there and
// queried otherwise, give one health.Backend per address. Run re-resolves
// when the answer's TTL expires and hands each changed list to its caller,
// which passes it to health.Monitor.SetBackends.
//
// DNS trouble never takes brokers away: a failed lookup (a timeout, SERVFAIL,
// a network error) keeps the last good list, and so does an empty answer
// unless Options.AllowEmpty says that an empty list is meant. Losing every
// backend because a resolver hiccuped would turn a DNS blip into an outage of
// every application behind the sidecar.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/sirupsen/logrus"

	"handover/health"
)

// Defaults of the Options fields left zero.
const (
	DefaultMinRefresh = time.Second
	DefaultMaxRefresh = 60 * time.Second
	DefaultTimeout    = 2 * time.Second
)

// resolvConf is where New reads the system's resolvers; a variable so that
// tests can point it elsewhere.
var resolvConf = "/etc/resolv.conf"

// Options configure a Discoverer. Zero fields take their defaults.
type Options struct {
	// Name is the SRV name to resolve, for example
	// "_stomp._tcp.brokers.example.". A name without the final dot is made
	// fully qualified: search domains are not applied, because a name that
	// silently resolved under a different suffix on another host would find
	// other brokers.
	Name string
	// Resolver is the "host:port" of the DNS server to ask (":53" is added
	// to a bare host). Empty means the nameservers of /etc/resolv.conf, read
	// once by New and tried in order, the next one after an error.
	Resolver string
	// MinRefresh is the shortest interval between lookups (default 1s). It
	// bounds the load a zero or tiny TTL puts on the resolver, and is the
	// first retry interval after a failed lookup.
	MinRefresh time.Duration
	// MaxRefresh is the longest interval between lookups (default 60s): the
	// next lookup is due when the answer's smallest TTL expires, clamped to
	// [MinRefresh, MaxRefresh], so that a long TTL does not keep a moved
	// broker out of the list for hours. It also caps the retry backoff.
	MaxRefresh time.Duration
	// Timeout bounds each query to one server, the UDP query and its TCP
	// retry together (default 2s).
	Timeout time.Duration
	// AllowEmpty lets an answer without backends (NOERROR or NXDOMAIN with
	// no usable SRV record) empty the list. By default such an answer keeps
	// the last good list: an empty answer is more often a broken zone push
	// than an operator retiring every broker.
	AllowEmpty bool
	// CheckURL, if not empty, is the template of each backend's
	// health.Backend.CheckURL: "{host}" is replaced with the backend's
	// address (in brackets if IPv6, as URLs need) and "{port}" with the SRV
	// port, e.g. "http://{host}:8161/readyz". The address rather than the
	// target name, because a name with several addresses would have every
	// backend checked at whichever address the HTTP client picked.
	CheckURL string
	// Log receives the discoverer's logs, with name=Name added; nil
	// discards them.
	Log *logrus.Entry
	// Metrics records lookups; nil records nothing.
	Metrics *Metrics
}

// Discoverer resolves one SRV name into backends. Create it with New;
// Lookup, Run and Status may be called from any goroutine.
type Discoverer struct {
	opts    Options
	servers []string // "host:port", tried in order
	log     *logrus.Entry
	metrics *Metrics

	mu     sync.Mutex
	status Status
}

// Status is a Discoverer's state, for the sidecar's /status.
type Status struct {
	// Name is the SRV name, fully qualified and in lower case (the name
	// label of the metrics).
	Name string `json:"name"`
	// Resolvers are the DNS servers asked, in order.
	Resolvers []string `json:"resolvers"`
	// LastLookup is when the last lookup ended; zero before the first.
	LastLookup time.Time `json:"last_lookup"`
	// LastResult is the last lookup's result: ResultOK, ResultError or
	// ResultEmpty; "" before the first.
	LastResult string `json:"last_result"`
	// LastError is the last lookup's error; "" if it succeeded.
	LastError string `json:"last_error,omitempty"`
	// Failures counts consecutive failed lookups.
	Failures int `json:"failures"`
	// LastSuccess is when the list in Backends was resolved; zero if none
	// has been.
	LastSuccess time.Time `json:"last_success"`
	// Backends is the last good list, in order.
	Backends []Record `json:"backends"`
	// NextRefresh is when Run will resolve next; zero when Run is not
	// running.
	NextRefresh time.Time `json:"next_refresh"`
}

// Record is one discovered backend and the SRV target it came from.
type Record struct {
	// Addr, CheckURL, Priority and Weight are the health.Backend's.
	Addr     string `json:"addr"`
	CheckURL string `json:"check_url,omitempty"`
	Priority int    `json:"priority"`
	Weight   int    `json:"weight"`
	// Target is the SRV record's target host name.
	Target string `json:"target"`
}

// New validates opts and returns a Discoverer. With an empty
// Options.Resolver it reads the system's resolvers now, so that a host
// without any fails at start-up rather than at every lookup.
func New(opts Options) (*Discoverer, error) {
	if opts.Name == "" {
		return nil, errors.New("discovery: empty SRV name")
	}
	opts.Name = dns.CanonicalName(opts.Name)
	if _, ok := dns.IsDomainName(opts.Name); !ok {
		return nil, fmt.Errorf("discovery: %q is not a domain name", opts.Name)
	}
	if opts.MinRefresh < 0 || opts.MaxRefresh < 0 || opts.Timeout < 0 {
		return nil, fmt.Errorf("discovery: %s: negative min_refresh, max_refresh or timeout", opts.Name)
	}
	if opts.MinRefresh == 0 {
		opts.MinRefresh = DefaultMinRefresh
	}
	if opts.MaxRefresh == 0 {
		opts.MaxRefresh = max(DefaultMaxRefresh, opts.MinRefresh)
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MinRefresh > opts.MaxRefresh {
		return nil, fmt.Errorf("discovery: %s: min_refresh %v is above max_refresh %v", opts.Name, opts.MinRefresh, opts.MaxRefresh)
	}
	if opts.CheckURL != "" {
		// Expanding with sample values catches a template that can never
		// be a URL now instead of as a failing check per backend.
		for _, host := range []string{"192.0.2.1", "2001:db8::1"} {
			u := expandCheckURL(opts.CheckURL, netip.MustParseAddr(host), 61613)
			if _, err := url.Parse(u); err != nil {
				return nil, fmt.Errorf("discovery: %s: check URL template: %w", opts.Name, err)
			}
		}
	}
	servers, err := resolvers(opts.Resolver)
	if err != nil {
		return nil, fmt.Errorf("discovery: %s: %w", opts.Name, err)
	}
	log := opts.Log
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = logrus.NewEntry(l)
	}
	d := &Discoverer{
		opts:    opts,
		servers: servers,
		log:     log.WithField("name", opts.Name),
		metrics: opts.Metrics,
		status:  Status{Name: opts.Name, Resolvers: servers, Backends: []Record{}},
	}
	d.metrics.initName(opts.Name)
	return d, nil
}

// resolvers returns the servers to ask: the one configured, or those of
// resolv.conf.
func resolvers(configured string) ([]string, error) {
	if configured != "" {
		if _, _, err := net.SplitHostPort(configured); err != nil {
			// A bare host or IP (IPv6 without brackets too) means port 53.
			configured = net.JoinHostPort(strings.Trim(configured, "[]"), "53")
			if _, _, err := net.SplitHostPort(configured); err != nil {
				return nil, fmt.Errorf("resolver %q: %w", configured, err)
			}
		}
		return []string{configured}, nil
	}
	cfg, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, fmt.Errorf("reading system resolvers: %w", err)
	}
	servers := serversOf(cfg)
	if len(servers) == 0 {
		return nil, fmt.Errorf("no nameserver in %s", resolvConf)
	}
	return servers, nil
}

func serversOf(cfg *dns.ClientConfig) []string {
	var out []string
	for _, s := range cfg.Servers {
		out = append(out, net.JoinHostPort(s, cfg.Port))
	}
	return out
}

// Lookup resolves the name once and returns its backends, in order, and the
// answer's smallest TTL (for an empty answer, the negative-caching TTL of
// RFC 2308 §5, or 0 without one). An empty answer is not an error: it is
// an empty list. It records the outcome in Status and Metrics; the last good
// list there changes on an empty answer only with Options.AllowEmpty. A
// lookup ended by ctx records nothing: the caller gave up, DNS did not fail.
//
// An error means no answer could be trusted: every server timed out, failed
// (SERVFAIL, REFUSED: see ErrRcode) or was unreachable, or a target's
// address lookup did. A partial list is never returned, because dropping a
// broker whose address lookup merely failed could disconnect its clients.
func (d *Discoverer) Lookup(ctx context.Context) ([]health.Backend, time.Duration, error) {
	recs, ttl, err := d.resolve(ctx)
	if err != nil && ctx.Err() != nil {
		// Abandoned by the caller, not failed by DNS: nothing to
		// record or count.
		return nil, 0, err
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &d.status
	st.LastLookup = now
	st.LastError = ""
	switch {
	case err != nil:
		st.LastResult = ResultError
		st.LastError = err.Error()
		st.Failures++
	case len(recs) == 0:
		st.LastResult = ResultEmpty
		st.Failures = 0
	default:
		st.LastResult = ResultOK
		st.Failures = 0
	}
	d.metrics.lookup(d.opts.Name, st.LastResult)
	if err != nil {
		return nil, 0, err
	}
	if len(recs) > 0 || d.opts.AllowEmpty {
		st.Backends = recs
		st.LastSuccess = now
		d.metrics.listInUse(d.opts.Name, len(recs), now)
	}
	return backendsOf(recs), ttl, nil
}

func backendsOf(recs []Record) []health.Backend {
	bs := make([]health.Backend, len(recs))
	for i, r := range recs {
		bs[i] = health.Backend{Addr: r.Addr, CheckURL: r.CheckURL, Priority: r.Priority, Weight: r.Weight}
	}
	return bs
}

// Run resolves the name now and again when the answer's TTL expires
// (clamped to [MinRefresh, MaxRefresh]) until ctx is done. It calls update,
// synchronously from its own goroutine, with every list that differs from
// the last one delivered; the first good list is always delivered. Until
// then the caller keeps whatever list it started with: Run delivers nothing
// while lookups fail, or (without AllowEmpty) answer empty.
//
// A failed lookup keeps the last list, is logged and counted, and is retried
// after MinRefresh, doubling up to MaxRefresh while failures last: a resolver
// that is down should not be hammered by every sidecar at once, and one that
// recovers is noticed within MaxRefresh.
//
// Run starts no goroutine that outlives it; it returns soon after ctx is
// done, abandoning a query in flight.
func (d *Discoverer) Run(ctx context.Context, update func([]health.Backend)) {
	d.log.WithFields(logrus.Fields{"resolvers": d.servers, "min_refresh": d.opts.MinRefresh,
		"max_refresh": d.opts.MaxRefresh, "allow_empty": d.opts.AllowEmpty}).Info("discovery started")
	defer func() {
		d.mu.Lock()
		d.status.NextRefresh = time.Time{}
		d.mu.Unlock()
	}()
	var (
		last      []health.Backend
		delivered bool
		failures  int
	)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		bs, ttl, err := d.Lookup(ctx)
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		switch {
		case err != nil:
			failures++
			wait = backoff(failures, d.opts.MinRefresh, d.opts.MaxRefresh)
			d.log.WithError(err).WithFields(logrus.Fields{"failures": failures, "retry_in": wait,
				"backends": len(last)}).Warn("SRV lookup failed; keeping the last list")
		case len(bs) == 0 && !d.opts.AllowEmpty:
			failures = 0
			wait = clampTTL(ttl, d.opts.MinRefresh, d.opts.MaxRefresh)
			d.log.WithFields(logrus.Fields{"retry_in": wait, "backends": len(last)}).
				Warn("SRV lookup found no backends; keeping the last list (allow_empty is off)")
		default:
			failures = 0
			wait = clampTTL(ttl, d.opts.MinRefresh, d.opts.MaxRefresh)
			if !delivered || !slices.Equal(bs, last) {
				d.log.WithFields(logrus.Fields{"backends": addrsOf(bs), "previous": addrsOf(last),
					"ttl": ttl, "next_in": wait}).Info("discovered backends changed")
				last, delivered = bs, true
				update(slices.Clone(bs))
			} else {
				d.log.WithFields(logrus.Fields{"backends": len(bs), "ttl": ttl, "next_in": wait}).Debug("SRV lookup unchanged")
			}
		}
		d.mu.Lock()
		d.status.NextRefresh = time.Now().Add(wait)
		d.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

func addrsOf(bs []health.Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Addr
	}
	return out
}

// clampTTL turns an answer's TTL into the interval before the next lookup.
func clampTTL(ttl, lo, hi time.Duration) time.Duration {
	return min(max(ttl, lo), hi)
}

// backoff is the wait after the n-th consecutive failure (n >= 1): lo,
// doubling, capped at hi.
func backoff(n int, lo, hi time.Duration) time.Duration {
	w := lo
	for i := 1; i < n && w < hi; i++ {
		w *= 2
	}
	return min(w, hi)
}

// Status returns a snapshot of the discoverer's state.
func (d *Discoverer) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.status
	st.Resolvers = slices.Clone(st.Resolvers)
	st.Backends = slices.Clone(st.Backends)
	return st
}
