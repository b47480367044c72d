package sidecar

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"handover/brokerd"
	"handover/internal/testutil"
	"handover/stompclient"
)

// TestConfigCredentials: [service.credentials] and the stomp check's login
// keys are validated at load (so by -check and by a reload), each problem
// named by its key, and the passcode is read from its file or variable,
// never from the config file.
func TestConfigCredentials(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("s3cret\n"), 0o600)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	t.Setenv("HANDOVER_TEST_PASSCODE", "from-env")
	const head = "[[service]]\nname = \"a\"\nlisten = \":1\"\nbackends = [\"127.0.0.1:2\"]\n"
	tests := []struct {
		name, text string
		want       []string // substrings of the error; nil: valid
	}{
		{"credentials from a file", head + "protocol = \"stomp\"\n[service.credentials]\nlogin = \"app\"\npasscode_file = \"" + secret + "\"\n", nil},
		{"credentials from the environment", head + "protocol = \"stomp\"\n[service.credentials]\nlogin = \"app\"\npasscode_env = \"HANDOVER_TEST_PASSCODE\"\n", nil},
		{"check login", head + "[service.check]\nkind = \"stomp\"\nlogin = \"probe\"\npasscode_file = \"" + secret + "\"\nhost = \"/\"\n", nil},
		{"check login without passcode", head + "[service.check]\nkind = \"stomp\"\nlogin = \"probe\"\n", nil},
		{"credentials in tcp mode", head + "[service.credentials]\nlogin = \"app\"\npasscode_file = \"" + secret + "\"\n", []string{
			`f.toml:5: service[0].credentials: needs protocol = "stomp"`}},
		{"no login, no passcode", head + "protocol = \"stomp\"\n[service.credentials]\npasscode_env = \"HANDOVER_TEST_PASSCODE\"\n", []string{
			"service[0].credentials.login: required"}},
		{"no passcode source", head + "protocol = \"stomp\"\n[service.credentials]\nlogin = \"app\"\n", []string{
			"f.toml:6: service[0].credentials.passcode_file: a passcode_file or a passcode_env is required"}},
		{"both sources", head + "protocol = \"stomp\"\n[service.credentials]\nlogin = \"app\"\npasscode_file = \"" + secret + "\"\npasscode_env = \"HANDOVER_TEST_PASSCODE\"\n", []string{
			"f.toml:9: service[0].credentials.passcode_env: give passcode_file or passcode_env, not both"}},
		{"missing file", head + "protocol = \"stomp\"\n[service.credentials]\nlogin = \"app\"\npasscode_file = \"" + dir + "/nope\"\n", []string{
			"service[0].credentials.passcode_file: open " + dir + "/nope: no such file"}},
		{"empty file", head + "protocol = \"stomp\"\n[service.credentials]\nlogin = \"app\"\npasscode_file = \"" + empty + "\"\n", []string{
			"service[0].credentials.passcode_file: the passcode is empty"}},
		{"unset variable", head + "protocol = \"stomp\"\n[service.credentials]\nlogin = \"app\"\npasscode_env = \"HANDOVER_TEST_UNSET\"\n", []string{
			"service[0].credentials.passcode_env: environment variable HANDOVER_TEST_UNSET is not set"}},
		{"a passcode in the file", head + "protocol = \"stomp\"\n[service.credentials]\nlogin = \"app\"\npasscode = \"s3cret\"\n", []string{
			`unknown key "service.credentials.passcode": a passcode is never written in the config file; use passcode_file or passcode_env`}},
		{"login for a tcp check", head + "[service.check]\nkind = \"tcp\"\nlogin = \"probe\"\n", []string{
			`service[0].check.kind: login, passcode_file, passcode_env and host are sent by the stomp check only, not "tcp"`}},
		{"check passcode without login", head + "[service.check]\nkind = \"stomp\"\npasscode_env = \"HANDOVER_TEST_PASSCODE\"\n", []string{
			"service[0].check.login: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadText(t, tt.text)
			if !wantErrors(t, err, tt.want) {
				if strings.Contains(tt.name, "credentials") {
					c := cfg.Services[0].Credentials.credentials()
					pw, err := c.Passcode()
					if c.Login != "app" || err != nil || (pw != "s3cret" && pw != "from-env") {
						t.Errorf("credentials: login %q, passcode %q, %v", c.Login, pw, err)
					}
				}
				return
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("an error shows the passcode:\n%v", err)
			}
		})
	}
}

// TestCredentialsThroughSidecar: brokerd requires a login; a legacy client
// that sends none gets through a STOMP-mode service holding the sidecar's
// credentials, and the stomp check logs in with its own. A reload that
// points the check at a wrong passcode shows the backend as refusing the
// check's credentials, not as a dead broker.
func TestCredentialsThroughSidecar(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	var lines string
	for _, u := range [][2]string{{"app", "app-secret"}, {"probe", "probe-secret"}} {
		hash, _ := bcrypt.GenerateFromPassword([]byte(u[1]), bcrypt.MinCost)
		lines += u[0] + ":" + string(hash) + "\n"
	}
	os.WriteFile(users, []byte(lines), 0o600)
	appPass, probePass, wrong := filepath.Join(dir, "app"), filepath.Join(dir, "probe"), filepath.Join(dir, "wrong")
	os.WriteFile(appPass, []byte("app-secret\n"), 0o600)
	os.WriteFile(probePass, []byte("probe-secret\n"), 0o600)
	os.WriteFile(wrong, []byte("guess\n"), 0o600)
	broker := startBrokerWith(t, func(o *brokerd.Options) { o.UsersFile = users }).Addr()

	listen := testutil.FreePort(t)
	cfg := func(checkPass string) string {
		return fmt.Sprintf(`[log]
format = "json"
[admin]
listen = ""
[[service]]
name = "s"
listen = %q
backends = [%q]
protocol = "stomp"
timeout = "2s"
[service.credentials]
login = "app"
passcode_file = %q
[service.check]
kind = "stomp"
interval = "100ms"
login = "probe"
passcode_file = %q
`, listen, broker, appPass, checkPass)
	}
	h := startSidecar(t, cfg(probePass))
	h.waitMaster("s", broker)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := stompclient.Dial(ctx, listen, stompclient.Options{}) // no login
	if err != nil {
		t.Fatalf("a client without a login, through the sidecar: %v", err)
	}
	defer c.Close()
	sub, err := c.SubscribeReceipt(ctx, "/queue/creds", stompclient.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendReceipt(ctx, "/queue/creds", []byte("logged in by the sidecar")); err != nil {
		t.Fatal(err)
	}
	if f := testutil.Recv(t, sub, 10*time.Second); string(f.Body) != "logged in by the sidecar" {
		t.Fatalf("got %q", f.Body)
	}

	h.write(cfg(wrong))
	if err := h.reload(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		st := h.sc.status().Services[0]
		for _, b := range st.Health.Backends {
			if b.Addr == broker && b.CredentialsRefused && b.State == "down" {
				return nil
			}
		}
		return fmt.Errorf("backend not shown as refusing the check's credentials: %+v", st.Health.Backends)
	})
	var logged bool
	for _, l := range h.logLines() {
		msg, _ := l["msg"].(string)
		if strings.Contains(msg, "check credentials refused") && l["level"] == "error" {
			logged = true
		}
		for _, v := range l {
			if s, ok := v.(string); ok && strings.Contains(s, "secret") {
				t.Errorf("a log line shows a passcode: %v", l)
			}
		}
	}
	if !logged {
		t.Error("no error line saying the check's credentials were refused")
	}
}
