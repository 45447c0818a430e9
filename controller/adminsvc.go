package controller

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/api"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/store"
)

// adminService implements tvdv1connect.AdminServiceHandler. Every method
// starts by establishing the caller's role; reads are filtered to the
// domains the role may read, and writes are refused unless it may write.
type adminService struct{ c *Controller }

func (a *adminService) Status(ctx context.Context, _ *connect.Request[tvdv1.StatusRequest]) (*connect.Response[tvdv1.StatusResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "status", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := &tvdv1.StatusResponse{
		TrustDomain: c.ca.TrustDomain(), PolicyVersion: c.s.polVer, Now: timestamppb.New(c.now()),
		ControllerVersion: Version, AuditSize: c.audit.log.Size(), Caller: id.ID, CallerRole: id.Role.String(),
	}
	if c.s.policy != nil {
		for _, d := range c.s.policy.Domains {
			if !id.Role.CanRead(d.Name) {
				continue
			}
			ds := &tvdv1.DomainStatus{Name: d.Name, Owner: d.Owner}
			for _, m := range c.s.members {
				if m.Domain != d.Name || !m.active() {
					continue
				}
				ds.Members++
				switch c.effectiveStatus(m) {
				case tvd.StatusVerified:
					ds.Verified++
				case tvd.StatusViolated:
					ds.Violated++
				default:
					ds.Unknown++
				}
				if m.Quarantined {
					ds.Quarantined++
				}
			}
			resp.Domains = append(resp.Domains, ds)
		}
	}
	for _, n := range c.s.nodes {
		if !n.Left && c.nodeVisible(id.Role, n.Name) {
			resp.Nodes++
		}
	}
	return connect.NewResponse(resp), nil
}

// effectiveStatus is a member's status now: a verified member whose
// verdict is older than its domain's deadline is violating (fail closed).
func (c *Controller) effectiveStatus(m *memberRec) tvd.Status {
	if m.Status == tvd.StatusVerified && c.s.policy != nil {
		if pol, ok := c.s.policy.Domain(m.Domain); ok && c.now().Sub(m.LastVerified) > time.Duration(pol.Deadline) {
			return tvd.StatusViolated
		}
	}
	return m.Status
}

// nodeVisible reports whether role may see the node: admins see all, a
// domain role sees the nodes hosting members of its domain.
func (c *Controller) nodeVisible(r ca.Role, node string) bool {
	if r.Kind == ca.RoleAdmin {
		return true
	}
	for _, m := range c.s.members {
		if m.Node == node && m.active() && r.CanRead(m.Domain) {
			return true
		}
	}
	return false
}

func (a *adminService) ListNodes(ctx context.Context, _ *connect.Request[tvdv1.ListNodesRequest]) (*connect.Response[tvdv1.ListNodesResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "list nodes", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := &tvdv1.ListNodesResponse{}
	for _, name := range c.s.sortedNodes() {
		n := c.s.nodes[name]
		if !c.nodeVisible(id.Role, name) {
			continue
		}
		a, _ := tvd.ParseAssurance(n.Assurance)
		pn := &tvdv1.Node{Name: name, Assurance: api.AssuranceToProto(a), EnrolledAt: timestamppb.New(n.EnrolledAt),
			PlanVersionApplied: n.AckedVersion, AgentVersion: n.AgentVersion}
		if !n.LastReport.IsZero() {
			pn.LastReportAt = timestamppb.New(n.LastReport)
		}
		status := tvd.StatusUnknown
		var lastVerified time.Time
		for _, m := range c.s.sortedMembers() {
			if m.Node != name || !m.active() {
				continue
			}
			if id.Role.CanRead(m.Domain) {
				pn.Ees = append(pn.Ees, m.EE)
			}
			st := c.effectiveStatus(m)
			if st == tvd.StatusViolated || status == tvd.StatusUnknown {
				status = st
			}
			if m.LastVerified.After(lastVerified) {
				lastVerified = m.LastVerified
			}
		}
		if n.Left {
			status = tvd.StatusUnknown
		}
		pn.Status = api.StatusToProto(status)
		if !lastVerified.IsZero() {
			pn.LastVerifiedAt = timestamppb.New(lastVerified)
		}
		pn.PlanVersionCurrent = c.s.planVer[name]
		pn.Domains = c.nodeDomains(id.Role, n)
		resp.Nodes = append(resp.Nodes, pn)
	}
	return connect.NewResponse(resp), nil
}

// nodeDomains is node n's data-plane state per domain the role may read,
// against the current plan and policy. It must be called with c.mu held.
func (c *Controller) nodeDomains(role ca.Role, n *nodeRec) []*tvdv1.NodeDomain {
	var matrixID string
	if c.s.policy != nil {
		_, matrixID = c.flowMatrix(c.s.policy)
	}
	current := n.AckedVersion != 0 && n.AckedVersion == c.s.planVer[n.Name]
	names := make([]string, 0, len(n.Domains))
	for d := range n.Domains {
		names = append(names, d)
	}
	sort.Strings(names)
	var out []*tvdv1.NodeDomain
	for _, d := range names {
		if !role.CanRead(d) {
			continue
		}
		ds := n.Domains[d]
		ch := strings.ToLower(strings.TrimPrefix(ds.Channel, "CHANNEL_STATE_"))
		out = append(out, &tvdv1.NodeDomain{Domain: d, Channel: ch, FlowMatrixId: ds.Matrix, Error: ds.Error,
			MatchesPlan: current && ch == "up" && ds.Error == "" && ds.Matrix == matrixID})
	}
	return out
}

func (a *adminService) ListMembers(ctx context.Context, req *connect.Request[tvdv1.ListMembersRequest]) (*connect.Response[tvdv1.ListMembersResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "list members", err)
	}
	dom := req.Msg.GetDomain()
	if dom != "" && !id.Role.CanRead(dom) {
		return nil, c.toConnect(ctx, "list members", errDenied("permission denied: %s may not read domain %q", id.Role, dom))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := &tvdv1.ListMembersResponse{}
	for _, m := range c.s.sortedMembers() {
		if (dom != "" && m.Domain != dom) || !id.Role.CanRead(m.Domain) || !m.active() {
			continue
		}
		st := c.effectiveStatus(m)
		reason := m.StatusReason
		if st != m.Status {
			reason = fmt.Sprintf("no fresh verdict since %s", m.LastVerified.UTC().Format(time.RFC3339))
		}
		v := &tvdv1.Verdict{Member: api.MemberToProto(m.member()), Status: api.StatusToProto(st), Reason: reason}
		if !m.LastVerified.IsZero() {
			v.VerifiedAt = timestamppb.New(m.LastVerified)
		}
		mi := &tvdv1.MemberInfo{Member: api.MemberToProto(m.member()), Node: m.Node, Verdict: v, OverlayAddress: m.Address,
			Quarantined: m.Quarantined, Frozen: m.Frozen}
		if !m.CertExpires.IsZero() {
			mi.CertExpires = timestamppb.New(m.CertExpires)
		}
		if n := c.s.nodes[m.Node]; n != nil {
			mi.PolicyVersionApplied = n.AckedPolicy
		}
		resp.Members = append(resp.Members, mi)
	}
	return connect.NewResponse(resp), nil
}

func (a *adminService) CreateJoinToken(ctx context.Context, req *connect.Request[tvdv1.CreateJoinTokenRequest]) (*connect.Response[tvdv1.CreateJoinTokenResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "create join token", err)
	}
	if !id.Role.CanWriteDeployment() {
		return nil, c.toConnect(ctx, "create join token", c.refuse(ctx, "join-token", "", errDenied("permission denied: %s may not create join tokens (needs admin)", id.Role), map[string]string{"actor": id.ID}))
	}
	node := req.Msg.GetNodeName()
	if node != "" {
		if _, err := ca.NodeID(c.ca.TrustDomain(), node); err != nil {
			return nil, c.toConnect(ctx, "create join token", errInvalid("node name %q: %v", node, err))
		}
	}
	ttl := DefaultTokenTTL
	if d := req.Msg.GetTtl(); d != nil {
		ttl = d.AsDuration()
		if ttl <= 0 || ttl > 30*24*time.Hour {
			return nil, c.toConnect(ctx, "create join token", errInvalid("ttl %v: want more than 0 and at most 720h", ttl))
		}
	}
	tid, secret, token := newJoinToken(c.CAFingerprint())
	sum := sha256.Sum256([]byte(secret))
	rec := tokenRec{ID: tid, SecretHash: sum[:], Expires: c.now().Add(ttl), Node: node, CreatedBy: id.ID}
	op, err := putJSON(prefixTokens+tid, &rec)
	if err != nil {
		return nil, c.toConnect(ctx, "create join token", err)
	}
	if _, err := c.st.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent(op.Key)}, Ops: []store.Op{op}}); err != nil {
		return nil, c.toConnect(ctx, "create join token", err)
	}
	c.record(ctx, audit.Entry{Kind: audit.KindAdmin, Actor: id.ID, Subject: "join-token/" + tid, Detail: map[string]string{"action": "create-join-token", "node": node, "expires": rec.Expires.UTC().Format(time.RFC3339)}})
	return connect.NewResponse(&tvdv1.CreateJoinTokenResponse{Token: token, Expires: timestamppb.New(rec.Expires)}), nil
}

