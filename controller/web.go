package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/report"
	"github.com/tvd-dev/tvd/web"
)

func (c *Controller) webTokens() *web.Tokens { return c.webTok }

// WebHandler returns the dashboard (package web), to be served under
// web.Prefix ("/ui/") behind the controller's TLS configuration, on the
// API's port:
//
//	mux.Handle(web.Prefix, c.WebHandler())
//
// It identifies callers itself (an admin client certificate, else the
// session cookie of a login token from CreateLoginToken), so it may also
// be served on its own.
func (c *Controller) WebHandler() http.Handler {
	h, err := web.NewHandler(web.Config{
		Source: webSource{c},
		Tokens: c.webTokens(),
		Identify: func(r *http.Request) (web.Viewer, bool) {
			cl := callerOf(r.Context())
			if !cl.ok || cl.id.Kind != ca.KindAdmin {
				return web.Viewer{}, false
			}
			return viewerOf(cl.id), true
		},
		Logger: c.log.With("c", "web"),
		Now:    c.now,
	})
	if err != nil {
		// The templates are embedded and parsed in the web package's
		// tests; this cannot fail at run time.
		panic(err)
	}
	return c.identifyOnce(h)
}

// identifyOnce identifies the caller unless a handler in front (the API
// mux's) already did.
func (c *Controller) identifyOnce(next http.Handler) http.Handler {
	identified := c.identify(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, done := r.Context().Value(identityKey{}).(caller); done {
			next.ServeHTTP(w, r)
			return
		}
		identified.ServeHTTP(w, r)
	})
}

// webSource gives the dashboard the controller's state, filtered by the
// viewer's role.
type webSource struct{ c *Controller }

func (s webSource) Overview(ctx context.Context, v web.Viewer) (*web.Overview, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	ov := &web.Overview{TrustDomain: c.ca.TrustDomain(), PolicyVersion: c.s.polVer}
	if c.s.policy == nil {
		return ov, nil
	}
	byName := map[string]*web.DomainInfo{}
	for _, d := range c.s.policy.Domains {
		if !v.Role.CanRead(d.Name) {
			continue
		}
		ov.Domains = append(ov.Domains, web.DomainInfo{Name: d.Name, Owner: d.Owner})
	}
	for i := range ov.Domains {
		byName[ov.Domains[i].Name] = &ov.Domains[i]
	}
	for _, m := range c.s.sortedMembers() {
		d := byName[m.Domain]
		if d == nil || !m.active() {
			continue
		}
		st := c.effectiveStatus(m)
		reason := m.StatusReason
		if st != m.Status {
			reason = "no fresh verdict since " + m.LastVerified.UTC().Format(time.RFC3339)
		}
		d.Members++
		switch st {
		case tvd.StatusVerified:
			d.Verified++
		case tvd.StatusViolated:
			d.Violated++
		default:
			d.Unknown++
		}
		if m.Quarantined {
			d.Quarantined++
		}
		ov.Members = append(ov.Members, web.MemberInfo{Domain: m.Domain, Role: m.Role, EE: m.EE, Node: m.Node, Status: st.String(),
			Reason: reason, LastVerified: m.LastVerified, Quarantined: m.Quarantined, Frozen: m.Frozen})
	}
	// Flow rules: those from or to a domain the viewer may read.
	for _, row := range c.s.policy.Flows {
		fromDom, fromRole, _ := strings.Cut(row.From, "/")
		if !v.Role.CanRead(fromDom) && !v.Role.CanRead(row.To) {
			continue
		}
		ov.Flows = append(ov.Flows, web.FlowRule{FromDomain: fromDom, FromRole: fromRole, To: row.To, Rule: row.Rule, Roles: row.Roles})
	}
	return ov, nil
}

func (s webSource) Report(ctx context.Context, v web.Viewer, domain string) (*report.Report, error) {
	if !v.Role.CanRead(domain) {
		return nil, web.ErrDenied
	}
	return s.c.complianceReport(ctx, domain)
}

// maxEventScan bounds how far back a domain's latest events are looked
// for.
const maxEventScan = 20000

func (s webSource) Events(ctx context.Context, v web.Viewer, domain string, after int64, limit int) ([]web.Event, error) {
	if domain != "" && !v.Role.CanRead(domain) {
		return nil, web.ErrDenied
	}
	lg := s.c.audit.log
	size := lg.Size()
	visible := func(e audit.Entry) bool {
		if domain != "" {
			return e.Domain == domain
		}
		if v.Role.Kind == ca.RoleAdmin {
			return true
		}
		return e.Domain != "" && v.Role.CanRead(e.Domain)
	}
	var out []web.Event
	add := func(i uint64) error {
		e, err := lg.Entry(ctx, i)
		if err != nil {
			return fmt.Errorf("audit entry %d: %w", i, err)
		}
		if visible(e) {
			out = append(out, web.Event{Index: i, Time: e.Time, Kind: e.Kind, Domain: e.Domain, Actor: e.Actor, Subject: e.Subject, Detail: e.Detail})
		}
		return nil
	}
	if after >= 0 {
		for i := uint64(after) + 1; i < size && len(out) < limit && i-uint64(after) <= maxEventScan; i++ {
			if err := add(i); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	for i := size; i > 0 && len(out) < limit && size-i < maxEventScan; i-- {
		if err := add(i - 1); err != nil {
			return nil, err
		}
	}
	for l, r := 0, len(out)-1; l < r; l, r = l+1, r-1 {
		out[l], out[r] = out[r], out[l]
	}
	return out, nil
}

func (s webSource) Checkpoint(ctx context.Context, v web.Viewer, oldSize uint64) (*web.CheckpointProof, error) {
	c := s.c
	vk, err := c.auditVerifierKey()
	if err != nil {
		return nil, err
	}
	lg := c.audit.log
	signed := lg.Checkpoint()
	if len(signed) == 0 {
		return nil, errors.New("the audit log has no checkpoint yet")
	}
	ver, err := audit.NewVerifier(vk)
	if err != nil {
		return nil, err
	}
	cp, err := audit.OpenCheckpoint(signed, ver)
	if err != nil {
		return nil, fmt.Errorf("the controller's own checkpoint does not verify: %w", err)
	}
	out := &web.CheckpointProof{Signed: string(signed), VerifierKey: vk}
	if oldSize > 0 && oldSize < cp.Size {
		proof, err := lg.ConsistencyProof(ctx, oldSize, cp.Size)
		if err != nil {
			return nil, fmt.Errorf("consistency proof %d→%d: %w", oldSize, cp.Size, err)
		}
		out.OldSize, out.Consistency = oldSize, proof
	}
	return out, nil
}
