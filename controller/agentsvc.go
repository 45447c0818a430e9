package controller

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
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

// agentService implements tvdv1connect.AgentServiceHandler.
type agentService struct{ c *Controller }

// Limits on what one node may declare.
const (
	maxEEsPerNode  = 256
	maxClaimsPerEE = 64
	maxClaimLen    = 1024
)

func (a *agentService) Enroll(ctx context.Context, req *connect.Request[tvdv1.EnrollRequest]) (*connect.Response[tvdv1.EnrollResponse], error) {
	c := a.c
	resp, err := c.enroll(ctx, req.Msg)
	if err != nil {
		return nil, c.toConnect(ctx, "enroll", err)
	}
	return connect.NewResponse(resp), nil
}

// refuse records a refusal in the audit log and returns err.
func (c *Controller) refuse(ctx context.Context, subject, domain string, err error, detail map[string]string) error {
	if detail == nil {
		detail = map[string]string{}
	}
	detail["reason"] = err.Error()
	c.record(ctx, audit.Entry{Kind: audit.KindRefuse, Subject: subject, Domain: domain, Detail: detail})
	return err
}

func (c *Controller) enroll(ctx context.Context, r *tvdv1.EnrollRequest) (*tvdv1.EnrollResponse, error) {
	node := r.GetNodeName()
	subject := "node/" + node
	if _, err := ca.NodeID(c.ca.TrustDomain(), node); err != nil {
		return nil, c.refuse(ctx, subject, "", errInvalid("node name %q: %v", node, err), nil)
	}
	if len(r.GetEes()) > maxEEsPerNode {
		return nil, c.refuse(ctx, subject, "", errInvalid("node %q declares %d EEs; at most %d are accepted", node, len(r.GetEes()), maxEEsPerNode), nil)
	}
	pub, err := ca.PublicKeyFromCSR(r.GetCsr())
	if err != nil {
		return nil, c.refuse(ctx, subject, "", errInvalid("node %q: certificate request: %v", node, err), nil)
	}
	tokID, secret, err := parseJoinToken(r.GetJoinToken())
	if err != nil {
		return nil, c.refuse(ctx, subject, "", err, nil)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, c.refuse(ctx, subject, "", errInvalid("node %q: public key: %v", node, err), nil)
	}
	keyHash := sha256.Sum256(spki)

	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.s.nodes[node]; n != nil && !n.Left {
		return nil, c.refuse(ctx, subject, "", errExists("node %q is already enrolled; a second agent cannot claim its identity (revoke the node first to re-enrol it)", node), nil)
	}
	tkv, err := c.st.Get(ctx, prefixTokens+tokID)
	if err != nil {
		return nil, c.refuse(ctx, subject, "", errDenied("join token is not known to this controller"), map[string]string{"token": tokID})
	}
	var tok tokenRec
	if err := jsonUnmarshal(tkv.Value, &tok); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret))
	switch {
	case subtle.ConstantTimeCompare(sum[:], tok.SecretHash) != 1:
		return nil, c.refuse(ctx, subject, "", errDenied("join token is not valid"), map[string]string{"token": tokID})
	case tok.Used:
		return nil, c.refuse(ctx, subject, "", errDenied("join token was already used (by node %q); tokens are one-time", tok.UsedBy), map[string]string{"token": tokID})
	case !c.now().Before(tok.Expires):
		return nil, c.refuse(ctx, subject, "", errDenied("join token expired at %s", tok.Expires.UTC().Format(time.RFC3339)), map[string]string{"token": tokID})
	case tok.Node != "" && tok.Node != node:
		return nil, c.refuse(ctx, subject, "", errDenied("join token is for node %q, not %q", tok.Node, node), map[string]string{"token": tokID})
	}
	tok.Used, tok.UsedBy = true, node
	tokOp, err := putJSON(prefixTokens+tok.ID, &tok)
	if err != nil {
		return nil, err
	}
	tokCond := store.RevIs(tkv.Key, tkv.Rev)
	if r.GetTpm() != nil {
		// The token is spent now; the node exists once its TPM has proved
		// that the AK lives beside the EK (ActivateCredential).
		if _, err := c.st.Commit(ctx, store.Batch{Conds: []store.Cond{tokCond}, Ops: []store.Op{tokOp}}); err != nil {
			return nil, fmt.Errorf("enroll %s: %w", node, err)
		}
		return c.beginTPM(ctx, r, keyHash, tok.ID)
	}
	n := &nodeRec{Name: node, Assurance: tvd.AssuranceImplicit.String(), AgentVersion: r.GetAgentVersion()}
	creds, err := c.createNode(ctx, n, pub, keyHash, r.GetEes(), []store.Cond{tokCond}, []store.Op{tokOp}, map[string]string{"token": tok.ID})
	if err != nil {
		return nil, err
	}
	return &tvdv1.EnrollResponse{
		EnrollmentId: tok.ID,
		Credentials:  creds,
		Nonce:        c.nonce.next(node),
		Assurance:    api.AssuranceToProto(tvd.AssuranceImplicit),
	}, nil
}

