// Package report quantifies, for one trusted virtual domain, whether its
// security goals hold: every policy statement is checked for every member
// and comes out verified, violated or unknown, with the evidence that
// decided it (paper §2.2: "explicit and autonomously measurable
// quantification of whether the overall security goals are achieved").
//
// The package is pure: it reads a [Snapshot] that the controller assembles
// from its state under its lock, and it neither talks to the network nor
// reads a store. It is conservative: a cell is verified only when the
// snapshot carries evidence for it; missing evidence gives unknown, never
// a silent pass. [Report.NotEstablished] lists, in plain words, what a
// report does not establish.
//
// One [Report] renders as a text table ([Report.WriteTable]), as JSON
// ([Report.WriteJSON]) and as HTML ([Report.WriteHTML]), all from the same
// data.
package report

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/policy"
)

// Channel states a node reports for a domain's overlay (the names of the
// API's ChannelState values without their prefix).
const (
	ChannelUp     = "UP"
	ChannelDown   = "DOWN"
	ChannelFailed = "FAILED"
)

// Snapshot is what a report is computed from: one domain's members as the
// controller knows them at Now.
type Snapshot struct {
	// Domain is the domain to report on.
	Domain string `json:"domain"`
	// TrustDomain is the deployment's SPIFFE trust domain.
	TrustDomain string `json:"trustDomain,omitempty"`
	// PolicyVersion is the controller's current policy version number.
	PolicyVersion uint64 `json:"policyVersion"`
	// FlowMatrixID is the flow matrix id the current plans carry
	// ("sha256:HEX"); a node that acknowledged it enforces the current
	// matrix.
	FlowMatrixID string `json:"flowMatrixId,omitempty"`
	// Members are the domain's admitted members.
	Members []Member `json:"members"`
	// Audit is the audit log's latest checkpoint, if known.
	Audit *AuditState `json:"audit,omitempty"`
	// Now is when the snapshot was taken.
	Now time.Time `json:"now"`
}

// Member is one admitted member with the state of its node.
type Member struct {
	EE    string `json:"ee"`
	Role  string `json:"role"`
	Node  string `json:"node"`
	Owner string `json:"owner,omitempty"`
	// Status is the member's effective verdict (a verified verdict past
	// its deadline already counts as violated).
	Status       Status    `json:"status"`
	Reason       string    `json:"reason,omitempty"`
	LastVerified time.Time `json:"lastVerified,omitzero"`
	// CertExpires is when the member's certificate expires; zero if it
	// holds none.
	CertExpires time.Time `json:"certExpires,omitzero"`
	Quarantined bool      `json:"quarantined,omitempty"`
	Frozen      bool      `json:"frozen,omitempty"`
	// Assurance is how the member's node was enrolled: "implicit" or
	// "tpm".
	Assurance string `json:"assurance"`
	// LastQuote is when a TPM quote of the member's node was last
	// appraised as matching the policy; zero if never.
	LastQuote time.Time `json:"lastQuote,omitzero"`
	// Claims are the member's typed claims; nil if unavailable.
	Claims map[string]any `json:"claims,omitempty"`
	// ClaimsError says why Claims are unavailable.
	ClaimsError string `json:"claimsError,omitempty"`
	// ClaimIssuers names, per claim, the issuer whose mapping asserted
	// it. A claim absent here was declared by the EE itself.
	ClaimIssuers map[string]string `json:"claimIssuers,omitempty"`
	// Node state: what the member's node last acknowledged.
	NodeLastReport     time.Time `json:"nodeLastReport,omitzero"`
	PlanVersionAcked   uint64    `json:"planVersionAcked,omitempty"`
	PolicyVersionAcked uint64    `json:"policyVersionAcked,omitempty"`
	// Channel is the node's overlay state for the domain (ChannelUp, ...;
	// empty if not reported).
	Channel string `json:"channel,omitempty"`
	// MatrixID is the flow matrix id the node acknowledged.
	MatrixID string `json:"matrixId,omitempty"`
	// NodeError is the error the node reported for the domain.
	NodeError string `json:"nodeError,omitempty"`
	// AuditIndexes are the indexes of audit entries about the member, if
	// known (admission, verdicts, reactions).
	AuditIndexes []uint64 `json:"auditIndexes,omitempty"`
}

