package discovery

import (
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/miekg/dns"
	"github.com/sirupsen/logrus"

	"handover/internal/testutil"
)

func testLog(t testing.TB) *logrus.Entry { return testutil.Logger(t) }

// srvRec is one SRV record of the test zone.
type srvRec struct {
	target       string
	port         uint16
	prio, weight uint16
}

// query is one question the test server was asked.
type query struct {
	net   string // "udp" or "tcp"
	qtype uint16
	name  string
}

func (q query) String() string { return q.net + " " + dns.TypeToString[q.qtype] + " " + q.name }

// zone is the test server's data, changed by tests while it serves. Every
// field is guarded by mu; use set to change them.
type zone struct {
	mu sync.Mutex
	// srv and addrs map canonical names to their records. A name in
	// neither is NXDOMAIN.
	srv   map[string][]srvRec
	addrs map[string][]string
	// srvTTL and addrTTL are the TTLs of SRV and A/AAAA records.
	srvTTL, addrTTL uint32
	// noGlue lists targets whose addresses are left out of the SRV
	// answer's additional section; the others' are put in.
	noGlue map[string]bool
	// rcodes answers queries of a type (dns.TypeNone: every type) with
	// an error code.
	rcodes map[uint16]int
	// soaTTL, when non-zero, puts a SOA with this TTL and MINIMUM in
	// empty answers.
	soaTTL uint32
	// truncateUDP sets TC on UDP answers and cuts them to one record.
	truncateUDP bool
	queries     []query
}

func newZone() *zone {
	return &zone{srv: map[string][]srvRec{}, addrs: map[string][]string{}, noGlue: map[string]bool{},
		rcodes: map[uint16]int{}, srvTTL: 60, addrTTL: 60}
}

// set changes the zone under its lock.
func (z *zone) set(f func(z *zone)) {
	z.mu.Lock()
	defer z.mu.Unlock()
	f(z)
}

// log returns the questions asked so far, and forgets them.
func (z *zone) log() []query {
	z.mu.Lock()
	defer z.mu.Unlock()
	q := z.queries
	z.queries = nil
	return q
}

func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	z.mu.Lock()
	defer z.mu.Unlock()
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	network := w.RemoteAddr().Network()
	z.queries = append(z.queries, query{network, q.Qtype, name})
	m := new(dns.Msg)
	m.SetReply(req)
	if rc, ok := z.rcodes[q.Qtype]; ok {
		m.Rcode = rc
	} else if rc, ok := z.rcodes[dns.TypeNone]; ok {
		m.Rcode = rc
	} else {
		z.answer(m, name, q.Qtype)
	}
	if z.truncateUDP && network == "udp" {
		m.Truncated = true
		m.Answer = m.Answer[:min(1, len(m.Answer))]
		m.Extra = nil
	}
	w.WriteMsg(m)
}

func (z *zone) answer(m *dns.Msg, name string, qtype uint16) {
	recs, isSRV := z.srv[name]
	_, isHost := z.addrs[name]
	if !isSRV && !isHost {
		m.Rcode = dns.RcodeNameError
	}
	switch qtype {
	case dns.TypeSRV:
		glued := map[string]bool{}
		for _, r := range recs {
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr:    dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: z.srvTTL},
				Target: r.target, Port: r.port, Priority: r.prio, Weight: r.weight,
			})
			if !z.noGlue[r.target] && !glued[r.target] {
				glued[r.target] = true
				m.Extra = append(m.Extra, z.addrRRs(r.target, dns.TypeNone)...)
			}
		}
	case dns.TypeA, dns.TypeAAAA:
		m.Answer = z.addrRRs(name, qtype)
	}
	if len(m.Answer) == 0 && z.soaTTL != 0 {
		m.Ns = append(m.Ns, &dns.SOA{
			Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: z.soaTTL},
			Ns:  "ns.example.", Mbox: "hostmaster.example.", Serial: 1, Refresh: 60, Retry: 60, Expire: 600,
			Minttl: z.soaTTL,
		})
	}
}

// addrRRs returns the A (qtype A or None) and AAAA (AAAA or None) records
// of name.
func (z *zone) addrRRs(name string, qtype uint16) []dns.RR {
	var out []dns.RR
	for _, s := range z.addrs[name] {
		ip := netip.MustParseAddr(s)
		hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: z.addrTTL}
		switch {
		case ip.Is4() && qtype != dns.TypeAAAA:
			hdr.Rrtype = dns.TypeA
			out = append(out, &dns.A{Hdr: hdr, A: ip.AsSlice()})
		case ip.Is6() && qtype != dns.TypeA:
			hdr.Rrtype = dns.TypeAAAA
			out = append(out, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
		}
	}
	return out
}

// startServer serves z over UDP and TCP on one loopback port, as a real
// resolver does, and returns its address. It stops when the test ends.
func startServer(t *testing.T, z *zone) string {
	t.Helper()
	var (
		pc  net.PacketConn
		l   net.Listener
		err error
	)
	for i := 0; ; i++ {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// The TCP port must be the UDP one, which another process
		// may hold: then try another.
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if i == 20 {
			t.Fatalf("no loopback port free for both UDP and TCP: %v", err)
		}
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: z}, {Listener: l, Handler: z}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		done := make(chan error, 1)
		go func() { done <- s.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-done:
			t.Fatalf("DNS server: %v", err)
		}
		t.Cleanup(func() {
			s.Shutdown()
			<-done
		})
	}
	return pc.LocalAddr().String()
}

// blackHole is a UDP "DNS server" that reads queries and never answers. A
// value is sent on the returned channel (if there is room) per query read.
func blackHole(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			select {
			case got <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String(), got
}