// createNode issues the node's certificate, admits its EEs and stores
// everything in one commit. It must be called with c.mu held.
func (c *Controller) createNode(ctx context.Context, n *nodeRec, pub crypto.PublicKey, keyHash [32]byte, ees []*tvdv1.EESpec, conds []store.Cond, ops []store.Op, detail map[string]string) (*tvdv1.NodeCredentials, error) {
	node := n.Name
	if old := c.s.nodes[node]; old != nil && !old.Left {
		return nil, c.refuse(ctx, "node/"+node, "", errExists("node %q is already enrolled; a second agent cannot claim its identity (revoke the node first to re-enrol it)", node), nil)
	}
	cert, der, err := c.ca.IssueNode(node, pub, DefaultNodeTTL)
	if err != nil {
		return nil, fmt.Errorf("issue node certificate: %w", err)
	}
	now := c.now()
	n.EnrolledAt, n.KeyHash, n.CertSerial = now, hex.EncodeToString(keyHash[:]), fmt.Sprintf("%x", cert.SerialNumber)
	admitted, refused, entries, err := c.admitAll(ctx, n, ees, now)
	if err != nil {
		return nil, err
	}
	op, err := putJSON(prefixNodes+node, n)
	if err != nil {
		return nil, err
	}
	ops = append(ops, op)
	for _, m := range append(admitted, refused...) {
		op, err := putJSON(prefixMembers+m.EE, m)
		if err != nil {
			return nil, err
		}
		ops = append(ops, op)
	}
	if _, err := c.st.Commit(ctx, store.Batch{Conds: conds, Ops: ops}); err != nil {
		return nil, fmt.Errorf("enroll %s: %w", node, err)
	}
	c.s.nodes[node] = n
	for _, m := range append(admitted, refused...) {
		c.s.put(m)
	}
	if detail == nil {
		detail = map[string]string{}
	}
	detail["assurance"], detail["cert_serial"], detail["key_sha256"] = n.Assurance, n.CertSerial, n.KeyHash
	if n.EK != "" {
		detail["ek"] = n.EK
	}
	c.record(ctx, audit.Entry{Kind: audit.KindEnrol, Subject: "node/" + node, Detail: detail})
	for _, e := range entries {
		c.record(ctx, e)
	}
	c.hub.wake()
	c.log.InfoContext(ctx, "node enrolled", "node", node, "assurance", n.Assurance, "admitted", len(admitted), "refused", len(refused))
	return &tvdv1.NodeCredentials{
		NodeCert: der, CaBundle: c.ca.Bundle().PEM(), TrustDomain: c.ca.TrustDomain(),
		Expires: timestamppb.New(cert.NotAfter),
	}, nil
}

