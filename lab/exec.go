package lab

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// Target is a place in the lab where a command can run: a node, or an EE
// on a node.
type Target struct {
	Node  string
	Netns string
	// EE is set when the target named an EE. When the EE runs as a
	// container the command runs inside it (its mount, pid and network
	// namespaces, so it sees the EE's files and processes, and its execs
	// are measured like any other); otherwise in its node's network
	// namespace. Contained says which.
	EE        string
	Contained bool
	pid       int // a process of the EE, when Contained
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
				t := Target{Node: n.Name, Netns: n.Netns, EE: e.Name}
				if pid, err := eePID(eeNetNS(n, e.Name)); err == nil {
					t.Contained, t.pid = true, pid
				}
				return t, nil
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

// Command returns the command that runs argv at the target: inside a
// contained EE (nsenter into its mount, pid and network namespaces), else
// in the node's network namespace (ip netns exec).
func (t Target) Command(ctx context.Context, argv []string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command; want tvd lab exec NODE|EE -- CMD [ARGS...]")
	}
	if t.Contained {
		args := append([]string{"-t", strconv.Itoa(t.pid), "-m", "-p", "-n", "--"}, argv...)
		return exec.CommandContext(ctx, "nsenter", args...), nil
	}
	args := append([]string{"netns", "exec", t.Netns}, argv...)
	return exec.CommandContext(ctx, "ip", args...), nil
}
