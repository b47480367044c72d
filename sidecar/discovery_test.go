package sidecar

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// srvServer is an in-process DNS server answering one SRV name with a
// record the test can change.
type srvServer struct {
	mu   sync.Mutex
	port uint16
	addr string
}

func (z *srvServer) set(port uint16) {
	z.mu.Lock()
	z.port = port
	z.mu.Unlock()
}

func startSRV(t *testing.T, name string) *srvServer {
	t.Helper()
	z := &srvServer{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		z.mu.Lock()
		port := z.port
		z.mu.Unlock()
		switch {
		case q.Qtype == dns.TypeSRV && q.Name == name && port != 0:
			m.Answer = append(m.Answer, &dns.SRV{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1},
				Priority: 10, Weight: 1, Port: port, Target: "broker.test."})
			m.Extra = append(m.Extra, &dns.A{Hdr: dns.RR_Header{Name: "broker.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A: net.ParseIP("127.0.0.1")})
		case q.Qtype == dns.TypeA && q.Name == "broker.test.":
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A: net.ParseIP("127.0.0.1")})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return z
}

func portOf(t *testing.T, addr string) uint16 {
	_, p, _ := net.SplitHostPort(addr)
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return uint16(n)
}

// TestDiscoveryFollowsDNS: a service with only DNS SRV discovery routes to
// the broker DNS names, and follows when the record moves.
func TestDiscoveryFollowsDNS(t *testing.T) {
	a, b := echoServer(t), echoServer(t)
	z := startSRV(t, "_stomp._tcp.brokers.test.")
	z.set(portOf(t, a))
	listen := freeAddr(t)
	h := startSidecar(t, fmt.Sprintf(`[admin]
listen = ""
[[service]]
name = "one"
listen = %q
discovery = "dns-srv:_stomp._tcp.brokers.test."
resolver = %q
min_refresh = "50ms"
max_refresh = "200ms"
[service.check]
kind = "tcp"
interval = "100ms"
`, listen, z.addr))
	h.waitMaster("one", a)
	if s := stream(t, listen); s() != nil {
		t.Fatal("no traffic through the discovered backend")
	}
	z.set(portOf(t, b))
	h.waitMaster("one", b)
	st := h.sc.status().Services[0]
	if st.Discovery == nil || len(st.Health.Backends) != 1 || st.Health.Backends[0].Addr != b {
		t.Fatalf("status after the move: %+v", st)
	}
	s := stream(t, listen)
	time.Sleep(20 * time.Millisecond)
	if err := s(); err != nil {
		t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