func (a *adminService) IssueAdminCert(ctx context.Context, req *connect.Request[tvdv1.IssueAdminCertRequest]) (*connect.Response[tvdv1.IssueAdminCertResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "issue admin cert", err)
	}
	if !id.Role.CanWriteDeployment() {
		return nil, c.toConnect(ctx, "issue admin cert", c.refuse(ctx, "admin/"+req.Msg.GetName(), "", errDenied("permission denied: %s may not issue admin certificates (needs admin)", id.Role), map[string]string{"actor": id.ID}))
	}
	role, err := ca.ParseRole(req.Msg.GetRole())
	if err != nil {
		return nil, c.toConnect(ctx, "issue admin cert", errInvalid("%v", err))
	}
	if role.Kind != ca.RoleAdmin {
		c.mu.Lock()
		ok := c.s.policy != nil
		if ok {
			_, ok = c.s.policy.Domain(role.Domain)
		}
		c.mu.Unlock()
		if !ok {
			return nil, c.toConnect(ctx, "issue admin cert", errInvalid("role %s: no domain %q in the current policy", role, role.Domain))
		}
	}
	ttl := DefaultAdminTTL
	if d := req.Msg.GetTtl(); d != nil && d.AsDuration() > 0 {
		ttl = d.AsDuration()
	}
	cert, der, err := c.ca.IssueAdminCSR(req.Msg.GetName(), role, req.Msg.GetCsr(), ttl)
	if err != nil {
		return nil, c.toConnect(ctx, "issue admin cert", errInvalid("%v", err))
	}
	c.record(ctx, audit.Entry{Kind: audit.KindAdmin, Actor: id.ID, Subject: "admin/" + req.Msg.GetName(), Domain: role.Domain,
		Detail: map[string]string{"action": "issue-admin-cert", "role": role.String(), "serial": fmt.Sprintf("%x", cert.SerialNumber)}})
	return connect.NewResponse(&tvdv1.IssueAdminCertResponse{Cert: der, CaBundle: c.ca.Bundle().PEM(), Expires: timestamppb.New(cert.NotAfter)}), nil
}

