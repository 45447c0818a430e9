package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tvd-dev/tvd"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/store"
)

// EE operations (tvd ee): the controller records what an administrator
// asks for as an operation in the store, hands every pending operation of
// a node to its agent in the node's plan (Plan.ee_operations), and closes
// it when the agent reports the outcome (ReportRequest.ee_results). A
// migration is an operation of its own that drives two: MIGRATE_OUT on the
// source node, then MIGRATE_IN on the target, and ends when the target's
// agent has been admitted again for the EE.

const (
	prefixEEOps = "eeops/"
	// maxArchiveBytes bounds a migration archive (the EE's writable state).
	maxArchiveBytes = 256 << 20
	// maxLogBytes bounds the log tail an operation keeps.
	maxLogBytes = 64 << 10
	// maxEEOpsPerPlan bounds the pending operations one plan carries.
	maxEEOpsPerPlan = 64
	// keepEEOps is how many finished operations the controller keeps (the
	// audit log keeps them all).
	keepEEOps = 1000
)

// Operation states.
const (
	opPending = "pending"
	opDone    = "done"
	opFailed  = "failed"
)

// memberMigrating is the state of a member whose EE is moving between
// nodes: in no plan, its overlay address reserved for it.
const memberMigrating = "migrating"

// eeDef is an EE definition (tvdv1.EEDefinition) in the store.
type eeDef struct {
	Name        string            `json:"name"`
	Image       string            `json:"image,omitempty"`
	Command     []string          `json:"command,omitempty"`
	Domain      string            `json:"domain"`
	Role        string            `json:"role"`
	Owner       string            `json:"owner,omitempty"`
	Claims      map[string]string `json:"claims,omitempty"`
	ImageDigest string            `json:"imageDigest,omitempty"`
}

func defFromProto(d *tvdv1.EEDefinition) *eeDef {
	if d == nil {
		return nil
	}
	return &eeDef{Name: d.GetName(), Image: d.GetImage(), Command: d.GetCommand(), Domain: d.GetDomain(), Role: d.GetRole(),
		Owner: d.GetOwner(), Claims: d.GetClaims(), ImageDigest: d.GetImageDigest()}
}

func (d *eeDef) proto() *tvdv1.EEDefinition {
	if d == nil {
		return nil
	}
	return &tvdv1.EEDefinition{Name: d.Name, Image: d.Image, Command: d.Command, Domain: d.Domain, Role: d.Role,
		Owner: d.Owner, Claims: d.Claims, ImageDigest: d.ImageDigest}
}

// eeOpRec is one EE operation.
type eeOpRec struct {
	ID            string    `json:"id"`
	Action        string    `json:"action"` // tvdv1.EEAction name
	EE            string    `json:"ee"`
	Node          string    `json:"node"`
	Def           *eeDef    `json:"def,omitempty"`
	ArchiveDigest string    `json:"archiveDigest,omitempty"`
	Actor         string    `json:"actor"`
	Reason        string    `json:"reason,omitempty"`
	IssuedAt      time.Time `json:"issuedAt"`
	State         string    `json:"state"`
	Error         string    `json:"error,omitempty"`
	DoneAt        time.Time `json:"doneAt,omitzero"`
	AuditIndex    uint64    `json:"auditIndex,omitempty"`
	// The agent's outcome.
	SnapshotDigest string `json:"snapshotDigest,omitempty"`
	SnapshotBytes  int64  `json:"snapshotBytes,omitempty"`
	Logs           []byte `json:"logs,omitempty"`
	ImageDigest    string `json:"imageDigest,omitempty"`
	// Migrations: the parent of a MIGRATE_OUT or MIGRATE_IN; the nodes,
	// phase and current step of a MIGRATE.
	Parent string `json:"parent,omitempty"`
	From   string `json:"from,omitempty"`
	To     string `json:"to,omitempty"`
	Phase  string `json:"phase,omitempty"`
	Step   string `json:"step,omitempty"`
}

func (o *eeOpRec) action() tvdv1.EEAction { return tvdv1.EEAction(tvdv1.EEAction_value[o.Action]) }

