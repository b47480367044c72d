package frame

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// readerWraps are the ways every reader test feeds its input: whole, a byte
// at a time, half of each read, and with io.EOF arriving together with the
// last data. The Reader must give the same answer through each.
var readerWraps = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{"Plain", func(r io.Reader) io.Reader { return r }},
	{"OneByte", iotest.OneByteReader},
	{"Half", iotest.HalfReader},
	{"DataErr", iotest.DataErrReader},
}

// readAll reads frames until the first error and returns both.
func readAll(r *Reader) ([]*Frame, error) {
	var frames []*Frame
	for {
		f, err := r.Read()
		if err != nil {
			if f != nil {
				return frames, fmt.Errorf("Read returned frame %s with error %w", dump(f), err)
			}
			return frames, err
		}
		frames = append(frames, f)
	}
}

// readCase is one reader test: in, read at version ver under lim, must yield
// the frames want and then the error err (io.EOF for a clean end).
type readCase struct {
	name string
	in   string
	ver  Version // "" leaves the Reader's default (1.2)
	lim  Limits
	want []*Frame
	err  error
}

// runReadCases runs each case through every reader wrapper.
func runReadCases(t *testing.T, cases []readCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, rw := range readerWraps {
				t.Run(rw.name, func(t *testing.T) {
					r := NewReader(rw.wrap(strings.NewReader(tc.in)), tc.lim)
					if tc.ver != "" {
						r.SetVersion(tc.ver)
					}
					frames, err := readAll(r)
					if !errors.Is(err, tc.err) {
						t.Errorf("final error = %v, want %v", err, tc.err)
					}
					if len(frames) != len(tc.want) {
						t.Fatalf("got %d frames, want %d:\n got %v", len(frames), len(tc.want), dumpAll(frames))
					}
					for i := range frames {
						if !sameFrame(frames[i], tc.want[i]) {
							t.Errorf("frame %d:\n got %s\nwant %s", i, dump(frames[i]), dump(tc.want[i]))
						}
					}
				})
			}
		})
	}
}

func dumpAll(fs []*Frame) []string {
	var out []string
	for _, f := range fs {
		out = append(out, dump(f))
	}
	return out
}

// fr builds an expected frame: command, body, then header key/value pairs.
func fr(command, body string, kv ...string) *Frame {
	f := New(command, kv...)
	if body != "" {
		f.Body = []byte(body)
	}
	return f
}