// admitAll runs admission for the EEs a node declares. It returns the
// admitted and refused member records (not yet stored) and their audit
// entries. It must be called with c.mu held.
func (c *Controller) admitAll(ctx context.Context, n *nodeRec, specs []*tvdv1.EESpec, now time.Time) (admitted, refused []*memberRec, entries []audit.Entry, err error) {
	taken := map[string]bool{}
	addrs := map[string]bool{}
	for _, spec := range specs {
		m, reason := c.admit(n, spec, now, taken, addrs)
		m.Since = now
		subject := tvd.Member{Domain: m.Domain, Role: m.Role, EE: m.EE}.SPIFFEID(c.ca.TrustDomain())
		if reason != "" {
			m.State, m.Reason = memberRefused, reason
			refused = append(refused, m)
			entries = append(entries, audit.Entry{Kind: audit.KindRefuse, Subject: subject, Domain: m.Domain, Detail: map[string]string{"node": n.Name, "reason": reason}})
			continue
		}
		taken[m.EE] = true
		addrs[m.Address] = true
		admitted = append(admitted, m)
		entries = append(entries, audit.Entry{Kind: audit.KindAdmit, Subject: subject, Domain: m.Domain,
			Detail: map[string]string{"node": n.Name, "address": m.Address, "policy_version": strconv.FormatUint(m.PolicyVersion, 10), "assurance": n.Assurance}})
	}
	return admitted, refused, entries, nil
}

// admit decides one EE's admission. A non-empty reason refuses it.
func (c *Controller) admit(n *nodeRec, spec *tvdv1.EESpec, now time.Time, taken, addrs map[string]bool) (*memberRec, string) {
	m := &memberRec{EE: spec.GetName(), Node: n.Name, Domain: spec.GetDomain(), Role: spec.GetRole(), Owner: spec.GetOwner(),
		Image: spec.GetImageDigest(), Claims: spec.GetClaims(), State: memberAdmitted, PolicyVersion: c.s.polVer}
	mem := m.member()
	if _, err := ca.MemberID(c.ca.TrustDomain(), mem); err != nil {
		return m, fmt.Sprintf("invalid member name: %v", err)
	}
	if len(m.Claims) > maxClaimsPerEE {
		return m, fmt.Sprintf("%d claims; at most %d are accepted", len(m.Claims), maxClaimsPerEE)
	}
	for k, v := range m.Claims {
		if len(k) > maxClaimLen || len(v) > maxClaimLen {
			return m, fmt.Sprintf("claim %.40q is longer than %d bytes", k, maxClaimLen)
		}
	}
	if prev := c.s.members[m.EE]; (prev != nil && prev.active() && prev.Node != n.Name) || taken[m.EE] {
		return m, fmt.Sprintf("EE name %q is already a member on another node; EE names are unique in the deployment", m.EE)
	}
	comp := c.s.policy
	if comp == nil {
		return m, "no policy has been applied yet (tvd policy apply)"
	}
	d, ok := comp.Domain(m.Domain)
	if !ok {
		return m, fmt.Sprintf("no domain %q in policy version %d", m.Domain, c.s.polVer)
	}
	claims, err := c.claimsFor(n, m, comp)
	if err != nil {
		return m, err.Error()
	}
	inRole := c.s.inRole(m.Domain, m.Role, m.EE)
	assurance, _ := tvd.ParseAssurance(n.Assurance)
	iso, _ := claims["ee.isolation"].(string)
	adm := d.Admit(policy.Candidate{Role: m.Role, Assurance: assurance, Isolation: iso, Claims: claims, InRole: inRole})
	if !adm.Admit {
		return m, strings.Join(adm.Reasons, "; ")
	}
	pub, err := ca.PublicKeyFromCSR(spec.GetCsr())
	if err != nil {
		return m, fmt.Sprintf("member certificate request: %v", err)
	}
	// The overlay address is stable: an EE that was a member of the domain
	// before keeps its address.
	if prev := c.s.members[m.EE]; prev != nil && prev.Domain == m.Domain && prev.Address != "" {
		m.Address = prev.Address
	} else if m.Address, err = c.s.allocAddress(d, addrs); err != nil {
		return m, err.Error()
	}
	cert, der, err := c.ca.IssueMember(mem, pub, c.cfg.MemberTTL)
	if err != nil {
		return m, fmt.Sprintf("issue member certificate: %v", err)
	}
	m.Cert, m.CertExpires = der, cert.NotAfter
	m.Status, m.LastVerified, m.StatusReason = tvd.StatusVerified, now, "admitted"
	return m, ""
}

