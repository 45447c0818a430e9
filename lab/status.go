package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/api"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/audit"
)

// Snapshot is the lab as the controller sees it, joined with what the
// lab created.
type Snapshot struct {
	Name     string         `json:"name"`
	Dir      string         `json:"dir"`
	Phase    string         `json:"phase"`
	Taken    time.Time      `json:"taken"`
	Policy   *AppliedPolicy `json:"policy,omitempty"`
	Nodes    []NodeStatus   `json:"nodes"`
	EEs      []EEStatus     `json:"ees"`
	Verified int            `json:"verified"`
	// ControllerError is set when the controller could not be asked: the
	// snapshot then holds only what the lab itself knows.
	ControllerError string `json:"controllerError,omitempty"`
}

// NodeStatus is one node: what the lab made and the controller's view.
type NodeStatus struct {
	Name    string `json:"name"`
	Netns   string `json:"netns"`
	Address string `json:"address"`
	// AgentRunning and TPMRunning say whether the processes the lab
	// started for the node are alive.
	AgentRunning bool `json:"agentRunning"`
	TPMRunning   bool `json:"tpmRunning"`
	// Enrolled is false until the controller knows the node.
	Enrolled     bool       `json:"enrolled"`
	Assurance    string     `json:"assurance"`
	Status       string     `json:"status"`
	LastVerified *time.Time `json:"lastVerified,omitempty"`
	LastReport   *time.Time `json:"lastReport,omitempty"`
	PlanApplied  uint64     `json:"planApplied"`
}

