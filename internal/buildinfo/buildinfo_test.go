package buildinfo

import (
	"runtime"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	i := Read()
	if i.Version == "" || i.GoVersion != runtime.Version() {
		t.Fatalf("Read() = %+v", i)
	}
	s := i.String()
	if !strings.HasPrefix(s, i.Version+" (") || !strings.Contains(s, runtime.Version()) {
		t.Fatalf("String() = %q", s)
	}
	for _, tt := range []struct {
		in   Info
		want string
	}{
		{Info{Version: "v1.2.3", Commit: "abc", Date: "2026-12-07T10:00:00Z", GoVersion: "go1.26"}, "v1.2.3 (commit abc, built from a commit of 2026-12-07T10:00:00Z, go1.26)"},
		{Info{Version: "devel", GoVersion: "go1.26"}, "devel (go1.26)"},
	} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}
