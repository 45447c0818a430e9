package dataplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// DefaultBasePort is the first underlay UDP port handed to a domain when
// Config.BasePort is zero (WireGuard's customary port).
const DefaultBasePort = 51820

// portBook gives each domain a UDP port that stays the same across plans
// and restarts: DataDir/channel/ports.json maps domain names to ports. A
// domain keeps its port after its interface closes.
type portBook struct {
	path  string
	base  uint16
	ports map[string]uint16
}

func openPortBook(path string, base uint16) (*portBook, error) {
	b := &portBook{path: path, base: base, ports: map[string]uint16{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("port book: %w", err)
	}
	if err := json.Unmarshal(data, &b.ports); err != nil {
		return nil, fmt.Errorf("port book %s: want a JSON object of domain to port: %w", path, err)
	}
	seen := map[uint16]string{}
	for d, p := range b.ports {
		if p == 0 {
			return nil, fmt.Errorf("port book %s: domain %q has port 0", path, d)
		}
		if o, dup := seen[p]; dup {
			return nil, fmt.Errorf("port book %s: port %d given to domains %q and %q", path, p, o, d)
		}
		seen[p] = d
	}
	return b, nil
}

// port returns the domain's port, allocating and persisting the lowest
// free one from the base if it has none.
func (b *portBook) port(domain string) (uint16, error) {
	if p, ok := b.ports[domain]; ok {
		return p, nil
	}
	used := map[uint16]bool{}
	for _, p := range b.ports {
		used[p] = true
	}
	p := b.base
	for used[p] {
		if p == 65535 {
			return 0, fmt.Errorf("port book: no free UDP port from %d", b.base)
		}
		p++
	}
	b.ports[domain] = p
	if err := b.save(); err != nil {
		delete(b.ports, domain)
		return 0, err
	}
	return p, nil
}

func (b *portBook) save() error {
	data, err := json.MarshalIndent(b.ports, "", "  ")
	if err != nil {
		return fmt.Errorf("port book: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return fmt.Errorf("port book: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(b.path), ".ports-*")
	if err != nil {
		return fmt.Errorf("port book: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(data, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), b.path)
	}
	if err != nil {
		return fmt.Errorf("port book: write %s: %w", b.path, err)
	}
	return nil
}
