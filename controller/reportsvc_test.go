package controller_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/report"
	"github.com/tvd-dev/tvd/tvdtest"
)

func complianceReport(t *testing.T, ctx context.Context, cl interface {
	ComplianceReport(context.Context, *connect.Request[tvdv1.ComplianceReportRequest]) (*connect.Response[tvdv1.ComplianceReportResponse], error)
}, domain string) (*report.Report, error) {
	t.Helper()
	resp, err := cl.ComplianceReport(ctx, connect.NewRequest(&tvdv1.ComplianceReportRequest{Domain: domain, Format: tvdv1.ReportFormat_REPORT_FORMAT_JSON}))
	if err != nil {
		return nil, err
	}
	r, err := report.ParseJSON(resp.Msg.GetContent())
	if err != nil {
		t.Fatal(err)
	}
	return r, nil
}

func reportCell(t *testing.T, r *report.Report, statement, ee string) report.Cell {
	t.Helper()
	for i, st := range r.Statements {
		for j, m := range r.Members {
			if st.ID == statement && m.EE == ee {
				return r.Cells[i][j]
			}
		}
	}
	t.Fatalf("report has no cell %s × %s", statement, ee)
	return report.Cell{}
}

// TestComplianceReport runs case study 1, reads red's report as the admin
// and as red's auditor, checks that the auditor cannot read yellow's, and
// that a stopped agent turns its members' cells from verified to violated
// or unknown.
func TestComplianceReport(t *testing.T) {
	env, agents := start(t)
	ctx := context.Background()
	// The in-process agents run no data plane: the report must say the
	// flow matrix is not enforced rather than pass it.
	var r *report.Report
	tvdtest.Eventually(t, 10*time.Second, "red's nodes acknowledging their plans", func() bool {
		var err error
		if r, err = complianceReport(t, ctx, env.Admin.Admin, "red"); err != nil {
			t.Fatal(err)
		}
		return reportCell(t, r, "no-clients-to-ibm", "red-client1").Status == report.StatusViolated
	})
	if len(r.Members) != 4 || r.Domain != "red" {
		t.Fatalf("red report: %d members, domain %q", len(r.Members), r.Domain)
	}
	for _, c := range []struct {
		statement, ee string
		want          report.Status
		reason        string
	}{
		{"owned-by-customer", "red-dc", report.StatusVerified, "outsourcing-customer"},
		{"audited", "red-gw", report.StatusVerified, "signed by the log key"},
		{"no-clients-to-ibm", "red-client2", report.StatusViolated, "runs no data plane"},
		{"encrypted-channel", "red-client2", report.StatusUnknown, "overlay up"},
	} {
		if got := reportCell(t, r, c.statement, c.ee); got.Status != c.want || !strings.Contains(got.Evidence.Reason, c.reason) {
			t.Errorf("%s × %s = %s (%s), want %s with %q", c.statement, c.ee, got.Status, got.Evidence.Reason, c.want, c.reason)
		}
	}
	if c := reportCell(t, r, "owned-by-customer", "red-client1"); len(c.Evidence.AuditIndexes) == 0 {
		t.Errorf("red-client1's cells cite no audit entries (its admission is one)")
	}
	if r.Summary.Cells != 16 || r.Summary.Verified != 8 || len(r.Summary.PastDeadline) != 0 {
		t.Errorf("red: %+v", r.Summary)
	}

	aud := dialAs(t, env, "red-cio", "auditor:red")
	if _, err := complianceReport(t, ctx, aud.Admin, "red"); err != nil {
		t.Errorf("auditor:red reading red's report: %v", err)
	}
	if _, err := complianceReport(t, ctx, aud.Admin, "yellow"); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("auditor:red reading yellow's report: %v; want permission denied", err)
	}
	if _, err := complianceReport(t, ctx, env.Admin.Admin, "green"); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("report of an unknown domain: %v; want not found", err)
	}
	for _, f := range []tvdv1.ReportFormat{tvdv1.ReportFormat_REPORT_FORMAT_TEXT, tvdv1.ReportFormat_REPORT_FORMAT_HTML} {
		resp, err := env.Admin.Admin.ComplianceReport(ctx, connect.NewRequest(&tvdv1.ComplianceReportRequest{Domain: "red", Format: f}))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(resp.Msg.GetContent()), "red-client1") || resp.Msg.GetContentType() == "" {
			t.Errorf("%v report lacks the members or a content type: %s", f, resp.Msg.GetContentType())
		}
	}

	// pc2 stops reporting: past red's deadline its members violate.
	agents["pc2"].Stop()
	tvdtest.Eventually(t, 30*time.Second, "red-client2 past its deadline in the report", func() bool {
		var err error
		if r, err = complianceReport(t, ctx, env.Admin.Admin, "red"); err != nil {
			t.Fatal(err)
		}
		return len(r.Summary.PastDeadline) == 1 && r.Summary.PastDeadline[0] == "red-client2"
	})
	if got := reportCell(t, r, "no-clients-to-ibm", "red-client2"); got.Status == report.StatusVerified {
		t.Errorf("a stale member's flow cell is still verified: %s", got.Evidence.Reason)
	}
	if r.Summary.Weakest != "red-client2" || r.Summary.Violated == 0 {
		t.Errorf("after pc2 stopped: weakest %q, %d violated", r.Summary.Weakest, r.Summary.Violated)
	}
}

// TestLoginToken checks that an admin gets a dashboard login URL on the
// controller.
func TestLoginToken(t *testing.T) {
	env := tvdtest.New(t, tvdtest.Options{})
	resp, err := env.Admin.Admin.CreateLoginToken(context.Background(), connect.NewRequest(&tvdv1.CreateLoginTokenRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(resp.Msg.GetUrl(), env.URL+"/ui/login?token=") || resp.Msg.GetToken() == "" {
		t.Errorf("login URL %q (controller %s)", resp.Msg.GetUrl(), env.URL)
	}
	if d := time.Until(resp.Msg.GetExpires().AsTime()); d <= 0 || d > 3*time.Minute {
		t.Errorf("login token expires in %v", d)
	}
}
