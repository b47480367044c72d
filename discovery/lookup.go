package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ErrRcode is wrapped by errors of queries answered with a response code
// other than NOERROR and NXDOMAIN (SERVFAIL, REFUSED, …): the server could
// not say what the name holds, so nothing can be concluded from the answer.
var ErrRcode = errors.New("DNS server answered with an error code")

// udpSize is the EDNS0 buffer size offered (RFC 6891). 1232 bytes is the
// DNS Flag Day 2020 value: it avoids IP fragmentation on any path, and the
// few answers larger than that come over TCP after a truncated one.
const udpSize = 1232

// target is one SRV record, with the addresses of its target.
type target struct {
	name     string // canonical (lower case, fully qualified)
	port     uint16
	priority uint16
	weight   uint16
	addrs    []netip.Addr
}

// resolve does one lookup: the SRV query, then the address queries of
// targets whose addresses the additional section did not give. It returns
// the records in order and the smallest TTL of the records used.
func (d *Discoverer) resolve(ctx context.Context) ([]Record, time.Duration, error) {
	r, err := d.query(ctx, d.opts.Name, dns.TypeSRV)
	if err != nil {
		return nil, 0, err
	}
	var (
		targets []*target
		ttl     = ttlUnset
	)
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.SRV:
			ttl = min(ttl, rr.Hdr.Ttl)
			if rr.Target == "." {
				// RFC 2782: "the service is decidedly not available at
				// this domain".
				continue
			}
			targets = append(targets, &target{name: dns.CanonicalName(rr.Target), port: rr.Port,
				priority: rr.Priority, weight: rr.Weight})
		case *dns.CNAME:
			// The SRV name is an alias: the answer is only as fresh as
			// the alias.
			ttl = min(ttl, rr.Hdr.Ttl)
		}
	}
	if len(targets) == 0 {
		return []Record{}, negativeTTL(r), nil
	}

	// Addresses the server volunteered (RFC 2782 asks servers to add
	// them) save two queries per target.
	glue := make(map[string][]netip.Addr)
	glueTTL := make(map[string]uint32)
	for _, rr := range r.Extra {
		name, ip, rrTTL, ok := addrOf(rr)
		if !ok {
			continue
		}
		if _, seen := glue[name]; !seen {
			glueTTL[name] = rrTTL
		}
		glue[name] = append(glue[name], ip)
		glueTTL[name] = min(glueTTL[name], rrTTL)
	}
	looked := make(map[string]lookedUp)
	for _, t := range targets {
		if ips, ok := glue[t.name]; ok {
			t.addrs = ips
			ttl = min(ttl, glueTTL[t.name])
			continue
		}
		l, ok := looked[t.name]
		if !ok {
			l, err = d.lookupHost(ctx, t.name)
			if err != nil {
				return nil, 0, err
			}
			looked[t.name] = l
			if len(l.addrs) == 0 {
				// Not an error: one stale SRV record must not freeze
				// the list of every other broker.
				d.log.WithField("target", t.name).Warn("SRV target has no A or AAAA records; skipping it")
			}
		}
		t.addrs = l.addrs
		if len(l.addrs) > 0 {
			ttl = min(ttl, l.ttl)
		}
	}
	recs := d.records(targets)
	if len(recs) == 0 {
		// Every target lacked addresses: as empty as no SRV record, but
		// the address answers' negative TTL is not worth tracking.
		return recs, 0, nil
	}
	return recs, time.Duration(ttl) * time.Second, nil
}

// ttlUnset is larger than any TTL (RFC 2181 §8 caps them at 2^31-1).
const ttlUnset = ^uint32(0)

// records turns targets into one Record per address, ordered by priority
// (lowest first, as RFC 2782 prefers), weight (highest first), target name,
// address and port, so that an unchanged zone gives an equal list whatever
// order the server answered in. The first of repeated addresses is kept.
func (d *Discoverer) records(targets []*target) []Record {
	type entry struct {
		*target
		ip netip.Addr
	}
	var es []entry
	for _, t := range targets {
		for _, ip := range t.addrs {
			es = append(es, entry{t, ip})
		}
	}
	slices.SortFunc(es, func(a, b entry) int {
		return cmp.Or(
			cmp.Compare(a.priority, b.priority),
			cmp.Compare(b.weight, a.weight),
			strings.Compare(a.name, b.name),
			a.ip.Compare(b.ip),
			cmp.Compare(a.port, b.port),
		)
	})
	recs := make([]Record, 0, len(es))
	seen := make(map[string]bool, len(es))
	for _, e := range es {
		addr := net.JoinHostPort(e.ip.String(), strconv.Itoa(int(e.port)))
		if seen[addr] {
			continue
		}
		seen[addr] = true
		rec := Record{Addr: addr, Priority: int(e.priority), Weight: int(e.weight), Target: e.name}
		if d.opts.CheckURL != "" {
			rec.CheckURL = expandCheckURL(d.opts.CheckURL, e.ip, e.port)
		}
		recs = append(recs, rec)
	}
	return recs
}