func (a *adminService) ApplyPolicy(ctx context.Context, req *connect.Request[tvdv1.ApplyPolicyRequest]) (*connect.Response[tvdv1.ApplyPolicyResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "apply policy", err)
	}
	if !id.Role.CanWriteDeployment() {
		return nil, c.toConnect(ctx, "apply policy", c.refuse(ctx, "policy", "", errDenied("permission denied: %s may not apply policy (needs admin)", id.Role), map[string]string{"actor": id.ID}))
	}
	resp, err := c.applyPolicy(ctx, id, req.Msg)
	if err != nil {
		return nil, c.toConnect(ctx, "apply policy", err)
	}
	return connect.NewResponse(resp), nil
}

// maxPolicyFiles bounds one apply.
const maxPolicyFiles = 1000

func (c *Controller) applyPolicy(ctx context.Context, id ca.Identity, r *tvdv1.ApplyPolicyRequest) (*tvdv1.ApplyPolicyResponse, error) {
	if len(r.GetFiles()) == 0 || len(r.GetFiles()) > maxPolicyFiles {
		return nil, errInvalid("apply policy: %d files; want 1 to %d", len(r.GetFiles()), maxPolicyFiles)
	}
	files := make([]policy.File, 0, len(r.GetFiles()))
	for _, f := range r.GetFiles() {
		files = append(files, policy.File{Name: f.GetName(), Content: f.GetContent()})
	}
	comp, err := policy.ParseAndCompile(files)
	if err != nil {
		return nil, errInvalid("the policy does not compile:\n%v", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.s.policy
	diff, changedDomains := policyDiff(old, comp)
	resp := &tvdv1.ApplyPolicyResponse{Version: c.s.polVer, DiffSummary: diff, ChangedDomains: changedDomains}
	if old != nil && old.Version == comp.Version {
		return resp, nil // the same policy: nothing to do
	}
	resp.Changed = true
	if r.GetDryRun() {
		resp.Version = c.s.polVer + 1
		return resp, nil
	}
	v := c.s.polVer + 1
	now := c.now()
	rec := &policyRec{Version: v, AppliedAt: now, AppliedBy: id.ID, Digest: comp.Version, Comment: r.GetComment(), Diff: diff, Files: files}
	op, err := putJSON(policyKey(v), rec)
	if err != nil {
		return nil, err
	}
	ops := []store.Op{op, store.Put(keyPolicyCurrent, []byte(strconv.FormatUint(v, 10)))}
	// Members the new policy no longer admits leave their domain.
	var removed []*memberRec
	verifier, err := c.newVerifier(comp)
	if err != nil {
		return nil, fmt.Errorf("verifier for policy version %d: %w", v, err)
	}
	prevPolicy, prevVer := c.s.policy, c.s.polVer
	c.s.policy, c.s.polVer = comp, v
	for _, m := range c.s.sortedMembers() {
		if !m.active() {
			continue
		}
		reason := c.stillAdmitted(m, comp)
		if reason == "" {
			continue
		}
		cp := *m
		cp.State, cp.Reason, cp.Since = memberRevoked, "policy version "+strconv.FormatUint(v, 10)+": "+reason, now
		removed = append(removed, &cp)
		op, err := putJSON(prefixMembers+m.EE, &cp)
		if err != nil {
			c.s.policy, c.s.polVer = prevPolicy, prevVer
			return nil, err
		}
		ops = append(ops, op)
	}
	if _, err := c.st.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent(policyKey(v))}, Ops: ops}); err != nil {
		c.s.policy, c.s.polVer = prevPolicy, prevVer
		return nil, fmt.Errorf("store policy version %d: %w", v, err)
	}
	rec.Files = nil
	c.s.history = append(c.s.history, rec)
	c.att.mu.Lock()
	c.att.verifier = verifier
	c.att.mu.Unlock()
	for _, m := range removed {
		c.s.put(m)
	}
	c.record(ctx, audit.Entry{Kind: audit.KindPolicy, Actor: id.ID, Subject: "policy/" + strconv.FormatUint(v, 10),
		Detail: map[string]string{"digest": comp.Version, "diff": diff, "comment": r.GetComment()}})
	for _, m := range removed {
		c.record(ctx, audit.Entry{Kind: audit.KindReaction, Subject: m.member().SPIFFEID(c.ca.TrustDomain()), Domain: m.Domain,
			Detail: map[string]string{"reaction": string(tvd.ReactRevoke), "reason": m.Reason}})
	}
	c.hub.wake()
	resp.Version = v
	c.log.InfoContext(ctx, "policy applied", "version", v, "digest", comp.Version, "by", id.ID, "revoked", len(removed))
	return resp, nil
}

