package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// newEECmd is `tvd ee ...`: EEs driven through the controller, which
// carries each operation to the hosting node's agent in its plan.
func newEECmd(c *conn) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ee",
		Short: "Drive execution environments through the controller (ls, create, start, stop, rm, freeze, thaw, snapshot, restore, migrate, logs)",
		Long: `tvd ee drives the EEs of the deployment's nodes. Every command but ls asks the
controller for an operation, which the controller audits with your identity and hands to
the hosting node's agent in its next plan; the command then waits (--wait) until the agent
reports the outcome. An admin may do everything; a domain-admin may operate and create the
EEs of its domain but not migrate them; an auditor may only list.`,
	}
	var wait time.Duration
	cmd.PersistentFlags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the agent's outcome; 0 returns at once with the operation id")
	cmd.AddCommand(eeLsCmd(c), eeCreateCmd(c, &wait), eeMigrateCmd(c, &wait))
	for _, a := range []struct {
		use, short string
		action     tvdv1.EEAction
	}{
		{"start", "Start a stopped EE", tvdv1.EEAction_EE_ACTION_START},
		{"stop", "Stop an EE (its writable state stays)", tvdv1.EEAction_EE_ACTION_STOP},
		{"rm", "Stop and destroy an EE, and withdraw it from its domain", tvdv1.EEAction_EE_ACTION_REMOVE},
		{"freeze", "Freeze an EE (cgroup freezer), for later inspection", tvdv1.EEAction_EE_ACTION_FREEZE},
		{"thaw", "Thaw a frozen EE", tvdv1.EEAction_EE_ACTION_THAW},
		{"snapshot", "Snapshot an EE's writable state (it becomes the state restore returns to)", tvdv1.EEAction_EE_ACTION_SNAPSHOT},
		{"restore", "Restore an EE's last snapshot: stop, restore, start, re-measure", tvdv1.EEAction_EE_ACTION_RESTORE},
		{"logs", "Print the tail of an EE's log (stdout and stderr)", tvdv1.EEAction_EE_ACTION_LOGS},
	} {
		cmd.AddCommand(eeControlCmd(c, &wait, a.use, a.short, a.action))
	}
	return cmd
}

func eeLsCmd(c *conn) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List EEs as their agents report them: node, domain, role, state, isolation, image",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			resp, err := cl.EE.ListEEs(cmd.Context(), connect.NewRequest(&tvdv1.ListEEsRequest{Node: node}))
			if err != nil {
				return apiError(err)
			}
			w := cmd.OutOrStdout()
			if js {
				return printJSON(w, resp.Msg)
			}
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "EE\tNODE\tDOMAIN\tROLE\tSTATE\tISOLATION\tIMAGE\tMEMBERSHIP\tADDRESS\tERROR")
			for _, e := range resp.Msg.GetEes() {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.GetName(), e.GetNode(), dash(e.GetDomain()), dash(e.GetRole()),
					eeStateWord(e.GetState()), dash(e.GetIsolation()), shortDigest(e.GetImageDigest()), dash(e.GetMembership()), dash(e.GetOverlayAddress()), e.GetError())
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "only the EEs of `NODE`")
	return cmd
}

func eeCreateCmd(c *conn, wait *time.Duration) *cobra.Command {
	var node, image, domain, role, owner string
	var claims []string
	cmd := &cobra.Command{
		Use:   "create EE --node NODE --domain DOMAIN --role ROLE [--image IMAGE] [-- COMMAND...]",
		Short: "Create and start an EE on a node; it asks to join its domain like any other",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if node == "" || domain == "" || role == "" {
				return errors.New("ee create: --node, --domain and --role are required")
			}
			def := &tvdv1.EEDefinition{Name: args[0], Image: image, Command: args[1:], Domain: domain, Role: role, Owner: owner}
			for _, kv := range claims {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--claim %q: want NAME=VALUE", kv)
				}
				if def.Claims == nil {
					def.Claims = map[string]string{}
				}
				def.Claims[k] = v
			}
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			resp, err := cl.EE.CreateEE(cmd.Context(), connect.NewRequest(&tvdv1.CreateEERequest{Node: node, Definition: def}))
			if err != nil {
				return apiError(err)
			}
			return finishOp(cmd, cl, js, resp.Msg.GetOperation(), *wait)
		},
	}
	f := cmd.Flags()
	f.StringVar(&node, "node", "", "the `NODE` to create it on")
	f.StringVar(&image, "image", "", "the image: a name in the agent's image directory, an absolute path, sha256:DIGEST, or empty for the base image")
	f.StringVar(&domain, "domain", "", "the `DOMAIN` it asks to join")
	f.StringVar(&role, "role", "", "the `ROLE` it asks for")
	f.StringVar(&owner, "owner", "", "the party that owns it")
	f.StringArrayVar(&claims, "claim", nil, "a claim for admission, `NAME=VALUE` (repeatable)")
	return cmd
}

