package frame

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// sameFrame reports whether a and b have the same command, the same headers
// in the same order, and the same body. A nil and an empty header list or
// body are the same: the wire cannot tell them apart.
func sameFrame(a, b *Frame) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Command == b.Command &&
		len(a.Headers) == len(b.Headers) &&
		(len(a.Headers) == 0 || slices.Equal(a.Headers, b.Headers)) &&
		bytes.Equal(a.Body, b.Body)
}

// dump renders a frame completely (String omits the body and hides escapes).
func dump(f *Frame) string {
	if f == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q %q body=%q", f.Command, f.Headers, f.Body)
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		name      string
		accept    string
		supported []Version
		want      Version
		wantErr   bool
	}{
		{name: "missing header means 1.0", accept: "", want: V10},
		{name: "blank header means 1.0", accept: "  ", want: V10},
		{name: "1.0 only", accept: "1.0", want: V10},
		{name: "1.1 only", accept: "1.1", want: V11},
		{name: "1.2 only", accept: "1.2", want: V12},
		{name: "all three picks highest", accept: "1.0,1.1,1.2", want: V12},
		{name: "order does not matter", accept: "1.2,1.0,1.1", want: V12},
		{name: "spaces around versions", accept: " 1.0 , 1.1 ", want: V11},
		{name: "empty list element ignored", accept: "1.1,,1.0", want: V11},
		{name: "unknown versions ignored", accept: "1.1,2.0,1.3", want: V11},
		{name: "only unknown versions", accept: "2.0,1.3", wantErr: true},
		{name: "garbage", accept: "stomp", wantErr: true},
		{name: "server caps at 1.1", accept: "1.0,1.1,1.2", supported: []Version{V11, V10}, want: V11},
		{name: "supported order does not matter", accept: "1.0,1.1,1.2", supported: []Version{V10, V12, V11}, want: V12},
		{name: "server without 1.0, client 1.0 only", accept: "", supported: []Version{V12, V11}, wantErr: true},
		{name: "server 1.0 only, client 1.1+", accept: "1.1,1.2", supported: []Version{V10}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Negotiate(tc.accept, tc.supported...)
			if tc.wantErr {
				if !errors.Is(err, ErrNoCommonVersion) {
					t.Fatalf("Negotiate(%q, %v) = %q, %v; want ErrNoCommonVersion", tc.accept, tc.supported, got, err)
				}
				if got != "" {
					t.Errorf("version on error = %q, want empty", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Negotiate(%q, %v) = %q, %v; want %q", tc.accept, tc.supported, got, err, tc.want)
			}
		})
	}
}

func TestParseHeartBeat(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		in      string
		cx, cy  time.Duration
		wantErr bool
	}{
		{in: "", cx: 0, cy: 0},
		{in: "0,0", cx: 0, cy: 0},
		{in: "1000,5000", cx: 1000 * ms, cy: 5000 * ms},
		{in: " 10 , 20 ", cx: 10 * ms, cy: 20 * ms},
		{in: "0,10000", cx: 0, cy: 10000 * ms},
		{in: "2147483647,0", cx: 2147483647 * ms, cy: 0},
		{in: "2147483648,0", wantErr: true},
		{in: "10", wantErr: true},
		{in: "10,", wantErr: true},
		{in: ",10", wantErr: true},
		{in: ",", wantErr: true},
		{in: "a,b", wantErr: true},
		{in: "-1,0", wantErr: true},
		{in: "0,-1", wantErr: true},
		{in: "1.5,2", wantErr: true},
		{in: "10,20,30", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.in), func(t *testing.T) {
			cx, cy, err := ParseHeartBeat(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseHeartBeat(%q) = %v, %v, nil; want error", tc.in, cx, cy)
				}
				if cx != 0 || cy != 0 {
					t.Errorf("durations on error = %v, %v; want 0, 0", cx, cy)
				}
				return
			}
			if err != nil || cx != tc.cx || cy != tc.cy {
				t.Fatalf("ParseHeartBeat(%q) = %v, %v, %v; want %v, %v", tc.in, cx, cy, err, tc.cx, tc.cy)
			}
		})
	}
}

func TestEscapes(t *testing.T) {
	tests := []struct {
		command string
		v       Version
		want    bool
	}{
		{SEND, V10, false},
		{SEND, "", false},
		{SEND, V11, true},
		{SEND, V12, true},
		{MESSAGE, V12, true},
		{ERROR, V11, true},
		{CONNECT, V11, false},
		{CONNECT, V12, false},
		{STOMP, V12, false},
		{CONNECTED, V11, false},
		{CONNECTED, V12, false},
	}
	for _, tc := range tests {
		t.Run(tc.command+"/"+string(tc.v), func(t *testing.T) {
			if got := escapes(tc.command, tc.v); got != tc.want {
				t.Errorf("escapes(%q, %q) = %v, want %v", tc.command, tc.v, got, tc.want)
			}
		})
	}
}

func TestNew(t *testing.T) {
	f := New(SEND, "destination", "/q", "a", "1", "a", "2")
	want := &Frame{Command: SEND, Headers: []Header{{"destination", "/q"}, {"a", "1"}, {"a", "2"}}}
	if !sameFrame(f, want) {
		t.Fatalf("New = %s, want %s", dump(f), dump(want))
	}
	if f := New(DISCONNECT); f.Command != DISCONNECT || len(f.Headers) != 0 || f.Body != nil {
		t.Fatalf("New(DISCONNECT) = %s", dump(f))
	}
	defer func() {
		if recover() == nil {
			t.Fatal("New with an odd number of strings did not panic")
		}
	}()
	New(SEND, "destination")
}