// EEStatus is one EE of the scenario and its membership.
type EEStatus struct {
	Name   string `json:"name"`
	Node   string `json:"node"`
	Domain string `json:"domain"`
	Role   string `json:"role"`
	// Member is false while the controller lists no member for the EE.
	Member      bool       `json:"member"`
	Status      string     `json:"status"`
	Assurance   string     `json:"assurance"`
	Address     string     `json:"address,omitempty"`
	VerifiedAt  *time.Time `json:"verifiedAt,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	Quarantined bool       `json:"quarantined,omitempty"`
	Frozen      bool       `json:"frozen,omitempty"`
}

// Ready reports whether the EE is a verified member on a TPM-attested node.
func (e EEStatus) Ready() bool {
	return e.Member && e.Status == tvd.StatusVerified.String() && e.Assurance == tvd.AssuranceTPM.String()
}

// Problem says why the EE is not Ready.
func (e EEStatus) Problem() string {
	switch {
	case !e.Member && e.Reason != "":
		return "not a member, " + e.Reason
	case !e.Member:
		return "not a member (its agent has not enrolled; see its agent.log)"
	case e.Status != tvd.StatusVerified.String():
		return fmt.Sprintf("%s: %s", e.Status, e.Reason)
	case e.Assurance != tvd.AssuranceTPM.String():
		return "its node is at assurance " + e.Assurance
	}
	return "ready"
}

// Ready reports whether every EE of the lab is Ready.
func (s *Snapshot) Ready() bool {
	for _, e := range s.EEs {
		if !e.Ready() {
			return false
		}
	}
	return len(s.EEs) > 0
}

func tsPtr(t *timestamppb.Timestamp) *time.Time {
	if t == nil {
		return nil
	}
	v := t.AsTime()
	if v.IsZero() || v.Unix() == 0 {
		return nil
	}
	return &v
}

// Observe asks the controller for its nodes and members and joins them
// with the lab's state.
func Observe(ctx context.Context, cl *client.Client, st *State) (*Snapshot, error) {
	nodes, err := cl.Admin.ListNodes(ctx, connect.NewRequest(&tvdv1.ListNodesRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	members, err := cl.Admin.ListMembers(ctx, connect.NewRequest(&tvdv1.ListMembersRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	snap := join(st, nodes.Msg.GetNodes(), members.Msg.GetMembers())
	missing := false
	for _, e := range snap.EEs {
		missing = missing || !e.Member
	}
	if missing {
		// Say why: the controller records each refusal in the audit log.
		if why, err := refusals(ctx, cl); err == nil {
			for i, e := range snap.EEs {
				if r, ok := why[e.Name]; ok && !e.Member {
					snap.EEs[i].Reason = "refused: " + r
				}
			}
		}
	}
	return snap, nil
}

// refusals reads the audit log for the latest refusal reason of each EE.
func refusals(ctx context.Context, cl *client.Client) (map[string]string, error) {
	out := map[string]string{}
	const page = 1000
	for start := uint64(0); ; start += page {
		resp, err := cl.Admin.AuditTail(ctx, connect.NewRequest(&tvdv1.AuditTailRequest{StartIndex: start, Limit: page}))
		if err != nil {
			return nil, err
		}
		for _, e := range resp.Msg.GetEntries() {
			if e.GetKind() != audit.KindRefuse {
				continue
			}
			var d struct {
				Subject string            `json:"subject"`
				Detail  map[string]string `json:"detail"`
			}
			if json.Unmarshal(e.GetData(), &d) != nil {
				continue
			}
			if i := strings.LastIndex(d.Subject, "/ee/"); i >= 0 && d.Detail["reason"] != "" {
				out[d.Subject[i+len("/ee/"):]] = d.Detail["reason"]
			}
		}
		if len(resp.Msg.GetEntries()) < page {
			return out, nil
		}
	}
}

// join joins the controller's nodes and members with the lab's state.
func join(st *State, nodes []*tvdv1.Node, members []*tvdv1.MemberInfo) *Snapshot {
	snap := &Snapshot{Name: st.Name, Dir: st.Dir, Phase: st.Phase, Taken: time.Now(), Policy: st.Policy}
	byNode := map[string]*tvdv1.Node{}
	for _, n := range nodes {
		byNode[n.GetName()] = n
	}
	byEE := map[string]*tvdv1.MemberInfo{}
	for _, m := range members {
		byEE[m.GetMember().GetEe()] = m
	}
	procs := map[string]int{}
	for _, p := range st.Processes {
		procs[p.Name] = p.PID
	}
	for _, n := range st.Nodes {
		ns := NodeStatus{Name: n.Name, Netns: n.Netns, Address: n.Address,
			AgentRunning: runningLab(procs["agent/"+n.Name], st.Dir), TPMRunning: runningLab(procs["swtpm/"+n.Name], st.Dir),
			Assurance: tvd.AssuranceNone.String(), Status: tvd.StatusUnknown.String()}
		if cn, ok := byNode[n.Name]; ok {
			a, _ := api.AssuranceFromProto(cn.GetAssurance())
			ns.Enrolled, ns.Assurance = true, a.String()
			ns.Status = api.StatusFromProto(cn.GetStatus()).String()
			ns.LastVerified = tsPtr(cn.GetLastVerifiedAt())
			ns.LastReport = tsPtr(cn.GetLastReportAt())
			ns.PlanApplied = cn.GetPlanVersionApplied()
		}
		snap.Nodes = append(snap.Nodes, ns)
		for _, e := range n.EEs {
			es := EEStatus{Name: e.Name, Node: n.Name, Domain: e.Domain, Role: e.Role,
				Status: tvd.StatusUnknown.String(), Assurance: ns.Assurance}
			if m, ok := byEE[e.Name]; ok && m.GetNode() == n.Name {
				v := m.GetVerdict()
				es.Member = true
				es.Status = api.StatusFromProto(v.GetStatus()).String()
				es.Reason = v.GetReason()
				es.Address = m.GetOverlayAddress()
				es.VerifiedAt = tsPtr(v.GetVerifiedAt())
				es.Quarantined, es.Frozen = m.GetQuarantined(), m.GetFrozen()
				es.Domain, es.Role = m.GetMember().GetDomain(), m.GetMember().GetRole()
			}
			if es.Ready() {
				snap.Verified++
			}
			snap.EEs = append(snap.EEs, es)
		}
	}
	sort.SliceStable(snap.EEs, func(i, j int) bool { return snap.EEs[i].Node < snap.EEs[j].Node })
	return snap
}

// runningLab reports whether pid is alive and still one of the lab's.
func runningLab(pid int, dir string) bool {
	return pid > 0 && alive(pid) && mentions(procCmdline(pid), dir)
}

// Status loads the lab in dir and observes it. When the controller cannot
// be asked, it returns what the lab knows, with ControllerError set.
func Status(ctx context.Context, dir string) (*Snapshot, error) {
	st, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	cl, err := Dial(st)
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var snap *Snapshot
		if snap, err = Observe(ctx, cl, st); err == nil {
			return snap, nil
		}
	}
	snap := join(st, nil, nil)
	snap.ControllerError = err.Error()
	return snap, nil
}
