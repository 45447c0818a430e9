package controller

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tvd-dev/tvd"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/report"
	"github.com/tvd-dev/tvd/web"
)

// ComplianceReport answers AdminService.ComplianceReport: an admin, or a
// domain-admin or auditor of the domain, gets the domain's report.
func (a *adminService) ComplianceReport(ctx context.Context, req *connect.Request[tvdv1.ComplianceReportRequest]) (*connect.Response[tvdv1.ComplianceReportResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "compliance report", err)
	}
	dom := req.Msg.GetDomain()
	if dom == "" {
		return nil, c.toConnect(ctx, "compliance report", errInvalid("compliance report: the domain is required"))
	}
	if !id.Role.CanRead(dom) {
		return nil, c.toConnect(ctx, "compliance report", errDenied("permission denied: %s may not read domain %q", id.Role, dom))
	}
	r, err := c.complianceReport(ctx, dom)
	if err != nil {
		return nil, c.toConnect(ctx, "compliance report", err)
	}
	resp := &tvdv1.ComplianceReportResponse{Format: req.Msg.GetFormat(), VerifiedShare: r.Summary.VerifiedShare,
		Violated: uint32(r.Summary.Violated), Unknown: uint32(r.Summary.Unknown), PolicyVersion: r.PolicyVersion}
	var b bytes.Buffer
	switch req.Msg.GetFormat() {
	case tvdv1.ReportFormat_REPORT_FORMAT_UNSPECIFIED, tvdv1.ReportFormat_REPORT_FORMAT_JSON:
		resp.Format, resp.ContentType = tvdv1.ReportFormat_REPORT_FORMAT_JSON, "application/json"
		err = r.WriteJSON(&b)
	case tvdv1.ReportFormat_REPORT_FORMAT_TEXT:
		resp.ContentType = "text/plain; charset=utf-8"
		err = r.WriteTable(&b)
	case tvdv1.ReportFormat_REPORT_FORMAT_HTML:
		resp.ContentType = "text/html; charset=utf-8"
		err = r.WriteHTML(&b)
	default:
		return nil, c.toConnect(ctx, "compliance report", errInvalid("report format %v: want JSON, TEXT or HTML", req.Msg.GetFormat()))
	}
	if err != nil {
		return nil, c.toConnect(ctx, "compliance report", err)
	}
	resp.Content = b.Bytes()
	return connect.NewResponse(resp), nil
}

// CreateLoginToken answers AdminService.CreateLoginToken: a short-lived,
// single-use token that logs a browser into the dashboard as the caller.
func (a *adminService) CreateLoginToken(ctx context.Context, req *connect.Request[tvdv1.CreateLoginTokenRequest]) (*connect.Response[tvdv1.CreateLoginTokenResponse], error) {
	c := a.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "create login token", err)
	}
	var ttl time.Duration
	if d := req.Msg.GetTtl(); d != nil {
		ttl = d.AsDuration()
	}
	tok, exp, err := c.webTokens().MintLogin(viewerOf(id), ttl)
	if err != nil {
		return nil, c.toConnect(ctx, "create login token", errInvalid("%v", err))
	}
	c.log.InfoContext(ctx, "dashboard login token issued", "admin", id.ID, "role", id.Role.String(), "expires", exp)
	return connect.NewResponse(&tvdv1.CreateLoginTokenResponse{Token: tok, Url: "https://" + c.advertised() + "/ui/login?token=" + tok,
		Expires: timestamppb.New(exp)}), nil
}

// complianceReport builds the report of one domain from the controller's
// state.
func (c *Controller) complianceReport(ctx context.Context, dom string) (*report.Report, error) {
	vk, err := c.auditVerifierKey()
	if err != nil {
		return nil, err
	}
	indexes, err := c.recentAuditIndexes(ctx, dom)
	if err != nil {
		return nil, err
	}
	// The snapshot is taken under the lock; the report, which evaluates
	// every requirement for every member, is built after it.
	c.mu.Lock()
	comp := c.s.policy
	if comp == nil {
		c.mu.Unlock()
		return nil, errPrecondition("no policy has been applied yet")
	}
	if _, ok := comp.Domain(dom); !ok {
		c.mu.Unlock()
		return nil, errNotFound("no domain %q in policy version %d", dom, c.s.polVer)
	}
	snap := c.reportSnapshot(comp, dom)
	c.mu.Unlock()
	for i := range snap.Members {
		m := &snap.Members[i]
		m.AuditIndexes = indexes[tvd.Member{Domain: dom, Role: m.Role, EE: m.EE}.SPIFFEID(c.ca.TrustDomain())]
	}
	snap.Audit = &report.AuditState{Checkpoint: c.audit.log.Checkpoint(), VerifierKey: vk}
	r, err := report.Build(comp, snap)
	if err != nil {
		return nil, fmt.Errorf("compliance report: %w", err)
	}
	return r, nil
}

