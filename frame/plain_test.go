package frame

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestScanPlain(t *testing.T) {
	tight := Limits{MaxBody: 4, MaxHeaders: 2, MaxLine: 16}
	tests := []struct {
		name string
		in   string
		lim  Limits
		want int // bytes claimed; 0: not a complete plain frame
	}{
		{"minimal", "SEND\n\n\x00", Limits{}, 7},
		{"headers and body", "SEND\ndestination:/q\n\nhello\x00rest", Limits{}, 27},
		{"leading heart-beats", "\n\nSEND\n\n\x00", Limits{}, 9},
		{"content-length with NUL in body", "SEND\ncontent-length:3\n\na\x00b\x00", Limits{}, 27},
		{"first content-length counts", "SEND\ncontent-length:1\ncontent-length:x\n\na\x00", Limits{}, 42},
		{"incomplete body", "SEND\ncontent-length:3\n\nab", Limits{}, 0},
		{"no NUL yet", "SEND\n\nabc", Limits{}, 0},
		{"no NUL after content-length", "SEND\ncontent-length:1\n\nab\x00", Limits{}, 0},
		{"incomplete headers", "SEND\ndestination:/q\n", Limits{}, 0},
		{"CRLF", "SEND\r\n\r\n\x00", Limits{}, 0},
		{"CR in a header", "SEND\na:b\r\n\n\x00", Limits{}, 0},
		{"escape", "SEND\na:b\\cc\n\n\x00", Limits{}, 0},
		{"no colon", "SEND\nab\n\n\x00", Limits{}, 0},
		{"bad command", "send\n\n\x00", Limits{}, 0},
		{"spaced content-length", "SEND\ncontent-length: 1\n\na\x00", Limits{}, 0},
		{"negative content-length", "SEND\ncontent-length:-1\n\n\x00", Limits{}, 0},
		{"body at the limit", "SEND\n\nabcd\x00", tight, 11},
		{"body over the limit", "SEND\n\nabcde\x00", tight, 0},
		{"content-length over the limit", "SEND\ncontent-length:5\n\nabcde\x00", tight, 0},
		{"headers at the limit", "SEND\na:1\nb:2\n\n\x00", tight, 15},
		{"headers over the limit", "SEND\na:1\nb:2\nc:3\n\n\x00", tight, 0},
		{"line over the limit", "SEND\nabcdefgh:ijklmnopq\n\n\x00", tight, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, _, _, _ := scanPlain([]byte(tt.in), tt.lim)
			if n != tt.want {
				t.Fatalf("scanPlain(%q) = %d, want %d", tt.in, n, tt.want)
			}
		})
	}
}

func TestPeekPlain(t *testing.T) {
	plain := "SEND\ndestination:/q\n\none\x00\nSEND\ndestination:/q\n\ntwo\x00"
	kept := "SEND\ndestination:/q\nreceipt:r1\n\nthree\x00"
	tail := "SEND\ndestination:/q\n\nfour\x00"
	in := plain + kept + tail
	r := NewReader(strings.NewReader(in), Limits{})
	// Nothing is buffered yet: PeekPlain never reads.
	if got, _ := r.PeekPlain(func(_, _ []byte) bool { return true }); len(got) != 0 {
		t.Fatalf("PeekPlain before any read = %q", got)
	}
	if err := r.Fill(); err != nil || r.Buffered() != len(in) {
		t.Fatalf("Fill: %v, %d bytes buffered, want %d", err, r.Buffered(), len(in))
	}
	noReceipt := func(cmd, h []byte) bool { return string(cmd) == SEND && !HasHeader(h, "receipt") }
	got, _ := r.PeekPlain(noReceipt)
	if string(got) != plain {
		t.Fatalf("PeekPlain = %q, want %q", got, plain)
	}
	r.Discard(len(got))
	f, err := r.Read()
	if err != nil || f.Value("receipt") != "r1" {
		t.Fatalf("Read after the run = %v, %v; want the receipted SEND", f, err)
	}
	if got, _ := r.PeekPlain(noReceipt); string(got) != tail {
		t.Fatalf("PeekPlain = %q, want %q", got, tail)
	}
	r.Discard(len(tail))
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("Read at the end = %v, want EOF", err)
	}
	if err := r.Fill(); err != io.EOF {
		t.Fatalf("Fill at the end = %v, want EOF", err)
	}
}

