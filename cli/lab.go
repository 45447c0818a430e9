package cli

import (
	"connectrpc.com/connect"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/flow"
	"github.com/tvd-dev/tvd/policy"
	"os"
	"os/exec"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tvd-dev/tvd/lab"
)

// NewLabCmd returns `tvd lab`: a whole deployment on one machine.
func NewLabCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a whole TVD deployment on this machine: controller, nodes with swtpm, agents",
		Long: `tvd lab builds a deployment on one Linux host from a scenario file: the
controller runs on the host (10.250.0.1:7443 on the link tvdlab-host), and every
node is a network namespace tvdlab-NODE on the underlay bridge tvdlab-br
(10.250.0.0/24) with its own swtpm, whose EK certificate comes from a lab CA,
and its own tvd agent attesting at assurance tpm. It needs root, swtpm and
swtpm-tools, iproute2 and /dev/net/tun.

All state and logs live in the lab directory: --dir, else $TVD_LAB_DIR, else
` + lab.DefaultDir + `. LABDIR/lab.json records everything the lab created.`,
	}
	dir := lab.DirFromEnv()
	cmd.PersistentFlags().StringVar(&dir, "dir", dir, "lab `DIR`: state and logs ($TVD_LAB_DIR)")
	cmd.AddCommand(labUpCmd(&dir), labDownCmd(&dir), labStatusCmd(&dir), labExecCmd(&dir), labCheckCmd(&dir), labDemoCmd(&dir))
	return cmd
}

func labUpCmd(dir *string) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "up SCENARIO",
		Short: "Create the lab of a scenario and wait until every EE is a verified member",
		Long: `Create the lab of SCENARIO (a scenario file, or a directory holding scenario.yaml):
the underlay, one namespace per node, a swtpm per node with an EK certificate
from the lab CA, the controller, the policy, the scenario's admin credentials
and one agent per node. It returns when every EE is a verified member at
assurance tpm; the lab keeps running until tvd lab down.`,
		Example: `  tvd lab up examples/outsourcing
  export TVD_CREDS=/var/lib/tvd-lab/controller/admin
  tvd members`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := lab.Up(cmd.Context(), args[0], lab.Config{Dir: *dir, Out: cmd.OutOrStdout(), Timeout: timeout})
			return err
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long to wait for every EE to become a verified member")
	return cmd
}

