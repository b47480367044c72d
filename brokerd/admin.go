package brokerd

import (
	"encoding/json"
	"net/http"
	"os"
	"sort"
	"time"

	"handover/internal/adminmux"
)

// Status is the JSON document served at GET /status.
type Status struct {
	Role   string    `json:"role"` // "master", "slave" or "stopped"
	Epoch  uint64    `json:"epoch"`
	Since  time.Time `json:"since"` // when the role was taken
	Listen string    `json:"listen"`
	Admin  string    `json:"admin"`
	Lock   string    `json:"lock"`
	Store  string    `json:"store"`
	// Cluster is the identity of the storage (see cluster.go).
	Cluster Identity `json:"cluster"`
	// PID is this process's, so that an operator kills the right one.
	PID         int  `json:"pid"`
	Ready       bool `json:"ready"`
	Connections int  `json:"connections"`
	// Watchers is the open watch streams (GET /watch).
	Watchers int `json:"watchers"`
	// Users says where logins are checked and how many users are in
	// force (nil: authentication is off).
	Users   *usersStatus `json:"users,omitempty"`
	Queues  []queueStats `json:"queues"`
	Topics  []queueStats `json:"topics"`
	Journal *JournalStat `json:"journal,omitempty"`
	// Memory is the memory budget for message bodies.
	Memory memoryStatus `json:"memory"`
	// Standby is a slave's view of the store it follows (nil on a master).
	Standby *standbyStatus `json:"standby,omitempty"`
	// Damaged lists the latest stored messages whose body could not be
	// read back, with the file and offset in the error.
	Damaged []damageReport `json:"damaged,omitempty"`
	Version string         `json:"version"`
}

// usersStatus is the users part of Status.
type usersStatus struct {
	From  string `json:"from"`
	Count int    `json:"count"`
	// Error says why the users in force are not all the source holds (a
	// typo in the file, a bad row, the database out of reach).
	Error string `json:"error,omitempty"`
}

// JournalStat is the journal part of Status.
type JournalStat struct {
	Segments  int    `json:"segments"`
	Bytes     int64  `json:"bytes"`
	Live      int    `json:"live"`
	LiveBytes int64  `json:"live_bytes"`
	Syncs     uint64 `json:"syncs"`
	Records   uint64 `json:"records"`
}

// Status returns a snapshot of the server's state.
func (s *Server) Status() Status {
	s.mu.Lock()
	st := Status{
		Role:        s.role,
		Epoch:       s.epoch,
		Since:       s.since,
		Listen:      s.opts.Listen,
		Admin:       s.AdminAddr(),
		Lock:        s.locker.String(),
		Store:       s.storeName(),
		Cluster:     s.identity,
		PID:         os.Getpid(),
		Ready:       s.isReady,
		Connections: len(s.conns),
		Watchers:    s.watch.count(),
		Version:     Version,
		Queues:      []queueStats{},
		Topics:      []queueStats{},
	}
	if s.ln != nil {
		st.Listen = s.ln.Addr().String()
	}
	s.mu.Unlock()
	if s.users != nil {
		st.Users = &usersStatus{From: s.users.String(), Count: s.users.Users().Len(), Error: s.usersError()}
	}
	s.destMu.Lock()
	qs := make([]*queue, 0, len(s.queues))
	for _, q := range s.queues {
		qs = append(qs, q)
	}
	ts := make([]*topic, 0, len(s.topics))
	for _, t := range s.topics {
		ts = append(ts, t)
	}
	j := s.st
	s.destMu.Unlock()
	for _, q := range qs {
		st.Queues = append(st.Queues, q.stats())
	}
	for _, t := range ts {
		st.Topics = append(st.Topics, t.stats())
	}
	sort.Slice(st.Queues, func(a, b int) bool { return st.Queues[a].Name < st.Queues[b].Name })
	sort.Slice(st.Topics, func(a, b int) bool { return st.Topics[a].Name < st.Topics[b].Name })
	if j != nil {
		js := j.Stats()
		st.Journal = &JournalStat{Segments: js.Segments, Bytes: js.Bytes, Live: js.Live, LiveBytes: js.LiveBytes, Syncs: js.Syncs, Records: js.Records}
	}
	st.Memory = s.mem.status()
	if st.Role == RoleSlave {
		s.sbMu.Lock()
		sb, bindErr := s.standby, s.bindErr
		s.sbMu.Unlock()
		if !sb.LastCatchUp.IsZero() {
			sb.AgeSeconds = time.Since(sb.LastCatchUp).Seconds()
		}
		switch {
		case !sb.Following || sb.Error != "":
			sb.NotReady = "store: " + sb.Error
			if sb.Error == "" {
				sb.NotReady = "store: not opened yet"
			}
		case bindErr != "":
			sb.NotReady = bindErr
		}
		sb.Ready = sb.NotReady == ""
		st.Standby = &sb
	}
	s.dmgMu.Lock()
	st.Damaged = append([]damageReport(nil), s.damage...)
	s.dmgMu.Unlock()
	return st
}

func (s *Server) adminHandler() http.Handler {
	// healthz (in adminmux) says the process is alive and answering, in
	// any role.
	mux := adminmux.New(func() any { return s.Status() }, s.metrics.reg, adminmux.Options{Pprof: s.opts.Pprof})
	// readyz is what a load balancer or the handover sidecar checks: 200
	// only from the master that is accepting clients.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		ready, role, epoch := s.isReady, s.role, s.epoch
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(map[string]any{"ready": ready, "role": role, "epoch": epoch})
	})
	s.queueAdmin(mux)
	mux.HandleFunc("GET /watch", s.serveWatch)
	// The status page, for people.
	mux.Handle("GET /{$}", brokerPage.Handler(s.pageData, 2*time.Second))
	return adminmux.Guard(mux)
}

func (s *Server) storeName() string {
	if s.opts.StoreName != "" {
		return s.opts.StoreName
	}
	return "journal:" + s.opts.Data
}
