package sidecar

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"handover/health"
	"handover/internal/adminmux"
)

// Ctl is `handover ctl`: the sidecar's admin API from the command line, so
// that nobody has to write curl lines at 3 a.m.
func Ctl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("handover ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9090", "the sidecar's admin address ([admin] listen)")
	tokenFile := fs.String("token-file", "", "the admin token ([admin] token_file), when the admin port needs one")
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: handover ctl [-admin ADDR] COMMAND
commands:
  status                   each service's master and readiness, each backend's state and checks
  disable SERVICE BACKEND  out of the election; its connections close as on a failover
  drain SERVICE BACKEND    no new connections to it; live ones stay
  enable SERVICE BACKEND   undo disable or drain
disable and drain last until enable, across reloads (not restarts).`)
		fs.PrintDefaults()
	}
	// Flags may follow the command too: handover ctl status -admin ADDR.
	words, err := adminmux.ParseCommand(fs, args)
	if err != nil {
		return 2
	}
	hc, err := adminmux.Client(*tokenFile, 10*time.Second)
	if err != nil {
		fmt.Fprintln(stderr, "handover ctl:", err)
		return 2
	}
	c := &ctlClient{http: hc, addr: *admin}
	_, isAction := controlActions[words0(words)]
	switch {
	case len(words) == 1 && words[0] == "status":
		err = c.status(stdout)
	case len(words) == 3 && isAction:
		err = c.control(stdout, words[0], words[1], words[2])
	default:
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "handover ctl:", err)
		return 1
	}
	return 0
}

func words0(words []string) string {
	if len(words) == 0 {
		return ""
	}
	return words[0]
}

type ctlClient struct {
	http *http.Client
	addr string
}

// ctlStatus is the part of /status ctl shows.
type ctlStatus struct {
	Version  string `json:"version"`
	Services []struct {
		Name        string               `json:"name"`
		Listen      string               `json:"listen"`
		Protocol    string               `json:"protocol"`
		Master      string               `json:"master"`
		MasterSince time.Time            `json:"master_since"`
		Health      health.ServiceStatus `json:"health"`
		Connections struct {
			Active   int            `json:"active"`
			Held     int            `json:"held"`   // tcp
			Paused   int            `json:"paused"` // stomp
			Backends map[string]int `json:"backends"`
		} `json:"connections"`
	} `json:"services"`
}

func (c *ctlClient) status(w io.Writer) error {
	resp, err := c.http.Get("http://" + c.addr + "/status")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/status: %s: %s", c.addr, resp.Status, strings.TrimSpace(string(b)))
	}
	var st ctlStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s/status: %w", c.addr, err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tLISTEN\tPROTOCOL\tMODE\tREADY\tMASTER\tSINCE\tCONNECTIONS\tWAITING")
	for _, s := range st.Services {
		master, since := s.Master, "-"
		switch {
		case s.Health.Mode == health.ModeAny:
			master = strings.Join(s.Health.Targets, " ")
		case master != "":
			since = time.Since(s.MasterSince).Round(time.Second).String()
		case !s.Health.NoMasterSince.IsZero():
			since = time.Since(s.Health.NoMasterSince).Round(time.Second).String()
		}
		if master == "" {
			master = "none"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%s\t%d\t%d\n", s.Name, s.Listen, s.Protocol, s.Health.Mode, s.Health.Ready,
			master, since, s.Connections.Active, s.Connections.Held+s.Connections.Paused)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "SERVICE\tBACKEND\tSTATE\tEPOCH\tLAST CHECK\tLATENCY\tCONNECTIONS\tERROR")
	for _, s := range st.Services {
		for _, b := range s.Health.Backends {
			state := b.State
			if b.Health != "" {
				state += " (checks: " + b.Health + ")"
			}
			last, lat := "never", "-"
			if !b.LastCheck.IsZero() {
				last = time.Since(b.LastCheck).Round(time.Millisecond).String() + " ago"
				lat = roundLatency(b.LastLatency).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", s.Name, b.Addr, state, b.Epoch, last, lat,
				s.Connections.Backends[b.Addr], b.LastError)
		}
		for addr, a := range s.Health.Admin {
			if !listed(s.Health.Backends, addr) {
				fmt.Fprintf(tw, "%s\t%s\t%s (not listed now)\t-\t-\t-\t-\t\n", s.Name, addr, a)
			}
		}
	}
	return tw.Flush()
}

func listed(bs []health.BackendStatus, addr string) bool {
	for _, b := range bs {
		if b.Addr == addr {
			return true
		}
	}
	return false
}

// control asks for disable, drain or enable and says what the service
// looks like after it.
func (c *ctlClient) control(w io.Writer, action, service, backend string) error {
	u := "http://" + c.addr + "/backends/" + action + "?" + url.Values{"service": {service}, "backend": {backend}}.Encode()
	resp, err := c.http.Post(u, "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var res controlResult
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if res.Error != "" {
		return fmt.Errorf("%s %s %s: %s", action, service, backend, res.Error)
	}
	state := res.State
	if res.Health != "" {
		state += " (checks: " + res.Health + ")"
	}
	fmt.Fprintf(w, "%s %s: %s\n", service, backend, state)
	if res.Ready {
		fmt.Fprintf(w, "%s: clients go to %s\n", service, res.Master)
	} else {
		fmt.Fprintf(w, "%s: no master now: new clients wait for one (enable a backend, or wait for a takeover)\n", service)
	}
	return nil
}
