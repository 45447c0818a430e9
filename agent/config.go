package agent

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"regexp"

	"go.yaml.in/yaml/v3"
)

// NodeConfig is the node's configuration file: the EEs it hosts and the
// domains they ask to join.
//
//	node: client-1
//	ees:
//	  - name: red-client-1
//	    image: sha256:...        # the image digest
//	    domain: red
//	    role: client-os
//	    owner: outsourcing-customer
//	    claims: {ee.protected_disk_gb: "500"}
//	    expose: [{port: 8080}]   # userspace data plane only
type NodeConfig struct {
	Node string     `yaml:"node"`
	EEs  []EEConfig `yaml:"ees"`
}

// EEConfig is one EE the node hosts.
type EEConfig struct {
	Name string `yaml:"name"`
	// Image is the EE's image: a name in the agent's image directory, an
	// absolute path, a sha256: digest, or empty for the busybox base image.
	Image string `yaml:"image"`
	// Command is the EE's workload; empty runs the EE host's default.
	Command []string          `yaml:"command"`
	Domain  string            `yaml:"domain"`
	Role    string            `yaml:"role"`
	Owner   string            `yaml:"owner"`
	Claims  map[string]string `yaml:"claims"`
	// WorkloadDir is the host directory of the EE's Workload API socket;
	// the agent sets it, and the EE host mounts it at /run/tvd (strong
	// isolation) or names the socket in TVD_WORKLOAD_SOCKET (process
	// driver).
	WorkloadDir string `yaml:"-" json:"-"`
	// Expose lists the overlay TCP ports the EE serves on a node running
	// the userspace data plane (the process driver, whose EEs have no
	// network namespace): connections the flow rules let in are forwarded
	// to Target on the host. The kernel data plane ignores it (an EE with
	// its own namespace listens on its overlay address itself).
	Expose []ExposeConfig `yaml:"expose"`
}

// ExposeConfig is one overlay port of an EE (see EEConfig.Expose).
type ExposeConfig struct {
	Port uint16 `yaml:"port"`
	// Target is the host address the EE's process listens on; default
	// 127.0.0.1:Port.
	Target string `yaml:"target"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// maxConfigSize bounds the node configuration file.
const maxConfigSize = 1 << 20

// LoadNodeConfig reads and checks a node configuration file.
func LoadNodeConfig(path string) (*NodeConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	return ParseNodeConfig(path, b)
}

// ParseNodeConfig parses a node configuration; name is used in errors.
func ParseNodeConfig(name string, b []byte) (*NodeConfig, error) {
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("%s: %d bytes; at most %d", name, len(b), maxConfigSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c NodeConfig
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if c.Node != "" && !nameRE.MatchString(c.Node) {
		return nil, fmt.Errorf("%s: node name %q: want lower-case letters, digits and dashes", name, c.Node)
	}
	seen := map[string]bool{}
	for i, e := range c.EEs {
		where := fmt.Sprintf("%s: ees[%d]", name, i)
		for field, v := range map[string]string{"name": e.Name, "domain": e.Domain, "role": e.Role} {
			if !nameRE.MatchString(v) {
				return nil, fmt.Errorf("%s: %s %q: want lower-case letters, digits and dashes", where, field, v)
			}
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("%s: EE %q listed twice", where, e.Name)
		}
		seen[e.Name] = true
		ports := map[uint16]bool{}
		for j, x := range e.Expose {
			at := fmt.Sprintf("%s.expose[%d]", where, j)
			if x.Port == 0 {
				return nil, fmt.Errorf("%s: expected a port between 1 and 65535, got none", at)
			}
			if ports[x.Port] {
				return nil, fmt.Errorf("%s: port %d listed twice", at, x.Port)
			}
			ports[x.Port] = true
			if x.Target != "" {
				if _, err := netip.ParseAddrPort(x.Target); err != nil {
					return nil, fmt.Errorf("%s: target %q: expected IP:port (e.g. 127.0.0.1:%d)", at, x.Target, x.Port)
				}
			}
		}
	}
	return &c, nil
}
