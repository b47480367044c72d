package frame

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

// withoutContentLength returns a copy of f without content-length headers.
// The Writer drops any content-length it is given and writes its own, so
// round trips compare frames modulo that header.
func withoutContentLength(f *Frame) *Frame {
	c := f.Clone()
	c.Del("content-length")
	return c
}

func TestAppend(t *testing.T) {
	tricky := func(cmd string) *Frame { return fr(cmd, "", "k:1\n\\\r", "a\nb:c\\d\re") }
	tests := []struct {
		name string
		f    *Frame
		v    Version
		want string
	}{
		{
			name: "1.2 escapes \\r \\n \\c \\\\ in keys and values",
			f:    tricky(SEND),
			v:    V12,
			want: "SEND\nk\\c1\\n\\\\\\r:a\\nb\\cc\\\\d\\re\ncontent-length:0\n\n\x00",
		},
		{
			name: "1.1 escapes \\n \\c \\\\ and leaves CR raw",
			f:    tricky(MESSAGE),
			v:    V11,
			want: "MESSAGE\nk\\c1\\n\\\\\r:a\\nb\\cc\\\\d\re\ncontent-length:0\n\n\x00",
		},
		{
			name: "1.0 escapes nothing; newline becomes a space",
			f:    fr(SEND, "", "k\\", "a\nb:c\\d\re\n"),
			v:    V10,
			want: "SEND\nk\\:a b:c\\d\re \ncontent-length:0\n\n\x00",
		},
		{
			name: "no version behaves as 1.0",
			f:    fr(SEND, "", "k", "a\nb\\n"),
			v:    "",
			want: "SEND\nk:a b\\n\ncontent-length:0\n\n\x00",
		},
		{
			name: "1.2 CONNECT is not escaped",
			f:    fr(CONNECT, "", "login", "a\nb:c\\d", "accept-version", "1.0,1.1,1.2"),
			v:    V12,
			want: "CONNECT\nlogin:a b:c\\d\naccept-version:1.0,1.1,1.2\n\n\x00",
		},
		{
			name: "1.1 STOMP is not escaped",
			f:    fr(STOMP, "", "host", "a\\b:c"),
			v:    V11,
			want: "STOMP\nhost:a\\b:c\n\n\x00",
		},
		{
			name: "1.2 CONNECTED is not escaped",
			f:    fr(CONNECTED, "", "server", "x\\y:1\r\n", "version", "1.2"),
			v:    V12,
			want: "CONNECTED\nserver:x\\y:1\r \nversion:1.2\n\n\x00",
		},
		{
			name: "given content-length is ignored and recomputed",
			f:    fr(SEND, "abc", "content-length", "99", "destination", "/q", "content-length", "x"),
			v:    V12,
			want: "SEND\ndestination:/q\ncontent-length:3\n\nabc\x00",
		},
		{
			name: "given content-length is ignored on a frame without body",
			f:    fr(SUBSCRIBE, "", "content-length", "5", "id", "0"),
			v:    V12,
			want: "SUBSCRIBE\nid:0\n\n\x00",
		},
		{
			name: "header names are case sensitive: Content-Length is just a header",
			f:    fr(SEND, "ab", "Content-Length", "7"),
			v:    V12,
			want: "SEND\nContent-Length:7\ncontent-length:2\n\nab\x00",
		},
		{
			name: "body with NULs",
			f:    fr(MESSAGE, "a\x00b\x00", "subscription", "0"),
			v:    V11,
			want: "MESSAGE\nsubscription:0\ncontent-length:4\n\na\x00b\x00\x00",
		},
		{
			name: "1.0 body gets content-length too",
			f:    fr(SEND, "hello"),
			v:    V10,
			want: "SEND\ncontent-length:5\n\nhello\x00",
		},
		{
			name: "SUBSCRIBE without body has no content-length",
			f:    fr(SUBSCRIBE, "", "id", "0", "destination", "/q"),
			v:    V12,
			want: "SUBSCRIBE\nid:0\ndestination:/q\n\n\x00",
		},
		{
			name: "any command with a body has content-length",
			f:    fr(SUBSCRIBE, "x", "id", "0"),
			v:    V12,
			want: "SUBSCRIBE\nid:0\ncontent-length:1\n\nx\x00",
		},
		{name: "empty SEND has content-length:0", f: fr(SEND, ""), v: V12, want: "SEND\ncontent-length:0\n\n\x00"},
		{name: "empty MESSAGE has content-length:0", f: fr(MESSAGE, ""), v: V12, want: "MESSAGE\ncontent-length:0\n\n\x00"},
		{name: "empty ERROR has content-length:0", f: fr(ERROR, "", "message", "bad"), v: V12, want: "ERROR\nmessage:bad\ncontent-length:0\n\n\x00"},
		{name: "DISCONNECT", f: fr(DISCONNECT, "", "receipt", "1"), v: V12, want: "DISCONNECT\nreceipt:1\n\n\x00"},
		{name: "empty key and value", f: fr(SEND, "", "", ""), v: V12, want: "SEND\n:\ncontent-length:0\n\n\x00"},
		{
			name: "repeated headers keep order",
			f:    fr(MESSAGE, "", "a", "1", "b", "2", "a", "3"),
			v:    V12,
			want: "MESSAGE\na:1\nb:2\na:3\ncontent-length:0\n\n\x00",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := tc.f.Clone()
			if got := string(Append(nil, tc.f, tc.v)); got != tc.want {
				t.Errorf("Append =\n%q\nwant\n%q", got, tc.want)
			}
			if got := string(Append([]byte("prefix"), tc.f, tc.v)); got != "prefix"+tc.want {
				t.Errorf("Append to a non-empty slice =\n%q", got)
			}
			if !sameFrame(tc.f, orig) {
				t.Errorf("Append changed its frame: %s", dump(tc.f))
			}
		})
	}
}

