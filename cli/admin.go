package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/api"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/policy"
)

// conn holds the global connection flags.
type conn struct {
	creds      string
	controller string
	output     string
}

func (c *conn) addFlags(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&c.creds, "creds", "", "credential `DIR` (cert.pem, key.pem, ca.pem, controller); default $TVD_CREDS")
	f.StringVar(&c.controller, "controller", "", "controller `URL`; default $TVD_CONTROLLER, else the one in the credentials")
	f.StringVarP(&c.output, "output", "o", "table", "output format: table or json")
}

func (c *conn) dial() (*client.Client, error) {
	dir := c.creds
	if dir == "" {
		dir = os.Getenv("TVD_CREDS")
	}
	creds, err := client.LoadDir(dir)
	if err != nil {
		return nil, err
	}
	url := c.controller
	if url == "" {
		url = os.Getenv("TVD_CONTROLLER")
	}
	return client.Dial(creds, url)
}

// open checks the output format and connects: the preamble of every
// admin command that prints.
func (c *conn) open() (cl *client.Client, js bool, err error) {
	if js, err = c.json(); err != nil {
		return nil, false, err
	}
	cl, err = c.dial()
	return cl, js, err
}

func (c *conn) json() (bool, error) {
	switch c.output {
	case "json":
		return true, nil
	case "table", "":
		return false, nil
	}
	return false, fmt.Errorf("-o %q: want table or json", c.output)
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// apiError turns a connect error into a message for the terminal.
func apiError(err error) error {
	if ce, ok := err.(*connect.Error); ok {
		return fmt.Errorf("%s (%s)", ce.Message(), ce.Code())
	}
	return err
}

func ago(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil || t.AsTime().IsZero() {
		return "-"
	}
	d := now.Sub(t.AsTime()).Round(100 * time.Millisecond)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func statusWord(s tvdv1.Status) string { return api.StatusFromProto(s).String() }

func newStatusCmd(c *conn) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the deployment: policy version, domains and their members' trust",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.Status(cmd.Context(), connect.NewRequest(&tvdv1.StatusRequest{}))
			if err != nil {
				return apiError(err)
			}
			m := resp.Msg
			w := cmd.OutOrStdout()
			if js {
				return printJSON(w, m)
			}
			fmt.Fprintf(w, "controller %s at %s, trust domain %s, policy version %d, %d nodes, audit log %d entries\n",
				m.GetControllerVersion(), cl.URL, m.GetTrustDomain(), m.GetPolicyVersion(), m.GetNodes(), m.GetAuditSize())
			fmt.Fprintf(w, "you are %s (%s)\n\n", m.GetCaller(), m.GetCallerRole())
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DOMAIN\tOWNER\tMEMBERS\tVERIFIED\tVIOLATED\tUNKNOWN\tQUARANTINED")
			for _, d := range m.GetDomains() {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", d.GetName(), d.GetOwner(), d.GetMembers(), d.GetVerified(), d.GetViolated(), d.GetUnknown(), d.GetQuarantined())
			}
			return tw.Flush()
		},
	}
}

func newNodesCmd(c *conn) *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "List enrolled nodes with their trust level and last verdict",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.ListNodes(cmd.Context(), connect.NewRequest(&tvdv1.ListNodesRequest{}))
			if err != nil {
				return apiError(err)
			}
			w := cmd.OutOrStdout()
			if js {
				return printJSON(w, resp.Msg)
			}
			now := time.Now()
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tTRUST\tSTATUS\tLAST VERIFIED\tLAST REPORT\tPLAN\tEES")
			for _, n := range resp.Msg.GetNodes() {
				a, _ := api.AssuranceFromProto(n.GetAssurance())
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.GetName(), a, statusWord(n.GetStatus()), ago(n.GetLastVerifiedAt(), now),
					ago(n.GetLastReportAt(), now), planWord(n), strings.Join(n.GetEes(), ","))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			// The data plane per domain: channel, flow rules, and whether
			// they are what the current plan asks for.
			tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w)
			fmt.Fprintln(tw, "NODE\tDOMAIN\tCHANNEL\tFLOW RULES\tMATCHES PLAN\tERROR")
			for _, n := range resp.Msg.GetNodes() {
				for _, d := range n.GetDomains() {
					m := "yes"
					if !d.GetMatchesPlan() {
						m = "NO"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.GetName(), d.GetDomain(), d.GetChannel(), shortID(d.GetFlowMatrixId()), m, d.GetError())
				}
			}
			return tw.Flush()
		},
	}
}

// planWord says whether a node runs the latest plan made for it.
func planWord(n *tvdv1.Node) string {
	cur, got := n.GetPlanVersionCurrent(), n.GetPlanVersionApplied()
	switch {
	case cur == 0:
		return "none yet"
	case got == cur:
		return fmt.Sprintf("current (v%d)", uint32(cur))
	case got == 0:
		return fmt.Sprintf("not acknowledged (v%d made)", uint32(cur))
	}
	return fmt.Sprintf("behind (v%d of v%d)", uint32(got), uint32(cur))
}