// Bounds of the audit evidence a report cites: the entries about each
// member among the latest reportAuditScan entries, at most
// reportAuditPerMember of them.
const (
	reportAuditScan      = 5000
	reportAuditPerMember = 5
)

// recentAuditIndexes returns, by subject (a member's SPIFFE ID), the
// indexes of the domain's latest audit entries about it, ascending.
func (c *Controller) recentAuditIndexes(ctx context.Context, dom string) (map[string][]uint64, error) {
	lg := c.audit.log
	size := lg.Size()
	out := map[string][]uint64{}
	for i := size; i > 0 && size-i < reportAuditScan; i-- {
		e, err := lg.Entry(ctx, i-1)
		if err != nil {
			return nil, fmt.Errorf("audit entry %d: %w", i-1, err)
		}
		if e.Domain != dom || e.Subject == "" || len(out[e.Subject]) >= reportAuditPerMember {
			continue
		}
		out[e.Subject] = append(out[e.Subject], i-1)
	}
	for _, idx := range out {
		slices.Reverse(idx)
	}
	return out, nil
}

// auditVerifierKey reads the audit log's verifier key (written at start).
func (c *Controller) auditVerifierKey() (string, error) {
	b, err := os.ReadFile(filepath.Join(c.cfg.DataDir, "audit", "verifier.key"))
	if err != nil {
		return "", fmt.Errorf("audit verifier key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// flowMatrix returns the serialized flow matrix of comp, which plans
// carry, and its id (the SHA-256 of that form). They are computed once per
// policy, not for every plan. It must be called with c.mu held.
func (c *Controller) flowMatrix(comp *policy.Compiled) (wire []byte, id string) {
	if c.matrix.comp != comp {
		mj, err := json.Marshal(comp.Matrix)
		if err != nil {
			return nil, ""
		}
		sum := sha256.Sum256(mj)
		c.matrix.comp, c.matrix.wire, c.matrix.id = comp, mj, "sha256:"+hex.EncodeToString(sum[:])
	}
	return c.matrix.wire, c.matrix.id
}

// reportSnapshot assembles what package report needs about one domain. It
// must be called with c.mu held; it only reads.
func (c *Controller) reportSnapshot(comp *policy.Compiled, dom string) *report.Snapshot {
	now := c.now()
	snap := &report.Snapshot{Domain: dom, TrustDomain: c.ca.TrustDomain(), PolicyVersion: c.s.polVer, Now: now}
	_, snap.FlowMatrixID = c.flowMatrix(comp)
	for _, m := range c.s.sortedMembers() {
		if m.Domain != dom || !m.active() {
			continue
		}
		st := c.effectiveStatus(m)
		reason := m.StatusReason
		if st != m.Status {
			reason = fmt.Sprintf("no fresh verdict since %s", m.LastVerified.UTC().Format(time.RFC3339))
		}
		rm := report.Member{EE: m.EE, Role: m.Role, Node: m.Node, Owner: m.Owner, Status: report.Status(st), Reason: reason,
			LastVerified: m.LastVerified, CertExpires: m.CertExpires, Quarantined: m.Quarantined, Frozen: m.Frozen}
		n := c.s.nodes[m.Node]
		if n != nil && !n.Left {
			rm.Assurance = n.Assurance
			// A TPM node's verdict is verified only on a quote over a
			// fresh nonce whose measurements are all listed (attest.go),
			// so its time is the last appraised quote.
			if n.Assurance == tvd.AssuranceTPM.String() && m.Status == tvd.StatusVerified {
				rm.LastQuote = m.LastVerified
			}
			rm.NodeLastReport, rm.PlanVersionAcked, rm.PolicyVersionAcked = n.LastReport, n.AckedVersion, n.AckedPolicy
			if ds, ok := n.Domains[dom]; ok {
				rm.Channel = strings.TrimPrefix(ds.Channel, "CHANNEL_STATE_")
				rm.MatrixID, rm.NodeError = ds.Matrix, ds.Error
			}
			claims, err := c.claimsFor(n, m, comp)
			if err != nil {
				rm.ClaimsError = err.Error()
			} else {
				// Claims a mapping establishes from the member's measured
				// reference value sets are asserted by its issuer.
				rm.ClaimIssuers = map[string]string{}
				for _, mp := range comp.Mappings {
					if !slices.ContainsFunc(mp.Measured, func(s string) bool { return slices.Contains(m.MeasuredSets, s) }) {
						continue
					}
					for k, v := range mp.Establishes {
						claims[k] = v
						rm.ClaimIssuers[k] = mp.Issuer
					}
				}
				rm.Claims = claims
			}
		}
		snap.Members = append(snap.Members, rm)
	}
	return snap
}

// viewerOf is the dashboard viewer of an admin identity.
func viewerOf(id ca.Identity) web.Viewer { return web.Viewer{ID: id.ID, Role: id.Role} }