func TestGetValue(t *testing.T) {
	f := New(MESSAGE, "a", "first", "empty", "", "a", "second")
	tests := []struct {
		key    string
		want   string
		wantOK bool
	}{
		{"a", "first", true}, // repeated: the first wins (1.2 "Repeated Header Entries")
		{"empty", "", true},
		{"missing", "", false},
		{"A", "", false}, // header names are case sensitive
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			got, ok := f.Get(tc.key)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("Get(%q) = %q, %v; want %q, %v", tc.key, got, ok, tc.want, tc.wantOK)
			}
			if v := f.Value(tc.key); v != tc.want {
				t.Errorf("Value(%q) = %q, want %q", tc.key, v, tc.want)
			}
		})
	}
}

func TestSetDelAdd(t *testing.T) {
	h := func(kv ...string) []Header { return New("", kv...).Headers }
	tests := []struct {
		name string
		in   []Header
		op   func(f *Frame)
		want []Header
	}{
		{
			name: "Set replaces first and drops repeats, keeping order",
			in:   h("a", "1", "b", "2", "a", "3", "c", "4", "a", "5"),
			op:   func(f *Frame) { f.Set("a", "x") },
			want: h("a", "x", "b", "2", "c", "4"),
		},
		{
			name: "Set of a later key keeps its position",
			in:   h("a", "1", "b", "2", "c", "3"),
			op:   func(f *Frame) { f.Set("b", "x") },
			want: h("a", "1", "b", "x", "c", "3"),
		},
		{
			name: "Set appends when absent",
			in:   h("a", "1"),
			op:   func(f *Frame) { f.Set("b", "2") },
			want: h("a", "1", "b", "2"),
		},
		{
			name: "Set on no headers",
			in:   nil,
			op:   func(f *Frame) { f.Set("a", "1") },
			want: h("a", "1"),
		},
		{
			name: "Set to empty value",
			in:   h("a", "1"),
			op:   func(f *Frame) { f.Set("a", "") },
			want: h("a", ""),
		},
		{
			name: "Del removes every repeat",
			in:   h("a", "1", "b", "2", "a", "3", "c", "4"),
			op:   func(f *Frame) { f.Del("a") },
			want: h("b", "2", "c", "4"),
		},
		{
			name: "Del of a missing key is a no-op",
			in:   h("a", "1", "b", "2"),
			op:   func(f *Frame) { f.Del("z") },
			want: h("a", "1", "b", "2"),
		},
		{
			name: "Del of the only header",
			in:   h("a", "1"),
			op:   func(f *Frame) { f.Del("a") },
			want: nil,
		},
		{
			name: "Del on no headers",
			in:   nil,
			op:   func(f *Frame) { f.Del("a") },
			want: nil,
		},
		{
			name: "Add appends a repeat after the original",
			in:   h("a", "1", "b", "2"),
			op:   func(f *Frame) { f.Add("a", "3") },
			want: h("a", "1", "b", "2", "a", "3"),
		},
		{
			name: "Add then Set collapses",
			in:   nil,
			op:   func(f *Frame) { f.Add("a", "1"); f.Add("a", "2"); f.Set("a", "3") },
			want: h("a", "3"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &Frame{Command: SEND, Headers: slices.Clone(tc.in)}
			tc.op(f)
			if len(f.Headers) != len(tc.want) || (len(tc.want) > 0 && !slices.Equal(f.Headers, tc.want)) {
				t.Fatalf("headers = %q, want %q", f.Headers, tc.want)
			}
		})
	}
}

func TestAddKeepsFirstForGet(t *testing.T) {
	f := New(SEND, "a", "1")
	f.Add("a", "2")
	if v := f.Value("a"); v != "1" {
		t.Fatalf("Value after Add = %q, want the first, %q", v, "1")
	}
}

func TestClone(t *testing.T) {
	tests := []struct {
		name string
		f    *Frame
	}{
		{"headers and body", &Frame{Command: MESSAGE, Headers: []Header{{"a", "1"}, {"a", "2"}, {"b", "3"}}, Body: []byte("hi\x00there")}},
		{"nil body", &Frame{Command: SUBSCRIBE, Headers: []Header{{"id", "0"}}}},
		{"no headers", &Frame{Command: DISCONNECT}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := &Frame{Command: tc.f.Command, Headers: slices.Clone(tc.f.Headers), Body: bytes.Clone(tc.f.Body)}
			c := tc.f.Clone()
			if c == tc.f {
				t.Fatal("Clone returned the same pointer")
			}
			if !sameFrame(c, tc.f) {
				t.Fatalf("Clone = %s, want %s", dump(c), dump(tc.f))
			}
			if tc.f.Body == nil && c.Body != nil {
				t.Errorf("Clone of a nil body = %q, want nil", c.Body)
			}
			// Mutating the clone in every way must leave the original alone.
			c.Set("a", "changed")
			c.Add("new", "x")
			c.Del("b")
			if len(c.Headers) > 0 {
				c.Headers[0].Value = "poked"
			}
			if len(c.Body) > 0 {
				c.Body[0] = 'X'
			}
			c.Command = ABORT
			if !sameFrame(tc.f, orig) {
				t.Fatalf("original changed through clone: %s, want %s", dump(tc.f), dump(orig))
			}
		})
	}
}

func TestString(t *testing.T) {
	f := New(SEND, "destination", "/q", "a", "b:c")
	f.Body = []byte("hello")
	if got, want := f.String(), "SEND destination:/q a:b:c (5 byte body)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := (&Frame{}).String(), " (0 byte body)"; got != want {
		t.Errorf("zero Frame String() = %q, want %q", got, want)
	}
}