// shortID abbreviates a "sha256:…" matrix id for tables.
func shortID(id string) string {
	if len(id) > 19 {
		return id[:19] + "…"
	}
	if id == "" {
		return "-"
	}
	return id
}

func newMembersCmd(c *conn) *cobra.Command {
	return &cobra.Command{
		Use:   "members [DOMAIN]",
		Short: "List admitted members with their role, node, trust and last verdict",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			req := &tvdv1.ListMembersRequest{}
			if len(args) == 1 {
				req.Domain = args[0]
			}
			resp, err := cl.Admin.ListMembers(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return apiError(err)
			}
			w := cmd.OutOrStdout()
			if js {
				return printJSON(w, resp.Msg)
			}
			now := time.Now()
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DOMAIN\tROLE\tEE\tNODE\tADDRESS\tSTATUS\tLAST VERIFIED\tCERT EXPIRES\tREASON")
			for _, m := range resp.Msg.GetMembers() {
				v := m.GetVerdict()
				st := statusWord(v.GetStatus())
				if m.GetQuarantined() {
					st += ",quarantined"
				}
				exp := "-"
				if m.GetCertExpires() != nil {
					exp = "in " + m.GetCertExpires().AsTime().Sub(now).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.GetMember().GetDomain(), m.GetMember().GetRole(), m.GetMember().GetEe(),
					m.GetNode(), m.GetOverlayAddress(), st, ago(v.GetVerifiedAt(), now), exp, v.GetReason())
			}
			return tw.Flush()
		},
	}
}

func newAdminCmd(c *conn) *cobra.Command {
	cmd := &cobra.Command{Use: "admin", Short: "Join tokens and admin certificates"}
	var node string
	var ttl time.Duration
	token := &cobra.Command{
		Use:   "token",
		Short: "Create a one-time join token for an agent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.dial()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.CreateJoinToken(cmd.Context(), connect.NewRequest(&tvdv1.CreateJoinTokenRequest{NodeName: node, Ttl: durationpb.New(ttl)}))
			if err != nil {
				return apiError(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.Msg.GetToken())
			fmt.Fprintf(cmd.ErrOrStderr(), "one-time join token, valid until %s%s\n", resp.Msg.GetExpires().AsTime().Local().Format(time.RFC3339), map[bool]string{true: " for node " + node, false: ""}[node != ""])
			return nil
		},
	}
	token.Flags().StringVar(&node, "node", "", "bind the token to this node `NAME`")
	token.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid")
	var name, role, out string
	var certTTL time.Duration
	cert := &cobra.Command{
		Use:   "cert",
		Short: "Issue an admin client certificate with a role into a credential directory",
		Example: `  tvd admin cert --name tmart-cio --role auditor:paychecks4tmart --out ./tmart-cio
  TVD_CREDS=./tmart-cio tvd members paychecks4tmart`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || role == "" || out == "" {
				return fmt.Errorf("admin cert needs --name, --role (admin, domain-admin:DOMAIN or auditor:DOMAIN) and --out DIR")
			}
			if _, err := ca.ParseRole(role); err != nil {
				return err
			}
			cl, err := c.dial()
			if err != nil {
				return err
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			csr, err := ca.NewCSR(key)
			if err != nil {
				return err
			}
			resp, err := cl.Admin.IssueAdminCert(cmd.Context(), connect.NewRequest(&tvdv1.IssueAdminCertRequest{Name: name, Role: role, Csr: csr, Ttl: durationpb.New(certTTL)}))
			if err != nil {
				return apiError(err)
			}
			keyDER, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				return err
			}
			if err := client.WriteCredentials(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: resp.Msg.GetCert()}),
				pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), resp.Msg.GetCaBundle(), cl.URL); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote credentials for %s (%s) to %s; use them with TVD_CREDS=%s\n", name, role, out, out)
			return nil
		},
	}
	cert.Flags().StringVar(&name, "name", "", "the administrator's `NAME`")
	cert.Flags().StringVar(&role, "role", "", "`ROLE`: admin, domain-admin:DOMAIN or auditor:DOMAIN")
	cert.Flags().StringVar(&out, "out", "", "credential `DIR` to write")
	cert.Flags().DurationVar(&certTTL, "ttl", 365*24*time.Hour, "certificate lifetime")
	cmd.AddCommand(token, cert)
	return cmd
}

