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
	if len(key) == 0 {
		return 0
	}
	table := strings.Join(key[:len(key)-1], ".")
	last := key[len(key)-1]
	current := ""
	for i, line := range strings.Split(text, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			h := strings.Trim(t, "[] \t")
			if j := strings.IndexByte(h, ']'); j >= 0 {
				h = h[:j]
			}
			current = strings.TrimSpace(h)
			if current == strings.Join(key, ".") {
				return i + 1 // an unknown table
			}
			continue
		}
		if current != table {
			continue
		}
		if k, _, ok := strings.Cut(t, "="); ok && strings.Trim(strings.TrimSpace(k), `"'`) == last {
			return i + 1
		}
	}
	return 0
}
