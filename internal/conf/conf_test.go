package conf

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

type sample struct {
	Name    string   `toml:"name"`
	Timeout Duration `toml:"timeout"`
	Service []struct {
		Listen string `toml:"listen"`
	} `toml:"service"`
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		wantErr []string
	}{
		{"ok", "name = \"a\"\ntimeout = \"1500ms\"\n[[service]]\nlisten = \"x\"\n", nil},
		{"unknown top-level key", "name = \"a\"\nbogus = 1\n", []string{`f:2: unknown key "bogus"`}},
		{"unknown key in array table", "[[service]]\nlisten = \"x\"\nlistn = \"y\"\n", []string{`f:3: unknown key "service.listn"`}},
		{"bad duration", "timeout = \"10\"\n", []string{"f:1", "bad duration"}},
		{"syntax", "name = \n", []string{"f:1"}},
		{"two unknown keys", "a = 1\nb = 2\n", []string{`f:1: unknown key "a"`, `f:2: unknown key "b"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s sample
			_, err := Decode("f", tt.text, &s)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if s.Timeout.D() != 1500*time.Millisecond || s.Service[0].Listen != "x" {
					t.Fatalf("decoded %+v", s)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestKeyPositions(t *testing.T) {
	text := `# comment
[log]
level = "info"

[[service]]
name = "a"
[service.check]
interval = "1s"

[[service]]
name = "b"
listen = "x"
[service.check]
kind = "tcp"
`
	p := KeyPositions(text)
	for path, want := range map[string]int{
		"log.level":                  3,
		"service[0].name":            6,
		"service[0].check.interval":  8,
		"service[1]":                 10,
		"service[1].listen":          12,
		"service[1].check.kind":      14,
		"service[1].check.timeout":   13, // unset: its table's line
		"service[1].backends[2].url": 10,
	} {
		if got := p.Line(path); got != want {
			t.Errorf("Line(%q) = %d, want %d", path, got, want)
		}
	}
}

func TestResolveAddr(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{"127.0.0.1:61613", "127.0.0.1:61613", false},
		{`{{ GetAllInterfaces | include "name" "lo" | include "type" "IPv4" | attr "address" }}:61613`, "127.0.0.1:61613", false},
		{`{{ "fd00::2" }}:61613`, "[fd00::2]:61613", false},
		{`{{ GetAllInterfaces | include "name" "no-such-if0" | attr "address" }}:61613`, "", true},
		{`{{ Bogus }}:1`, "", true},
	}
	for _, tt := range tests {
		got, err := ResolveAddr(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ResolveAddr(%q) = %q, %v; want %q (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestListenReusePort(t *testing.T) {
	a, err := ListenReusePort(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// A second process (here: a second socket) binds the same address while
	// the first still listens, as a replacement sidecar does.
	b, err := ListenReusePort(context.Background(), a.Addr().String())
	if err != nil {
		t.Fatalf("second bind: %v", err)
	}
	b.Close()
	if _, err := net.Listen("tcp", a.Addr().String()); err == nil {
		t.Fatal("a listener without SO_REUSEPORT could bind too")
	}
}