// AuditState is the audit log's latest signed checkpoint and the key to
// verify it with.
type AuditState struct {
	// Checkpoint is the signed checkpoint (C2SP signed note).
	Checkpoint []byte `json:"checkpoint"`
	// VerifierKey is the log's note verifier key.
	VerifierKey string `json:"verifierKey"`
}

// Report is the compliance report of one domain.
type Report struct {
	Domain        string    `json:"domain"`
	Owner         string    `json:"owner"`
	PolicyVersion uint64    `json:"policyVersion"`
	PolicyDigest  string    `json:"policyDigest"`
	GeneratedAt   time.Time `json:"generatedAt"`
	Deadline      string    `json:"deadline"`
	// Statements are the domain's statements, in policy order.
	Statements []Statement `json:"statements"`
	// Members are the members, in role then EE order.
	Members []MemberRow `json:"members"`
	// Cells is indexed [statement][member].
	Cells   [][]Cell `json:"cells"`
	Summary Summary  `json:"summary"`
	// NotEstablished lists what this report does not establish.
	NotEstablished []string `json:"notEstablished"`
}

// Statement is one statement of the domain and its figures.
type Statement struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Text     string `json:"text"`
	Verifier string `json:"verifier"`
	// Scope is "member" when each member is checked on its own evidence,
	// "domain" when one deployment-wide fact decides every cell.
	Scope    string `json:"scope"`
	Verified int    `json:"verified"`
	Violated int    `json:"violated"`
	Unknown  int    `json:"unknown"`
}

// MemberRow is one member and its figures.
type MemberRow struct {
	EE            string    `json:"ee"`
	Role          string    `json:"role"`
	Node          string    `json:"node"`
	Status        Status    `json:"status"`
	Reason        string    `json:"reason,omitempty"`
	LastVerified  time.Time `json:"lastVerified,omitzero"`
	PastDeadline  bool      `json:"pastDeadline,omitempty"`
	Quarantined   bool      `json:"quarantined,omitempty"`
	PolicyVersion uint64    `json:"policyVersion"`
	Verified      int       `json:"verified"`
	Violated      int       `json:"violated"`
	Unknown       int       `json:"unknown"`
}

// Cell is one statement checked for one member.
type Cell struct {
	Status   Status   `json:"status"`
	Evidence Evidence `json:"evidence"`
}

// Evidence is why a cell has its status.
type Evidence struct {
	// Reason says in words what decided the cell.
	Reason string `json:"reason"`
	// Measurement is an observed value the decision rests on (a matrix
	// id, a channel state, a checkpoint size and root).
	Measurement string `json:"measurement,omitempty"`
	// Claim is the claim or requirement the decision rests on.
	Claim string `json:"claim,omitempty"`
	// AuditIndexes are audit entries about the member.
	AuditIndexes []uint64 `json:"auditIndexes,omitempty"`
}

// Summary holds the domain-level figures.
type Summary struct {
	Members  int `json:"members"`
	Cells    int `json:"cells"`
	Verified int `json:"verified"`
	Violated int `json:"violated"`
	Unknown  int `json:"unknown"`
	// VerifiedShare is Verified/Cells (0 when there are no cells).
	VerifiedShare float64 `json:"verifiedShare"`
	// Weakest is the member with the most violated cells, then the most
	// unknown ones, then a violated verdict, then past its deadline; the
	// first in role, EE order on a tie; empty without members.
	Weakest string `json:"weakest,omitempty"`
	// PastDeadline are the members with no verdict within the deadline.
	PastDeadline []string `json:"pastDeadline,omitempty"`
	// PolicyVersions counts the members by the policy version their node
	// runs.
	PolicyVersions []VersionCount `json:"policyVersions"`
}

// VersionCount is how many members run one policy version.
type VersionCount struct {
	Version uint64 `json:"version"`
	Members int    `json:"members"`
	Current bool   `json:"current"`
}

