package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"

	"handover/internal/adminmux"
)

// ctl is `brokerd ctl`: the admin API of a cluster's brokers from the
// command line, so that nobody has to write curl lines at 3 a.m.
func ctl(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("brokerd ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:8161", "admin addresses of the cluster's brokers, comma-separated")
	n := fs.Int("n", 10, "browse: how many messages")
	tokenFile := fs.String("token-file", "", "the admin token (admin_token_file), when the admin ports need one")
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: brokerd ctl [-admin ADDR[,ADDR...]] COMMAND
commands:
  status         each broker's role, epoch, standby readiness and queues
  pid            the process id of the serving master (for kill)
  browse QUEUE   the first -n messages waiting in QUEUE (/queue/NAME), not consumed
  purge QUEUE    remove the messages waiting in QUEUE (not those delivered and unacknowledged)
  passwd USER    read a password (asked for on a terminal, else standard input's first line) and print USER's users_file line
                 (user:bcrypt-hash; the hash also goes in handover_users), offline`)
		fs.PrintDefaults()
	}
	words, err := adminmux.ParseCommand(fs, args)
	if err != nil {
		return 2
	}
	if len(words) == 0 {
		fs.Usage()
		return 2
	}
	if words[0] == "passwd" && len(words) == 2 {
		line, err := passwd(words[1], stdin, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "brokerd ctl:", err)
			return 1
		}
		fmt.Fprintln(stdout, line)
		return 0
	}
	hc, err := adminmux.Client(*tokenFile, 10*time.Second)
	if err != nil {
		fmt.Fprintln(stderr, "brokerd ctl:", err)
		return 2
	}
	c := &ctlClient{http: hc, addrs: strings.Split(*admin, ",")}
	switch {
	case words[0] == "status" && len(words) == 1:
		err = c.status(stdout)
	case words[0] == "pid" && len(words) == 1:
		var st ctlStatus
		if st, err = c.master(); err == nil {
			fmt.Fprintln(stdout, st.PID)
		}
	case words[0] == "browse" && len(words) == 2:
		err = c.browse(stdout, words[1], *n)
	case words[0] == "purge" && len(words) == 2:
		err = c.purge(stdout, words[1])
	default:
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "brokerd ctl:", err)
		return 1
	}
	return 0
}

type ctlClient struct {
	http  *http.Client
	addrs []string
}

// ctlStatus is the part of /status ctl shows.
type ctlStatus struct {
	addr    string
	Role    string `json:"role"`
	Epoch   uint64 `json:"epoch"`
	Ready   bool   `json:"ready"`
	PID     int    `json:"pid"`
	Standby *struct {
		Ready    bool   `json:"ready"`
		NotReady string `json:"not_ready"`
		Messages int    `json:"messages"`
	} `json:"standby"`
	Queues []struct {
		Name      string `json:"name"`
		Depth     int    `json:"depth"`
		Consumers int    `json:"consumers"`
	} `json:"queues"`
}

func (c *ctlClient) get(addr, path string, v any) error {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s%s: %s: %s", addr, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, v)
}

// master finds the serving master among the addresses.
func (c *ctlClient) master() (ctlStatus, error) {
	var errs []error
	for _, a := range c.addrs {
		var st ctlStatus
		if err := c.get(a, "/status", &st); err != nil {
			errs = append(errs, err)
			continue
		}
		if st.Role == "master" && st.Ready {
			st.addr = a
			return st, nil
		}
	}
	return ctlStatus{}, fmt.Errorf("no serving master among %s %v", strings.Join(c.addrs, ","), errors.Join(errs...))
}

func (c *ctlClient) status(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADMIN\tPID\tROLE\tEPOCH\tREADY\tQUEUES\tMESSAGES")
	failed := 0
	for _, a := range c.addrs {
		var st ctlStatus
		if err := c.get(a, "/status", &st); err != nil {
			fmt.Fprintf(tw, "%s\t-\tunreachable\t-\t-\t-\t%v\n", a, err)
			failed++
			continue
		}
		ready := fmt.Sprint(st.Ready)
		msgs := 0
		for _, q := range st.Queues {
			msgs += q.Depth
		}
		if sb := st.Standby; sb != nil {
			ready, msgs = fmt.Sprint(sb.Ready), sb.Messages
			if !sb.Ready {
				ready += " (" + sb.NotReady + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%d\t%d\n", a, st.PID, st.Role, st.Epoch, ready, len(st.Queues), msgs)
	}
	tw.Flush()
	if failed == len(c.addrs) {
		return errors.New("no broker answered")
	}
	return nil
}

func (c *ctlClient) browse(w io.Writer, queue string, n int) error {
	m, err := c.master()
	if err != nil {
		return err
	}
	var res struct {
		Messages []struct {
			ID          string            `json:"id"`
			Size        int               `json:"size"`
			Persistent  bool              `json:"persistent"`
			Redelivered bool              `json:"redelivered"`
			Headers     map[string]string `json:"headers"`
			Error       string            `json:"error"`
		} `json:"messages"`
	}
	if err := c.get(m.addr, "/api/browse?"+url.Values{"queue": {queue}, "limit": {fmt.Sprint(n)}}.Encode(), &res); err != nil {
		return err
	}
	for _, msg := range res.Messages {
		fmt.Fprintf(w, "%s  %d bytes  persistent=%v redelivered=%v\n", msg.ID, msg.Size, msg.Persistent, msg.Redelivered)
		for k, v := range msg.Headers {
			fmt.Fprintf(w, "    %s: %s\n", k, v)
		}
		if msg.Error != "" {
			fmt.Fprintf(w, "    (body unreadable: %s)\n", msg.Error)
		}
	}
	fmt.Fprintf(w, "%d messages shown\n", len(res.Messages))
	return nil
}

func (c *ctlClient) purge(w io.Writer, queue string) error {
	m, err := c.master()
	if err != nil {
		return err
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+m.addr+"/api/purge?"+url.Values{"queue": {queue}}.Encode(), nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var res struct {
		Purged int    `json:"purged"`
		Error  string `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if res.Error != "" {
		return fmt.Errorf("purge %s: %s", queue, res.Error)
	}
	fmt.Fprintf(w, "purged %d messages from %s\n", res.Purged, queue)
	return nil
}

// passwd makes user's line of a users file from a password read from r
// (asked for twice, without echo, when r is a terminal; else its first
// line), so that operators need no htpasswd (apache2-utils) on the
// brokers' hosts.
func passwd(user string, r io.Reader, prompt io.Writer) (string, error) {
	if user == "" || strings.ContainsAny(user, ":\n") || strings.TrimSpace(user) != user || strings.HasPrefix(user, "#") {
		return "", fmt.Errorf("passwd: %q cannot be a user name (no ':', newline, leading '#', or spaces around it)", user)
	}
	pass, err := readPassword(r, prompt)
	if err != nil {
		return "", fmt.Errorf("passwd: %w", err)
	}
	if pass == "" {
		return "", errors.New("passwd: no password on standard input (echo -n PASS | brokerd ctl passwd USER)")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
	if err != nil {
		return "", fmt.Errorf("passwd: %w", err)
	}
	return user + ":" + string(hash), nil
}

// readPassword reads a password from r: from a terminal twice, without
// echo, prompting on prompt; else r's first line.
func readPassword(r io.Reader, prompt io.Writer) (string, error) {
	if f, ok := r.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		var typed [2][]byte
		for i, ask := range []string{"Password: ", "Again: "} {
			fmt.Fprint(prompt, ask)
			p, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(prompt)
			if err != nil {
				return "", fmt.Errorf("reading the password: %w", err)
			}
			typed[i] = p
		}
		if string(typed[0]) != string(typed[1]) {
			return "", errors.New("the two passwords differ")
		}
		return string(typed[0]), nil
	}
	pass, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("reading the password: %w", err)
	}
	return strings.TrimRight(pass, "\r\n"), nil
}