// claimsFor assembles a member's claims: the built-in ones, then the ones
// the EE declared, typed by the policy's declarations.
func (c *Controller) claimsFor(n *nodeRec, m *memberRec, comp *policy.Compiled) (map[string]any, error) {
	types := map[string]string{}
	for _, ct := range comp.Claims {
		types[ct.Name] = ct.Type
	}
	out := map[string]any{}
	for k, v := range m.Claims {
		t, ok := types[k]
		if !ok {
			return nil, fmt.Errorf("claim %q is not declared by the policy", k)
		}
		val, err := parseClaim(v, t)
		if err != nil {
			return nil, fmt.Errorf("claim %q: %v", k, err)
		}
		out[k] = val
	}
	if _, ok := out["ee.isolation"]; !ok {
		out["ee.isolation"] = "weak"
	}
	out["node.name"] = n.Name
	out["node.assurance"] = n.Assurance
	out["node.tpm"] = n.Assurance == tvd.AssuranceTPM.String()
	out["ee.name"], out["ee.domain"], out["ee.role"] = m.EE, m.Domain, m.Role
	out["ee.owner"], out["ee.image"] = m.Owner, m.Image
	return out, nil
}

func parseClaim(v, t string) (any, error) {
	switch t {
	case "bool":
		return strconv.ParseBool(v)
	case "int":
		return strconv.ParseInt(v, 10, 64)
	case "double":
		return strconv.ParseFloat(v, 64)
	case "list(string)":
		if v == "" {
			return []string{}, nil
		}
		return strings.Split(v, ","), nil
	}
	return v, nil
}

