//go:build linux

package eehost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/tvd-dev/tvd/agent"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ee"
)

// The operations an administrator drives through the controller (tvd ee),
// which the agent hands to the host one at a time.

// CreateEE creates and starts an EE that is not in the node configuration
// (tvd ee create, or the target half of a migration). With archivePath
// set, the EE's writable state is restored from that archive (checked
// against archiveDigest) before its workload first runs. It returns the
// EE's image digest. An EE that fails to start is torn down again.
func (h *Host) CreateEE(ctx context.Context, e agent.EEConfig, archivePath, archiveDigest string) (string, error) {
	var restore *ee.Snapshot
	if archivePath != "" {
		fi, err := os.Stat(archivePath)
		if err != nil {
			return "", err
		}
		restore = &ee.Snapshot{Digest: archiveDigest, Path: archivePath, Size: fi.Size()}
	}
	if err := h.startOne(ctx, e, restore); err != nil {
		if rerr := h.RemoveEE(context.WithoutCancel(ctx), e.Name); rerr != nil && !errors.Is(rerr, ee.ErrNotFound) {
			h.log.WarnContext(ctx, "remove the ee that did not start", "ee", e.Name, "err", rerr)
		}
		return "", err
	}
	rec, err := h.get(e.Name)
	if err != nil {
		return "", err
	}
	return rec.img.Digest, nil
}

// RemoveEE stops and destroys an EE, removes its filesystem and snapshots,
// and forgets it.
func (h *Host) RemoveEE(ctx context.Context, name string) error {
	rec, err := h.get(name)
	if err != nil {
		return err
	}
	rec.op.Lock()
	defer rec.op.Unlock()
	if err := h.teardown(ctx, rec); err != nil {
		return err
	}
	h.mu.Lock()
	delete(h.ees, name)
	h.order = slices.DeleteFunc(h.order, func(n string) bool { return n == name })
	h.mu.Unlock()
	h.log.InfoContext(ctx, "ee removed", "ee", name)
	return nil
}

// ControlEE starts, stops, freezes, thaws or restores (rolls back to its
// last snapshot) an EE.
func (h *Host) ControlEE(ctx context.Context, name string, action tvdv1.EEAction) error {
	rec, err := h.get(name)
	if err != nil {
		return err
	}
	rec.op.Lock()
	defer rec.op.Unlock()
	switch action {
	case tvdv1.EEAction_EE_ACTION_START:
		h.mu.Lock()
		watched, created := rec.watched, rec.created
		h.mu.Unlock()
		if !created || (h.rooted != nil && !watched) {
			return fmt.Errorf("ee %s: not created and watched by the monitor: not started", name)
		}
		return h.cfg.Driver.Start(ctx, name)
	case tvdv1.EEAction_EE_ACTION_STOP:
		return h.cfg.Driver.Stop(ctx, name)
	case tvdv1.EEAction_EE_ACTION_FREEZE:
		return h.cfg.Driver.Freeze(ctx, name)
	case tvdv1.EEAction_EE_ACTION_THAW:
		return h.cfg.Driver.Thaw(ctx, name)
	case tvdv1.EEAction_EE_ACTION_RESTORE:
		return h.rollback(ctx, rec)
	}
	return fmt.Errorf("ee %s: action %v: want start, stop, freeze, thaw or restore", name, action)
}

// SnapshotEE archives the EE's writable state, makes the archive the one
// a restore (rollback) returns to, and returns it. The archive stays until
// the next snapshot of the EE or its removal.
func (h *Host) SnapshotEE(ctx context.Context, name string) (digest, path string, size int64, err error) {
	rec, err := h.get(name)
	if err != nil {
		return "", "", 0, err
	}
	rec.op.Lock()
	defer rec.op.Unlock()
	if err := h.snapshot(ctx, rec); err != nil {
		return "", "", 0, fmt.Errorf("ee %s: snapshot: %w", name, err)
	}
	h.mu.Lock()
	s := *rec.trusted
	h.mu.Unlock()
	return s.Digest, s.Path, s.Size, nil
}

// EELogs returns up to max bytes from the end of the EE's log.
func (h *Host) EELogs(ctx context.Context, name string, max int64) ([]byte, error) {
	if _, err := h.get(name); err != nil {
		return nil, err
	}
	st, err := h.cfg.Driver.Status(ctx, name)
	if err != nil {
		return nil, err
	}
	if st.LogPath == "" {
		return nil, fmt.Errorf("ee %s: the driver keeps no log", name)
	}
	f, err := os.Open(st.LogPath)
	if err != nil {
		return nil, fmt.Errorf("ee %s: log: %w", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if off := fi.Size() - max; off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(io.LimitReader(f, max))
}

// EEConfig returns the configuration an EE was created with.
func (h *Host) EEConfig(name string) (agent.EEConfig, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	rec, ok := h.ees[name]
	if !ok {
		return agent.EEConfig{}, false
	}
	return rec.cfg, true
}