func TestReadEscaping(t *testing.T) {
	runReadCases(t, []readCase{
		// STOMP 1.0 has no escaping: backslashes are data.
		{
			name: "1.0 backslashes are literal",
			in:   "SEND\nk\\n:a\\cb\\\\c\\r\\t\n\n\x00",
			ver:  V10,
			want: []*Frame{fr(SEND, "", "k\\n", "a\\cb\\\\c\\r\\t")},
			err:  io.EOF,
		},
		{
			name: "1.0 lone trailing backslash is literal",
			in:   "SEND\nk:v\\\n\n\x00",
			ver:  V10,
			want: []*Frame{fr(SEND, "", "k", "v\\")},
			err:  io.EOF,
		},
		{
			name: "1.0 value keeps raw colons",
			in:   "SEND\nk:a:b::c\n\n\x00",
			ver:  V10,
			want: []*Frame{fr(SEND, "", "k", "a:b::c")},
			err:  io.EOF,
		},
		// STOMP 1.1: \n, \c and \\ in keys and values; \r is undefined.
		{
			name: "1.1 decodes \\n \\c \\\\",
			in:   "MESSAGE\nk\\c1\\n\\\\:a\\nb\\cc\\\\d\n\n\x00",
			ver:  V11,
			want: []*Frame{fr(MESSAGE, "", "k:1\n\\", "a\nb:c\\d")},
			err:  io.EOF,
		},
		{
			name: "1.1 \\\\ before n is a backslash then n",
			in:   "SEND\nk:\\\\n\n\n\x00",
			ver:  V11,
			want: []*Frame{fr(SEND, "", "k", "\\n")},
			err:  io.EOF,
		},
		{name: "1.1 \\r in value is an error", in: "SEND\nk:a\\rb\n\n\x00", ver: V11, err: ErrMalformed},
		{name: "1.1 \\r in key is an error", in: "SEND\nk\\r:v\n\n\x00", ver: V11, err: ErrMalformed},
		{name: "1.1 undefined escape \\t", in: "SEND\nk:a\\tb\n\n\x00", ver: V11, err: ErrMalformed},
		{name: "1.1 undefined escape in key", in: "SEND\n\\x:v\n\n\x00", ver: V11, err: ErrMalformed},
		{name: "1.1 lone trailing backslash", in: "SEND\nk:v\\\n\n\x00", ver: V11, err: ErrMalformed},
		{
			name: "1.1 raw CR inside a value is data",
			in:   "SEND\nk:a\rb\n\n\x00",
			ver:  V11,
			want: []*Frame{fr(SEND, "", "k", "a\rb")},
			err:  io.EOF,
		},
		// STOMP 1.2 adds \r.
		{
			name: "1.2 decodes \\r \\n \\c \\\\",
			in:   "SEND\nk\\r:\\r\\n\\c\\\\\n\n\x00",
			ver:  V12,
			want: []*Frame{fr(SEND, "", "k\r", "\r\n:\\")},
			err:  io.EOF,
		},
		{
			name: "default version is 1.2",
			in:   "SEND\nk:a\\rb\n\n\x00",
			want: []*Frame{fr(SEND, "", "k", "a\rb")},
			err:  io.EOF,
		},
		{name: "1.2 undefined escape \\t", in: "SEND\nk:a\\tb\n\n\x00", ver: V12, err: ErrMalformed},
		{name: "1.2 undefined escape \\C (case matters)", in: "SEND\nk:\\C\n\n\x00", ver: V12, err: ErrMalformed},
		{name: "1.2 lone trailing backslash", in: "SEND\nk:v\\\n\n\x00", ver: V12, err: ErrMalformed},
		{
			name: "1.2 value keeps spaces (no trimming)",
			in:   "SEND\nk: v \n\n\x00",
			ver:  V12,
			want: []*Frame{fr(SEND, "", "k", " v ")},
			err:  io.EOF,
		},
		{
			name: "1.2 raw colon in value is tolerated",
			in:   "SEND\nk:a:b\n\n\x00",
			ver:  V12,
			want: []*Frame{fr(SEND, "", "k", "a:b")},
			err:  io.EOF,
		},
		// CONNECT, STOMP and CONNECTED are never unescaped (1.2 "Value Encoding").
		{
			name: "1.1 CONNECT not unescaped",
			in:   "CONNECT\nlogin:a\\cb\\x\\r\\\n\n\x00",
			ver:  V11,
			want: []*Frame{fr(CONNECT, "", "login", "a\\cb\\x\\r\\")},
			err:  io.EOF,
		},
		{
			name: "1.2 CONNECT not unescaped",
			in:   "CONNECT\npasscode:p\\\\w\\n\n\n\x00",
			ver:  V12,
			want: []*Frame{fr(CONNECT, "", "passcode", "p\\\\w\\n")},
			err:  io.EOF,
		},
		{
			name: "1.2 STOMP not unescaped",
			in:   "STOMP\nhost:a\\b\n\n\x00",
			ver:  V12,
			want: []*Frame{fr(STOMP, "", "host", "a\\b")},
			err:  io.EOF,
		},
		{
			name: "1.1 CONNECTED not unescaped",
			in:   "CONNECTED\nserver:x\\y/1.0\n\n\x00",
			ver:  V11,
			want: []*Frame{fr(CONNECTED, "", "server", "x\\y/1.0")},
			err:  io.EOF,
		},
		{
			name: "1.2 CONNECTED not unescaped",
			in:   "CONNECTED\nsession:a\\cb\n\n\x00",
			ver:  V12,
			want: []*Frame{fr(CONNECTED, "", "session", "a\\cb")},
			err:  io.EOF,
		},
		{
			name: "1.2 escaping resumes after CONNECT",
			in:   "CONNECT\nk:a\\cb\n\n\x00SEND\nk:a\\cb\n\n\x00",
			ver:  V12,
			want: []*Frame{fr(CONNECT, "", "k", "a\\cb"), fr(SEND, "", "k", "a:b")},
			err:  io.EOF,
		},
	})
}

