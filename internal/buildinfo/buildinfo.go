// Package buildinfo says which build of a binary is running: its version,
// the commit it was built from and when, as the Go toolchain recorded them
// (runtime/debug.ReadBuildInfo), for -version, the start-up log line and
// the build_info metric of both binaries.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Info describes the running build.
type Info struct {
	Version   string // the module version, or "devel"
	Commit    string // the VCS revision, "" if unknown; "-dirty" marks local changes
	Date      string // the commit time (RFC 3339), "" if unknown
	GoVersion string
}

// Read returns the running build's Info.
func Read() Info {
	info := Info{Version: "devel", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		info.Version = v
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.time":
			info.Date = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(info.Commit) > 12 {
		info.Commit = info.Commit[:12]
	}
	if dirty && info.Commit != "" {
		info.Commit += "-dirty"
	}
	return info
}

// String is the one-line form -version prints: "VERSION (commit C, DATE, GO)".
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version)
	b.WriteString(" (")
	if i.Commit != "" {
		b.WriteString("commit " + i.Commit + ", ")
	}
	if i.Date != "" {
		b.WriteString("built from a commit of " + i.Date + ", ")
	}
	b.WriteString(i.GoVersion + ")")
	return b.String()
}
