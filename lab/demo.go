package lab

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// Violation is what Inject measured.
type Violation struct {
	EE       string
	Binary   string        // where the unlisted binary was put, as the EE sees it
	Detected time.Duration // exec → the controller's violating verdict
	Enforced time.Duration // exec → the offender's packets dropped at its peers (probed)
	// Applied is exec → the last node to apply the plan that cuts the
	// offender off, from the agents' logs ("plan applied" comes after the
	// data plane took the plan); zero if the logs do not show it.
	Applied   time.Duration
	Reason    string // the controller's reason
	Reactions string // what the member's state shows (quarantined, frozen)
}

// eePID finds a process of an EE's workload: one in the EE's network
// namespace that is not its supervisor.
func eePID(netnsPath string) (int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(netnsPath, &want); err != nil {
		return 0, fmt.Errorf("EE network namespace: %w", err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	best := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		if pid > best {
			best = pid // the supervisor starts first; its workload comes later
		}
	}
	if best == 0 {
		return 0, fmt.Errorf("no process in the EE's network namespace %s", netnsPath)
	}
	return best, nil
}

// Inject copies an unlisted program into EE ee (a copy of busybox with a
// random tail, so its digest is on no list) and runs it inside the EE, as an
// intruder with a shell there would. It then measures how long the
// controller takes to call the member violating and how long until the
// member's packets are dropped at its peers.
func Inject(ctx context.Context, st *State, ee string, probe func() (bool, error)) (*Violation, error) {
	var node *NodeState
	for i := range st.Nodes {
		for _, e := range st.Nodes[i].EEs {
			if e.Name == ee {
				node = &st.Nodes[i]
			}
		}
	}
	if node == nil {
		return nil, fmt.Errorf("no EE %q in the lab", ee)
	}
	pid, err := eePID(eeNetNS(*node, ee))
	if err != nil {
		return nil, err
	}
	src, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("the intruder's program is a copy of busybox: %w", err)
	}
	tail := make([]byte, 16)
	rand.Read(tail)
	v := &Violation{EE: ee, Binary: "/tmp/sysupdate"}
	dst := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), v.Binary)
	if err := os.WriteFile(dst, append(src, tail...), 0o755); err != nil {
		return nil, fmt.Errorf("copy into %s: %w", ee, err)
	}
	cl, err := Dial(st)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	// The program runs in the EE's mount, pid and network namespaces.
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-m", "-p", "-n", "--", v.Binary, "echo", "pwned")
	cmd.Run() // it may be refused (enforce) or run (measure); either way it was measured
	deadline := start.Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := cl.Admin.ListMembers(ctx, connect.NewRequest(&tvdv1.ListMembersRequest{}))
		if err != nil {
			return nil, err
		}
		for _, m := range resp.Msg.GetMembers() {
			if m.GetMember().GetEe() == ee && m.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VIOLATED {
				if v.Detected == 0 {
					v.Detected = time.Since(start)
				}
				v.Reason = m.GetVerdict().GetReason()
				var r []string
				if m.GetQuarantined() {
					r = append(r, "quarantined")
				}
				if m.GetFrozen() {
					r = append(r, "frozen")
				}
				v.Reactions = strings.Join(r, ", ")
			}
		}
		if v.Detected > 0 && v.Enforced == 0 {
			if cut, err := probe(); err == nil && cut {
				v.Enforced = time.Since(start)
			}
		}
		if v.Enforced > 0 && strings.Contains(v.Reactions, "frozen") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v.Detected == 0 {
		return v, fmt.Errorf("the controller did not call %s violating within 15s", ee)
	}
	if v.Enforced > 0 {
		v.Applied = planApplied(st, start)
	}
	return v, nil
}

// planApplied returns how long after since the last node of the lab logged
// applying its first plan after since, or 0 if a node logged none. In a
// lab at rest the only plans after an injection are the ones it caused.
func planApplied(st *State, since time.Time) time.Duration {
	var worst time.Duration
	for _, n := range st.Nodes {
		b, err := os.ReadFile(n.AgentLog)
		if err != nil {
			return 0
		}
		var first time.Duration
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, `msg="plan applied"`) || !strings.HasPrefix(line, "time=") {
				continue
			}
			ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			t, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil || t.Before(since) {
				continue
			}
			first = t.Sub(since)
			break
		}
		if first == 0 {
			return 0
		}
		worst = max(worst, first)
	}
	return worst
}

// WriteViolation narrates what Inject found.
func WriteViolation(w io.Writer, v *Violation) {
	fmt.Fprintf(w, "an intruder copied an unlisted program to %s in %s and ran it\n", v.Binary, v.EE)
	fmt.Fprintf(w, "  the controller called %s violating %v after the exec: %s\n", v.EE, v.Detected.Round(time.Millisecond), v.Reason)
	if v.Applied > 0 {
		fmt.Fprintf(w, "  every node had applied the plan that cuts it off %v after the exec (agents' logs)\n", v.Applied.Round(time.Millisecond))
	}
	if v.Enforced > 0 {
		fmt.Fprintf(w, "  its packets were dropped at its peers %v after the exec (probed every 100 ms or so)\n", v.Enforced.Round(time.Millisecond))
	}
	if v.Reactions != "" {
		fmt.Fprintf(w, "  reactions in force: %s\n", v.Reactions)
	}
}