func TestWriter(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	f1 := fr(SEND, "a\x00b", "destination", "/q", "k", "a:b")
	f2 := fr(MESSAGE, "", "k", "x\ny")
	if err := w.Write(f1); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeartbeat(); err != nil {
		t.Fatal(err)
	}
	w.SetVersion(V10)
	if err := w.Write(f2); err != nil {
		t.Fatal(err)
	}
	want := string(Append(nil, f1, V12)) + "\n" + string(Append(nil, f2, V10))
	if out.Len() != 0 {
		t.Fatalf("%d bytes reached the writer before Flush", out.Len())
	}
	if n := w.Buffered(); n != len(want) {
		t.Fatalf("Buffered() = %d, want %d", n, len(want))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != want {
		t.Fatalf("wrote\n%q\nwant\n%q", got, want)
	}
	if n := w.Buffered(); n != 0 {
		t.Fatalf("Buffered() after Flush = %d", n)
	}
	if !strings.Contains(want, "k:a\\cb") || !strings.Contains(want, "k:x y") {
		t.Fatalf("versions not applied: %q", want)
	}
}

func TestWriterLargeFrame(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	big := fr(SEND, strings.Repeat("x", 2<<20), "destination", "/q")
	small := fr(SEND, "y")
	for _, f := range []*Frame{big, small} {
		if err := w.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	if w.buf != nil && cap(w.buf) > 1<<20 {
		t.Errorf("Writer kept a %d-byte buffer after a big frame", cap(w.buf))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&out, Limits{MaxBody: -1})
	for _, want := range []*Frame{big, small} {
		got, err := r.Read()
		if err != nil {
			t.Fatal(err)
		}
		if !sameFrame(withoutContentLength(got), want) {
			t.Fatalf("read back %d-byte body, want %d", len(got.Body), len(want.Body))
		}
	}
}

type errWriter struct{ err error }

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

func TestWriterErrors(t *testing.T) {
	boom := errors.New("boom")
	w := NewWriter(errWriter{boom})
	if err := w.Write(fr(SEND, "x")); err != nil {
		t.Fatalf("buffered Write failed early: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, boom) {
		t.Fatalf("Flush = %v, want %v", err, boom)
	}
	// bufio.Writer errors are sticky: later writes fail too.
	if err := w.Write(fr(SEND, "x")); !errors.Is(err, boom) {
		t.Fatalf("Write after failed Flush = %v, want %v", err, boom)
	}
	if err := w.WriteHeartbeat(); !errors.Is(err, boom) {
		t.Fatalf("WriteHeartbeat after failed Flush = %v, want %v", err, boom)
	}
	// A frame larger than the buffer goes straight to the writer.
	w = NewWriter(errWriter{boom})
	if err := w.Write(fr(SEND, strings.Repeat("x", 64<<10))); !errors.Is(err, boom) {
		t.Fatalf("Write of a frame over the buffer = %v, want %v", err, boom)
	}
}

// TestRoundTrip writes frames with awkward headers through a Writer and
// reads them back at the same version, through every reader wrapper.
func TestRoundTrip(t *testing.T) {
	// Representable in every version: no newline anywhere, no CR at the
	// end of a value, no colon in a key.
	common := []*Frame{
		fr(CONNECT, "", "accept-version", "1.0,1.1,1.2", "host", "h", "login", "us:er\\", "passcode", "p\\c:\\n\\\\"),
		fr(CONNECTED, "", "version", "1.2", "session", "a\\b:c", "server", "s\r/1"),
		fr(SEND, "", "destination", "/queue/a:b", "k\\", "\\c\\n\\r\\\\", "colons", ":::", "sp", " x "),
		fr(SEND, "a\x00b\x00\x00", "destination", "/q", "content-type", "application/octet-stream"),
		fr(SEND, "\n\r\n\x00SEND\n\n\x00", "destination", "/q"),
		fr(MESSAGE, "hello", "subscription", "0", "message-id", "1", "a", "1", "a", "2", "a", "3"),
		fr(MESSAGE, "", "k", "mid\rvalue", "empty", "", "", "empty key"),
		fr(SUBSCRIBE, "", "id", "0", "destination", "/topic/x", "ack", "client-individual"),
		fr(ERROR, "bad frame\n", "message", "malformed: no colon"),
		fr(DISCONNECT, "", "receipt", "77"),
		fr(BEGIN, "", "transaction", "tx\\1"),
		fr(SEND, "", "utf8", "héllo, wörld ☃"),
	}
	// Need escaping: newlines anywhere, colons in keys.
	escaped := []*Frame{
		fr(SEND, "", "key:with:colons", "v", "multi\nline\nkey", "multi\nline\nvalue", "nl", "\n", "end", "x\n"),
		fr(MESSAGE, "body", "json", "{\"a\":1,\n\"b\":\"c\\\\d\"}", "k\\:\n", "\\:\n"),
		fr(SEND, "", "cr", "\rstart and mid\r"[:14]),
	}
	// Need the 1.2 \r escape: a CR ending a value (1.1 would write it raw,
	// where it reads as part of the CRLF line ending).
	crEnd := []*Frame{
		fr(SEND, "", "cr", "value\r", "crlf", "a\r\n", "only", "\r"),
	}
	tests := []struct {
		v      Version
		frames []*Frame
	}{
		{V10, common},
		{V11, append(append([]*Frame{}, common...), escaped...)},
		{V12, append(append(append([]*Frame{}, common...), escaped...), crEnd...)},
	}
	for _, tc := range tests {
		t.Run(string(tc.v), func(t *testing.T) {
			var out bytes.Buffer
			w := NewWriter(&out)
			w.SetVersion(tc.v)
			for _, f := range tc.frames {
				if err := w.Write(f); err != nil {
					t.Fatal(err)
				}
				if err := w.WriteHeartbeat(); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			wire := out.String()
			for _, rw := range readerWraps {
				t.Run(rw.name, func(t *testing.T) {
					r := NewReader(rw.wrap(strings.NewReader(wire)), Limits{})
					r.SetVersion(tc.v)
					got, err := readAll(r)
					if err != io.EOF {
						t.Fatalf("after %d frames: %v", len(got), err)
					}
					if len(got) != len(tc.frames) {
						t.Fatalf("read %d frames, wrote %d", len(got), len(tc.frames))
					}
					for i, g := range got {
						if !sameFrame(withoutContentLength(g), tc.frames[i]) {
							t.Errorf("frame %d:\n got %s\nwant %s", i, dump(g), dump(tc.frames[i]))
						}
						if cl, ok := g.Get("content-length"); ok && cl != strconv.Itoa(len(g.Body)) {
							t.Errorf("frame %d: content-length %q for a %d-byte body", i, cl, len(g.Body))
						}
					}
				})
			}
		})
	}
}

// TestRoundTripLossy pins down what cannot survive the wire unchanged, so a
// change to it is deliberate: without escaping (1.0, CONNECT, CONNECTED) a
// newline is written as a space, and wherever CR is written raw (1.0, 1.1,
// CONNECT, CONNECTED) a CR ending a value is read as part of a CRLF.
func TestRoundTripLossy(t *testing.T) {
	tests := []struct {
		name      string
		v         Version
		f         *Frame
		key, want string
	}{
		{"1.0 newline becomes space", V10, fr(SEND, "", "k", "a\nb\n"), "k", "a b "},
		{"1.2 CONNECT newline becomes space", V12, fr(CONNECT, "", "k", "a\nb"), "k", "a b"},
		{"1.1 CONNECTED newline becomes space", V11, fr(CONNECTED, "", "k", "\n"), "k", " "},
		{"1.0 trailing CR is lost", V10, fr(SEND, "", "k", "a\r"), "k", "a"},
		{"1.1 trailing CR is lost", V11, fr(SEND, "", "k", "a\r"), "k", "a"},
		{"1.2 CONNECT trailing CR is lost", V12, fr(CONNECT, "", "k", "a\r"), "k", "a"},
		{"1.1 only one trailing CR is lost", V11, fr(SEND, "", "k", "a\r\r"), "k", "a\r"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(Append(nil, tc.f, tc.v)), Limits{})
			r.SetVersion(tc.v)
			g, err := r.Read()
			if err != nil {
				t.Fatal(err)
			}
			if got := g.Value(tc.key); got != tc.want {
				t.Errorf("%s round trip gave %q, want %q", tc.key, got, tc.want)
			}
		})
	}
}
