package brokerd

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"handover/internal/testutil"
)

// TestClusterIdentity: a broker starts only on storage that carries a
// cluster identity (the one its config names, if it names one), and says
// what to do otherwise.
func TestClusterIdentity(t *testing.T) {
	for _, tt := range []struct {
		name    string
		prepare func(t *testing.T, dir string) string // returns the -data to use
		want    string                                // "" for success
		cluster string                                // cluster_id to configure; "same" for the initialized one
	}{
		{"missing directory", func(t *testing.T, dir string) string { return filepath.Join(dir, "not-mounted") },
			"does not exist: not initialized. If it is shared storage, check that it is mounted", ""},
		{"empty directory", func(t *testing.T, dir string) string { return dir },
			"is not initialized (no cluster). If it is shared storage, check that it is mounted", ""},
		{"initialized", func(t *testing.T, dir string) string { mustInit(t, dir); return dir }, "", ""},
		{"initialized, cluster_id matches", func(t *testing.T, dir string) string { mustInit(t, dir); return dir }, "", "same"},
		{"another cluster", func(t *testing.T, dir string) string { mustInit(t, dir); return dir },
			"but cluster_id in the config is 0123", "0123"},
		{"damaged identity", func(t *testing.T, dir string) string {
			os.WriteFile(filepath.Join(dir, "cluster"), []byte("{"), 0o644)
			return dir
		}, "is damaged", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.prepare(t, t.TempDir())
			o := NewOptions()
			o.Listen, o.Admin, o.Data = "127.0.0.1:0", "127.0.0.1:0", data
			if tt.cluster == "same" {
				id, _ := ReadData(data)
				tt.cluster = id.ID
			}
			o.ClusterID = tt.cluster
			s, err := New(o)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				defer s.adminLn.Close()
				id, _ := ReadData(data)
				if got := s.Status().Cluster; got.ID != id.ID || got.ID == "" {
					t.Errorf("/status cluster %+v, want %+v", got, id)
				}
				return
			}
			if err == nil {
				s.adminLn.Close()
				t.Fatalf("New on %s succeeded, want an error containing %q", data, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || (strings.Contains(tt.name, "directory") && !strings.Contains(err.Error(), "brokerd -init -data "+data)) {
				t.Fatalf("New: %v\nwant it to contain %q (and say how to initialize)", err, tt.want)
			}
			if _, err := os.Stat(data); tt.name == "missing directory" && err == nil {
				t.Errorf("New created the missing data directory %s", data)
			}
		})
	}
	// -init refuses to overwrite an identity.
	dir := t.TempDir()
	first := mustInit(t, dir)
	if _, err := InitData(dir); err == nil || !strings.Contains(err.Error(), "already initialized (cluster "+first.ID) {
		t.Fatalf("a second InitData: %v, want it refused naming cluster %s", err, first.ID)
	}
}

func mustInit(t *testing.T, dir string) Identity {
	t.Helper()
	id, err := InitData(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestStandbyReady: a slave says whether it could take over now; one whose
// listen address is taken by another process says so, with the reason, in
// /status and /metrics, and is ready again once the address is free.
func TestStandbyReady(t *testing.T) {
	dir := t.TempDir()
	m := startServer(t, dir, nil)
	m.waitReady(t)
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	sl := startServer(t, dir, func(o *Options) { o.Listen = squatter.Addr().String() })
	standby := func() *standbyStatus {
		st := getStatus(t, sl.AdminAddr())
		if st.Role != RoleSlave || st.Standby == nil {
			return nil
		}
		return st.Standby
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if sb := standby(); sb == nil || sb.Ready || !strings.Contains(sb.NotReady, "listen: bind "+squatter.Addr().String()) {
			return fmt.Errorf("standby %+v, want not ready because the listen address is taken", sb)
		}
		return nil
	})
	if !strings.Contains(scrape(t, sl.AdminAddr()), "brokerd_standby_ready 0") {
		t.Error("/metrics does not say the slave is not ready")
	}
	squatter.Close()
	testutil.Eventually(t, 10*time.Second, func() error {
		if sb := standby(); sb == nil || !sb.Ready {
			return fmt.Errorf("standby %+v, want ready once the address is free", sb)
		}
		return nil
	})
	if !strings.Contains(scrape(t, sl.AdminAddr()), "brokerd_standby_ready 1") {
		t.Error("/metrics does not say the slave is ready")
	}
	// Its port stayed closed throughout: binding is not listening.
	if c, err := net.Dial("tcp", sl.opts.Listen); err == nil {
		c.Close()
		t.Fatal("the slave's STOMP port is open")
	}
}
