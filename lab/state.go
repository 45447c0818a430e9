package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// StateFile is the file in LABDIR that records what a lab created.
const StateFile = "lab.json"

// stateVersion is the format version of lab.json.
const stateVersion = 1

// State is LABDIR/lab.json: everything a lab created, written as it goes
// so that `tvd lab down` can remove it after a crashed `up` too.
type State struct {
	Version  int       `json:"version"`
	Dir      string    `json:"dir"`
	Scenario string    `json:"scenario"`
	Name     string    `json:"name"`
	Binary   string    `json:"binary"`
	Created  time.Time `json:"created"`
	// Phase is "starting" until every EE is a verified member, then "up".
	Phase string `json:"phase"`
	// JoinLatency is the time from the start of the first agent to the
	// first TCP connection over the overlay between EEs on two nodes.
	JoinLatency time.Duration `json:"joinLatency,omitempty"`

	Subnet         string `json:"subnet"`
	ControllerAddr string `json:"controllerAddr"`
	ControllerURL  string `json:"controllerUrl,omitempty"`
	// Creds is the admin credential directory the controller wrote.
	Creds string `json:"creds,omitempty"`
	EKCA  string `json:"ekCa,omitempty"`

	Namespaces  []string         `json:"namespaces"`
	Links       []string         `json:"links"` // host-side links
	Processes   []Process        `json:"processes"`
	Nodes       []NodeState      `json:"nodes"`
	Relaxations []Relaxation     `json:"relaxations,omitempty"`
	Admins      []AdminState     `json:"admins,omitempty"`
	PolicyDir   string           `json:"policyDir,omitempty"`
	Policy      *AppliedPolicy   `json:"policy,omitempty"`
	Scen        *ScenarioSummary `json:"scenarioSummary,omitempty"`

	mu   sync.Mutex
	path string
}

// Process is a process the lab started.
type Process struct {
	Name string `json:"name"` // controller, swtpm/NODE, agent/NODE
	PID  int    `json:"pid"`
	Log  string `json:"log"`
}

// NodeState is one lab node.
type NodeState struct {
	Name      string    `json:"name"`
	Netns     string    `json:"netns"`
	Address   string    `json:"address"` // underlay address, CIDR
	TPMSocket string    `json:"tpmSocket"`
	AgentData string    `json:"agentData"`
	AgentLog  string    `json:"agentLog"`
	Config    string    `json:"config"` // the node.yaml given to the agent
	EEs       []EEState `json:"ees"`
}

// EEState is one EE of a node as the scenario declared it.
type EEState struct {
	Name   string   `json:"name"`
	Domain string   `json:"domain"`
	Role   string   `json:"role"`
	Image  string   `json:"image"`
	Run    []string `json:"run,omitempty"`
}

// AdminState is an admin credential the lab issued.
type AdminState struct {
	Name string `json:"name"`
	Role string `json:"role"`
	Dir  string `json:"dir"`
}

// AppliedPolicy is the policy version the lab applied.
type AppliedPolicy struct {
	Version uint64 `json:"version"`
	Summary string `json:"summary"`
}

// ScenarioSummary names the scenario's counts.
type ScenarioSummary struct {
	Nodes int `json:"nodes"`
	EEs   int `json:"ees"`
}

// LoadState reads LABDIR/lab.json.
func LoadState(dir string) (*State, error) {
	path := filepath.Join(dir, StateFile)
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no lab in %s (%s is missing); start one with tvd lab up SCENARIO --dir %s", dir, StateFile, dir)
		}
		return nil, fmt.Errorf("lab state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("lab state %s: version %d; this tvd reads version %d", path, s.Version, stateVersion)
	}
	s.path = path
	return &s, nil
}

// update changes the state under its lock and writes it atomically.
func (s *State) update(f func(s *State)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f != nil {
		f(s)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// Node returns the node named name.
func (s *State) Node(name string) (*NodeState, bool) {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i], true
		}
	}
	return nil, false
}