func (o *eeOpRec) proto() *tvdv1.EEOperation {
	p := &tvdv1.EEOperation{Id: o.ID, Action: o.action(), Ee: o.EE, Node: o.Node, Error: o.Error, Actor: o.Actor,
		IssuedAt: timestamppb.New(o.IssuedAt), FromNode: o.From, ToNode: o.To, Phase: o.Phase, AuditIndex: o.AuditIndex}
	switch o.State {
	case opPending:
		p.State = tvdv1.EEOperationState_EE_OPERATION_STATE_PENDING
	case opDone:
		p.State = tvdv1.EEOperationState_EE_OPERATION_STATE_DONE
	case opFailed:
		p.State = tvdv1.EEOperationState_EE_OPERATION_STATE_FAILED
	}
	if !o.DoneAt.IsZero() {
		p.DoneAt = timestamppb.New(o.DoneAt)
	}
	if o.State != opPending {
		p.Result = &tvdv1.EEOperationResult{Id: o.ID, Done: o.State == opDone, Error: o.Error, SnapshotDigest: o.SnapshotDigest,
			SnapshotBytes: o.SnapshotBytes, Logs: o.Logs, ImageDigest: o.ImageDigest}
	}
	return p
}

// eeSeen is one EE as its node last reported it.
type eeSeen struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	Isolation string `json:"isolation,omitempty"`
	Domain    string `json:"domain,omitempty"`
	Role      string `json:"role,omitempty"`
	Image     string `json:"image,omitempty"`
	Error     string `json:"error,omitempty"`
}

func newOpID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "op-" + hex.EncodeToString(b)
}

// loadOps reads the EE operations from the store.
func loadOps(ctx context.Context, st store.Store, s *state) error {
	kvs, err := st.List(ctx, prefixEEOps, store.ListOptions{})
	if err != nil {
		return fmt.Errorf("load %s: %w", prefixEEOps, err)
	}
	for _, kv := range kvs {
		var o eeOpRec
		if err := json.Unmarshal(kv.Value, &o); err != nil {
			return fmt.Errorf("load %s: %w", kv.Key, err)
		}
		s.ops[o.ID] = &o
	}
	return nil
}

// pendingOps returns the operations node's agent must carry out, oldest
// first. It must be called with c.mu held.
func (c *Controller) pendingOps(node string) []*tvdv1.EEOperationRequest {
	var ops []*eeOpRec
	for _, o := range c.s.ops {
		if o.Node == node && o.State == opPending && o.action() != tvdv1.EEAction_EE_ACTION_MIGRATE {
			ops = append(ops, o)
		}
	}
	sort.Slice(ops, func(i, j int) bool {
		if !ops[i].IssuedAt.Equal(ops[j].IssuedAt) {
			return ops[i].IssuedAt.Before(ops[j].IssuedAt)
		}
		return ops[i].ID < ops[j].ID
	})
	if len(ops) > maxEEOpsPerPlan {
		ops = ops[:maxEEOpsPerPlan]
	}
	out := make([]*tvdv1.EEOperationRequest, 0, len(ops))
	for _, o := range ops {
		out = append(out, &tvdv1.EEOperationRequest{Id: o.ID, Action: o.action(), Ee: o.EE, Definition: o.Def.proto(), ArchiveDigest: o.ArchiveDigest, Actor: o.Actor})
	}
	return out
}

// eeService implements tvdv1connect.EEServiceHandler.
type eeService struct{ c *Controller }

// eeOf finds where an EE is: its member record and the node reporting it.
// It must be called with c.mu held.
func (c *Controller) eeOf(name string) (node, domain, role string, m *memberRec) {
	if m = c.s.members[name]; m != nil && m.State != memberLeft {
		return m.Node, m.Domain, m.Role, m
	}
	for _, n := range c.s.sortedNodes() {
		rec := c.s.nodes[n]
		if rec.Left {
			continue
		}
		for _, e := range rec.EEs {
			if e.Name == name {
				return n, e.Domain, e.Role, nil
			}
		}
	}
	if m != nil {
		return m.Node, m.Domain, m.Role, m
	}
	return "", "", "", nil
}