func TestReadContentLength(t *testing.T) {
	huge := "SEND\ncontent-length:999999999999\n\n0123456789"
	runReadCases(t, []readCase{
		{
			name: "body with NULs",
			in:   "SEND\ncontent-length:5\n\na\x00b\x00c\x00",
			want: []*Frame{fr(SEND, "a\x00b\x00c", "content-length", "5")},
			err:  io.EOF,
		},
		{
			name: "body of only NULs",
			in:   "SEND\ncontent-length:3\n\n\x00\x00\x00\x00",
			want: []*Frame{fr(SEND, "\x00\x00\x00", "content-length", "3")},
			err:  io.EOF,
		},
		{
			name: "zero length",
			in:   "SEND\ncontent-length:0\n\n\x00",
			want: []*Frame{fr(SEND, "", "content-length", "0")},
			err:  io.EOF,
		},
		{
			name: "whitespace around the length",
			in:   "SEND\ncontent-length: 3 \n\nabc\x00",
			want: []*Frame{fr(SEND, "abc", "content-length", " 3 ")},
			err:  io.EOF,
		},
		{
			name: "first of repeated content-length wins",
			in:   "SEND\ncontent-length:3\ncontent-length:1\n\nabc\x00",
			want: []*Frame{fr(SEND, "abc", "content-length", "3", "content-length", "1")},
			err:  io.EOF,
		},
		{
			name: "body may contain newlines and look like frames",
			in:   "SEND\ncontent-length:11\n\n\nSEND\n\n\x00\n\r\n\x00",
			want: []*Frame{fr(SEND, "\nSEND\n\n\x00\n\r\n", "content-length", "11")},
			err:  io.EOF,
		},
		{
			name: "1.1 escaped frame",
			in:   "MESSAGE\ncontent-length:2\nk:a\\cb\n\n\x00\x00\x00",
			ver:  V11,
			want: []*Frame{fr(MESSAGE, "\x00\x00", "content-length", "2", "k", "a:b")},
			err:  io.EOF,
		},
		{name: "mismatch: body longer than declared", in: "SEND\ncontent-length:2\n\nabc\x00", err: ErrMalformed},
		{name: "mismatch: no NUL after body", in: "SEND\ncontent-length:3\n\nabcSEND\n\n\x00", err: ErrMalformed},
		{name: "EOF inside declared body", in: "SEND\ncontent-length:10\n\nabc", err: io.ErrUnexpectedEOF},
		{name: "EOF before body", in: "SEND\ncontent-length:10\n\n", err: io.ErrUnexpectedEOF},
		{name: "EOF instead of the NUL", in: "SEND\ncontent-length:3\n\nabc", err: io.ErrUnexpectedEOF},
		{name: "negative", in: "SEND\ncontent-length:-1\n\n\x00", err: ErrMalformed},
		{name: "non-numeric", in: "SEND\ncontent-length:abc\n\n\x00", err: ErrMalformed},
		{name: "hex", in: "SEND\ncontent-length:0x10\n\n\x00", err: ErrMalformed},
		{name: "fractional", in: "SEND\ncontent-length:1.5\n\na\x00", err: ErrMalformed},
		{name: "empty", in: "SEND\ncontent-length:\n\n\x00", err: ErrMalformed},
		{name: "overflows int", in: "SEND\ncontent-length:99999999999999999999999\n\n\x00", err: ErrMalformed},
		{name: "bad first of repeated wins", in: "SEND\ncontent-length:x\ncontent-length:1\n\na\x00", err: ErrMalformed},
		// Regression: with no body limit, a declared length used to be
		// allocated up front; MaxInt made n+1 overflow and make panic.
		{name: "unlimited: MaxInt64 declared", in: "SEND\ncontent-length:9223372036854775807\n\nabc", lim: Limits{MaxBody: -1}, err: io.ErrUnexpectedEOF},
		{name: "unlimited: huge declared, short stream", in: huge, lim: Limits{MaxBody: -1}, err: io.ErrUnexpectedEOF},
		{name: "limited: huge declared", in: huge, lim: Limits{MaxBody: 1024}, err: ErrBodyTooLarge},
		{
			name: "no content-length: body runs to the first NUL",
			in:   "SEND\ndestination:/q\n\nhello\x00",
			want: []*Frame{fr(SEND, "hello", "destination", "/q")},
			err:  io.EOF,
		},
		{
			name: "no content-length: empty body",
			in:   "DISCONNECT\nreceipt:77\n\n\x00",
			want: []*Frame{fr(DISCONNECT, "", "receipt", "77")},
			err:  io.EOF,
		},
		{
			name: "no content-length: what follows the NUL is the next frame",
			in:   "SEND\n\nab\x00\nSEND\n\ncd\x00",
			want: []*Frame{fr(SEND, "ab"), fr(SEND, "cd")},
			err:  io.EOF,
		},
		{
			name: "no content-length: bytes after NUL are not a frame",
			in:   "SEND\n\nab\x00cd\x00",
			want: []*Frame{fr(SEND, "ab")},
			err:  io.ErrUnexpectedEOF, // "cd\x00" has no end of line
		},
		{name: "no content-length: EOF before NUL", in: "SEND\n\nabc", err: io.ErrUnexpectedEOF},
	})
}

