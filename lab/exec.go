package lab

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Target is a place in the lab where a command can run: a node, or an EE
// on a node.
type Target struct {
	Node  string
	Netns string
	// EE is set when the target named an EE. Until EEs are containers a
	// command for an EE runs in its node's network namespace, outside any
	// EE; Contained says whether it runs inside the EE itself.
	EE        string
	Contained bool
}

// Resolve finds the node or EE called name in the lab. Node names win over
// EE names (the scenario keeps them apart in practice).
func (s *State) Resolve(name string) (Target, error) {
	if n, ok := s.Node(name); ok {
		return Target{Node: n.Name, Netns: n.Netns}, nil
	}
	for _, n := range s.Nodes {
		for _, e := range n.EEs {
			if e.Name == name {
				return Target{Node: n.Name, Netns: n.Netns, EE: e.Name}, nil
			}
		}
	}
	var nodes, ees []string
	for _, n := range s.Nodes {
		nodes = append(nodes, n.Name)
		for _, e := range n.EEs {
			ees = append(ees, e.Name)
		}
	}
	return Target{}, fmt.Errorf("no node or EE %q in lab %s (nodes: %s; EEs: %s)", name, s.Name, strings.Join(nodes, ", "), strings.Join(ees, ", "))
}

// Command returns the command that runs argv at the target: today in the
// node's network namespace (ip netns exec). This is the seam for EEs as
// containers: an EE target will enter the EE's namespaces and cgroup
// through the isolation driver instead, and set Contained.
func (t Target) Command(ctx context.Context, argv []string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command; want tvd lab exec NODE|EE -- CMD [ARGS...]")
	}
	args := append([]string{"netns", "exec", t.Netns}, argv...)
	return exec.CommandContext(ctx, "ip", args...), nil
}