func policyApplyCmd(c *conn) *cobra.Command {
	var dry bool
	var comment string
	cmd := &cobra.Command{
		Use:   "apply PATH...",
		Short: "Check a policy locally, then store it as the controller's next version",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := policy.Load(args...)
			if err == nil {
				_, err = p.Compile()
			}
			if err != nil {
				if pe, ok := err.(policy.Errors); ok {
					for _, e := range pe {
						fmt.Fprintln(cmd.ErrOrStderr(), e)
					}
					return &ExitError{Code: 1}
				}
				return err
			}
			req := &tvdv1.ApplyPolicyRequest{DryRun: dry, Comment: comment}
			for _, f := range p.Files {
				req.Files = append(req.Files, &tvdv1.PolicyFile{Name: filepath.ToSlash(f.Name), Content: f.Content})
			}
			cl, err := c.dial()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.ApplyPolicy(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return apiError(err)
			}
			m := resp.Msg
			w := cmd.OutOrStdout()
			switch {
			case !m.GetChanged():
				fmt.Fprintf(w, "policy unchanged (version %d)\n", m.GetVersion())
			case dry:
				fmt.Fprintf(w, "would store policy version %d: %s\n", m.GetVersion(), m.GetDiffSummary())
			default:
				fmt.Fprintf(w, "stored policy version %d: %s\n", m.GetVersion(), m.GetDiffSummary())
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only show what would change")
	cmd.Flags().StringVarP(&comment, "message", "m", "", "a comment stored with the version")
	return cmd
}

func policyHistoryCmd(c *conn) *cobra.Command {
	var limit uint32
	cmd := &cobra.Command{
		Use:   "history",
		Short: "List the policy versions the controller has stored",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.PolicyHistory(cmd.Context(), connect.NewRequest(&tvdv1.PolicyHistoryRequest{Limit: limit}))
			if err != nil {
				return apiError(err)
			}
			w := cmd.OutOrStdout()
			if js {
				return printJSON(w, resp.Msg)
			}
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tAPPLIED\tBY\tDIGEST\tCHANGES\tCOMMENT")
			for _, v := range resp.Msg.GetVersions() {
				d := v.GetDigest()
				if len(d) > 19 {
					d = d[:19]
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", v.GetVersion(), v.GetAppliedAt().AsTime().Local().Format(time.DateTime), v.GetAppliedBy(), d, v.GetDiffSummary(), v.GetComment())
			}
			return tw.Flush()
		},
	}
	cmd.Flags().Uint32Var(&limit, "limit", 0, "show at most `N` versions (0: all)")
	return cmd
}

func newRevokeCmd(c *conn) *cobra.Command {
	var node, reason string
	cmd := &cobra.Command{
		Use:   "revoke [DOMAIN/ROLE/EE]",
		Short: "Revoke a member (or, with --node, every member of a node and the node itself)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &tvdv1.RevokeRequest{Reason: reason}
			switch {
			case node != "" && len(args) == 0:
				req.Target = &tvdv1.RevokeRequest_Node{Node: node}
			case node == "" && len(args) == 1:
				parts := strings.Split(args[0], "/")
				if len(parts) != 3 {
					return fmt.Errorf("member %q: want DOMAIN/ROLE/EE", args[0])
				}
				req.Target = &tvdv1.RevokeRequest_Member{Member: api.MemberToProto(tvd.Member{Domain: parts[0], Role: parts[1], EE: parts[2]})}
			default:
				return fmt.Errorf("revoke takes a member DOMAIN/ROLE/EE or --node NAME")
			}
			cl, err := c.dial()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.Revoke(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return apiError(err)
			}
			for _, m := range resp.Msg.GetMembers() {
				fmt.Fprintf(cmd.OutOrStdout(), "revoked %s/%s/%s\n", m.GetDomain(), m.GetRole(), m.GetEe())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "audit entry %d\n", resp.Msg.GetAuditIndex())
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "revoke the node `NAME` and all its members")
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	return cmd
}

func newAuditCmd(c *conn) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read the tamper-evident audit log"}
	var domain string
	var start uint64
	var limit uint32
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Print audit entries (an auditor sees only its domain)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, js, err := c.open()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.AuditTail(cmd.Context(), connect.NewRequest(&tvdv1.AuditTailRequest{Domain: domain, StartIndex: start, Limit: limit}))
			if err != nil {
				return apiError(err)
			}
			w := cmd.OutOrStdout()
			if js {
				return printJSON(w, resp.Msg)
			}
			tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INDEX\tTIME\tKIND\tDOMAIN\tACTOR\tDATA")
			for _, e := range resp.Msg.GetEntries() {
				var data map[string]any
				json.Unmarshal(e.GetData(), &data)
				b, _ := json.Marshal(data)
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.GetIndex(), e.GetTime().AsTime().Local().Format("15:04:05.000"), e.GetKind(), e.GetDomain(), e.GetActor(), b)
			}
			tw.Flush()
			cp := resp.Msg.GetCheckpoint()
			fmt.Fprintf(w, "checkpoint: size %d, root %x\n", cp.GetSize(), cp.GetRootHash())
			return nil
		},
	}
	tail.Flags().StringVar(&domain, "domain", "", "only entries of `DOMAIN`")
	tail.Flags().Uint64Var(&start, "from", 0, "first `INDEX`")
	tail.Flags().Uint32Var(&limit, "limit", 100, "at most `N` entries")
	cmd.AddCommand(tail)
	addAuditVerifyCmds(c, cmd)
	return cmd
}
