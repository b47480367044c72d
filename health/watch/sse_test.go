package watch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// readAll reads every block of in until an error, which it returns too.
func readAll(in io.Reader, lim Limits) ([]Message, error) {
	r := NewReader(in, lim)
	var ms []Message
	for {
		m, err := r.Next()
		if err != nil {
			return ms, err
		}
		ms = append(ms, m)
	}
}

// splits are the ways a stream may arrive: whole, a byte at a time (every
// line ending split from its line, CR from LF), and in halves.
var splits = map[string]func(io.Reader) io.Reader{
	"whole":   func(r io.Reader) io.Reader { return r },
	"onebyte": iotest.OneByteReader,
	"half":    iotest.HalfReader,
}

func ev(event, data string) Message { return Message{Event: event, Data: []byte(data)} }

var beat = Message{}

func TestReader(t *testing.T) {
	tests := []struct {
		name string
		in   string
		lim  Limits
		want []Message
		err  error
	}{
		{name: "empty", in: "", err: io.EOF},
		{name: "brokerd", in: "event: state\ndata: {\"role\":\"slave\"}\n\n: beat\n\n",
			want: []Message{ev("state", `{"role":"slave"}`), beat}, err: io.EOF},
		{name: "CRLF", in: "event: state\r\ndata: x\r\n\r\n", want: []Message{ev("state", "x")}, err: io.EOF},
		{name: "bare CR", in: "event: state\rdata: x\r\r: beat\r\r", want: []Message{ev("state", "x"), beat}, err: io.EOF},
		// CR, then CRLF: two line endings, so a blank line.
		{name: "CR CRLF", in: "data: x\r\r\n", want: []Message{ev("message", "x")}, err: io.EOF},
		{name: "multi-line data", in: "data: a\ndata:b\ndata\ndata:  c\n\n",
			want: []Message{ev("message", "a\nb\n\n c")}, err: io.EOF},
		{name: "empty data is an event", in: "data\n\n", want: []Message{ev("message", "")}, err: io.EOF},
		{name: "event without data is not", in: "event: state\n\ndata: x\n\n",
			want: []Message{beat, ev("message", "x")}, err: io.EOF},
		{name: "comments and unknown fields", in: ":hello\nretry: 10\nfoo: bar\nevent: state\n: beat\ndata: x\n\n",
			want: []Message{ev("state", "x")}, err: io.EOF},
		{name: "last event type wins", in: "event: a\nevent: b\ndata: x\n\n", want: []Message{ev("b", "x")}, err: io.EOF},
		{name: "id persists, NUL ignored", in: "id: 7\ndata: a\n\nid: 8\x00\ndata: b\n\n",
			want: []Message{{Event: "message", Data: []byte("a"), ID: "7"}, {Event: "message", Data: []byte("b"), ID: "7"}}, err: io.EOF},
		{name: "BOM dropped", in: "\xEF\xBB\xBFdata: x\n\n", want: []Message{ev("message", "x")}, err: io.EOF},
		{name: "BOM only at the start", in: "\n\xEF\xBB\xBFdata: x\n\n", want: []Message{beat, beat}, err: io.EOF},
		{name: "no blank line at the end", in: "data: x\n", err: io.ErrUnexpectedEOF},
		{name: "cut inside a line", in: "data: x\n\ndata: y", want: []Message{ev("message", "x")}, err: io.ErrUnexpectedEOF},
		{name: "line at the limit", in: "data: 12345\n\n", lim: Limits{MaxLine: 11}, want: []Message{ev("message", "12345")}, err: io.EOF},
		{name: "line over the limit", in: "data: 123456\n\n", lim: Limits{MaxLine: 11}, err: ErrLineTooLong},
		{name: "endless line", in: strings.Repeat("a", 100<<10), err: ErrLineTooLong},
		{name: "endless comment line", in: ":" + strings.Repeat("a", 100<<10), err: ErrLineTooLong},
		{name: "data at the limit", in: "data: abc\ndata: d\n\n", lim: Limits{MaxData: 6}, want: []Message{ev("message", "abc\nd")}, err: io.EOF},
		{name: "data over the limit", in: "data: abc\ndata: de\n\n", lim: Limits{MaxData: 6}, err: ErrDataTooLarge},
		{name: "endless block", in: strings.Repeat("data: 0123456789\n", 10<<10), err: ErrDataTooLarge},
	}
	for _, tt := range tests {
		for name, split := range splits {
			t.Run(tt.name+"/"+name, func(t *testing.T) {
				got, err := readAll(split(strings.NewReader(tt.in)), tt.lim)
				if !errors.Is(err, tt.err) {
					t.Errorf("error %v, want %v", err, tt.err)
				}
				if !sameMessages(got, tt.want) {
					t.Errorf("got %s\nwant %s", dumpMessages(got), dumpMessages(tt.want))
				}
			})
		}
	}
}

