package pgtest

import (
	"context"
	"testing"
)

// TestStartStopKill exercises the life cycle the broker tests rely on: data
// committed before a Stop or a Kill is there after Start.
func TestStartStopKill(t *testing.T) {
	s := Start(t)
	ctx := context.Background()
	c := s.Conn()
	if _, err := c.Exec(ctx, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	s.Start()
	c = s.Conn()
	if _, err := c.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	s.Start()
	var n int
	if err := s.Conn().QueryRow(ctx, "SELECT sum(n) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("sum %d, want 3", n)
	}
}
