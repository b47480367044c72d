package bench

import (
	"context"
	"testing"
)

func BenchmarkSendReceiptNonPersistent(b *testing.B) {
	s := startBroker(b)
	c := dial(b, s.Addr())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.SendReceipt(context.Background(), "/queue/np", body1K); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