func (e *eeService) ListEEs(ctx context.Context, req *connect.Request[tvdv1.ListEEsRequest]) (*connect.Response[tvdv1.ListEEsResponse], error) {
	c := e.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "list ees", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := &tvdv1.ListEEsResponse{}
	for _, name := range c.s.sortedNodes() {
		n := c.s.nodes[name]
		if n.Left || (req.Msg.GetNode() != "" && req.Msg.GetNode() != name) {
			continue
		}
		for _, seen := range n.EEs {
			info := &tvdv1.EEInfo{Name: seen.Name, Node: name, Domain: seen.Domain, Role: seen.Role, State: tvdv1.EEState(tvdv1.EEState_value[seen.State]),
				Isolation: seen.Isolation, ImageDigest: seen.Image, Error: seen.Error}
			if !n.LastReport.IsZero() {
				info.ReportedAt = timestamppb.New(n.LastReport)
			}
			if m := c.s.members[seen.Name]; m != nil {
				info.Membership, info.OverlayAddress = m.State, m.Address
				if m.Node != name {
					info.Membership = fmt.Sprintf("%s on %s", m.State, m.Node)
				}
				if info.Domain == "" {
					info.Domain, info.Role = m.Domain, m.Role
				}
			}
			if !id.Role.CanRead(info.Domain) {
				continue
			}
			resp.Ees = append(resp.Ees, info)
		}
	}
	// EEs in flight between nodes are on none.
	listed := map[string]bool{}
	for _, e := range resp.Ees {
		listed[e.Name] = true
	}
	for _, m := range c.s.sortedMembers() {
		if m.State == memberMigrating && !listed[m.EE] && id.Role.CanRead(m.Domain) && req.Msg.GetNode() == "" {
			resp.Ees = append(resp.Ees, &tvdv1.EEInfo{Name: m.EE, Domain: m.Domain, Role: m.Role, ImageDigest: m.Image,
				Membership: m.State, OverlayAddress: m.Address, Error: m.Reason})
		}
	}
	sort.SliceStable(resp.Ees, func(i, j int) bool {
		if resp.Ees[i].Node != resp.Ees[j].Node {
			return resp.Ees[i].Node < resp.Ees[j].Node
		}
		return resp.Ees[i].Name < resp.Ees[j].Name
	})
	return connect.NewResponse(resp), nil
}

// commitOps stores operations (and further ops) and, on success, puts the
// operations into the state. It must be called with c.mu held.
func (c *Controller) commitOps(ctx context.Context, recs []*eeOpRec, more ...store.Op) error {
	ops := more
	pruned := c.pruneOps()
	for _, id := range pruned {
		ops = append(ops, store.Delete(prefixEEOps+id))
	}
	for _, o := range recs {
		op, err := putJSON(prefixEEOps+o.ID, o)
		if err != nil {
			return err
		}
		ops = append(ops, op)
	}
	if _, err := c.st.Commit(ctx, store.Batch{Ops: ops}); err != nil {
		return fmt.Errorf("store ee operation: %w", err)
	}
	for _, id := range pruned {
		delete(c.s.ops, id)
	}
	for _, o := range recs {
		c.s.ops[o.ID] = o
	}
	return nil
}

// pruneOps returns the oldest finished operations beyond keepEEOps; the
// sub-operations of a pending migration stay. It must be called with c.mu
// held.
func (c *Controller) pruneOps() []string {
	var done []*eeOpRec
	for _, o := range c.s.ops {
		if o.State != opPending && (o.Parent == "" || c.s.ops[o.Parent] == nil || c.s.ops[o.Parent].State != opPending) {
			done = append(done, o)
		}
	}
	if len(done) <= keepEEOps {
		return nil
	}
	sort.Slice(done, func(i, j int) bool { return done[i].DoneAt.Before(done[j].DoneAt) })
	var ids []string
	for _, o := range done[:len(done)-keepEEOps] {
		ids = append(ids, o.ID)
	}
	return ids
}

// auditOp records an operation request with the acting identity.
func (c *Controller) auditOp(ctx context.Context, o *eeOpRec, domain string, extra map[string]string) uint64 {
	detail := map[string]string{"action": "ee-" + strings.ToLower(strings.TrimPrefix(o.Action, "EE_ACTION_")), "operation": o.ID, "node": o.Node}
	if o.Reason != "" {
		detail["reason"] = o.Reason
	}
	for k, v := range extra {
		detail[k] = v
	}
	return c.record(ctx, audit.Entry{Kind: audit.KindAdmin, Actor: o.Actor, Subject: "ee/" + o.EE, Domain: domain, Detail: detail})
}

func (e *eeService) CreateEE(ctx context.Context, req *connect.Request[tvdv1.CreateEERequest]) (*connect.Response[tvdv1.CreateEEResponse], error) {
	c := e.c
	const what = "create ee"
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	def := defFromProto(req.Msg.GetDefinition())
	if def == nil || def.Name == "" || def.Domain == "" || def.Role == "" {
		return nil, c.toConnect(ctx, what, errInvalid("create ee: want a definition with name, domain and role"))
	}
	if _, err := ca.MemberID(c.ca.TrustDomain(), memberOf(def)); err != nil {
		return nil, c.toConnect(ctx, what, errInvalid("ee %q: %v", def.Name, err))
	}
	if !id.Role.CanWrite(def.Domain) {
		return nil, c.toConnect(ctx, what, c.refuse(ctx, "ee/"+def.Name, def.Domain, errDenied("permission denied: %s may not create EEs in domain %q", id.Role, def.Domain), map[string]string{"actor": id.ID}))
	}
	node := req.Msg.GetNode()
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.s.nodes[node]; n == nil || n.Left {
		return nil, c.toConnect(ctx, what, errNotFound("node %q is not enrolled", node))
	}
	if where, _, _, m := c.eeOf(def.Name); where != "" && (m == nil || m.active() || m.State == memberMigrating) {
		return nil, c.toConnect(ctx, what, errExists("an EE %q already exists on node %q; EE names are unique in the deployment", def.Name, where))
	}
	o := &eeOpRec{ID: newOpID(), Action: tvdv1.EEAction_EE_ACTION_CREATE.String(), EE: def.Name, Node: node, Def: def, Actor: id.ID, IssuedAt: c.now(), State: opPending}
	if err := c.commitOps(ctx, []*eeOpRec{o}); err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	o.AuditIndex = c.auditOp(ctx, o, def.Domain, map[string]string{"role": def.Role, "image": def.Image})
	c.hub.wake(node)
	return connect.NewResponse(&tvdv1.CreateEEResponse{Operation: o.proto()}), nil
}

