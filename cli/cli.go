// Package cli implements the tvd command line: one cobra command tree whose
// subcommands run the policy tools and, through the API client, talk to a
// domain controller. It never reaches into controller internals.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// ExitError carries a specific exit status. Its message, if any, has
// already been printed.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Main runs the command line with args and returns the process exit status.
// extra adds commands that the main package wires (the daemons).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, extra ...*cobra.Command) int {
	root := NewRoot()
	root.AddCommand(extra...)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	fmt.Fprintf(stderr, "tvd: %v\n", err)
	return 1
}

// NewRoot returns the root command with every subcommand attached.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "tvd",
		Short: "Trusted Virtual Domains: one policy, attested members, protected channels",
		Long: `tvd turns one declarative security policy per domain into a running, verified
"virtual intranet" across many Linux machines: members join only by proving their state
with TPM attestation, talk over an encrypted per-domain overlay, and cross domains only
as the policy's flow matrix allows. A domain controller keeps re-checking every member
and reacts to violations; a tamper-evident log records what happened.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var c conn
	c.addFlags(root)
	root.PersistentFlags().Lookup("controller").Usage = "controller `URL` for admin commands; default $TVD_CONTROLLER, else the one in the credentials"
	pol := newPolicyCmd()
	pol.AddCommand(policyApplyCmd(&c), policyHistoryCmd(&c))
	adm := newAdminCmd(&c)
	adm.AddCommand(adminLoginCmd(&c))
	root.AddCommand(pol, newStatusCmd(&c), newNodesCmd(&c), newMembersCmd(&c), adm, newRevokeCmd(&c), newAuditCmd(&c), newReportCmd(&c), NewLabCmd(), newImageCmd(), newEECmd(&c))
	return root
}
