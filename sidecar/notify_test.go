package sidecar

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"handover/internal/testutil"
)

// TestSystemdNotify: started by systemd with Type=notify (NOTIFY_SOCKET
// set), the sidecar says READY=1 once it serves, RELOADING=1 (with
// MONOTONIC_USEC) then READY=1 around each SIGHUP, whether the reload is
// applied or rejected, and STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	expect := func(re string) {
		t.Helper()
		buf := make([]byte, 256)
		l.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := l.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %s: %v", re, err)
		}
		if !regexp.MustCompile(`^` + re + `$`).Match(buf[:n]) {
			t.Fatalf("systemd got %q, want %s", buf[:n], re)
		}
	}

	a := newEchoBackend(t, "127.0.0.1:0")
	path := filepath.Join(t.TempDir(), "proxy.toml")
	cfg := "[admin]\nlisten = \"\"\n" + serviceCfg("one", "127.0.0.1:0", []string{a.addr}, "")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := testutil.Start(t, "handover", testutil.Binary(t, "handover/cmd/handover"), "-config", path)
	expect(`READY=1`)

	reloading := `RELOADING=1\nMONOTONIC_USEC=[0-9]+`
	p.Signal(syscall.SIGHUP)
	expect(reloading)
	expect(`READY=1`)
	if err := os.WriteFile(path, []byte(cfg+"mode = \"leader\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP) // rejected: the running configuration stays, and serves
	expect(reloading)
	expect(`READY=1`)

	p.Signal(syscall.SIGTERM)
	expect(`STOPPING=1`)
	if err := p.Wait(15 * time.Second); err != nil {
		t.Fatalf("SIGTERM: %v (exit %d)", err, p.ExitCode())
	}
}