func (a *agentService) ActivateCredential(ctx context.Context, req *connect.Request[tvdv1.ActivateCredentialRequest]) (*connect.Response[tvdv1.ActivateCredentialResponse], error) {
	c := a.c
	p, st, err := c.finishTPM(ctx, req.Msg.GetEnrollmentId(), req.Msg.GetSecret())
	if err != nil {
		return nil, c.toConnect(ctx, "activate credential", err)
	}
	pub, err := ca.PublicKeyFromCSR(p.req.GetCsr())
	if err != nil {
		return nil, c.toConnect(ctx, "activate credential", errInvalid("certificate request: %v", err))
	}
	state, err := st.MarshalBinary()
	if err != nil {
		return nil, c.toConnect(ctx, "activate credential", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := &nodeRec{Name: p.node, Assurance: tvd.AssuranceTPM.String(), AgentVersion: p.req.GetAgentVersion(), AttestState: state, EK: ekSummary(p.enrol)}
	creds, err := c.createNode(ctx, n, pub, p.keyHash, p.req.GetEes(), nil, nil, map[string]string{"token": p.token})
	if err != nil {
		return nil, c.toConnect(ctx, "activate credential", err)
	}
	cur := st.Cursor()
	_ = cur
	return connect.NewResponse(&tvdv1.ActivateCredentialResponse{Credentials: creds, Nonce: st.Nonce(), Assurance: api.AssuranceToProto(tvd.AssuranceTPM)}), nil
}

func (a *agentService) Watch(ctx context.Context, req *connect.Request[tvdv1.WatchRequest], stream *connect.ServerStream[tvdv1.WatchResponse]) error {
	c := a.c
	node := req.Msg.GetNode()
	c.mu.Lock()
	_, err := c.requireNode(ctx, node)
	c.mu.Unlock()
	if err != nil {
		return c.toConnect(ctx, "watch", err)
	}
	wake, cancel := c.hub.subscribe(node)
	defer cancel()
	last := req.Msg.GetLastPlanVersion()
	first := true
	for {
		c.mu.Lock()
		n, err := c.requireNode(ctx, node)
		if err != nil {
			c.mu.Unlock()
			return c.toConnect(ctx, "watch", err)
		}
		_ = n
		p, version := c.planFor(node)
		send := first || version > last
		if send {
			c.stamp(node, p, version)
			c.auditWithdrawals(ctx, node)
		}
		c.mu.Unlock()
		if send {
			if err := stream.Send(&tvdv1.WatchResponse{Plan: p}); err != nil {
				return err
			}
			last, first = version, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.hub.close:
			return nil
		case <-wake:
		}
	}
}

func (a *agentService) Report(ctx context.Context, req *connect.Request[tvdv1.ReportRequest]) (*connect.Response[tvdv1.ReportResponse], error) {
	resp, err := a.c.report(ctx, req.Msg)
	if err != nil {
		return nil, a.c.toConnect(ctx, "report", err)
	}
	return connect.NewResponse(resp), nil
}

func (c *Controller) report(ctx context.Context, r *tvdv1.ReportRequest) (*tvdv1.ReportResponse, error) {
	var pre *preAppraisal
	if r.GetQuote() != nil {
		pre = c.preAppraise(ctx, r)
	}
	c.mu.Lock()
	resp, after, err := c.reportLocked(ctx, r, pre)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := after(); err != nil {
		return nil, err
	}
	return resp, nil
}

// reportLocked does the work of a report under c.mu: it appraises (or
// takes pre's appraisal), applies the outcome to the controller's memory
// and queues the store write. The returned after waits, without the lock,
// until the write is durable (the group commit joins it with other
// reports'), then records the audit entries and wakes the plan streams.
// The answer goes out only after that: nothing is acknowledged before it
// is durable.
func (c *Controller) reportLocked(ctx context.Context, r *tvdv1.ReportRequest, pre *preAppraisal) (*tvdv1.ReportResponse, func() error, error) {
	n, err := c.requireNode(ctx, r.GetNode())
	if err != nil {
		return nil, nil, err
	}
	tpmNode := n.Assurance == tvd.AssuranceTPM.String()
	if !tpmNode && !c.nonce.consume(n.Name, r.GetNonce()) {
		return nil, nil, c.refuse(ctx, "node/"+n.Name, "", errPrecondition("report answers an old or unknown nonce (a replay, or the controller restarted); reopen the plan stream for a fresh one"), nil)
	}
	if r.GetQuote() != nil && !tpmNode {
		return nil, nil, errInvalid("node %q is enrolled at %s assurance; it has no attestation key to quote with", n.Name, n.Assurance)
	}
	now := c.now()
	upd := *n
	upd.LastReport = now
	var violations map[string]string
	var passed map[string][]string
	var cursor *tvdv1.AttestCursor
	if tpmNode {
		var err error
		violations, passed, cursor, err = c.appraise(ctx, n, &upd, r, pre)
		if err != nil {
			return nil, nil, c.refuse(ctx, "node/"+n.Name, "", err, nil)
		}
	}
	wakeAll := false
	for _, ack := range r.GetAcks() {
		// An acknowledgement of a plan this controller run never sent (one
		// from before a restart) says nothing about the current plan.
		if ack.GetPlanVersion() > c.s.planVer[n.Name] || ack.GetPlanVersion() < c.s.epoch<<32 {
			continue
		}
		if peers, ok := c.peersAcked(n.Name, ack.GetPlanVersion()); ok && ack.GetPlanVersion() >= upd.AckedVersion {
			if gained(upd.KnownPeers, peers.known) || gained(upd.RoutedPeers, peers.routed) {
				wakeAll = true // peers waiting for this node to know them, or to route to them
			}
			upd.KnownPeers, upd.RoutedPeers = peers.known, peers.routed
		}
		if ack.GetPlanVersion() >= upd.AckedVersion {
			upd.AckedVersion, upd.AckedAt, upd.AckedPolicy = ack.GetPlanVersion(), now, c.s.polVer
			upd.Domains = map[string]domainState{}
			for _, d := range ack.GetDomains() {
				upd.Domains[d.GetDomain()] = domainState{Channel: d.GetChannel().String(), Matrix: d.GetFlowMatrixId(), Error: d.GetError()}
			}
		}
	}
	instrDone := map[string]*tvdv1.InstructionAck{}
	for _, ack := range r.GetAcks() {
		for _, ia := range ack.GetInstructions() {
			instrDone[ia.GetId()] = ia
		}
	}
	if len(r.GetChannelKeys()) > 0 {
		keys := map[string]channelKey{}
		for _, k := range r.GetChannelKeys() {
			if len(k.GetWireguardPublicKey()) != 32 {
				return nil, nil, errInvalid("channel key for domain %q: want 32 bytes, got %d", k.GetDomain(), len(k.GetWireguardPublicKey()))
			}
			keys[k.GetDomain()] = channelKey{PublicKey: k.GetWireguardPublicKey(), Endpoint: k.GetEndpoint()}
		}
		if !sameKeys(keys, n.ChannelKeys) {
			upd.ChannelKeys = keys
			wakeAll = true
		}
	}
	var ops []store.Op
	var entries []audit.Entry
	var changed []*memberRec
	var eeOps []*eeOpRec
	if len(r.GetJoin()) > 0 {
		admitted, refused, es, err := c.admitAll(ctx, &upd, r.GetJoin(), now)
		if err != nil {
			return nil, nil, err
		}
		changed = append(changed, admitted...)
		changed = append(changed, refused...)
		entries = append(entries, es...)
		wakeAll = wakeAll || len(admitted) > 0
		mops, mes := c.migrationsAdmitted(n.Name, append(admitted, refused...), now)
		eeOps = append(eeOps, mops...)
		entries = append(entries, mes...)
	}
	// An implicit-assurance member's verdict rests on its node reporting in
	// time; TPM evidence adds to it once attestation is enabled.
	resp := &tvdv1.ReportResponse{}
	interval := 3 * policy.DefaultInterval
	for _, m := range c.s.nodeMembers(n.Name) {
		if !m.active() {
			continue
		}
		cp := *m
		if c.s.policy == nil {
			break
		}
		if pol, ok := c.s.policy.Domain(m.Domain); ok && time.Duration(pol.Interval) < interval {
			interval = time.Duration(pol.Interval)
		}
		// Reactions the node has carried out.
		if len(cp.Instructions) > 0 {
			cp.Instructions = slices.Clone(cp.Instructions)
			for i, in := range cp.Instructions {
				if ia := instrDone[in.ID]; ia != nil && !in.Done {
					cp.Instructions[i].Done, cp.Instructions[i].Error = ia.GetDone(), ia.GetError()
					if in.Reaction == tvd.ReactFreeze && ia.GetDone() {
						cp.Frozen = true
					}
					entries = append(entries, audit.Entry{Kind: audit.KindReaction, Subject: cp.member().SPIFFEID(c.ca.TrustDomain()), Domain: cp.Domain,
						Detail: map[string]string{"reaction": string(in.Reaction), "instruction": in.ID, "carried_out": fmt.Sprint(ia.GetDone()), "error": ia.GetError(), "node": n.Name}})
				}
			}
		}
		for _, set := range passed[m.EE] {
			if !slices.Contains(cp.MeasuredSets, set) {
				cp.MeasuredSets = append(slices.Clone(cp.MeasuredSets), set)
			}
		}
		if reason, bad := violations[m.EE]; bad && cp.Status != tvd.StatusViolated {
			entries = append(entries, c.violate(&cp, reason, now)...)
			c.log.WarnContext(ctx, "member violates its domain's policy", "member", cp.member().String(), "reason", reason)
		}
		if cp.Status != tvd.StatusViolated {
			cp.LastVerified = now
			if cp.Status != tvd.StatusVerified {
				entries = append(entries, audit.Entry{Kind: audit.KindVerdict, Subject: cp.member().SPIFFEID(c.ca.TrustDomain()), Domain: cp.Domain, Detail: map[string]string{"status": "verified", "from": cp.Status.String()}})
			}
			cp.Status = tvd.StatusVerified
			if tpmNode {
				cp.StatusReason = "TPM quote over a fresh nonce verified; every measurement is listed"
			} else {
				cp.StatusReason = "node reported in time (" + n.Assurance + " assurance)"
			}
		}
		if cp.Status == tvd.StatusViolated || !cp.active() || cp.Quarantined != m.Quarantined {
			wakeAll = true
		}
		changed = append(changed, &cp)
		resp.Verdicts = append(resp.Verdicts, &tvdv1.Verdict{Member: api.MemberToProto(cp.member()), Status: api.StatusToProto(cp.Status), Reason: cp.StatusReason, VerifiedAt: timestamppb.New(now)})
	}
	// EE states and the outcomes of EE operations (tvd ee), on top of the
	// verdicts above.
	latest := func(ee string) *memberRec {
		for i := len(changed) - 1; i >= 0; i-- {
			if changed[i].EE == ee {
				return changed[i]
			}
		}
		return c.s.members[ee]
	}
	rops, rmembers, rentries, rwake := c.eeReport(ctx, &upd, r, now, latest)
	eeOps = append(rops, eeOps...)
	changed = append(changed, rmembers...)
	entries = append(entries, rentries...)
	if len(rwake) > 0 {
		wakeAll = true
	}
	// A record changed twice in this report is written once, as it ends.
	changed = lastOf(changed, func(m *memberRec) string { return m.EE })
	eeOps = lastOf(eeOps, func(o *eeOpRec) string { return o.ID })
	for _, o := range eeOps {
		op, err := putJSON(prefixEEOps+o.ID, o)
		if err != nil {
			return nil, nil, err
		}
		ops = append(ops, op)
	}
	op, err := putJSON(prefixNodes+n.Name, &upd)
	if err != nil {
		return nil, nil, err
	}
	ops = append(ops, op)
	for _, m := range changed {
		op, err := putJSON(prefixMembers+m.EE, m)
		if err != nil {
			return nil, nil, err
		}
		ops = append(ops, op)
	}
	wait := c.gs.submit(store.Batch{Ops: ops})
	c.s.nodes[n.Name] = &upd
	for _, m := range changed {
		c.s.put(m)
	}
	for _, o := range eeOps {
		c.s.ops[o.ID] = o
	}
	if tpmNode {
		if st, err := c.nodeState(&upd); err == nil {
			resp.NextNonce = st.Nonce()
		}
		resp.Cursor = cursor
	} else {
		resp.NextNonce = c.nonce.next(n.Name)
	}
	resp.NextReportBy = timestamppb.New(now.Add(interval))
	name := n.Name
	return resp, func() error {
		<-wait.done
		if wait.err != nil {
			return fmt.Errorf("report %s: %w", name, wait.err)
		}
		// The changes are durable: their audit entries must be written
		// even if the agent has hung up meanwhile.
		actx := context.WithoutCancel(ctx)
		for _, e := range entries {
			c.record(actx, e)
		}
		if wakeAll {
			c.hub.wake()
		}
		return nil
	}, nil
}

func sameKeys(a, b map[string]channelKey) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || v.Endpoint != w.Endpoint || string(v.PublicKey) != string(w.PublicKey) {
			return false
		}
	}
	return true
}