// Build computes the report of snap.Domain under comp. It fails if the
// policy has no such domain.
//
// Build does not check that the snapshot itself is truthful: the member
// states, acknowledgements and claims are what the controller recorded.
func Build(comp *policy.Compiled, snap *Snapshot) (*Report, error) {
	if comp == nil {
		return nil, fmt.Errorf("report: no policy has been applied")
	}
	d, ok := comp.Domain(snap.Domain)
	if !ok {
		return nil, fmt.Errorf("report: no domain %q in the policy", snap.Domain)
	}
	members := make([]Member, len(snap.Members))
	copy(members, snap.Members)
	sort.Slice(members, func(i, j int) bool {
		if members[i].Role != members[j].Role {
			return members[i].Role < members[j].Role
		}
		return members[i].EE < members[j].EE
	})
	r := &Report{
		Domain: d.Name, Owner: d.Owner, PolicyVersion: snap.PolicyVersion, PolicyDigest: comp.Version,
		GeneratedAt: snap.Now.UTC(), Deadline: time.Duration(d.Deadline).String(),
	}
	ck := &checker{comp: comp, d: d, snap: snap, deadline: time.Duration(d.Deadline)}
	ck.audit = ck.auditLog()
	r.Statements = make([]Statement, len(d.Statements))
	r.Cells = make([][]Cell, len(d.Statements))
	r.Members = make([]MemberRow, len(members))
	for j := range members {
		m := &members[j]
		r.Members[j] = MemberRow{EE: m.EE, Role: m.Role, Node: m.Node, Status: m.Status, Reason: m.Reason,
			LastVerified: m.LastVerified.UTC(), PastDeadline: !ck.fresh(m), Quarantined: m.Quarantined, PolicyVersion: m.PolicyVersionAcked}
	}
	for i := range d.Statements {
		st := &d.Statements[i]
		r.Statements[i] = Statement{ID: st.ID, Type: st.Type, Text: st.Text, Verifier: st.Verifier, Scope: scopeOf(st.Verifier)}
		row := make([]Cell, len(members))
		for j := range members {
			c := ck.cell(st, &members[j])
			if c.Evidence.AuditIndexes == nil && len(members[j].AuditIndexes) > 0 {
				c.Evidence.AuditIndexes = members[j].AuditIndexes
			}
			row[j] = c
			count(&r.Statements[i].Verified, &r.Statements[i].Violated, &r.Statements[i].Unknown, c.Status)
			count(&r.Members[j].Verified, &r.Members[j].Violated, &r.Members[j].Unknown, c.Status)
			count(&r.Summary.Verified, &r.Summary.Violated, &r.Summary.Unknown, c.Status)
		}
		r.Cells[i] = row
	}
	r.summarise(snap.PolicyVersion)
	r.NotEstablished = notEstablished(d, members)
	return r, nil
}

func count(v, x, u *int, s Status) {
	switch s {
	case StatusVerified:
		*v++
	case StatusViolated:
		*x++
	default:
		*u++
	}
}

func scopeOf(verifier string) string {
	switch verifier {
	case "audit-log", "admin-rbac":
		return "domain"
	}
	return "member"
}

func (r *Report) summarise(current uint64) {
	s := &r.Summary
	s.Members = len(r.Members)
	s.Cells = s.Verified + s.Violated + s.Unknown
	if s.Cells > 0 {
		s.VerifiedShare = float64(s.Verified) / float64(s.Cells)
	}
	weakest := -1
	versions := map[uint64]int{}
	for j, m := range r.Members {
		if m.PastDeadline {
			s.PastDeadline = append(s.PastDeadline, m.EE)
		}
		versions[m.PolicyVersion]++
		if weakest < 0 {
			weakest = j
			continue
		}
		if weaker(m, r.Members[weakest]) {
			weakest = j
		}
	}
	if weakest >= 0 {
		s.Weakest = r.Members[weakest].EE
	}
	s.PolicyVersions = []VersionCount{}
	for v, n := range versions {
		s.PolicyVersions = append(s.PolicyVersions, VersionCount{Version: v, Members: n, Current: v == current})
	}
	sort.Slice(s.PolicyVersions, func(i, j int) bool { return s.PolicyVersions[i].Version > s.PolicyVersions[j].Version })
}

// weaker orders members for Summary.Weakest: more violated cells, then
// more unknown cells, then a violated verdict, then past the deadline.
func weaker(a, b MemberRow) bool {
	if a.Violated != b.Violated {
		return a.Violated > b.Violated
	}
	if a.Unknown != b.Unknown {
		return a.Unknown > b.Unknown
	}
	if (a.Status == StatusViolated) != (b.Status == StatusViolated) {
		return a.Status == StatusViolated
	}
	return a.PastDeadline && !b.PastDeadline
}

// checker decides cells.
type checker struct {
	comp     *policy.Compiled
	d        *policy.DomainPolicy
	snap     *Snapshot
	deadline time.Duration
	audit    Cell
}

// fresh reports whether the member has a verdict within the deadline.
func (ck *checker) fresh(m *Member) bool {
	return !m.LastVerified.IsZero() && ck.snap.Now.Sub(m.LastVerified) <= ck.deadline
}