// expandCheckURL fills a CheckURL template for one backend.
func expandCheckURL(tmpl string, ip netip.Addr, port uint16) string {
	host := ip.String()
	if ip.Is6() {
		host = "[" + host + "]"
	}
	return strings.NewReplacer("{host}", host, "{port}", strconv.Itoa(int(port))).Replace(tmpl)
}

// addrOf returns the owner name, address and TTL of an A or AAAA record.
func addrOf(rr dns.RR) (name string, ip netip.Addr, ttl uint32, ok bool) {
	var raw net.IP
	switch rr := rr.(type) {
	case *dns.A:
		raw = rr.A
	case *dns.AAAA:
		raw = rr.AAAA
	default:
		return "", netip.Addr{}, 0, false
	}
	ip, ok = netip.AddrFromSlice(raw)
	if !ok {
		return "", netip.Addr{}, 0, false
	}
	return dns.CanonicalName(rr.Header().Name), ip.Unmap(), rr.Header().Ttl, true
}

// lookedUp is the outcome of a target's address queries.
type lookedUp struct {
	addrs []netip.Addr
	ttl   uint32
}

// lookupHost asks the same servers for a target's A and AAAA records. Any
// A or AAAA record of the answer counts, whatever its owner: a target that
// is (against RFC 2782) an alias answers with a CNAME chain.
func (d *Discoverer) lookupHost(ctx context.Context, name string) (lookedUp, error) {
	l := lookedUp{ttl: ttlUnset}
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		r, err := d.query(ctx, name, qtype)
		if err != nil {
			return lookedUp{}, err
		}
		for _, rr := range r.Answer {
			if _, ip, rrTTL, ok := addrOf(rr); ok {
				l.addrs = append(l.addrs, ip)
				l.ttl = min(l.ttl, rrTTL)
			}
			if c, ok := rr.(*dns.CNAME); ok {
				l.ttl = min(l.ttl, c.Hdr.Ttl)
			}
		}
	}
	return l, nil
}

// negativeTTL is how long an empty answer may be cached (RFC 2308 §5): the
// smaller of the authority SOA's TTL and its MINIMUM field; 0 without a SOA.
func negativeTTL(r *dns.Msg) time.Duration {
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return 0
}

// query asks each server in turn for name's records of qtype and returns
// the first answer that is NOERROR or NXDOMAIN. A server that times out,
// fails or is unreachable passes the question to the next one, as the
// system resolver does with resolv.conf's nameservers.
func (d *Discoverer) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.SetEdns0(udpSize, false)
	var errs []error
	for _, server := range d.servers {
		r, err := d.queryServer(ctx, server, m)
		if err == nil {
			return r, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], name, ctx.Err())
		}
		errs = append(errs, fmt.Errorf("%s %s at %s: %w", dns.TypeToString[qtype], name, server, err))
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, joinedErrors(errs)
}

// joinedErrors is errors.Join on one line, for logfmt logs and /status.
type joinedErrors []error

func (e joinedErrors) Error() string {
	s := make([]string, len(e))
	for i, err := range e {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (e joinedErrors) Unwrap() []error { return e }

// queryServer asks one server over UDP, then over TCP if the UDP answer was
// truncated (RFC 1035 §4.2.1, RFC 7766): a truncated answer may lack
// records, and a list built from it would drop brokers.
func (d *Discoverer) queryServer(ctx context.Context, server string, m *dns.Msg) (*dns.Msg, error) {
	qctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	r, err := exchange(qctx, "udp", server, m)
	// A truncated answer may also fail to unpack, cut in the middle of a
	// record; its header is still read.
	if r != nil && r.Truncated {
		d.log.WithField("server", server).Debug("UDP answer truncated; retrying over TCP")
		r, err = exchange(qctx, "tcp", server, m)
	}
	if err != nil {
		if ctx.Err() == nil && (qctx.Err() != nil || isTimeout(err)) {
			return nil, fmt.Errorf("no answer within %v: %w", d.opts.Timeout, context.DeadlineExceeded)
		}
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("%w: %s", ErrRcode, dns.RcodeToString[r.Rcode])
	}
	return r, nil
}

// exchange sends m over network to server and reads the answer. The
// library honours ctx's deadline but not its cancellation, so the
// connection is closed when ctx is done; exchange waits for that close to
// finish, leaving no goroutine behind.
func exchange(ctx context.Context, network, server string, m *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: network, UDPSize: udpSize}
	if deadline, ok := ctx.Deadline(); ok {
		c.Timeout = time.Until(deadline)
	}
	conn, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		conn.Close()
		close(closed)
	})
	defer func() {
		if !stop() {
			<-closed
		}
	}()
	r, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return r, err
}

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}