// TestReaderPassesReadErrors: an error of the underlying reader (a
// deadline, on a connection) comes back as it is, so that the caller can
// tell a stall from a protocol error.
func TestReaderPassesReadErrors(t *testing.T) {
	r := NewReader(iotest.TimeoutReader(strings.NewReader("data: x\n\n: beat\n\n")), Limits{})
	if m, err := r.Next(); err != nil || m.Event != "message" {
		t.Fatalf("first block: %+v, %v", m, err)
	}
	if _, err := r.Next(); err != nil {
		t.Fatalf("second block (buffered): %v", err)
	}
	if _, err := r.Next(); !errors.Is(err, iotest.ErrTimeout) {
		t.Fatalf("third: %v, want the reader's timeout", err)
	}
}

// TestReaderBoundsMemory: whatever a server sends, the reader holds no
// more than its limits (plus its fixed read buffer).
func TestReaderBoundsMemory(t *testing.T) {
	lim := Limits{MaxLine: 100, MaxData: 1000}
	r := NewReader(strings.NewReader(strings.Repeat("data: "+strings.Repeat("x", 90)+"\n", 1000)), lim)
	if _, err := r.Next(); !errors.Is(err, ErrDataTooLarge) {
		t.Fatalf("error %v, want ErrDataTooLarge", err)
	}
	if cap(r.line) > 2*lim.MaxLine || cap(r.data) > 2*lim.MaxData {
		t.Errorf("buffers grew to line %d, data %d bytes", cap(r.line), cap(r.data))
	}
}

func sameMessages(a, b []Message) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Event != b[i].Event || a[i].ID != b[i].ID || !bytes.Equal(a[i].Data, b[i].Data) {
			return false
		}
	}
	return true
}

func dumpMessages(ms []Message) string {
	var s strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&s, "{%q %q id %q} ", m.Event, m.Data, m.ID)
	}
	return "[" + strings.TrimSpace(s.String()) + "]"
}

// reference parses an event stream the way the standard describes it, on
// the whole input at once and without caring for memory: line endings
// normalized to LF, then split. FuzzReader holds the Reader to it.
func reference(in []byte, lim Limits) ([]Message, error) {
	lim = lim.withDefaults()
	s := strings.ReplaceAll(strings.ReplaceAll(string(in), "\r\n", "\n"), "\r", "\n")
	lines := strings.Split(s, "\n")
	last := lines[len(lines)-1] // "" when the input ended with a line ending
	lines = lines[:len(lines)-1]
	var ms []Message
	var data []byte
	var event, id string
	hasData, inBlock := false, false
	for i, line := range lines {
		if len(line) > lim.MaxLine {
			return ms, ErrLineTooLong
		}
		if i == 0 {
			line = strings.TrimPrefix(line, string(bom))
		}
		if line == "" {
			m := Message{ID: id}
			if hasData {
				m.Event, m.Data = event, bytes.Clone(data[:len(data)-1])
				if m.Event == "" {
					m.Event = "message"
				}
			}
			ms = append(ms, m)
			data, event, hasData, inBlock = nil, "", false, false
			continue
		}
		inBlock = true
		if line[0] == ':' {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			event = value
		case "data":
			if len(data)+len(value)+1 > lim.MaxData {
				return ms, ErrDataTooLarge
			}
			data = append(append(data, value...), '\n')
			hasData = true
		case "id":
			if !strings.Contains(value, "\x00") {
				id = value
			}
		}
	}
	switch {
	case len(last) > lim.MaxLine:
		return ms, ErrLineTooLong
	case last != "" || inBlock:
		return ms, io.ErrUnexpectedEOF
	}
	return ms, io.EOF
}

// FuzzReader reads arbitrary bytes, whole and split across reads, under
// the default limits and tight ones. The Reader must not panic, must end
// with io.EOF, io.ErrUnexpectedEOF or a limit's error, must return what
// the standard's plain reading (reference) returns, and must keep every
// line and block within its limits.
func FuzzReader(f *testing.F) {
	f.Add([]byte("event: state\ndata: {\"role\":\"slave\"}\n\n: beat\n\n"))
	f.Add([]byte("event: state\r\ndata: a\r\ndata: b\r\r\n\r"))
	f.Add([]byte("\xEF\xBB\xBFid: 1\x00\nretry: 5\ndata\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, lim := range []Limits{{}, {MaxLine: 8, MaxData: 12}} {
			want, wantErr := reference(in, lim)
			for name, split := range splits {
				got, err := readAll(split(bytes.NewReader(in)), lim)
				if !errors.Is(err, wantErr) {
					t.Fatalf("%+v %s: error %v, want %v", lim, name, err, wantErr)
				}
				if !sameMessages(got, want) {
					t.Fatalf("%+v %s: got %s\nwant %s", lim, name, dumpMessages(got), dumpMessages(want))
				}
				eff := lim.withDefaults()
				for _, m := range got {
					if len(m.Data) >= eff.MaxData {
						t.Fatalf("%+v %s: %d bytes of data, over MaxData", lim, name, len(m.Data))
					}
				}
			}
		}
	})
}