func labDownCmd(dir *string) *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove everything the lab made (also after a crashed up)",
		Long: `Remove the lab: stop its agents, controller and swtpm processes (recorded in
LABDIR/lab.json, or found by their command line naming LABDIR, or running in a
tvdlab- namespace), delete every tvdlab- namespace and host link, and remove
the files the lab wrote in LABDIR. Running it again does nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.Down(cmd.Context(), *dir, keep, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&keep, "keep-files", false, "keep LABDIR's logs and state")
	return cmd
}

func labOutput(cmd *cobra.Command) (bool, error) {
	o := "table"
	if f := cmd.Flags().Lookup("output"); f != nil {
		o = f.Value.String()
	}
	switch o {
	case "json":
		return true, nil
	case "table", "":
		return false, nil
	}
	return false, fmt.Errorf("-o %q: want table or json", o)
}

func since(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	d := now.Sub(*t).Round(100 * time.Millisecond)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func labStatusCmd(dir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the lab's nodes, EEs, membership, trust and the age of each last verdict",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			js, err := labOutput(cmd)
			if err != nil {
				return err
			}
			snap, err := lab.Status(cmd.Context(), *dir)
			if err != nil {
				return apiError(err)
			}
			w := cmd.OutOrStdout()
			if js {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(snap)
			}
			now := snap.Taken
			pol := "-"
			if snap.Policy != nil {
				pol = fmt.Sprint(snap.Policy.Version)
			}
			fmt.Fprintf(w, "lab %s in %s: %s, policy version %s, %d of %d EEs verified at assurance tpm\n", snap.Name, snap.Dir, snap.Phase, pol, snap.Verified, len(snap.EEs))
			if snap.ControllerError != "" {
				fmt.Fprintf(w, "the controller does not answer (%s); showing what the lab knows\n", snap.ControllerError)
			}
			fmt.Fprintln(w)
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tNETNS\tUNDERLAY\tAGENT\tSWTPM\tTRUST\tSTATUS\tLAST VERIFIED\tLAST REPORT\tPLAN")
			for _, n := range snap.Nodes {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", n.Name, n.Netns, n.Address, runWord(n.AgentRunning), runWord(n.TPMRunning),
					n.Assurance, n.Status, since(n.LastVerified, now), since(n.LastReport, now), n.PlanApplied)
			}
			tw.Flush()
			fmt.Fprintln(w)
			tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "EE\tNODE\tDOMAIN/ROLE\tMEMBER\tSTATUS\tTRUST\tADDRESS\tLAST VERDICT\tREASON")
			for _, e := range snap.EEs {
				st := e.Status
				if e.Quarantined {
					st += ",quarantined"
				}
				if e.Frozen {
					st += ",frozen"
				}
				addr := e.Address
				if addr == "" {
					addr = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Name, e.Node, e.Domain, e.Role, map[bool]string{true: "yes", false: "no"}[e.Member],
					st, e.Assurance, addr, since(e.VerifiedAt, now), e.Reason)
			}
			return tw.Flush()
		},
	}
}

func runWord(b bool) string {
	if b {
		return "running"
	}
	return "stopped"
}

func labExecCmd(dir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec NODE|EE -- CMD [ARGS...]",
		Short: "Run a command inside a lab node (for an EE: in its node, until EEs are containers)",
		Example: `  tvd lab exec pc1 -- ip -br addr
  tvd lab exec red-client1 -- ping -c1 10.250.0.1`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.LoadState(*dir)
			if err != nil {
				return err
			}
			t, err := st.Resolve(args[0])
			if err != nil {
				return err
			}
			if t.EE != "" && !t.Contained {
				fmt.Fprintf(cmd.ErrOrStderr(), "tvd lab: EE %s is not a running container; running in its node %s (netns %s)\n", t.EE, t.Node, t.Netns)
			}
			argv := args[1:]
			if len(argv) > 0 && argv[0] == "--" {
				argv = argv[1:]
			}
			c, err := t.Command(cmd.Context(), argv)
			if err != nil {
				return err
			}
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := c.Run(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					return &ExitError{Code: ee.ExitCode()}
				}
				return err
			}
			return nil
		},
	}
	// Everything after NODE|EE is the command, flags included.
	cmd.Flags().SetInterspersed(false)
	return cmd
}

func labCheckCmd(dir *string) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Send real packets between every ordered pair of EEs and compare with the policy",
		Long: `check opens a TCP connection from every EE to every other EE's overlay address, straight,
and compares what passed with the policy's flow matrix: inside a domain everything passes;
across domains only what the cell allows straight (point-to-point to the listed roles,
unrestricted); none and via-gateway flows must be dropped when sent straight. It prints the
table and "N passed, M failed", and exits non-zero on any mismatch.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.LoadState(*dir)
			if err != nil {
				return err
			}
			results, err := lab.Check(cmd.Context(), st, timeout)
			if err != nil {
				return err
			}
			if failed := lab.WriteCheck(cmd.OutOrStdout(), results); failed > 0 {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "how long a connection may take before it counts as dropped")
	return cmd
}