// TestReadHugeContentLengthDoesNotAllocate checks that a declared length is
// not trusted for allocation: over MaxBody it fails at once, and with no
// limit memory grows only with the bytes that actually arrive.
func TestReadHugeContentLengthDoesNotAllocate(t *testing.T) {
	tests := []struct {
		name string
		lim  Limits
		err  error
	}{
		{"over MaxBody", Limits{MaxBody: 1024}, ErrBodyTooLarge},
		{"over default MaxBody", Limits{}, ErrBodyTooLarge},
		{"no limit", Limits{MaxBody: -1}, io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := "SEND\ncontent-length:999999999999\n\n" + strings.Repeat("x", 100)
			r := NewReader(strings.NewReader(in), tc.lim)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			f, err := r.Read()
			runtime.ReadMemStats(&after)
			if f != nil || !errors.Is(err, tc.err) {
				t.Fatalf("Read = %s, %v; want %v", dump(f), err, tc.err)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 256<<10 {
				t.Fatalf("Read allocated %d bytes for a 100-byte body", n)
			}
		})
	}
}

func TestReadLimits(t *testing.T) {
	send := func(headers, body string) string { return "SEND\n" + headers + "\n" + body + "\x00" }
	nHeaders := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "h%d:v\n", i)
		}
		return b.String()
	}
	nHeaderFrame := func(n int) *Frame {
		f := &Frame{Command: SEND}
		for i := range n {
			f.Add(fmt.Sprintf("h%d", i), "v")
		}
		return f
	}
	x := strings.Repeat
	mib := 1 << 20
	runReadCases(t, []readCase{
		// Body, declared by content-length.
		{
			name: "content-length body at MaxBody",
			in:   send("content-length:4\n", "abcd"),
			lim:  Limits{MaxBody: 4},
			want: []*Frame{fr(SEND, "abcd", "content-length", "4")},
			err:  io.EOF,
		},
		{name: "content-length body over MaxBody", in: send("content-length:5\n", "abcde"), lim: Limits{MaxBody: 4}, err: ErrBodyTooLarge},
		{
			name: "content-length body at default MaxBody",
			in:   send(fmt.Sprintf("content-length:%d\n", mib), x("b", mib)),
			want: []*Frame{fr(SEND, x("b", mib), "content-length", fmt.Sprint(mib))},
			err:  io.EOF,
		},
		{name: "content-length body over default MaxBody", in: send(fmt.Sprintf("content-length:%d\n", mib+1), x("b", mib+1)), err: ErrBodyTooLarge},
		{
			name: "content-length body with no limit",
			in:   send(fmt.Sprintf("content-length:%d\n", mib+1), x("b", mib+1)),
			lim:  Limits{MaxBody: -1},
			want: []*Frame{fr(SEND, x("b", mib+1), "content-length", fmt.Sprint(mib+1))},
			err:  io.EOF,
		},
		// Body, running to the NUL.
		{
			name: "NUL-terminated body at MaxBody",
			in:   send("", "abcd"),
			lim:  Limits{MaxBody: 4},
			want: []*Frame{fr(SEND, "abcd")},
			err:  io.EOF,
		},
		{name: "NUL-terminated body over MaxBody", in: send("", "abcde"), lim: Limits{MaxBody: 4}, err: ErrBodyTooLarge},
		// Over the limit as soon as a buffer fills: no need to wait for the NUL.
		{name: "NUL-terminated body over MaxBody, no NUL yet", in: "SEND\n\n" + x("b", 10000), lim: Limits{MaxBody: 100}, err: ErrBodyTooLarge},
		{
			// Bigger than the read buffer, so the body arrives in chunks.
			name: "NUL-terminated body at MaxBody, many buffers",
			in:   send("", x("b", 20000)),
			lim:  Limits{MaxBody: 20000},
			want: []*Frame{fr(SEND, x("b", 20000))},
			err:  io.EOF,
		},
		{name: "NUL-terminated body over MaxBody, many buffers", in: send("", x("b", 20001)), lim: Limits{MaxBody: 20000}, err: ErrBodyTooLarge},
		{
			name: "NUL-terminated body at default MaxBody",
			in:   send("", x("b", mib)),
			want: []*Frame{fr(SEND, x("b", mib))},
			err:  io.EOF,
		},
		{name: "NUL-terminated body over default MaxBody", in: send("", x("b", mib+1)), err: ErrBodyTooLarge},
		// Header count.
		{
			name: "headers at MaxHeaders",
			in:   send(nHeaders(3), ""),
			lim:  Limits{MaxHeaders: 3},
			want: []*Frame{nHeaderFrame(3)},
			err:  io.EOF,
		},
		{name: "headers over MaxHeaders", in: send(nHeaders(4), ""), lim: Limits{MaxHeaders: 3}, err: ErrTooManyHeaders},
		{name: "content-length counts as a header", in: send(nHeaders(3)+"content-length:0\n", ""), lim: Limits{MaxHeaders: 3}, err: ErrTooManyHeaders},
		{
			name: "headers at default MaxHeaders",
			in:   send(nHeaders(1000), ""),
			want: []*Frame{nHeaderFrame(1000)},
			err:  io.EOF,
		},
		{name: "headers over default MaxHeaders", in: send(nHeaders(1001), ""), err: ErrTooManyHeaders},
		{
			name: "headers with no limit",
			in:   send(nHeaders(1500), ""),
			lim:  Limits{MaxHeaders: -1},
			want: []*Frame{nHeaderFrame(1500)},
			err:  io.EOF,
		},
		// Header line length (the line ending does not count).
		{
			name: "header line at MaxLine",
			in:   send("k:"+x("v", 8)+"\n", ""),
			lim:  Limits{MaxLine: 10},
			want: []*Frame{fr(SEND, "", "k", x("v", 8))},
			err:  io.EOF,
		},
		{
			name: "header line at MaxLine with CRLF",
			in:   "SEND\r\nk:" + x("v", 8) + "\r\n\r\n\x00",
			lim:  Limits{MaxLine: 10},
			want: []*Frame{fr(SEND, "", "k", x("v", 8))},
			err:  io.EOF,
		},
		{name: "header line over MaxLine", in: send("k:"+x("v", 9)+"\n", ""), lim: Limits{MaxLine: 10}, err: ErrLineTooLong},
		{name: "header line over MaxLine with CRLF", in: "SEND\r\nk:" + x("v", 9) + "\r\n\r\n\x00", lim: Limits{MaxLine: 10}, err: ErrLineTooLong},
		{
			name: "1.2 escapes count before decoding",
			in:   send("k:"+x("\\c", 4)+"\n", ""),
			lim:  Limits{MaxLine: 10},
			want: []*Frame{fr(SEND, "", "k", x(":", 4))},
			err:  io.EOF,
		},
		{name: "1.2 escapes count before decoding, over", in: send("k:"+x("\\c", 5)+"\n", ""), lim: Limits{MaxLine: 10}, err: ErrLineTooLong},
		{
			name: "header line at default MaxLine",
			in:   send("k:"+x("v", 8190)+"\n", ""),
			want: []*Frame{fr(SEND, "", "k", x("v", 8190))},
			err:  io.EOF,
		},
		{
			name: "header line at default MaxLine with CRLF",
			in:   "SEND\r\nk:" + x("v", 8190) + "\r\n\r\n\x00",
			want: []*Frame{fr(SEND, "", "k", x("v", 8190))},
			err:  io.EOF,
		},
		{name: "header line over default MaxLine", in: send("k:"+x("v", 8191)+"\n", ""), err: ErrLineTooLong},
		{name: "header line far over default MaxLine", in: send("k:"+x("v", 100000)+"\n", ""), err: ErrLineTooLong},
		{name: "header line over default MaxLine, no newline", in: "SEND\nk:" + x("v", 100000), err: ErrLineTooLong},
		{
			name: "header line with no line limit",
			in:   send("k:"+x("v", 100000)+"\n", ""),
			lim:  Limits{MaxLine: -1},
			want: []*Frame{fr(SEND, "", "k", x("v", 100000))},
			err:  io.EOF,
		},
		{
			name: "no line limit is still bounded by 1 MiB",
			in:   send("k:"+x("v", mib-2)+"\n", ""),
			lim:  Limits{MaxLine: -1},
			want: []*Frame{fr(SEND, "", "k", x("v", mib-2))},
			err:  io.EOF,
		},
		{name: "no line limit is still bounded by 1 MiB, over", in: send("k:"+x("v", mib-1)+"\n", ""), lim: Limits{MaxLine: -1}, err: ErrLineTooLong},
		{name: "MaxLine above 1 MiB is capped", in: send("k:"+x("v", mib-1)+"\n", ""), lim: Limits{MaxLine: 2 * mib}, err: ErrLineTooLong},
		// Command line length.
		{
			name: "command line at MaxLine",
			in:   "SEND\n\n\x00",
			lim:  Limits{MaxLine: 4},
			want: []*Frame{fr(SEND, "")},
			err:  io.EOF,
		},
		{
			name: "command line at MaxLine with CRLF",
			in:   "SEND\r\n\r\n\x00",
			lim:  Limits{MaxLine: 4},
			want: []*Frame{fr(SEND, "")},
			err:  io.EOF,
		},
		{name: "command line over MaxLine", in: "SUBSCRIBE\n\n\x00", lim: Limits{MaxLine: 8}, err: ErrLineTooLong},
		{name: "command line over default MaxLine", in: x("A", 8193) + "\n\n\x00", err: ErrLineTooLong},
		{name: "command line over default MaxLine, no newline", in: x("A", 100000), err: ErrLineTooLong},
	})
}

