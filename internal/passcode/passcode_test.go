package passcode

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o600)
		return p
	}
	t.Setenv("PASSCODE_TEST", "from-env")
	for _, tt := range []struct {
		name string
		src  Source
		want string // the passcode, or a part of the error
		ok   bool
	}{
		{"file with a line break", File(write("a", "s3cret\n")), "s3cret", true},
		{"file with CRLF", File(write("b", "s3cret\r\n")), "s3cret", true},
		{"environment", Env("PASSCODE_TEST"), "from-env", true},
		{"missing file", File(filepath.Join(dir, "nope")), "nope: no such file", false},
		{"empty file", File(write("c", "")), "the passcode is empty", false},
		{"two lines", File(write("d", "a\nb\n")), "line break or NUL", false},
		{"unset variable", Env("PASSCODE_TEST_UNSET"), "PASSCODE_TEST_UNSET is not set", false},
	} {
		p, err := Read(tt.src)
		switch {
		case tt.ok && (err != nil || p != tt.want):
			t.Errorf("%s: %q, %v; want %q", tt.name, p, err, tt.want)
		case !tt.ok && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: %q, %v; want an error with %q", tt.name, p, err, tt.want)
		}
	}
}