func (a *agentService) RenewMember(ctx context.Context, req *connect.Request[tvdv1.RenewMemberRequest]) (*connect.Response[tvdv1.RenewMemberResponse], error) {
	resp, err := a.c.renew(ctx, req.Msg)
	if err != nil {
		return nil, a.c.toConnect(ctx, "renew member", err)
	}
	return connect.NewResponse(resp), nil
}

func (c *Controller) renew(ctx context.Context, r *tvdv1.RenewMemberRequest) (*tvdv1.RenewMemberResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.requireNode(ctx, r.GetNode())
	if err != nil {
		return nil, err
	}
	want, err := api.MemberFromProto(r.GetMember())
	if err != nil {
		return nil, errInvalid("%v", err)
	}
	m := c.s.members[want.EE]
	subject := want.SPIFFEID(c.ca.TrustDomain())
	switch {
	case m == nil || m.Node != n.Name || m.member() != want:
		return nil, c.refuse(ctx, subject, want.Domain, errNotFound("member %s is not on node %q", want, n.Name), nil)
	case !m.active():
		return nil, c.refuse(ctx, subject, want.Domain, errDenied("member %s is %s: %s", want, m.State, m.Reason), nil)
	case m.Quarantined || m.Status != tvd.StatusVerified:
		return nil, c.refuse(ctx, subject, want.Domain, errDenied("member %s is not in good standing (%s: %s); its certificate is not renewed", want, m.Status, m.StatusReason), nil)
	}
	if c.s.policy == nil {
		return nil, errPrecondition("no policy is applied")
	}
	if pol, ok := c.s.policy.Domain(m.Domain); ok && c.now().Sub(m.LastVerified) > time.Duration(pol.Deadline) {
		return nil, c.refuse(ctx, subject, want.Domain, errDenied("member %s has no fresh verdict (last %s); report first", want, m.LastVerified.UTC().Format(time.RFC3339)), nil)
	}
	pub, err := ca.PublicKeyFromCSR(r.GetCsr())
	if err != nil {
		return nil, errInvalid("certificate request: %v", err)
	}
	cert, der, err := c.ca.IssueMember(want, pub, c.cfg.MemberTTL)
	if err != nil {
		return nil, fmt.Errorf("issue member certificate: %w", err)
	}
	cp := *m
	cp.Cert, cp.CertExpires = der, cert.NotAfter
	op, err := putJSON(prefixMembers+m.EE, &cp)
	if err != nil {
		return nil, err
	}
	if _, err := c.st.Commit(ctx, store.Batch{Ops: []store.Op{op}}); err != nil {
		return nil, fmt.Errorf("renew %s: %w", want, err)
	}
	c.s.put(&cp)
	c.hub.wake(n.Name)
	return &tvdv1.RenewMemberResponse{CertChain: [][]byte{der}, Expires: timestamppb.New(cert.NotAfter)}, nil
}