func TestReadFraming(t *testing.T) {
	runReadCases(t, []readCase{
		{name: "empty stream", in: "", err: io.EOF},
		{name: "only heart-beats", in: "\n\r\n\n\r\n", err: io.EOF},
		{
			name: "CONNECT",
			in:   "CONNECT\naccept-version:1.0,1.1,1.2\nhost:stomp.example.org\nheart-beat:0,10000\n\n\x00",
			want: []*Frame{fr(CONNECT, "", "accept-version", "1.0,1.1,1.2", "host", "stomp.example.org", "heart-beat", "0,10000")},
			err:  io.EOF,
		},
		{
			name: "CRLF line endings",
			in:   "SEND\r\ndestination:/queue/a\r\ncontent-type:text/plain\r\n\r\nhello\r\n\x00",
			want: []*Frame{fr(SEND, "hello\r\n", "destination", "/queue/a", "content-type", "text/plain")},
			err:  io.EOF,
		},
		{
			name: "mixed LF and CRLF",
			in:   "SEND\r\na:1\nb:2\r\n\n\x00",
			want: []*Frame{fr(SEND, "", "a", "1", "b", "2")},
			err:  io.EOF,
		},
		{
			name: "heart-beats before, between and after frames",
			in:   "\n\r\n\nSEND\n\na\x00\n\r\n\n\nMESSAGE\r\n\r\nb\x00\r\n\n",
			want: []*Frame{fr(SEND, "a"), fr(MESSAGE, "b")},
			err:  io.EOF,
		},
		{
			name: "frames back to back",
			in:   "SEND\n\na\x00SEND\n\nb\x00",
			want: []*Frame{fr(SEND, "a"), fr(SEND, "b")},
			err:  io.EOF,
		},
		{
			name: "frame with no headers and no body",
			in:   "DISCONNECT\n\n\x00",
			want: []*Frame{fr(DISCONNECT, "")},
			err:  io.EOF,
		},
		{
			name: "repeated headers keep order",
			in:   "MESSAGE\nfoo:1\nbar:x\nfoo:2\nfoo:3\n\n\x00",
			want: []*Frame{fr(MESSAGE, "", "foo", "1", "bar", "x", "foo", "2", "foo", "3")},
			err:  io.EOF,
		},
		{
			name: "empty header value",
			in:   "SEND\nk:\n\n\x00",
			want: []*Frame{fr(SEND, "", "k", "")},
			err:  io.EOF,
		},
		{
			name: "unknown upper-case command is accepted",
			in:   "FOO\n\n\x00",
			want: []*Frame{fr("FOO", "")},
			err:  io.EOF,
		},
		{
			name: "32-letter command",
			in:   strings.Repeat("A", 32) + "\n\n\x00",
			want: []*Frame{fr(strings.Repeat("A", 32), "")},
			err:  io.EOF,
		},
		{
			name: "error after a good frame returns the good frame first",
			in:   "SEND\n\na\x00send\n\n\x00",
			want: []*Frame{fr(SEND, "a")},
			err:  ErrMalformed,
		},
		// EOF in the middle of a frame.
		{name: "EOF in command line", in: "SEN", err: io.ErrUnexpectedEOF},
		{name: "EOF after command", in: "SEND\n", err: io.ErrUnexpectedEOF},
		{name: "EOF in header line", in: "SEND\nk:v", err: io.ErrUnexpectedEOF},
		{name: "EOF after header", in: "SEND\nk:v\n", err: io.ErrUnexpectedEOF},
		{name: "EOF after CR", in: "SEND\nk:v\r", err: io.ErrUnexpectedEOF},
		{name: "EOF in body", in: "SEND\n\nbody", err: io.ErrUnexpectedEOF},
		{name: "EOF after blank line", in: "SEND\n\n", err: io.ErrUnexpectedEOF},
		{name: "EOF in second frame", in: "SEND\n\n\x00\nSEND\n", want: []*Frame{fr(SEND, "")}, err: io.ErrUnexpectedEOF},
		{name: "lone CR between frames", in: "SEND\n\n\x00\r", want: []*Frame{fr(SEND, "")}, err: io.ErrUnexpectedEOF},
		// Bad commands.
		{name: "lower-case command", in: "send\n\n\x00", err: ErrMalformed},
		{name: "mixed-case command", in: "Send\n\n\x00", err: ErrMalformed},
		{name: "command with digit", in: "SEND1\n\n\x00", err: ErrMalformed},
		{name: "command with trailing space", in: "SEND \n\n\x00", err: ErrMalformed},
		{name: "command with leading space", in: " SEND\n\n\x00", err: ErrMalformed},
		{name: "command with two CRs", in: "SEND\r\r\n\n\x00", err: ErrMalformed},
		{name: "33-letter command", in: strings.Repeat("A", 33) + "\n\n\x00", err: ErrMalformed},
		{name: "binary command", in: "\x16\x03\x01\x00\xa5\x01\x00\n\n\x00", err: ErrMalformed},
		{name: "NUL as command", in: "\x00\n", err: ErrMalformed},
		{name: "non-ASCII command", in: "SÉND\n\n\x00", err: ErrMalformed},
		{name: "HTTP request", in: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", err: ErrMalformed},
		{name: "stray NUL after frame", in: "SEND\n\n\x00\x00\n", want: []*Frame{fr(SEND, "")}, err: ErrMalformed},
		// Bad headers.
		{name: "header without colon", in: "SEND\nnocolon\n\n\x00", err: ErrMalformed},
		{name: "1.0 header without colon", in: "SEND\nnocolon\n\n\x00", ver: V10, err: ErrMalformed},
		{name: "CONNECT header without colon", in: "CONNECT\nhost\n\n\x00", err: ErrMalformed},
		{name: "whitespace-only header line", in: "SEND\n \n\n\x00", err: ErrMalformed},
	})
}

func TestReadGetFirstOfRepeated(t *testing.T) {
	r := NewReader(strings.NewReader("MESSAGE\nfoo:1\nbar:x\nfoo:2\n\n\x00"), Limits{})
	f, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Get("foo"); !ok || v != "1" {
		t.Errorf(`Get("foo") = %q, %v; want "1", true`, v, ok)
	}
}

func TestReaderAccessors(t *testing.T) {
	r := NewReader(strings.NewReader("SEND\n\n\x00\nSEND\n\n\x00"), Limits{})
	if v := r.Version(); v != V12 {
		t.Errorf("default Version() = %q, want %q", v, V12)
	}
	r.SetVersion(V10)
	if v := r.Version(); v != V10 {
		t.Errorf("Version() after SetVersion(1.0) = %q", v)
	}
	if n := r.Buffered(); n != 0 {
		t.Errorf("Buffered() before reading = %d, want 0", n)
	}
	if _, err := r.Read(); err != nil {
		t.Fatal(err)
	}
	if n, want := r.Buffered(), len("\nSEND\n\n\x00"); n != want {
		t.Errorf("Buffered() after one frame = %d, want %d", n, want)
	}
}

// TestReadPassesThroughErrors checks that an I/O error other than EOF
// reaches the caller unchanged, wherever in the frame it happens.
func TestReadPassesThroughErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, in := range []string{"", "SEND", "SEND\nk:v\n", "SEND\n\nbody", "SEND\ncontent-length:5\n\nab"} {
		t.Run(fmt.Sprintf("%q", in), func(t *testing.T) {
			r := NewReader(io.MultiReader(strings.NewReader(in), iotest.ErrReader(boom)), Limits{})
			if f, err := r.Read(); !errors.Is(err, boom) {
				t.Fatalf("Read = %s, %v; want %v", dump(f), err, boom)
			}
		})
	}
}

