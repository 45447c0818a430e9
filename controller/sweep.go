package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/store"
)

// sweepEvery is how often the controller looks for members whose verdict
// missed its deadline.
const sweepEvery = 500 * time.Millisecond

// sweep marks members with no fresh verdict by their domain's deadline as
// violating: attestation must never fail silently (Keylime CVE-2022-3500).
// A stale member's certificate is not renewed, and the change is audited.
func (c *Controller) sweep(ctx context.Context) error {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := c.sweepOnce(ctx); err != nil {
			c.log.ErrorContext(ctx, "deadline sweep", "err", err)
		}
	}
}

func (c *Controller) sweepOnce(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s.policy == nil {
		return nil
	}
	now := c.now()
	var ops []store.Op
	var stale []*memberRec
	var entries []audit.Entry
	for _, m := range c.s.members {
		if !m.active() || m.Status == tvd.StatusViolated {
			continue
		}
		pol, ok := c.s.policy.Domain(m.Domain)
		if !ok || now.Sub(m.LastVerified) <= time.Duration(pol.Deadline) {
			continue
		}
		cp := *m
		reason := fmt.Sprintf("stale: no verdict since %s (deadline %s)", m.LastVerified.UTC().Format(time.RFC3339), time.Duration(pol.Deadline))
		entries = append(entries, c.violate(&cp, reason, now)...)
		op, err := putJSON(prefixMembers+m.EE, &cp)
		if err != nil {
			return err
		}
		ops = append(ops, op)
		stale = append(stale, &cp)
	}
	if len(ops) == 0 {
		return nil
	}
	if _, err := c.st.Commit(ctx, store.Batch{Ops: ops}); err != nil {
		return fmt.Errorf("store stale verdicts: %w", err)
	}
	for _, m := range stale {
		c.s.put(m)
		c.log.WarnContext(ctx, "member stale", "member", m.member().String(), "reason", m.StatusReason)
	}
	for _, e := range entries {
		c.record(ctx, e)
	}
	c.hub.wake()
	return nil
}