func (e *eeService) ControlEE(ctx context.Context, req *connect.Request[tvdv1.ControlEERequest]) (*connect.Response[tvdv1.ControlEEResponse], error) {
	c := e.c
	const what = "control ee"
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	act := req.Msg.GetAction()
	switch act {
	case tvdv1.EEAction_EE_ACTION_START, tvdv1.EEAction_EE_ACTION_STOP, tvdv1.EEAction_EE_ACTION_REMOVE, tvdv1.EEAction_EE_ACTION_FREEZE,
		tvdv1.EEAction_EE_ACTION_THAW, tvdv1.EEAction_EE_ACTION_SNAPSHOT, tvdv1.EEAction_EE_ACTION_RESTORE, tvdv1.EEAction_EE_ACTION_LOGS:
	default:
		return nil, c.toConnect(ctx, what, errInvalid("action %v: want start, stop, remove, freeze, thaw, snapshot, restore or logs", act))
	}
	name := req.Msg.GetEe()
	c.mu.Lock()
	defer c.mu.Unlock()
	node, domain, _, m := c.eeOf(name)
	if node == "" {
		return nil, c.toConnect(ctx, what, errNotFound("no EE %q on any node", name))
	}
	if !id.Role.CanWrite(domain) {
		return nil, c.toConnect(ctx, what, c.refuse(ctx, "ee/"+name, domain, errDenied("permission denied: %s may not operate EEs of domain %q", id.Role, domain), map[string]string{"actor": id.ID, "action": act.String()}))
	}
	if m != nil && m.State == memberMigrating {
		return nil, c.toConnect(ctx, what, errPrecondition("ee %q is migrating; wait for the migration to end", name))
	}
	o := &eeOpRec{ID: newOpID(), Action: act.String(), EE: name, Node: node, Actor: id.ID, Reason: req.Msg.GetReason(), IssuedAt: c.now(), State: opPending}
	if err := c.commitOps(ctx, []*eeOpRec{o}); err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	o.AuditIndex = c.auditOp(ctx, o, domain, nil)
	c.hub.wake(node)
	return connect.NewResponse(&tvdv1.ControlEEResponse{Operation: o.proto()}), nil
}

