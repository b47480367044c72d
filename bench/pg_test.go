package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"handover/brokerd"
	"handover/brokerd/pgstore"
	"handover/brokerd/store"
	"handover/internal/brokertest"
	"handover/internal/pgtest"
	"handover/lockstore"
	"handover/stompclient"
)

// BenchmarkPGSendReceipt: persistent 1 KiB SENDs, each waiting for its
// RECEIPT, on 1 and 8 connections, with the messages in PostgreSQL (a
// throwaway local server with fsync on, started here) and, side by side, in
// the file journal. A RECEIPT waits for a commit (WAL flush) or an fsync;
// recs/commit shows how many producers shared each one.
func BenchmarkPGSendReceipt(b *testing.B) {
	srv := pgtest.Start(b)
	for _, store := range []string{"postgres", "journal"} {
		for _, conns := range []int{1, 8} {
			b.Run(fmt.Sprintf("store=%s/conns=%d", store, conns), func(b *testing.B) {
				var s *brokerd.Server
				if store == "postgres" {
					s = startPGBroker(b, srv)
				} else {
					s = startBroker(b)
				}
				sendReceipts(b, s, conns)
				if st := s.Status().Journal; st != nil && st.Syncs > 0 {
					b.ReportMetric(float64(st.Records)/float64(st.Syncs), "recs/commit")
				}
			})
		}
	}
}

// sendReceipts sends b.N receipted persistent messages over conns
// connections and reports msgs/s.
func sendReceipts(b *testing.B, s *brokerd.Server, conns int) {
	cs := make([]*stompclient.Conn, conns)
	for i := range cs {
		cs[i] = dial(b, s.Addr())
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	per := (b.N + conns - 1) / conns
	for i := range cs {
		wg.Add(1)
		go func(c *stompclient.Conn) {
			defer wg.Done()
			for j := 0; j < per; j++ {
				if err := c.SendReceipt(context.Background(), "/queue/bench", body1K, persistent); err != nil {
					b.Error(err)
					return
				}
			}
		}(cs[i])
	}
	wg.Wait()
	b.ReportMetric(float64(per*conns)/b.Elapsed().Seconds(), "msgs/s")
}

// startPGBroker runs a broker whose lock and store are srv's database,
// emptied first so that every run starts without a backlog.
func startPGBroker(b *testing.B, srv *pgtest.Server) *brokerd.Server {
	b.Helper()
	ctx := context.Background()
	if _, err := srv.Conn().Exec(ctx, "DROP TABLE IF EXISTS handover_messages, handover_acks, handover_ack_trim, handover_producers, handover_users, handover_users_version, handover_schema_version; DROP FUNCTION IF EXISTS handover_fence, handover_users_changed"); err != nil {
		b.Fatal(err)
	}
	quiet := logrus.New()
	quiet.SetLevel(logrus.ErrorLevel)
	log := logrus.NewEntry(quiet)
	locker, err := lockstore.NewPostgres(lockstore.PostgresOptions{DSN: srv.DSN(), Log: log})
	if err != nil {
		b.Fatal(err)
	}
	br := brokertest.Start(b, "", func(o *brokerd.Options) {
		o.Log = log
		o.Locker = locker
		o.StoreName = locker.String()
		o.Store = func(log *logrus.Entry) (store.Standby, error) {
			octx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			sb, err := pgstore.Follow(octx, pgstore.Options{DSN: srv.DSN(), Log: log})
			if err != nil {
				return nil, err
			}
			return sb, nil
		}
	})
	br.WaitReady(b)
	return br.Server
}