// nodeFresh reports whether the node's acknowledged state is recent
// enough to speak for now.
func (ck *checker) nodeFresh(m *Member) bool {
	return !m.NodeLastReport.IsZero() && ck.snap.Now.Sub(m.NodeLastReport) <= ck.deadline
}

func cell(s Status, reason string) Cell { return Cell{Status: s, Evidence: Evidence{Reason: reason}} }

func (ck *checker) cell(st *policy.StatementC, m *Member) Cell {
	switch st.Verifier {
	case "owner":
		return ck.owner(st, m)
	case "flow-matrix":
		return ck.flowMatrix(m)
	case "overlay":
		return ck.overlay(m)
	case "member-identity":
		return ck.memberIdentity(m)
	case "attestation":
		return ck.attestation(m)
	case "requirements":
		return ck.requirements(st, m)
	case "issuers":
		return ck.issuers(st, m)
	case "audit-log":
		return ck.audit
	case "admin-rbac":
		return cell(StatusVerified, "by construction of the deployment: the controller accepts administrative calls only over mutual TLS with an admin certificate from the deployment CA, and the role in the certificate (admin, domain-admin, auditor) limits every call; this report does not list the certificates issued")
	}
	return cell(StatusUnknown, fmt.Sprintf("no report check for verifier %q", st.Verifier))
}

func (ck *checker) owner(st *policy.StatementC, m *Member) Cell {
	want := st.Owner
	if want == "" {
		want = ck.d.Owner
	}
	c := cell(StatusUnknown, "")
	c.Evidence.Claim = "ee.owner"
	c.Evidence.Measurement = m.Owner
	switch {
	case m.Owner == "":
		c.Evidence.Reason = "the EE reported no owner"
	case m.Owner == want:
		c.Status, c.Evidence.Reason = StatusVerified, fmt.Sprintf("the EE was created by %s, the required owner", m.Owner)
	default:
		c.Status, c.Evidence.Reason = StatusViolated, fmt.Sprintf("the EE was created by %s, not by %s", m.Owner, want)
	}
	return c
}

func (ck *checker) flowMatrix(m *Member) Cell {
	c := cell(StatusUnknown, "")
	c.Evidence.Measurement = m.MatrixID
	switch {
	case m.NodeError != "":
		c.Status, c.Evidence.Reason = StatusViolated, "node "+m.Node+" reports an error for the domain: "+m.NodeError
	case m.MatrixID == "":
		c.Evidence.Reason = "node " + m.Node + " has acknowledged no flow matrix"
	case ck.snap.FlowMatrixID == "":
		c.Evidence.Reason = "the controller has no current flow matrix id to compare with"
	case m.MatrixID != ck.snap.FlowMatrixID:
		c.Evidence.Reason = fmt.Sprintf("node %s enforces matrix %s (policy version %d), not the current %s", m.Node, short(m.MatrixID), m.PolicyVersionAcked, short(ck.snap.FlowMatrixID))
	case !ck.nodeFresh(m):
		c.Evidence.Reason = fmt.Sprintf("node %s acknowledged the current matrix but has not reported since %s", m.Node, stamp(m.NodeLastReport))
	default:
		c.Status, c.Evidence.Reason = StatusVerified, fmt.Sprintf("node %s acknowledged the current flow matrix (policy version %d) and reported at %s", m.Node, m.PolicyVersionAcked, stamp(m.NodeLastReport))
	}
	return c
}

func (ck *checker) overlay(m *Member) Cell {
	c := cell(StatusUnknown, "")
	c.Evidence.Measurement = "channel " + orNone(m.Channel)
	switch {
	case m.Channel == ChannelFailed:
		c.Status, c.Evidence.Reason = StatusViolated, "node "+m.Node+" reports the domain's overlay failed: "+orNone(m.NodeError)
	case m.Channel != ChannelUp:
		c.Evidence.Reason = "node " + m.Node + " does not report the domain's overlay up"
	case !ck.nodeFresh(m):
		c.Evidence.Reason = fmt.Sprintf("node %s reported the overlay up but has not reported since %s", m.Node, stamp(m.NodeLastReport))
	default:
		c.Status, c.Evidence.Reason = StatusVerified, fmt.Sprintf("node %s reports the domain's WireGuard overlay up with the planned peers at %s", m.Node, stamp(m.NodeLastReport))
	}
	return c
}