func TestHasHeader(t *testing.T) {
	h := []byte("destination:/q\nreceipt:\nreceipts:x\n")
	for _, tt := range []struct {
		key  string
		want bool
	}{
		{"destination", true}, {"receipt", true}, {"receipts", true},
		{"transaction", false}, {"dest", false}, {"", false},
	} {
		if got := HasHeader(h, tt.key); got != tt.want {
			t.Errorf("HasHeader(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
}

// FuzzPeekPlain checks the fast path against Read: every frame scanPlain
// claims must be one Read accepts from exactly those bytes, with the same
// command and the same headers (HasHeader finds each of them).
func FuzzPeekPlain(f *testing.F) {
	f.Add([]byte("SEND\ndestination:/q\n\nhello\x00"))
	f.Add([]byte("\nSEND\ncontent-length:2\n\na\x00\x00MESSAGE\n\n\x00"))
	f.Add([]byte("SEND\na:b\nc:d\ne:f\n\nabcdefghi\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, lim := range fuzzLimits {
			rest := data
			for {
				n, need, cmd, hdrs := scanPlain(rest, lim)
				if need > 0 {
					// The start of a frame: completing it with the
					// bytes it says it lacks must give a frame.
					if n != 0 || need <= len(rest) {
						t.Fatalf("scanPlain(%q) = %d, need %d", rest, n, need)
					}
					full := append(append([]byte(nil), rest...), make([]byte, need-len(rest))...)
					if m, _, _, _ := scanPlain(full, lim); m != need {
						t.Fatalf("%q completed to %d bytes scans as %d", rest, need, m)
					}
				}
				if n == 0 {
					break
				}
				// Every cut of a claimed frame needs it whole, or is
				// not claimed.
				for cut := range n {
					if m, need, _, _ := scanPlain(rest[:cut], lim); m != 0 || need != 0 && need != n {
						t.Fatalf("scanPlain(%q, first %d of %d bytes) = %d, need %d", rest[:n], cut, n, m, need)
					}
				}
				for _, v := range []Version{V10, V11, V12} {
					r := NewReader(bytes.NewReader(rest[:n]), lim)
					r.SetVersion(v)
					fr, err := r.Read()
					if err != nil {
						t.Fatalf("scanPlain claimed %q (limits %+v) but Read at %s fails: %v", rest[:n], lim, v, err)
					}
					if fr.Command != string(cmd) {
						t.Fatalf("command %q, Read says %q", cmd, fr.Command)
					}
					if _, err := r.Read(); err != io.EOF {
						t.Fatalf("scanPlain claimed %d bytes of %q but Read left more: %v", n, rest[:n], err)
					}
					for _, h := range fr.Headers {
						if !HasHeader(hdrs, h.Key) {
							t.Fatalf("header %q of %q not found by HasHeader in %q", h.Key, rest[:n], hdrs)
						}
					}
				}
				rest = rest[n:]
			}
		}
	})
}

func TestNewReaderSize(t *testing.T) {
	in := strings.Repeat("SEND\n\nx\x00", 10000) // 80,000 bytes
	for _, tt := range []struct {
		size int
		lim  Limits
		want int // bytes one Fill buffers
	}{
		{16 << 10, Limits{}, 16 << 10},
		{100, Limits{}, DefaultLimits.MaxLine + 2}, // never below a whole line
		{100, Limits{MaxLine: 10}, 100},
	} {
		r := NewReaderSize(strings.NewReader(in), tt.lim, tt.size)
		if err := r.Fill(); err != nil {
			t.Fatal(err)
		}
		if got := r.Buffered(); got != tt.want {
			t.Errorf("size %d, limits %+v: Fill buffered %d bytes, want %d", tt.size, tt.lim, got, tt.want)
		}
	}
}

// chunks is a Reader that returns its parts one per Read.
type chunks []string

func (c *chunks) Read(p []byte) (int, error) {
	if len(*c) == 0 {
		return 0, io.EOF
	}
	n := copy(p, (*c)[0])
	(*c)[0] = (*c)[0][n:]
	if (*c)[0] == "" {
		*c = (*c)[1:]
	}
	return n, nil
}

// TestPeekPlainMore: a passable frame cut by the end of what has arrived is
// reported with the bytes that would complete it; FillTo waits for them and
// the frame is then claimed whole. A frame pass refuses, or one without a
// content-length, is not.
func TestPeekPlainMore(t *testing.T) {
	body := strings.Repeat("b", 100)
	frameBytes := "SEND\ndestination:/q\ncontent-length:100\n\n" + body + "\x00"
	all := func(_, _ []byte) bool { return true }
	c := chunks{frameBytes[:50], frameBytes[50:]}
	r := NewReader(&c, Limits{})
	if err := r.Fill(); err != nil {
		t.Fatal(err)
	}
	run, more := r.PeekPlain(all)
	if len(run) != 0 || more != len(frameBytes) {
		t.Fatalf("PeekPlain of a cut frame = %q, more %d; want none, more %d", run, more, len(frameBytes))
	}
	if _, more := r.PeekPlain(func(_, _ []byte) bool { return false }); more != 0 {
		t.Fatalf("more = %d for a frame pass refuses", more)
	}
	if err := r.FillTo(more); err != nil {
		t.Fatal(err)
	}
	if run, _ := r.PeekPlain(all); string(run) != frameBytes {
		t.Fatalf("after FillTo, PeekPlain = %q", run)
	}

	c = chunks{"SEND\ndestination:/q\n\nabc", "def\x00"}
	r = NewReader(&c, Limits{})
	r.Fill()
	if run, more := r.PeekPlain(all); len(run) != 0 || more != 0 {
		t.Fatalf("without content-length: run %q, more %d; want none, 0", run, more)
	}
}