// TestReadVersionSwitch follows a real session: CONNECT is read before any
// version is known, then SetVersion changes how later frames decode.
func TestReadVersionSwitch(t *testing.T) {
	in := "CONNECT\naccept-version:1.1\n\n\x00SEND\nk:a\\cb\n\n\x00SEND\nk:a\\cb\n\n\x00SEND\nk:a\\rb\n\n\x00"
	for _, rw := range readerWraps {
		t.Run(rw.name, func(t *testing.T) {
			r := NewReader(rw.wrap(strings.NewReader(in)), Limits{})
			f, err := r.Read()
			if err != nil {
				t.Fatal(err)
			}
			v, err := Negotiate(f.Value("accept-version"))
			if err != nil || v != V11 {
				t.Fatalf("Negotiate = %q, %v", v, err)
			}
			r.SetVersion(v)
			if f, err := r.Read(); err != nil || f.Value("k") != "a:b" {
				t.Fatalf("1.1 frame = %s, %v", dump(f), err)
			}
			r.SetVersion(V10)
			if f, err := r.Read(); err != nil || f.Value("k") != "a\\cb" {
				t.Fatalf("1.0 frame = %s, %v", dump(f), err)
			}
			r.SetVersion(V11)
			if f, err := r.Read(); !errors.Is(err, ErrMalformed) {
				t.Fatalf("1.1 frame with \\r = %s, %v; want ErrMalformed", dump(f), err)
			}
		})
	}
}

func TestReadBodyNotAliased(t *testing.T) {
	// Bodies and header strings must not point into the Reader's buffer,
	// which the next Read overwrites.
	in := "SEND\nk:v1\n\nfirst\x00SEND\nk:v2\n\nsecond\x00SEND\ncontent-length:3\n\nabc\x00SEND\ncontent-length:3\n\nxyz\x00"
	r := NewReader(strings.NewReader(in), Limits{})
	var frames []*Frame
	for {
		f, err := r.Read()
		if err != nil {
			break
		}
		frames = append(frames, f)
	}
	want := []string{"first", "second", "abc", "xyz"}
	if len(frames) != len(want) {
		t.Fatalf("got %d frames", len(frames))
	}
	for i, f := range frames {
		if !bytes.Equal(f.Body, []byte(want[i])) {
			t.Errorf("frame %d body = %q, want %q", i, f.Body, want[i])
		}
	}
	if frames[0].Value("k") != "v1" || frames[1].Value("k") != "v2" {
		t.Errorf("headers changed: %s, %s", dump(frames[0]), dump(frames[1]))
	}
}