// stillAdmitted re-checks an admitted member against a new policy and
// returns why it no longer holds, or "".
func (c *Controller) stillAdmitted(m *memberRec, comp *policy.Compiled) string {
	d, ok := comp.Domain(m.Domain)
	if !ok {
		return fmt.Sprintf("domain %q was removed", m.Domain)
	}
	n := c.s.nodes[m.Node]
	if n == nil {
		return "its node is gone"
	}
	claims, err := c.claimsFor(n, m, comp)
	if err != nil {
		return err.Error()
	}
	inRole := 0
	for _, o := range c.s.sortedMembers() {
		if o.EE == m.EE {
			break // members before this one keep their places
		}
		if o.active() && o.Domain == m.Domain && o.Role == m.Role {
			inRole++
		}
	}
	a, _ := tvd.ParseAssurance(n.Assurance)
	iso, _ := claims["ee.isolation"].(string)
	adm := d.Admit(policy.Candidate{Role: m.Role, Assurance: a, Isolation: iso, Claims: claims, InRole: inRole})
	if !adm.Admit {
		return strings.Join(adm.Reasons, "; ")
	}
	return ""
}

// policyDiff summarises what changed between two compiled policies.
func policyDiff(old, cur *policy.Compiled) (string, []string) {
	if old == nil {
		names := make([]string, 0, len(cur.Domains))
		for _, d := range cur.Domains {
			names = append(names, d.Name)
		}
		return fmt.Sprintf("first policy: %d domains (%s), %d flow cells", len(names), strings.Join(names, ", "), len(cur.Flows)), names
	}
	enc := func(d *policy.DomainPolicy) string { b, _ := json.Marshal(d); return string(b) }
	var added, removed, changed []string
	for _, d := range cur.Domains {
		od, ok := old.Domain(d.Name)
		switch {
		case !ok:
			added = append(added, d.Name)
		case enc(od) != enc(d):
			changed = append(changed, d.Name)
		}
	}
	for _, d := range old.Domains {
		if _, ok := cur.Domain(d.Name); !ok {
			removed = append(removed, d.Name)
		}
	}
	rowKey := func(r any) string { b, _ := json.Marshal(r); return string(b) }
	oldRows := map[string]bool{}
	for _, r := range old.Flows {
		oldRows[rowKey(r)] = true
	}
	curRows := map[string]bool{}
	flowsAdded, flowsRemoved := 0, 0
	for _, r := range cur.Flows {
		curRows[rowKey(r)] = true
		if !oldRows[rowKey(r)] {
			flowsAdded++
		}
	}
	for k := range oldRows {
		if !curRows[k] {
			flowsRemoved++
		}
	}
	var parts []string
	if len(added) > 0 {
		parts = append(parts, "added "+strings.Join(added, ", "))
	}
	if len(removed) > 0 {
		parts = append(parts, "removed "+strings.Join(removed, ", "))
	}
	if len(changed) > 0 {
		parts = append(parts, "changed "+strings.Join(changed, ", "))
	}
	if flowsAdded+flowsRemoved > 0 {
		parts = append(parts, fmt.Sprintf("flow cells +%d -%d", flowsAdded, flowsRemoved))
	}
	if len(parts) == 0 {
		parts = append(parts, "no domain changed")
	}
	all := append(append(added, removed...), changed...)
	sort.Strings(all)
	return strings.Join(parts, "; "), all
}

