package sidecar

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminToken: an admin port beyond loopback needs [admin] token_file,
// and with one every request but the health checks must carry the token,
// POST /reload included.
func TestAdminToken(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte(serviceCfg("a", "127.0.0.1:0", []string{"127.0.0.1:1"}, "")+"[admin]\nlisten = \"0.0.0.0:0\"\n"), 0o644)
	if _, err := LoadConfig(bad); err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Fatalf("an admin port on 0.0.0.0 without a token: %v", err)
	}
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("s3cret\n"), 0o600)
	h := startSidecar(t, serviceCfg("a", "127.0.0.1:0", []string{"127.0.0.1:1"}, "")+
		fmt.Sprintf("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = %q\n", token))
	base := "http://" + h.sc.adminLn.Addr().String()
	for _, tt := range []struct {
		method, path, auth string
		want               int
	}{
		{"GET", "/status", "", 401},
		{"POST", "/reload", "", 401},
		{"GET", "/status", "Bearer wrong", 401},
		{"GET", "/status", "Bearer s3cret", 200},
		{"GET", "/healthz", "", 200},
	} {
		req, _ := http.NewRequest(tt.method, base+tt.path, nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s %s with %q: %d, want %d", tt.method, tt.path, tt.auth, resp.StatusCode, tt.want)
		}
	}
}
