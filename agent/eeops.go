package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"connectrpc.com/connect"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// eeOperator is implemented by EE hosts that carry out the operations an
// administrator asks for through the controller (tvd ee): agent/eehost.
type eeOperator interface {
	CreateEE(ctx context.Context, e EEConfig, archivePath, archiveDigest string) (imageDigest string, err error)
	RemoveEE(ctx context.Context, name string) error
	ControlEE(ctx context.Context, name string, action tvdv1.EEAction) error
	SnapshotEE(ctx context.Context, name string) (digest, path string, size int64, err error)
	EELogs(ctx context.Context, name string, max int64) ([]byte, error)
	EEConfig(name string) (EEConfig, bool)
}

// maxLogTail is how much of an EE's log a LOGS operation returns.
const maxLogTail = 64 << 10

// eeOpLoop carries out the plans' EE operations one at a time, in the
// order the plans gave them, and queues their outcomes (and the joins of
// EEs they created) for the next report.
func (a *Agent) eeOpLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case op := <-a.eeOps:
			res, join := a.runEEOp(ctx, op)
			a.log.Info("ee operation", "id", op.GetId(), "action", op.GetAction().String(), "ee", op.GetEe(), "by", op.GetActor(), "done", res.GetDone(), "err", res.GetError())
			a.mu.Lock()
			if err := a.jr.finish(res); err != nil {
				a.log.Warn("operation journal", "id", op.GetId(), "err", err)
			}
			a.eeResults = append(a.eeResults, res)
			if join != nil {
				a.joins = append(a.joins, join)
			}
			a.mu.Unlock()
			select {
			case a.kick <- struct{}{}:
			default:
			}
		}
	}
}

// queueEEOps hands the plan's new EE operations to eeOpLoop. It must be
// called with a.mu held.
func (a *Agent) queueEEOps(p *tvdv1.Plan) {
	for _, op := range p.GetEeOperations() {
		if a.done[op.GetId()] {
			continue
		}
		a.done[op.GetId()] = true
		if err := a.jr.begin(op.GetId(), "ee-operation", a.now()); err != nil {
			a.eeResults = append(a.eeResults, &tvdv1.EEOperationResult{Id: op.GetId(), Error: "not carried out: " + err.Error()})
			continue
		}
		select {
		case a.eeOps <- op:
		default:
			// The queue is full: report it failed, the admin may retry.
			res := &tvdv1.EEOperationResult{Id: op.GetId(), Error: "the agent's operation queue is full; retry"}
			a.jr.finish(res)
			a.eeResults = append(a.eeResults, res)
		}
	}
}

func (a *Agent) runEEOp(ctx context.Context, op *tvdv1.EEOperationRequest) (*tvdv1.EEOperationResult, *tvdv1.EESpec) {
	res := &tvdv1.EEOperationResult{Id: op.GetId()}
	join, err := a.doEEOp(ctx, op, res)
	if err != nil {
		res.Error = err.Error()
		return res, nil
	}
	res.Done = true
	return res, join
}

func (a *Agent) doEEOp(ctx context.Context, op *tvdv1.EEOperationRequest, res *tvdv1.EEOperationResult) (*tvdv1.EESpec, error) {
	h, ok := a.cfg.EEs.(eeOperator)
	if !ok {
		return nil, errors.New("this node runs no EE host that can carry out EE operations")
	}
	name := op.GetEe()
	switch act := op.GetAction(); act {
	case tvdv1.EEAction_EE_ACTION_START, tvdv1.EEAction_EE_ACTION_STOP, tvdv1.EEAction_EE_ACTION_FREEZE,
		tvdv1.EEAction_EE_ACTION_THAW, tvdv1.EEAction_EE_ACTION_RESTORE:
		return nil, h.ControlEE(ctx, name, act)
	case tvdv1.EEAction_EE_ACTION_REMOVE:
		if err := h.RemoveEE(ctx, name); err != nil {
			return nil, err
		}
		a.forget(name)
		return nil, nil
	case tvdv1.EEAction_EE_ACTION_SNAPSHOT:
		d, _, size, err := h.SnapshotEE(ctx, name)
		res.SnapshotDigest, res.SnapshotBytes = d, size
		return nil, err
	case tvdv1.EEAction_EE_ACTION_LOGS:
		b, err := h.EELogs(ctx, name, maxLogTail)
		res.Logs = b
		return nil, err
	case tvdv1.EEAction_EE_ACTION_CREATE:
		return a.createEE(ctx, h, op.GetDefinition(), "", "", res)
	case tvdv1.EEAction_EE_ACTION_MIGRATE_OUT:
		return nil, a.migrateOut(ctx, h, op, res)
	case tvdv1.EEAction_EE_ACTION_MIGRATE_IN:
		return a.migrateIn(ctx, h, op, res)
	default:
		return nil, fmt.Errorf("ee operation %s: action %v is not one an agent carries out", op.GetId(), act)
	}
}

// forget drops what the agent keeps for an EE that left the node: its
// trusted mark, its Workload API server and its record as created here.
func (a *Agent) forget(name string) {
	a.mu.Lock()
	delete(a.trusted, name)
	a.mu.Unlock()
	a.dropWorkload(name)
	if err := a.forgetCreated(name); err != nil {
		a.log.Warn("created EEs", "ee", name, "err", err)
	}
}

func configOf(d *tvdv1.EEDefinition) EEConfig {
	return EEConfig{Name: d.GetName(), Image: d.GetImage(), Command: d.GetCommand(), Domain: d.GetDomain(), Role: d.GetRole(),
		Owner: d.GetOwner(), Claims: maps.Clone(d.GetClaims())}
}