func eeControlCmd(c *conn, wait *time.Duration, use, short string, action tvdv1.EEAction) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   use + " EE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			resp, err := cl.EE.ControlEE(cmd.Context(), connect.NewRequest(&tvdv1.ControlEERequest{Ee: args[0], Action: action, Reason: reason}))
			if err != nil {
				return apiError(err)
			}
			return finishOp(cmd, cl, js, resp.Msg.GetOperation(), *wait)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	return cmd
}

func eeMigrateCmd(c *conn, wait *time.Duration) *cobra.Command {
	var to, reason string
	cmd := &cobra.Command{
		Use:   "migrate EE --to NODE",
		Short: "Move an EE to another node, cold: stop, snapshot, transfer through the controller, restore, re-admit",
		Long: `tvd ee migrate stops the EE on its node, archives its writable state and uploads the
archive to the controller (which checks its SHA-256); the target node's agent downloads and
checks it, creates the EE from the same image (same digest), restores the archive, starts
the EE and asks to join again. The EE keeps its domain, role and overlay address, and is
admitted on the new node through normal admission; the old node no longer holds it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return errors.New("ee migrate: --to NODE is required")
			}
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			resp, err := cl.EE.MigrateEE(cmd.Context(), connect.NewRequest(&tvdv1.MigrateEERequest{Ee: args[0], To: to, Reason: reason}))
			if err != nil {
				return apiError(err)
			}
			return finishOp(cmd, cl, js, resp.Msg.GetOperation(), *wait)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the target `NODE`")
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	return cmd
}

// finishOp waits for an operation's outcome (unless wait is 0) and prints
// it; a failed operation is an error.
func finishOp(cmd *cobra.Command, cl *client.Client, js bool, op *tvdv1.EEOperation, wait time.Duration) error {
	w := cmd.OutOrStdout()
	if wait > 0 {
		var err error
		if op, err = waitOp(cmd.Context(), cl, op, wait); err != nil {
			return err
		}
	}
	if js {
		return printJSON(w, op)
	}
	verb := strings.ToLower(strings.TrimPrefix(op.GetAction().String(), "EE_ACTION_"))
	switch op.GetState() {
	case tvdv1.EEOperationState_EE_OPERATION_STATE_PENDING:
		fmt.Fprintf(w, "%s %s: operation %s pending on %s (audit entry %d)\n", verb, op.GetEe(), op.GetId(), op.GetNode(), op.GetAuditIndex())
		return nil
	case tvdv1.EEOperationState_EE_OPERATION_STATE_FAILED:
		return fmt.Errorf("%s %s: operation %s failed on %s: %s", verb, op.GetEe(), op.GetId(), op.GetNode(), op.GetError())
	}
	r := op.GetResult()
	if op.GetAction() == tvdv1.EEAction_EE_ACTION_LOGS {
		_, err := w.Write(r.GetLogs())
		return err
	}
	took := op.GetDoneAt().AsTime().Sub(op.GetIssuedAt().AsTime()).Round(time.Millisecond)
	switch op.GetAction() {
	case tvdv1.EEAction_EE_ACTION_MIGRATE:
		fmt.Fprintf(w, "migrated %s from %s to %s in %v (archive %s, %d bytes; audit entry %d)\n", op.GetEe(), op.GetFromNode(), op.GetToNode(), took,
			r.GetSnapshotDigest(), r.GetSnapshotBytes(), op.GetAuditIndex())
	case tvdv1.EEAction_EE_ACTION_SNAPSHOT:
		fmt.Fprintf(w, "snapshot of %s on %s: %s (%d bytes) in %v\n", op.GetEe(), op.GetNode(), r.GetSnapshotDigest(), r.GetSnapshotBytes(), took)
	default:
		fmt.Fprintf(w, "%s %s on %s: done in %v (audit entry %d)\n", verb, op.GetEe(), op.GetNode(), took, op.GetAuditIndex())
	}
	return nil
}

func waitOp(ctx context.Context, cl *client.Client, op *tvdv1.EEOperation, wait time.Duration) (*tvdv1.EEOperation, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for op.GetState() == tvdv1.EEOperationState_EE_OPERATION_STATE_PENDING {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("operation %s (%s %s) still pending after %v; phase %q on node %s (tvd ee ls shows the EEs)", op.GetId(),
				op.GetAction(), op.GetEe(), wait, op.GetPhase(), op.GetNode())
		case <-time.After(200 * time.Millisecond):
		}
		resp, err := cl.EE.GetEEOperation(ctx, connect.NewRequest(&tvdv1.GetEEOperationRequest{Id: op.GetId()}))
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			return nil, apiError(err)
		}
		op = resp.Msg.GetOperation()
	}
	return op, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func eeStateWord(s tvdv1.EEState) string {
	if s == tvdv1.EEState_EE_STATE_UNSPECIFIED {
		return "-"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "EE_STATE_"))
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return dash(d)
}
