package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"testing"
	"time"

	"handover/brokerd"
	"handover/internal/testutil"
	"handover/stompclient"
)

// BenchmarkTLSCost is issue 17's TLS target measured as ratios: one broker
// listening both in plain text and over TLS (1.3, ECDSA P-256, Go's
// defaults), and alternating slices of the same work on each so that both
// see the same moments of load: receipted persistent 1 KiB SENDs on 8
// connections, and SENDs without receipts on one (a last one with a
// receipt marks the end). It reports each rate and tls-of-plain for both
// (the target: at least 0.8), and new TLS connections (handshake and STOMP
// CONNECT) per second beside plain ones.
//
//	go test -run '^$' -bench 'TLSCost' -benchtime 20000x ./bench/
func BenchmarkTLSCost(b *testing.B) {
	ca := testutil.NewCA(b, "bench CA")
	cert, key, _ := ca.Issue(b, "brokerd", time.Now().Add(-time.Hour), 24*time.Hour)
	s := startBrokerWith(b, func(o *brokerd.Options) {
		o.TLSListen, o.TLSCert, o.TLSKey = "127.0.0.1:0", cert, key
	})
	tlsCfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
	dialTLS := func() (*stompclient.Conn, error) {
		nc, err := tls.Dial("tcp", s.TLSAddr(), tlsCfg)
		if err != nil {
			return nil, err
		}
		return stompclient.NewConn(context.Background(), nc, stompclient.Options{})
	}
	dialPlain := func() (*stompclient.Conn, error) {
		return stompclient.Dial(context.Background(), s.Addr(), stompclient.Options{})
	}
	type side struct {
		name string
		dial func() (*stompclient.Conn, error)
		rcpt []*stompclient.Conn // 8 connections for receipted sends
		fire *stompclient.Conn   // one for sends without receipts
		took [3]time.Duration    // receipted, unreceipted, connects
		n    [3]int
	}
	sides := []*side{{name: "plain", dial: dialPlain}, {name: "tls", dial: dialTLS}}
	for _, sd := range sides {
		for range 8 {
			c, err := sd.dial()
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			sd.rcpt = append(sd.rcpt, c)
		}
		fire, err := sd.dial()
		if err != nil {
			b.Fatal(err)
		}
		sd.fire = fire
		b.Cleanup(func() { sd.fire.Close() })
	}
	const slice = 400
	b.ResetTimer()
	for done := 0; done < b.N; done += slice {
		order := sides
		if done/slice%2 == 1 { // each goes first every other slice
			order = []*side{sides[1], sides[0]}
		}
		for _, sd := range order {
			start := time.Now()
			var wg sync.WaitGroup
			for _, c := range sd.rcpt {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range slice / 8 {
						if err := c.SendReceipt(context.Background(), "/queue/tls-"+sd.name, body1K, persistent); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			sd.took[0] += time.Since(start)
			sd.n[0] += slice / 8 * 8

			start = time.Now()
			for range slice {
				if err := sd.fire.Send("/queue/tls-fire-"+sd.name, body1K, persistent); err != nil {
					b.Fatal(err)
				}
			}
			if err := sd.fire.SendReceipt(context.Background(), "/queue/tls-fire-"+sd.name, body1K, persistent); err != nil {
				b.Fatal(err)
			}
			sd.took[1] += time.Since(start)
			sd.n[1] += slice + 1

			start = time.Now()
			for range 10 {
				c, err := sd.dial()
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			sd.took[2] += time.Since(start)
			sd.n[2] += 10
		}
	}
	rate := func(sd *side, k int) float64 { return float64(sd.n[k]) / sd.took[k].Seconds() }
	plain, tl := sides[0], sides[1]
	b.ReportMetric(0, "ns/op")
	for k, what := range []string{"receipted8", "unreceipted", "connects"} {
		b.ReportMetric(rate(plain, k), what+"-plain/s")
		b.ReportMetric(rate(tl, k), what+"-tls/s")
		b.ReportMetric(rate(tl, k)/rate(plain, k), what+"-tls-of-plain")
	}
	b.Logf("%s", fmt.Sprintf("receipted x8: plain %.0f, tls %.0f msgs/s; unreceipted: plain %.0f, tls %.0f msgs/s; connects: plain %.0f, tls %.0f /s",
		rate(plain, 0), rate(tl, 0), rate(plain, 1), rate(tl, 1), rate(plain, 2), rate(tl, 2)))
}
