// Package conf holds what brokerd's and handover's configuration files share:
// strict TOML decoding (unknown keys are errors, reported with their line) and
// a Duration type written as Go duration strings.
package conf

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Duration is a time.Duration written in TOML as a Go duration string
// ("500ms", "10s").
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("bad duration %q (want a Go duration such as 500ms or 10s)", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText renders d as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String renders d as a Go duration string.
func (d Duration) String() string { return time.Duration(d).String() }

// LoadFile decodes the TOML file at path into v. Keys that v has no field for
// are errors, each named with its line: a misspelt option silently ignored
// is how an operator ends up running with a default they meant to change.
func LoadFile(path string, v any) (toml.MetaData, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return toml.MetaData{}, err
	}
	return Decode(path, string(b), v)
}

// Decode is LoadFile for TOML text already in memory; name labels errors.
func Decode(name, text string, v any) (toml.MetaData, error) {
	md, err := toml.Decode(text, v)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return md, fmt.Errorf("%s:%d: %s", name, perr.Position.Line, perr.Message)
		}
		return md, fmt.Errorf("%s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var errs []error
		for _, k := range und {
			errs = append(errs, fmt.Errorf("%s:%d: unknown key %q", name, keyLine(text, k), strings.Join(k, ".")))
		}
		return md, errors.Join(errs...)
	}
	return md, nil
}

// keyLine finds the line that defines key in text, for error messages; the
// TOML decoder reports positions of syntax errors only. It returns 0 when it
// cannot tell.
func keyLine(text string, key toml.Key) int {
	return KeyPositions(text).first(strings.Join(key, "."))
}

// Positions maps a key path such as "service[1].check.interval" to the line
// that sets it, so that a validation error can name its line.
type Positions map[string]int

// Line returns the line of path, or of its nearest enclosing table, or 0.
func (p Positions) Line(path string) int {
	for path != "" {
		if l, ok := p[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}

func (p Positions) first(plain string) int {
	best := 0
	for path, l := range p {
		if stripIndexes(path) == plain && (best == 0 || l < best) {
			best = l
		}
	}
	return best
}

func stripIndexes(path string) string {
	var b strings.Builder
	skip := false
	for _, r := range path {
		switch {
		case r == '[':
			skip = true
		case r == ']':
			skip = false
		case !skip:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// KeyPositions scans TOML text for table headers and keys. It understands
// what handover's files use (tables, arrays of tables, dotted headers, bare
// and quoted keys), not every corner of TOML; unknown lines are skipped.
func KeyPositions(text string) Positions {
	pos := Positions{}
	counts := map[string]int{} // array-of-tables path (indexed prefix) -> count
	current := ""
	for i, line := range strings.Split(text, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if strings.HasPrefix(t, "[[") {
			name := strings.TrimSpace(strings.Trim(strings.SplitN(t, "]]", 2)[0], "[ "))
			base := name
			if j := strings.LastIndexByte(name, '.'); j >= 0 {
				base = indexed(name[:j], counts) + name[j:]
			}
			counts[base]++
			current = fmt.Sprintf("%s[%d]", base, counts[base]-1)
			pos[current] = i + 1
			continue
		}
		if strings.HasPrefix(t, "[") {
			name := strings.TrimSpace(strings.Trim(strings.SplitN(t, "]", 2)[0], "[ "))
			current = indexed(name, counts)
			pos[current] = i + 1
			continue
		}
		k, _, ok := strings.Cut(t, "=")
		if !ok {
			continue
		}
		k = strings.Trim(strings.TrimSpace(k), `"'`)
		path := k
		if current != "" {
			path = current + "." + k
		}
		if _, seen := pos[path]; !seen {
			pos[path] = i + 1
		}
	}
	return pos
}

// indexed turns a dotted header such as "service.check" into its indexed
// path ("service[2].check") using the arrays of tables seen so far.
func indexed(name string, counts map[string]int) string {
	parts := strings.Split(name, ".")
	out := ""
	for _, p := range parts {
		if out != "" {
			out += "."
		}
		out += strings.TrimSpace(p)
		if n, ok := counts[out]; ok && n > 0 {
			out = fmt.Sprintf("%s[%d]", out, n-1)
		}
	}
	return out
}
