package testutil

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// BrowserDOM loads url in headless Chromium (Debian's chromium) and
// returns the page as the browser rendered it: what a person would see,
// markup included. It skips the test where Chromium is not installed
// (.ci/run installs it).
func BrowserDOM(t testing.TB, url string) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (apt-get install chromium)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// --no-sandbox: CI runs as root, where Chromium's sandbox refuses.
	out, err := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-dev-shm-usage", "--no-first-run", "--dump-dom", url).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v", url, err)
	}
	return string(out)
}