func labDemoCmd(dir *string) *cobra.Command {
	var offender string
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo SCENARIO",
		Short: "The narrated story: up, check, report, a violation and the reactions to it, check again, down",
		Long: `demo brings the scenario's lab up, sends real packets between every pair of EEs, prints the
compliance report, then plays an intruder: it copies an unlisted program into one EE and runs
it. It shows the detection and the reactions, with the time from the exec to the violating
verdict and to the offender's packets being dropped at its peers, checks again (the offender
is cut off and nothing else changed), prints the report, and takes the lab down.`,
		Example: `  tvd lab demo examples/outsourcing`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			w := cmd.OutOrStdout()
			step := func(s string) { fmt.Fprintf(w, "\n== %s\n", s) }
			step("tvd lab up " + args[0])
			st, err := lab.Up(ctx, args[0], lab.Config{Dir: *dir, Out: w, Timeout: 60 * time.Second, MeasureJoin: true})
			if err != nil {
				return err
			}
			if !keep {
				defer func() {
					step("tvd lab down")
					lab.Down(context.WithoutCancel(ctx), st.Dir, false, w)
				}()
			}
			check := func(offenders ...string) int {
				var res []lab.Result
				for i := 0; i < 15; i++ { // EEs start and peers' keys reach every node within a few reports
					if res, err = lab.Check(ctx, st, 2*time.Second, offenders...); err != nil {
						if i == 14 {
							fmt.Fprintf(w, "check: %v\n", err)
							return 1
						}
						time.Sleep(time.Second)
						continue
					}
					failed := 0
					for _, r := range res {
						if !r.Pass() {
							failed++
						}
					}
					if failed == 0 {
						break
					}
					time.Sleep(time.Second)
				}
				return lab.WriteCheck(w, res)
			}
			step("tvd lab check   (real packets between every ordered pair of EEs, against the policy)")
			failed := check()
			cl, err := lab.Dial(st)
			if err != nil {
				return err
			}
			comp, err := lab.LoadPolicy(st)
			if err != nil {
				return err
			}
			if offender == "" {
				offender = pickOffender(st, comp)
			}
			var dom string
			for _, n := range st.Nodes {
				for _, e := range n.EEs {
					if e.Name == offender {
						dom = e.Domain
					}
				}
			}
			printReport := func() {
				resp, err := cl.Admin.ComplianceReport(ctx, connect.NewRequest(&tvdv1.ComplianceReportRequest{Domain: dom, Format: tvdv1.ReportFormat_REPORT_FORMAT_TEXT}))
				if err != nil {
					fmt.Fprintf(w, "report: %v\n", err)
					return
				}
				w.Write(resp.Msg.GetContent())
			}
			step("tvd report " + dom)
			printReport()
			step("an intruder runs an unlisted program in " + offender)
			// The probe: a flow the offender had before, now cut?
			probe := func() (bool, error) {
				res, err := lab.CheckInvolving(ctx, st, 100*time.Millisecond, offender)
				if err != nil {
					return false, err
				}
				for _, r := range res {
					if (r.From == offender || r.To == offender) && (r.Observed || r.ObservedRouted) {
						return false, nil
					}
				}
				return true, nil
			}
			v, err := lab.Inject(ctx, st, offender, probe)
			if err != nil {
				return err
			}
			lab.WriteViolation(w, v)
			step("tvd lab check   (the offender is cut off; nothing else changed)")
			failed += check(offender)
			step("tvd report " + dom + "   (after the violation)")
			printReport()
			if failed > 0 {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&offender, "offender", "", "the EE the intruder uses (default: an EE of a domain that measures rather than enforces)")
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the lab up at the end")
	return cmd
}

// pickOffender chooses the demo's intruder EE: one in a domain whose
// integrity mode lets unlisted code start (measure), so the story shows
// detection and reaction; else the first EE.
func pickOffender(st *lab.State, comp *policy.Compiled) string {
	first := ""
	for _, n := range st.Nodes {
		for _, e := range n.EEs {
			if first == "" {
				first = e.Name
			}
			if d, ok := comp.Domain(e.Domain); ok && d.Integrity == "measure" && !comp.Matrix.IsGateway(classOf(comp, e.Domain, e.Role)) && e.Role != "domain-controller" {
				return e.Name
			}
		}
	}
	return first
}

func classOf(comp *policy.Compiled, domain, role string) flow.ClassID {
	c, _ := comp.Matrix.Class(domain, role)
	return c
}