func (e *eeService) MigrateEE(ctx context.Context, req *connect.Request[tvdv1.MigrateEERequest]) (*connect.Response[tvdv1.MigrateEEResponse], error) {
	c := e.c
	const what = "migrate ee"
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	name, to := req.Msg.GetEe(), req.Msg.GetTo()
	if !id.Role.CanWriteDeployment() {
		return nil, c.toConnect(ctx, what, c.refuse(ctx, "ee/"+name, "", errDenied("permission denied: %s may not migrate EEs between nodes (needs admin)", id.Role), map[string]string{"actor": id.ID, "to": to}))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	from, domain, _, m := c.eeOf(name)
	if m != nil && m.State == memberMigrating {
		return c.retryMigration(ctx, id, m, to, req.Msg.GetReason())
	}
	switch {
	case from == "":
		return nil, c.toConnect(ctx, what, errNotFound("no EE %q on any node", name))
	case m == nil || !m.active():
		return nil, c.toConnect(ctx, what, errPrecondition("ee %q is not an admitted member (its membership follows it only from an admitted state)", name))
	case to == from:
		return nil, c.toConnect(ctx, what, errInvalid("ee %q already runs on node %q", name, to))
	}
	if n := c.s.nodes[to]; n == nil || n.Left {
		return nil, c.toConnect(ctx, what, errNotFound("target node %q is not enrolled", to))
	}
	for _, o := range c.s.ops {
		if o.EE == name && o.State == opPending {
			return nil, c.toConnect(ctx, what, errPrecondition("ee %q has a pending operation %s (%s); wait for it", name, o.ID, o.Action))
		}
	}
	now := c.now()
	mig := &eeOpRec{ID: newOpID(), Action: tvdv1.EEAction_EE_ACTION_MIGRATE.String(), EE: name, Node: from, From: from, To: to, Phase: "out",
		Actor: id.ID, Reason: req.Msg.GetReason(), IssuedAt: now, State: opPending}
	out := &eeOpRec{ID: newOpID(), Action: tvdv1.EEAction_EE_ACTION_MIGRATE_OUT.String(), EE: name, Node: from, Parent: mig.ID, Actor: id.ID, IssuedAt: now, State: opPending}
	mig.Step = out.ID
	if err := c.commitOps(ctx, []*eeOpRec{mig, out}); err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	mig.AuditIndex = c.auditOp(ctx, mig, domain, map[string]string{"from": from, "to": to, "address": m.Address, "role": m.Role})
	c.hub.wake(from)
	c.log.InfoContext(ctx, "ee migration started", "ee", name, "from", from, "to", to, "operation", mig.ID)
	return connect.NewResponse(&tvdv1.MigrateEEResponse{Operation: mig.proto()}), nil
}

// retryMigration brings in an EE whose migration failed after its source
// node gave it up: the archive is at the controller, so the target (or any
// other node, the source included) can restore it. It must be called with
// c.mu held.
func (c *Controller) retryMigration(ctx context.Context, id ca.Identity, m *memberRec, to, reason string) (*connect.Response[tvdv1.MigrateEEResponse], error) {
	const what = "migrate ee"
	var last *eeOpRec
	for _, o := range c.s.ops {
		if o.EE != m.EE || o.action() != tvdv1.EEAction_EE_ACTION_MIGRATE {
			continue
		}
		if o.State == opPending {
			return nil, c.toConnect(ctx, what, errPrecondition("ee %q is migrating (operation %s, phase %s); wait for it", m.EE, o.ID, o.Phase))
		}
		if o.ArchiveDigest != "" && (last == nil || o.IssuedAt.After(last.IssuedAt)) {
			last = o
		}
	}
	if last == nil {
		return nil, c.toConnect(ctx, what, errPrecondition("ee %q is between nodes but no archive of it is known", m.EE))
	}
	if n := c.s.nodes[to]; n == nil || n.Left {
		return nil, c.toConnect(ctx, what, errNotFound("target node %q is not enrolled", to))
	}
	if _, err := c.archivePath(last.ArchiveDigest); err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	// The definition the last attempt carried.
	var def *eeDef
	for _, o := range c.s.ops {
		if o.Parent == last.ID && o.action() == tvdv1.EEAction_EE_ACTION_MIGRATE_IN && o.Def != nil {
			def = o.Def
		}
	}
	if def == nil {
		return nil, c.toConnect(ctx, what, errPrecondition("ee %q: the last migration (%s) never reached a target; nothing to retry from", m.EE, last.ID))
	}
	now := c.now()
	mig := &eeOpRec{ID: newOpID(), Action: tvdv1.EEAction_EE_ACTION_MIGRATE.String(), EE: m.EE, Node: to, From: last.From, To: to, Phase: "in",
		Actor: id.ID, Reason: reason, IssuedAt: now, State: opPending, ArchiveDigest: last.ArchiveDigest, SnapshotDigest: last.SnapshotDigest, SnapshotBytes: last.SnapshotBytes}
	in := &eeOpRec{ID: newOpID(), Action: tvdv1.EEAction_EE_ACTION_MIGRATE_IN.String(), EE: m.EE, Node: to, Def: def, ArchiveDigest: last.ArchiveDigest,
		Parent: mig.ID, Actor: id.ID, IssuedAt: now, State: opPending}
	mig.Step = in.ID
	if err := c.commitOps(ctx, []*eeOpRec{mig, in}); err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	mig.AuditIndex = c.auditOp(ctx, mig, m.Domain, map[string]string{"from": last.From, "to": to, "address": m.Address, "retry_of": last.ID, "archive": last.ArchiveDigest})
	c.hub.wake(to)
	return connect.NewResponse(&tvdv1.MigrateEEResponse{Operation: mig.proto()}), nil
}

func (e *eeService) GetEEOperation(ctx context.Context, req *connect.Request[tvdv1.GetEEOperationRequest]) (*connect.Response[tvdv1.GetEEOperationResponse], error) {
	c := e.c
	id, err := requireAdmin(ctx)
	if err != nil {
		return nil, c.toConnect(ctx, "get ee operation", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.s.ops[req.Msg.GetId()]
	if o == nil || o.Parent != "" {
		return nil, c.toConnect(ctx, "get ee operation", errNotFound("no EE operation %q", req.Msg.GetId()))
	}
	// Only the one who asked, or an admin, sees an operation (it may hold
	// the EE's log).
	if o.Actor != id.ID && !id.Role.CanWriteDeployment() {
		return nil, c.toConnect(ctx, "get ee operation", errDenied("permission denied: operation %s was asked for by another administrator", o.ID))
	}
	return connect.NewResponse(&tvdv1.GetEEOperationResponse{Operation: o.proto()}), nil
}

func memberOf(d *eeDef) tvd.Member { return tvd.Member{Domain: d.Domain, Role: d.Role, EE: d.Name} }

// eeReport takes in what a node's report says about its EEs: their states
// and the outcomes of operations. It returns the records and audit entries
// to commit with the report. It must be called with c.mu held.
func (c *Controller) eeReport(ctx context.Context, n *nodeRec, r *tvdv1.ReportRequest, now time.Time, member func(ee string) *memberRec) (ops []*eeOpRec, members []*memberRec, entries []audit.Entry, wake []string) {
	// Every report carries every EE of the node (an empty list is no EE).
	n.EEs = nil
	for _, s := range r.GetEes() {
		n.EEs = append(n.EEs, eeSeen{Name: s.GetName(), State: s.GetState().String(), Isolation: s.GetIsolation(), Domain: s.GetDomain(),
			Role: s.GetRole(), Image: s.GetImageDigest(), Error: s.GetError()})
	}
	for _, res := range r.GetEeResults() {
		o := c.s.ops[res.GetId()]
		if o == nil || o.Node != n.Name || o.State != opPending {
			continue
		}
		cp := *o
		cp.DoneAt = now
		if res.GetDone() {
			cp.State = opDone
		} else {
			cp.State, cp.Error = opFailed, res.GetError()
			if cp.Error == "" {
				cp.Error = "the agent did not carry it out"
			}
		}
		cp.SnapshotDigest, cp.SnapshotBytes, cp.ImageDigest = res.GetSnapshotDigest(), res.GetSnapshotBytes(), res.GetImageDigest()
		if l := res.GetLogs(); len(l) > maxLogBytes {
			cp.Logs = l[len(l)-maxLogBytes:]
		} else {
			cp.Logs = l
		}
		ops = append(ops, &cp)
		m := member(o.EE)
		domain := ""
		if m != nil {
			domain = m.Domain
		}
		detail := map[string]string{"action": "ee-" + strings.ToLower(strings.TrimPrefix(o.Action, "EE_ACTION_")) + "-result", "operation": o.ID, "node": n.Name,
			"carried_out": fmt.Sprint(res.GetDone()), "error": cp.Error}
		if cp.SnapshotDigest != "" {
			detail["snapshot"] = cp.SnapshotDigest
		}
		kind := audit.KindAdmin
		if o.action() == tvdv1.EEAction_EE_ACTION_SNAPSHOT || o.action() == tvdv1.EEAction_EE_ACTION_RESTORE {
			kind = audit.KindSnapshot
		}
		entries = append(entries, audit.Entry{Kind: kind, Actor: c.self(), Subject: "ee/" + o.EE, Domain: domain, Detail: detail})
		switch o.action() {
		case tvdv1.EEAction_EE_ACTION_REMOVE:
			if res.GetDone() && m != nil && m.active() && m.Node == n.Name {
				mc := *m
				mc.State, mc.Reason, mc.Since = memberLeft, "removed by "+o.Actor, now
				members = append(members, &mc)
				entries = append(entries, audit.Entry{Kind: "leave", Subject: mc.member().SPIFFEID(c.ca.TrustDomain()), Domain: mc.Domain, Detail: map[string]string{"node": n.Name, "reason": mc.Reason}})
				wake = append(wake, "")
			}
		case tvdv1.EEAction_EE_ACTION_FREEZE, tvdv1.EEAction_EE_ACTION_THAW:
			if res.GetDone() && m != nil && m.Node == n.Name {
				mc := *m
				mc.Frozen = o.action() == tvdv1.EEAction_EE_ACTION_FREEZE
				members = append(members, &mc)
			}
		case tvdv1.EEAction_EE_ACTION_MIGRATE_OUT:
			ms, es, more, w := c.migratedOut(ctx, &cp, res, m, now)
			members, entries, ops, wake = append(members, ms...), append(entries, es...), append(ops, more...), append(wake, w...)
		case tvdv1.EEAction_EE_ACTION_MIGRATE_IN:
			if parent := c.s.ops[o.Parent]; parent != nil && parent.State == opPending {
				pc := *parent
				if res.GetDone() {
					pc.Phase = "admitting"
				} else {
					pc.State, pc.Phase, pc.Error, pc.DoneAt = opFailed, "failed", "on "+n.Name+": "+cp.Error, now
					entries = append(entries, c.migrationEnd(&pc, domain, m))
				}
				ops = append(ops, &pc)
			}
		}
	}
	return ops, members, entries, wake
}

// migratedOut continues a migration whose source node has stopped,
// archived, uploaded and destroyed the EE: the member leaves every plan
// (its address reserved) and the target node is told to bring it in.
func (c *Controller) migratedOut(ctx context.Context, out *eeOpRec, res *tvdv1.EEOperationResult, m *memberRec, now time.Time) (members []*memberRec, entries []audit.Entry, ops []*eeOpRec, wake []string) {
	parent := c.s.ops[out.Parent]
	if parent == nil || parent.State != opPending {
		return nil, nil, nil, nil
	}
	pc := *parent
	domain := ""
	if m != nil {
		domain = m.Domain
	}
	fail := func(why string) {
		pc.State, pc.Phase, pc.Error, pc.DoneAt = opFailed, "failed", why, now
		ops = append(ops, &pc)
		entries = append(entries, c.migrationEnd(&pc, domain, m))
	}
	if !res.GetDone() {
		fail("on " + out.Node + ": " + out.Error)
		return
	}
	digest := res.GetSnapshotDigest()
	if _, err := c.archivePath(digest); err != nil {
		fail(fmt.Sprintf("archive %s: %v", digest, err))
		return
	}
	def := defFromProto(res.GetDefinition())
	if def == nil || m == nil {
		fail("the source node reported no definition of the EE")
		return
	}
	// What the member was admitted as is what follows it, whatever the
	// source node says.
	def.Name, def.Domain, def.Role, def.Owner = m.EE, m.Domain, m.Role, m.Owner
	if def.ImageDigest == "" {
		def.ImageDigest = m.Image
	}
	mc := *m
	mc.State, mc.Reason, mc.Since = memberMigrating, fmt.Sprintf("migrating from %s to %s (%s)", pc.From, pc.To, pc.ID), now
	members = append(members, &mc)
	in := &eeOpRec{ID: newOpID(), Action: tvdv1.EEAction_EE_ACTION_MIGRATE_IN.String(), EE: m.EE, Node: pc.To, Def: def, ArchiveDigest: digest,
		Parent: pc.ID, Actor: pc.Actor, IssuedAt: now, State: opPending}
	pc.Phase, pc.Step, pc.Node, pc.ArchiveDigest = "in", in.ID, pc.To, digest
	pc.SnapshotDigest, pc.SnapshotBytes = digest, res.GetSnapshotBytes()
	ops = append(ops, &pc, in)
	entries = append(entries, audit.Entry{Kind: audit.KindSnapshot, Actor: c.self(), Subject: mc.member().SPIFFEID(c.ca.TrustDomain()), Domain: mc.Domain,
		Detail: map[string]string{"action": "ee-migrate-archive", "operation": pc.ID, "from": pc.From, "to": pc.To, "archive": digest, "bytes": fmt.Sprint(res.GetSnapshotBytes())}})
	c.log.InfoContext(ctx, "ee migrated out", "ee", m.EE, "from", pc.From, "to", pc.To, "archive", digest)
	return members, entries, ops, []string{pc.From, pc.To}
}

// migrationEnd is the audit entry that closes a migration.
func (c *Controller) migrationEnd(mig *eeOpRec, domain string, m *memberRec) audit.Entry {
	detail := map[string]string{"action": "ee-migrate-result", "operation": mig.ID, "from": mig.From, "to": mig.To, "phase": mig.Phase,
		"carried_out": fmt.Sprint(mig.State == opDone), "error": mig.Error, "archive": mig.ArchiveDigest}
	subject := "ee/" + mig.EE
	if m != nil {
		subject = m.member().SPIFFEID(c.ca.TrustDomain())
		detail["address"] = m.Address
	}
	return audit.Entry{Kind: audit.KindAdmin, Actor: mig.Actor, Subject: subject, Domain: domain, Detail: detail}
}

// migrationsAdmitted closes the migrations whose EE the target node has
// just been admitted for (or refused). It must be called with c.mu held.
func (c *Controller) migrationsAdmitted(node string, joined []*memberRec, now time.Time) (ops []*eeOpRec, entries []audit.Entry) {
	for _, m := range joined {
		for _, o := range c.s.ops {
			if o.EE != m.EE || o.State != opPending || o.action() != tvdv1.EEAction_EE_ACTION_MIGRATE || o.To != node || (o.Phase != "in" && o.Phase != "admitting") {
				continue
			}
			pc := *o
			pc.DoneAt = now
			if m.active() {
				pc.State, pc.Phase = opDone, "done"
				// The EE runs from it now; a failed migration keeps its
				// archive for another attempt.
				if p, err := c.archivePath(pc.ArchiveDigest); err == nil {
					os.Remove(p)
				}
			} else {
				pc.State, pc.Phase, pc.Error = opFailed, "failed", "not re-admitted on "+node+": "+m.Reason
			}
			ops = append(ops, &pc)
			entries = append(entries, c.migrationEnd(&pc, m.Domain, m))
		}
	}
	return ops, entries
}

// Archives live in DataDir/archives/<hex>, named by their SHA-256.
func (c *Controller) archivePath(digest string) (string, error) {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if b, err := hex.DecodeString(h); !ok || err != nil || len(b) != sha256.Size || strings.ToLower(h) != h {
		return "", errInvalid("archive digest %q: want sha256: and 64 lower-case hex digits", digest)
	}
	p := filepath.Join(c.cfg.DataDir, "archives", h)
	if _, err := os.Stat(p); err != nil {
		return p, errNotFound("archive %s was not uploaded", digest)
	}
	return p, nil
}

// pendingOp returns the calling node and its pending operation id, which
// must be of the given action (word names it in the refusal). Anything
// else is refused, and the refusal audited.
func (c *Controller) pendingOp(ctx context.Context, node, id string, action tvdv1.EEAction, word string) (*nodeRec, *eeOpRec, error) {
	c.mu.Lock()
	n, err := c.requireNode(ctx, node)
	var o *eeOpRec
	if err == nil {
		o = c.s.ops[id]
	}
	c.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	if o == nil || o.Node != n.Name || o.State != opPending || o.action() != action {
		return nil, nil, c.refuse(ctx, "node/"+n.Name, "", errDenied("node %q has no pending %s operation %q", n.Name, word, id), nil)
	}
	return n, o, nil
}

// eeAgentService implements tvdv1connect.EEAgentServiceHandler.
type eeAgentService struct{ c *Controller }

func (a *eeAgentService) PutArchive(ctx context.Context, req *connect.Request[tvdv1.PutArchiveRequest]) (*connect.Response[tvdv1.PutArchiveResponse], error) {
	c := a.c
	const what = "put archive"
	n, o, err := c.pendingOp(ctx, req.Msg.GetNode(), req.Msg.GetOperationId(), tvdv1.EEAction_EE_ACTION_MIGRATE_OUT, "migrate-out")
	if err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	sum := sha256.Sum256(req.Msg.GetData())
	got := "sha256:" + hex.EncodeToString(sum[:])
	if got != req.Msg.GetDigest() {
		return nil, c.toConnect(ctx, what, c.refuse(ctx, "ee/"+o.EE, "", errInvalid("archive of ee %q: its SHA-256 is %s, not the %s the node claims", o.EE, got, req.Msg.GetDigest()), map[string]string{"node": n.Name}))
	}
	dir := filepath.Join(c.cfg.DataDir, "archives")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	p := filepath.Join(dir, strings.TrimPrefix(got, "sha256:"))
	tmp := p + ".tmp-" + newOpID()
	if err := os.WriteFile(tmp, req.Msg.GetData(), 0o600); err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return nil, c.toConnect(ctx, what, err)
	}
	c.log.InfoContext(ctx, "ee archive received", "ee", o.EE, "node", n.Name, "digest", got, "bytes", len(req.Msg.GetData()))
	return connect.NewResponse(&tvdv1.PutArchiveResponse{Digest: got}), nil
}

func (a *eeAgentService) GetArchive(ctx context.Context, req *connect.Request[tvdv1.GetArchiveRequest]) (*connect.Response[tvdv1.GetArchiveResponse], error) {
	c := a.c
	const what = "get archive"
	_, o, err := c.pendingOp(ctx, req.Msg.GetNode(), req.Msg.GetOperationId(), tvdv1.EEAction_EE_ACTION_MIGRATE_IN, "migrate-in")
	if err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	p, err := c.archivePath(o.ArchiveDigest)
	if err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, c.toConnect(ctx, what, err)
	}
	sum := sha256.Sum256(b)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != o.ArchiveDigest {
		return nil, c.toConnect(ctx, what, errors.New("stored archive "+o.ArchiveDigest+" is corrupt (its SHA-256 is "+got+")"))
	}
	return connect.NewResponse(&tvdv1.GetArchiveResponse{Digest: o.ArchiveDigest, Data: b}), nil
}