func (ck *checker) memberIdentity(m *Member) Cell {
	c := cell(StatusUnknown, "")
	if !m.CertExpires.IsZero() {
		c.Evidence.Measurement = "certificate expires " + stamp(m.CertExpires)
	}
	switch {
	case m.CertExpires.IsZero():
		c.Evidence.Reason = "the member holds no certificate the controller knows of"
	case !ck.snap.Now.Before(m.CertExpires):
		c.Status, c.Evidence.Reason = StatusViolated, "the member certificate has expired and was not renewed"
	case m.Status == StatusViolated:
		c.Status, c.Evidence.Reason = StatusViolated, "the member's verdict is violated, so its certificate is not renewed: "+orNone(m.Reason)
	case m.Status != StatusVerified || !ck.fresh(m):
		c.Evidence.Reason = "the member has no fresh verified verdict"
	default:
		c.Status, c.Evidence.Reason = StatusVerified, "the member holds an unexpired certificate from the deployment CA and a fresh verified verdict"
	}
	return c
}

func (ck *checker) attestation(m *Member) Cell {
	c := cell(StatusUnknown, "")
	c.Evidence.Measurement = "assurance " + orNone(m.Assurance)
	level, _ := tvd.ParseAssurance(m.Assurance)
	switch {
	case m.Status == StatusViolated:
		c.Status, c.Evidence.Reason = StatusViolated, "the member's verdict is violated: "+orNone(m.Reason)
	case level < tvd.AssuranceTPM:
		c.Status, c.Evidence.Reason = StatusViolated, fmt.Sprintf("node %s is enrolled at %s assurance: it has no TPM to quote its measurements", m.Node, orNone(m.Assurance))
	case m.LastQuote.IsZero():
		c.Evidence.Reason = fmt.Sprintf("node %s is TPM-assured but no appraised TPM quote is recorded for it", m.Node)
	case ck.snap.Now.Sub(m.LastQuote) > ck.deadline:
		c.Evidence.Reason = fmt.Sprintf("the last appraised quote of node %s is from %s, past the deadline", m.Node, stamp(m.LastQuote))
	case m.Status != StatusVerified || !ck.fresh(m):
		c.Evidence.Reason = "the member has no fresh verified verdict"
	default:
		c.Status, c.Evidence.Reason = StatusVerified, fmt.Sprintf("node %s is TPM-assured; its quote appraised at %s matched the reference values", m.Node, stamp(m.LastQuote))
	}
	return c
}

func (ck *checker) requirements(st *policy.StatementC, m *Member) Cell {
	c := cell(StatusUnknown, "")
	c.Evidence.Claim = strings.Join(st.Requirements, ",")
	if m.Claims == nil {
		c.Evidence.Reason = "the member's claims are unavailable"
		if m.ClaimsError != "" {
			c.Evidence.Reason += ": " + m.ClaimsError
		}
		return c
	}
	want := map[string]bool{}
	for _, id := range st.Requirements {
		want[id] = true
	}
	var violated, unknown, verified []string
	for _, res := range ck.d.EvalRequirements(m.Claims) {
		if !want[res.ID] {
			continue
		}
		switch Status(res.Status) {
		case StatusVerified:
			verified = append(verified, res.ID)
		case StatusViolated:
			violated = append(violated, res.ID+": "+res.Detail)
		default:
			unknown = append(unknown, res.ID+": "+res.Detail)
		}
	}
	switch {
	case len(violated) > 0:
		c.Status, c.Evidence.Reason = StatusViolated, strings.Join(violated, "; ")
	case len(unknown) > 0:
		c.Evidence.Reason = strings.Join(unknown, "; ")
	case len(verified) == 0:
		c.Evidence.Reason = "the statement names no requirement of the domain"
	default:
		c.Status, c.Evidence.Reason = StatusVerified, "requirements hold over the member's claims: "+strings.Join(verified, ", ")
	}
	return c
}

