package brokerd

import (
	"bytes"
	"reflect"
	"testing"

	"handover/frame"
)

// readerParse is what frame.Reader makes of data: parseStored's reference.
func readerParse(data []byte) (*frame.Frame, error) {
	lim := frame.Limits{MaxBody: -1, MaxHeaders: -1, MaxLine: len(data) + 1}
	return frame.NewReaderSize(bytes.NewReader(data), lim, len(data)+16).Read()
}

// checkParseStored fails t if parseStored takes data and makes of it
// anything other than the reader does.
func checkParseStored(t *testing.T, data []byte) *frame.Frame {
	t.Helper()
	got := parseStored(data)
	if got == nil {
		return nil
	}
	want, err := readerParse(data)
	if err != nil {
		t.Fatalf("parseStored took %q, which the reader rejects: %v", data, err)
	}
	if got.Command != want.Command || !reflect.DeepEqual(got.Headers, want.Headers) || !bytes.Equal(got.Body, want.Body) {
		t.Fatalf("parseStored(%q) = %+v, the reader %+v", data, got, want)
	}
	// The body is the frame's own: data is often part of a larger read
	// that a kept body must not hold in memory.
	scratch := bytes.Clone(data)
	if g := parseStored(scratch); g != nil && len(g.Body) > 0 {
		clear(scratch)
		if !bytes.Equal(g.Body, want.Body) {
			t.Fatalf("parseStored(%q): the body shares the record's bytes", data)
		}
	}
	return got
}

// TestParseStored: what putRecord stores is parsed as the reader parses it,
// escapes included, on the fast path; what it could not have stored is
// left to the reader.
func TestParseStored(t *testing.T) {
	for _, c := range []struct {
		name string
		f    *frame.Frame
		fast bool
	}{
		{"plain", frame.New(frame.MESSAGE, "destination", "/queue/a", "message-id", "ID:1-2", "persistent", "true"), true},
		{"body with NULs and newlines", &frame.Frame{Command: frame.MESSAGE, Headers: []frame.Header{{Key: "destination", Value: "/queue/a"}}, Body: []byte("a\x00b\n\nc\x00")}, true},
		{"empty body", &frame.Frame{Command: frame.MESSAGE, Headers: []frame.Header{{Key: "destination", Value: "/queue/a"}}, Body: []byte{}}, true},
		{"colon in a value", frame.New(frame.MESSAGE, "destination", "/queue/a", "x", "a:b"), true},
		{"newline in a value", frame.New(frame.MESSAGE, "destination", "/queue/a", "x", "a\nb"), true},
		{"backslash in a key", frame.New(frame.MESSAGE, "destination", "/queue/a", `k\`, "v"), true},
		{"carriage return", frame.New(frame.MESSAGE, "destination", "/queue/a", "x", "a\rb"), true},
		{"repeated header", frame.New(frame.MESSAGE, "destination", "/queue/a", "x", "1", "x", "2"), true},
		{"empty value", frame.New(frame.MESSAGE, "destination", "/queue/a", "x", ""), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.f.Body == nil {
				c.f.Body = []byte("hello")
			}
			data := frame.Append(nil, c.f, frame.V12)
			got := checkParseStored(t, data)
			if (got != nil) != c.fast {
				t.Fatalf("fast path taken: %v, want %v", got != nil, c.fast)
			}
			f, err := parseMessage(&message{id: "m"}, data)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(f.Body, c.f.Body) {
				t.Fatalf("body %q, want %q", f.Body, c.f.Body)
			}
		})
	}
	for _, data := range []string{
		"MESSAGE\ncontent-length:3\n\nabc",           // no NUL
		"MESSAGE\ncontent-length:3\n\nabcd\x00",      // longer than said
		"MESSAGE\ncontent-length:3\n\nab\x00",        // shorter
		"MESSAGE\ncontent-length:x\n\nabc\x00",       // not a number
		"MESSAGE\ncontent-length:-1\n\n\x00",         // negative
		"MESSAGE\nnocolon\ncontent-length:0\n\n\x00", // no colon
		"SEND\ncontent-length:0\n\n\x00",             // not a MESSAGE
		"MESSAGE\ncontent-length:0\n",                // no end of headers
		"MESSAGE\n\n\x00",                            // no content-length
	} {
		if f := parseStored([]byte(data)); f != nil {
			t.Errorf("parseStored(%q) = %+v, want nil", data, f)
		}
	}
}

// FuzzParseStored: whatever parseStored takes, the reader parses alike.
func FuzzParseStored(f *testing.F) {
	f.Add(frame.Append(nil, frame.New(frame.MESSAGE, "destination", "/queue/a", "message-id", "ID:1-2"), frame.V12))
	f.Add([]byte("MESSAGE\ncontent-length:1\nk:v\n\na\x00"))
	f.Add([]byte("MESSAGE\nk:v:w\ncontent-length:0\ncontent-length:5\n\n\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParseStored(t, data)
	})
}
