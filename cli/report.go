package cli

import (
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// newReportCmd is `tvd report DOMAIN`: the domain's compliance report.
func newReportCmd(c *conn) *cobra.Command {
	var strict bool
	cmd := &cobra.Command{
		Use:   "report DOMAIN",
		Short: "Show a domain's compliance report: every statement checked for every member",
		Long: `report asks the controller whether the domain's security goals hold: every policy
statement is checked for every member and comes out verified, violated or unknown, with
the evidence, the share of verified cells, the weakest member, the members past their
deadline, the policy version each member runs, and what the report does not establish.
An admin, or a domain-admin or auditor of the domain, may read it.`,
		Example: `  tvd report red
  tvd report red -o json > red.json
  tvd report red -o html > red.html
  tvd report red --strict   # exit status 3 if any cell is violated`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var format tvdv1.ReportFormat
			switch c.output {
			case "table", "":
				format = tvdv1.ReportFormat_REPORT_FORMAT_TEXT
			case "json":
				format = tvdv1.ReportFormat_REPORT_FORMAT_JSON
			case "html":
				format = tvdv1.ReportFormat_REPORT_FORMAT_HTML
			default:
				return fmt.Errorf("-o %q: want table, json or html", c.output)
			}
			cl, err := c.dial()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.ComplianceReport(cmd.Context(), connect.NewRequest(&tvdv1.ComplianceReportRequest{Domain: args[0], Format: format}))
			if err != nil {
				return apiError(err)
			}
			if _, err := cmd.OutOrStdout().Write(resp.Msg.GetContent()); err != nil {
				return err
			}
			if strict && resp.Msg.GetViolated() > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "tvd report: %d violated cells in domain %s\n", resp.Msg.GetViolated(), args[0])
				return &ExitError{Code: 3}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&strict, "strict", false, "exit with status 3 if any statement is violated for any member")
	return cmd
}

// adminLoginCmd is `tvd admin login`: a URL that logs a browser into the
// dashboard with the caller's identity and role.
func adminLoginCmd(c *conn) *cobra.Command {
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Print a one-time URL that logs a browser into the dashboard (/ui/) as you",
		Long: `login asks the controller for a short-lived, single-use login token bound to your admin
certificate's identity and role, and prints the dashboard URL that uses it. Open it in a
browser within the token's lifetime; the browser then holds a session cookie for an hour.
An auditor's session sees only the auditor's domain.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.dial()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.CreateLoginToken(cmd.Context(), connect.NewRequest(&tvdv1.CreateLoginTokenRequest{Ttl: durationpb.New(ttl)}))
			if err != nil {
				return apiError(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.Msg.GetUrl())
			fmt.Fprintf(cmd.ErrOrStderr(), "one-time dashboard login, valid until %s\n", resp.Msg.GetExpires().AsTime().Local().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", 2*time.Minute, "how long the URL may be used to log in (at most 10m)")
	return cmd
}