// reliedOn returns the declared claims the domain relies on: its required
// claims and the claims its requirement expressions name.
func (ck *checker) reliedOn() []string {
	set := map[string]bool{}
	for _, cl := range ck.d.RequiredClaims {
		set[cl] = true
	}
	for _, ct := range ck.comp.Claims {
		for _, r := range ck.d.Requirements {
			if mentions(r.Expr, ct.Name) {
				set[ct.Name] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// mentions reports whether expr names the identifier name (not as part of
// a longer identifier).
func mentions(expr, name string) bool {
	for i := 0; ; {
		k := strings.Index(expr[i:], name)
		if k < 0 {
			return false
		}
		s, e := i+k, i+k+len(name)
		if (s == 0 || !identByte(expr[s-1])) && (e == len(expr) || !identByte(expr[e])) {
			return true
		}
		i = s + 1
	}
}

func identByte(b byte) bool {
	return b == '_' || b == '.' || b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z'
}

func (ck *checker) issuers(st *policy.StatementC, m *Member) Cell {
	c := cell(StatusUnknown, "")
	listed := map[string]bool{}
	for _, is := range st.Issuers {
		listed[is] = true
	}
	claims := ck.reliedOn()
	c.Evidence.Claim = strings.Join(claims, ",")
	if len(claims) == 0 {
		c.Evidence.Reason = "the domain relies on no declared claim"
		return c
	}
	// A claim no mapping of a listed issuer establishes can never be
	// asserted by a listed issuer.
	for _, cl := range claims {
		found := false
		for _, mp := range ck.comp.Mappings {
			if _, ok := mp.Establishes[cl]; ok && listed[mp.Issuer] {
				found = true
			}
		}
		if !found {
			c.Status, c.Evidence.Reason = StatusViolated, fmt.Sprintf("no mapping of a listed issuer (%s) establishes claim %s", strings.Join(st.Issuers, ", "), cl)
			return c
		}
	}
	var self []string
	for _, cl := range claims {
		is, ok := m.ClaimIssuers[cl]
		switch {
		case !ok:
			self = append(self, cl)
		case !listed[is]:
			c.Status, c.Evidence.Reason = StatusViolated, fmt.Sprintf("claim %s was asserted by %s, which the statement does not list", cl, is)
			return c
		}
	}
	if len(self) > 0 {
		c.Evidence.Reason = "no issuer's mapping is recorded as asserting " + strings.Join(self, ", ") + " for this member (the value, if any, is the EE's own declaration)"
		return c
	}
	c.Status, c.Evidence.Reason = StatusVerified, "every claim the domain relies on was asserted by a listed issuer"
	return c
}

// auditLog decides the domain-wide audit-log cell: the latest checkpoint
// must verify under the log's key.
func (ck *checker) auditLog() Cell {
	a := ck.snap.Audit
	if a == nil || len(a.Checkpoint) == 0 {
		return cell(StatusUnknown, "no audit checkpoint in the snapshot")
	}
	v, err := audit.NewVerifier(a.VerifierKey)
	if err != nil {
		return cell(StatusUnknown, fmt.Sprintf("the audit verifier key is unusable: %v", err))
	}
	cp, err := audit.OpenCheckpoint(a.Checkpoint, v)
	if err != nil {
		return cell(StatusViolated, fmt.Sprintf("the latest audit checkpoint does not verify: %v", err))
	}
	c := cell(StatusVerified, fmt.Sprintf("the latest checkpoint of log %s is signed by the log key", cp.Origin))
	c.Evidence.Measurement = fmt.Sprintf("size %d root %x", cp.Size, cp.Hash)
	return c
}

func short(id string) string {
	if len(id) > 19 {
		return id[:19] + "…"
	}
	return id
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// notEstablished lists what a report does not establish.
func notEstablished(d *policy.DomainPolicy, members []Member) []string {
	out := []string{
		"That the controller's records are truthful: the report restates what the controller recorded; a compromised controller could record anything.",
		"That packets were actually dropped or encrypted: flow-matrix and overlay cells rest on the nodes' acknowledgements, not on observed traffic.",
		"Anything between the member's last verdict and now: a cell is as old as the evidence it cites.",
		"That the audit log is complete: a verified checkpoint shows the log is signed and append-only from the verifier's view, not that every act was recorded.",
		"Which administrator certificates exist: admin-rbac is verified by construction, not by listing issued certificates.",
		"The EEs' own declarations: claims an EE declares are used as given unless an issuer's mapping asserted them.",
	}
	attest := false
	for _, st := range d.Statements {
		if st.Verifier == "attestation" {
			attest = true
		}
	}
	if attest {
		quoted := false
		for _, m := range members {
			if !m.LastQuote.IsZero() {
				quoted = true
			}
		}
		if !quoted {
			out = append(out, "Platform integrity: no member's node has an appraised TPM quote on record, so no attestation cell can be verified.")
		}
	}
	return out
}