// createEE creates and starts an EE from its definition (restoring an
// archive first, if given) and returns its request to join its domain.
func (a *Agent) createEE(ctx context.Context, h eeOperator, d *tvdv1.EEDefinition, archivePath, archiveDigest string, res *tvdv1.EEOperationResult) (*tvdv1.EESpec, error) {
	if d == nil {
		return nil, errors.New("no EE definition")
	}
	e := configOf(d)
	if !nameRE.MatchString(e.Name) || !nameRE.MatchString(e.Domain) || !nameRE.MatchString(e.Role) {
		return nil, fmt.Errorf("ee %q in %q as %q: names want lower-case letters, digits and dashes", e.Name, e.Domain, e.Role)
	}
	// The image must be the one the EE ran (a migration) or was created
	// with: checked before anything is created.
	if want := d.GetImageDigest(); want != "" {
		r, ok := a.cfg.EEs.(imageResolver)
		if !ok {
			return nil, errors.New("the EE host cannot resolve images")
		}
		_, got, err := r.ResolveImage(e.Image)
		if err != nil {
			return nil, fmt.Errorf("ee %s: %w", e.Name, err)
		}
		if got != want {
			return nil, fmt.Errorf("ee %s: image %q on this node has digest %s, want %s", e.Name, e.Image, got, want)
		}
	}
	// Its Workload API socket exists before it starts, as a configured
	// EE's does.
	e.WorkloadDir = a.WorkloadDir(e.Name)
	if err := a.addWorkload(e.Name); err != nil {
		return nil, err
	}
	digest, err := h.CreateEE(ctx, e, archivePath, archiveDigest)
	if err != nil {
		a.dropWorkload(e.Name)
		return nil, err
	}
	if err := a.rememberCreated(e); err != nil {
		a.log.Warn("created EEs: not recorded; the EE will not come back after an agent restart", "ee", e.Name, "err", err)
	}
	res.ImageDigest = digest
	spec, err := a.specFor(e)
	if err != nil {
		return nil, fmt.Errorf("ee %s: join request: %w", e.Name, err)
	}
	return spec, nil
}

// migrateOut is the source half of a cold migration: stop the EE,
// archive its writable state, upload the archive to the controller, and
// remove the EE from this node.
func (a *Agent) migrateOut(ctx context.Context, h eeOperator, op *tvdv1.EEOperationRequest, res *tvdv1.EEOperationResult) error {
	name := op.GetEe()
	cfg, ok := h.EEConfig(name)
	if !ok {
		return fmt.Errorf("ee %s is not on node %s", name, a.name)
	}
	var imageDigest string
	for _, s := range a.cfg.EEs.Status() {
		if s.GetName() == name {
			imageDigest = s.GetImageDigest()
		}
	}
	if err := h.ControlEE(ctx, name, tvdv1.EEAction_EE_ACTION_STOP); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	// From here on a failure leaves the EE stopped here, its state intact:
	// the migration fails and the administrator may start it again.
	digest, path, size, err := h.SnapshotEE(ctx, name)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read archive: %w", err)
	}
	if _, err := a.cl.EEAgent.PutArchive(ctx, connect.NewRequest(&tvdv1.PutArchiveRequest{Node: a.name, OperationId: op.GetId(), Digest: digest, Data: b})); err != nil {
		return fmt.Errorf("upload archive %s: %w", digest, err)
	}
	if err := h.RemoveEE(ctx, name); err != nil {
		return fmt.Errorf("remove after upload: %w", err)
	}
	a.forget(name)
	res.SnapshotDigest, res.SnapshotBytes = digest, size
	res.Definition = &tvdv1.EEDefinition{Name: name, Image: cfg.Image, Command: cfg.Command, Domain: cfg.Domain, Role: cfg.Role,
		Owner: cfg.Owner, Claims: cfg.Claims, ImageDigest: imageDigest}
	return nil
}

// migrateIn is the target half: download the archive, check its digest,
// create the EE from the same image, restore the archive, start it, and
// ask to join its domain again.
func (a *Agent) migrateIn(ctx context.Context, h eeOperator, op *tvdv1.EEOperationRequest, res *tvdv1.EEOperationResult) (*tvdv1.EESpec, error) {
	want := op.GetArchiveDigest()
	hexd, ok := strings.CutPrefix(want, "sha256:")
	if _, err := hex.DecodeString(hexd); !ok || err != nil || len(hexd) != 64 {
		return nil, fmt.Errorf("archive digest %q: want sha256: and 64 hex digits", want)
	}
	resp, err := a.cl.EEAgent.GetArchive(ctx, connect.NewRequest(&tvdv1.GetArchiveRequest{Node: a.name, OperationId: op.GetId()}))
	if err != nil {
		return nil, fmt.Errorf("download archive %s: %w", want, err)
	}
	sum := sha256.Sum256(resp.Msg.GetData())
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != want || resp.Msg.GetDigest() != want {
		return nil, fmt.Errorf("archive from the controller has SHA-256 %s, want %s: refused", got, want)
	}
	dir := filepath.Join(a.cfg.DataDir, "archives")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, hexd)
	if err := os.WriteFile(path, resp.Msg.GetData(), 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(path)
	res.SnapshotDigest, res.SnapshotBytes = want, int64(len(resp.Msg.GetData()))
	return a.createEE(ctx, h, op.GetDefinition(), path, want, res)
}
