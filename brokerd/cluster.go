package brokerd

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// A cluster's storage (a data directory, or a database) carries an
// identity, written once by `brokerd -init`. A broker refuses storage
// without one: a shared directory that is not mounted on one host would
// otherwise become that host's own empty journal, and its broker a second
// master that clients split between.

// Identity is the identity of a cluster's storage.
type Identity struct {
	ID      string    `json:"cluster_id"`
	Created time.Time `json:"created"`
}

// ErrNotInitialized is wrapped by the error about storage that has no
// identity.
var ErrNotInitialized = errors.New("not initialized")

// identityFile is the identity's file in a data directory.
const identityFile = "cluster"

// NewIdentity makes a fresh identity: 16 random bytes, hex, and now.
func NewIdentity() Identity {
	b := make([]byte, 16)
	rand.Read(b)
	return Identity{ID: hex.EncodeToString(b), Created: time.Now().UTC().Truncate(time.Second)}
}

// InitData creates dir if needed and writes a new identity in it, durably.
// It refuses a directory that already has one.
func InitData(dir string) (Identity, error) {
	if id, err := ReadData(dir); err == nil {
		return id, fmt.Errorf("data directory %s is already initialized (cluster %s, created %s)", dir, id.ID, id.Created.Format(time.RFC3339))
	} else if !errors.Is(err, ErrNotInitialized) {
		return Identity{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Identity{}, fmt.Errorf("data directory: %w", err)
	}
	id := NewIdentity()
	b, _ := json.MarshalIndent(id, "", "  ")
	tmp, err := os.CreateTemp(dir, "."+identityFile+".*.tmp")
	if err != nil {
		return Identity{}, err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Identity{}, fmt.Errorf("writing %s: %w", filepath.Join(dir, identityFile), err)
	}
	// A link, not a rename: it fails if another -init got there first.
	if err := os.Link(tmp.Name(), filepath.Join(dir, identityFile)); err != nil {
		return Identity{}, fmt.Errorf("writing %s: %w", filepath.Join(dir, identityFile), err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return Identity{}, fmt.Errorf("fsync %s: %w", dir, err)
		}
	}
	return id, nil
}

// ReadData reads dir's identity. Its error wraps ErrNotInitialized when
// dir or the identity is missing, and says what to do.
func ReadData(dir string) (Identity, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return Identity{}, fmt.Errorf("data directory %s does not exist: %w. If it is shared storage, check that it is mounted on this host; to start a new cluster there, run `brokerd -init -data %s` once", dir, ErrNotInitialized, dir)
	}
	path := filepath.Join(dir, identityFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Identity{}, fmt.Errorf("data directory %s is %w (no %s). If it is shared storage, check that it is mounted on this host (an empty mount point looks like this); to start a new cluster there, run `brokerd -init -data %s` once", dir, ErrNotInitialized, identityFile, dir)
	}
	if err != nil {
		return Identity{}, fmt.Errorf("reading the cluster identity: %w", err)
	}
	var id Identity
	if err := json.Unmarshal(b, &id); err != nil || id.ID == "" {
		return Identity{}, fmt.Errorf("the cluster identity %s is damaged (%q); restore it from another host's copy of the share", path, b)
	}
	return id, nil
}

// checkIdentity reads the storage's identity and compares it with the
// configured cluster_id, if one is set.
func checkIdentity(read func() (Identity, error), want string) (Identity, error) {
	id, err := read()
	if err != nil {
		return Identity{}, err
	}
	if want != "" && id.ID != want {
		return Identity{}, fmt.Errorf("the storage belongs to cluster %s (created %s), but cluster_id in the config is %s: is this broker pointed at the right share or database?",
			id.ID, id.Created.Format(time.RFC3339), want)
	}
	return id, nil
}