func (a *agentService) Leave(ctx context.Context, req *connect.Request[tvdv1.LeaveRequest]) (*connect.Response[tvdv1.LeaveResponse], error) {
	c := a.c
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.requireNode(ctx, req.Msg.GetNode())
	if err != nil {
		return nil, c.toConnect(ctx, "leave", err)
	}
	ees := map[string]bool{}
	for _, e := range req.Msg.GetEes() {
		ees[e] = true
	}
	whole := len(ees) == 0
	reason := req.Msg.GetReason()
	if reason == "" {
		reason = "left"
	}
	var ops []store.Op
	var left []*memberRec
	for _, m := range c.s.members {
		if m.Node == n.Name && m.active() && (whole || ees[m.EE]) {
			cp := *m
			cp.State, cp.Reason, cp.Since = memberLeft, reason, c.now()
			left = append(left, &cp)
			op, err := putJSON(prefixMembers+m.EE, &cp)
			if err != nil {
				return nil, c.toConnect(ctx, "leave", err)
			}
			ops = append(ops, op)
		}
	}
	upd := *n
	if whole {
		upd.Left = true
	}
	op, err := putJSON(prefixNodes+n.Name, &upd)
	if err != nil {
		return nil, c.toConnect(ctx, "leave", err)
	}
	ops = append(ops, op)
	if _, err := c.st.Commit(ctx, store.Batch{Ops: ops}); err != nil {
		return nil, c.toConnect(ctx, "leave", err)
	}
	c.s.nodes[n.Name] = &upd
	for _, m := range left {
		c.s.put(m)
		c.record(ctx, audit.Entry{Kind: "leave", Subject: m.member().SPIFFEID(c.ca.TrustDomain()), Domain: m.Domain, Detail: map[string]string{"node": n.Name, "reason": reason}})
	}
	if whole {
		c.record(ctx, audit.Entry{Kind: "leave", Subject: "node/" + n.Name, Detail: map[string]string{"reason": reason}})
	}
	c.hub.wake()
	var v uint64
	if !whole {
		_, v = c.planFor(n.Name)
	}
	return connect.NewResponse(&tvdv1.LeaveResponse{PlanVersion: v}), nil
}

// lastOf keeps the last of the elements of s with the same key, in the
// order of their last occurrence.
func lastOf[T any](s []T, key func(T) string) []T {
	seen := map[string]bool{}
	var out []T
	for i := len(s) - 1; i >= 0; i-- {
		if k := key(s[i]); !seen[k] {
			seen[k] = true
			out = append(out, s[i])
		}
	}
	slices.Reverse(out)
	return out
}