func (a *adminService) PolicyHistory(ctx context.Context, req *connect.Request[tvdv1.PolicyHistoryRequest]) (*connect.Response[tvdv1.PolicyHistoryResponse], error) {
	c := a.c
	if _, err := requireAdmin(ctx); err != nil {
		return nil, c.toConnect(ctx, "policy history", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	limit := int(req.Msg.GetLimit())
	resp := &tvdv1.PolicyHistoryResponse{}
	for i := len(c.s.history) - 1; i >= 0; i-- {
		if limit > 0 && len(resp.Versions) >= limit {
			break
		}
		p := c.s.history[i]
		resp.Versions = append(resp.Versions, &tvdv1.PolicyVersion{Version: p.Version, AppliedAt: timestamppb.New(p.AppliedAt),
			AppliedBy: p.AppliedBy, Digest: p.Digest, Comment: p.Comment, DiffSummary: p.Diff})
	}
	return connect.NewResponse(resp), nil
}

func (a *adminService) Revoke(ctx context.Context, req *connect.Request[tvdv1.RevokeRequest]) (*connect.Response[tvdv1.RevokeResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "revoke", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var targets []*memberRec
	var nodeTarget string
	switch t := req.Msg.GetTarget().(type) {
	case *tvdv1.RevokeRequest_Member:
		want, err := api.MemberFromProto(t.Member)
		if err != nil {
			return nil, c.toConnect(ctx, "revoke", errInvalid("%v", err))
		}
		if !id.Role.CanWrite(want.Domain) {
			return nil, c.toConnect(ctx, "revoke", c.refuse(ctx, want.SPIFFEID(c.ca.TrustDomain()), want.Domain, errDenied("permission denied: %s may not change domain %q", id.Role, want.Domain), map[string]string{"actor": id.ID}))
		}
		m := c.s.members[want.EE]
		if m == nil || m.member() != want || !m.active() {
			return nil, c.toConnect(ctx, "revoke", errNotFound("no admitted member %s", want))
		}
		targets = append(targets, m)
	case *tvdv1.RevokeRequest_Node:
		if !id.Role.CanWriteDeployment() {
			return nil, c.toConnect(ctx, "revoke", c.refuse(ctx, "node/"+t.Node, "", errDenied("permission denied: %s may not revoke nodes (needs admin)", id.Role), map[string]string{"actor": id.ID}))
		}
		n := c.s.nodes[t.Node]
		if n == nil || n.Left {
			return nil, c.toConnect(ctx, "revoke", errNotFound("no enrolled node %q", t.Node))
		}
		nodeTarget = t.Node
		for _, m := range c.s.sortedMembers() {
			if m.Node == t.Node && m.active() {
				targets = append(targets, m)
			}
		}
	default:
		return nil, c.toConnect(ctx, "revoke", errInvalid("revoke needs a member or a node"))
	}
	reason := req.Msg.GetReason()
	if reason == "" {
		reason = "revoked by " + id.ID
	}
	now := c.now()
	var ops []store.Op
	var updated []*memberRec
	for _, m := range targets {
		cp := *m
		cp.State, cp.Reason, cp.Since = memberRevoked, reason, now
		op, err := putJSON(prefixMembers+m.EE, &cp)
		if err != nil {
			return nil, c.toConnect(ctx, "revoke", err)
		}
		ops = append(ops, op)
		updated = append(updated, &cp)
	}
	var upd nodeRec
	if nodeTarget != "" {
		upd = *c.s.nodes[nodeTarget]
		upd.Left = true
		op, err := putJSON(prefixNodes+nodeTarget, &upd)
		if err != nil {
			return nil, c.toConnect(ctx, "revoke", err)
		}
		ops = append(ops, op)
	}
	if len(ops) > 0 {
		if _, err := c.st.Commit(ctx, store.Batch{Ops: ops}); err != nil {
			return nil, c.toConnect(ctx, "revoke", err)
		}
	}
	resp := &tvdv1.RevokeResponse{RevokedAt: timestamppb.New(now)}
	for _, m := range updated {
		c.s.put(m)
		resp.Members = append(resp.Members, api.MemberToProto(m.member()))
		resp.AuditIndex = c.record(ctx, audit.Entry{Kind: audit.KindReaction, Actor: id.ID, Subject: m.member().SPIFFEID(c.ca.TrustDomain()), Domain: m.Domain,
			Detail: map[string]string{"reaction": string(tvd.ReactRevoke), "reason": reason, "node": m.Node}})
	}
	if nodeTarget != "" {
		c.s.nodes[nodeTarget] = &upd
		resp.AuditIndex = c.record(ctx, audit.Entry{Kind: audit.KindAdmin, Actor: id.ID, Subject: "node/" + nodeTarget, Detail: map[string]string{"action": "revoke-node", "reason": reason}})
	}
	c.hub.wake()
	return connect.NewResponse(resp), nil
}

const maxAuditTail = 1000

func (a *adminService) AuditTail(ctx context.Context, req *connect.Request[tvdv1.AuditTailRequest]) (*connect.Response[tvdv1.AuditTailResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "audit tail", err)
	}
	dom := req.Msg.GetDomain()
	if id.Role.Kind != ca.RoleAdmin && dom == "" {
		dom = id.Role.Domain
	}
	if dom != "" && !id.Role.CanRead(dom) {
		return nil, c.toConnect(ctx, "audit tail", errDenied("permission denied: %s may not read domain %q", id.Role, dom))
	}
	limit := int(req.Msg.GetLimit())
	if limit <= 0 || limit > maxAuditTail {
		limit = 100
	}
	lg := c.audit.log
	size := lg.Size()
	resp := &tvdv1.AuditTailResponse{}
	for i := req.Msg.GetStartIndex(); i < size && len(resp.Entries) < limit; i++ {
		e, err := lg.Entry(ctx, i)
		if err != nil {
			return nil, c.toConnect(ctx, "audit tail", fmt.Errorf("audit entry %d: %w", i, err))
		}
		if dom != "" && e.Domain != dom {
			continue
		}
		resp.Entries = append(resp.Entries, auditToProto(i, e))
	}
	resp.Checkpoint = c.checkpointProto()
	return connect.NewResponse(resp), nil
}

func auditToProto(i uint64, e audit.Entry) *tvdv1.AuditEntry {
	data, _ := json.Marshal(map[string]any{"subject": e.Subject, "detail": e.Detail})
	return &tvdv1.AuditEntry{Index: i, Time: timestamppb.New(e.Time), Kind: e.Kind, Domain: e.Domain, Actor: e.Actor, Data: data}
}

func (c *Controller) checkpointProto() *tvdv1.Checkpoint {
	size, root := c.audit.log.Root()
	return &tvdv1.Checkpoint{Size: size, RootHash: root, Signed: c.audit.log.Checkpoint()}
}

func (a *adminService) AuditProof(ctx context.Context, req *connect.Request[tvdv1.AuditProofRequest]) (*connect.Response[tvdv1.AuditProofResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "audit proof", err)
	}
	lg := c.audit.log
	size := req.Msg.GetTreeSize()
	if size == 0 {
		size = lg.Size()
	}
	idx := req.Msg.GetIndex()
	if idx >= size || size > lg.Size() {
		return nil, c.toConnect(ctx, "audit proof", errInvalid("index %d at tree size %d: the log has %d entries", idx, size, lg.Size()))
	}
	e, err := lg.Entry(ctx, idx)
	if err != nil {
		return nil, c.toConnect(ctx, "audit proof", err)
	}
	resp := &tvdv1.AuditProofResponse{Checkpoint: c.checkpointProto()}
	// A consistency proof reveals no entry, so anyone may have it; the
	// entry and its inclusion proof only a reader of its domain.
	readable := id.Role.Kind == ca.RoleAdmin || id.Role.CanRead(e.Domain)
	if !readable && req.Msg.GetOldTreeSize() == 0 {
		return nil, c.toConnect(ctx, "audit proof", errDenied("permission denied: entry %d belongs to domain %q", idx, e.Domain))
	}
	if readable {
		incl, err := lg.InclusionProof(ctx, idx, size)
		if err != nil {
			return nil, c.toConnect(ctx, "audit proof", errInvalid("%v", err))
		}
		resp.Entry, resp.InclusionProof = auditToProto(idx, e), incl
		if leaf, err := lg.Leaf(ctx, idx); err == nil {
			resp.LeafHash = leafHash(leaf)
		}
	}
	if old := req.Msg.GetOldTreeSize(); old > 0 {
		cons, err := lg.ConsistencyProof(ctx, old, size)
		if err != nil {
			return nil, c.toConnect(ctx, "audit proof", errInvalid("%v", err))
		}
		resp.ConsistencyProof = cons
	}
	return connect.NewResponse(resp), nil
}

// leafHash is the RFC 6962 leaf hash: SHA-256(0x00 || leaf).
func leafHash(leaf []byte) []byte {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(leaf)
	return h.Sum(nil)
}
