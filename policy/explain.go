package policy

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/tvd-dev/tvd/flow"
)

// Explain writes the policy in plain words: each domain with its roles,
// membership rules and statements, then the flow matrix as a table.
func (c *Compiled) Explain(w io.Writer) error {
	ew := &errWriter{w: w}
	for _, d := range c.Domains {
		ew.printf("Domain %s, owned by %s.\n", d.Name, d.Owner)
		if d.Description != "" {
			ew.printf("  %s\n", d.Description)
		}
		var roles []string
		for _, r := range d.Roles {
			s := r.Name
			if r.Gateway {
				s += " (gateway)"
			}
			if r.Max > 0 {
				s += fmt.Sprintf(" (at most %d)", r.Max)
			}
			roles = append(roles, s)
		}
		ew.printf("  Roles: %s.\n", strings.Join(roles, ", "))
		if d.Subnet != "" {
			ew.printf("  Overlay subnet: %s.\n", d.Subnet)
		}
		ew.printf("  Members join with at least %s assurance and %s isolation", d.MinAssurance, d.Isolation)
		if len(d.RequiredClaims) > 0 {
			ew.printf(", and only if %s", strings.Join(d.RequiredClaims, " and "))
		}
		ew.printf(".\n")
		ew.printf("  Each member proves its state every %s; one silent for %s counts as violating.\n", timeString(d.Interval), timeString(d.Deadline))
		switch d.Integrity {
		case "enforce":
			ew.printf("  Only software in %s may run; anything else is refused before it starts.\n", strings.Join(d.ReferenceValues, ", "))
		default:
			if len(d.ReferenceValues) > 0 {
				ew.printf("  Software outside %s may start, but is detected and treated as a violation.\n", strings.Join(d.ReferenceValues, ", "))
			} else {
				ew.printf("  Every executable is measured and reported.\n")
			}
		}
		var rs []string
		for _, r := range d.Reactions {
			rs = append(rs, string(r))
		}
		ew.printf("  On a violation the controller will: %s.\n", strings.Join(rs, ", then "))
		ew.printf("  If the controller is lost: %s.\n", lossText(d.OnControllerLoss))
		for _, r := range d.Requirements {
			ew.printf("  Requirement %s (%s): %s\n      holds when: %s\n", r.ID, r.Kind, orDash(r.Text), r.Expr)
		}
		ew.printf("  Statements:\n")
		for _, s := range d.Statements {
			ew.printf("    [%s] %s: %s\n", s.Type, s.ID, s.Text)
			ew.printf("        verified by %s: %s", s.Verifier, VerifierDoc[s.Verifier])
			switch {
			case len(s.Requirements) > 0:
				ew.printf(" (%s)", strings.Join(s.Requirements, ", "))
			case len(s.ReferenceValues) > 0:
				ew.printf(" (%s)", strings.Join(s.ReferenceValues, ", "))
			case len(s.Issuers) > 0:
				ew.printf(" (%s)", strings.Join(s.Issuers, ", "))
			case s.Owner != "":
				ew.printf(" (%s)", s.Owner)
			}
			ew.printf(".\n")
		}
		for _, a := range d.Administrators {
			what := "administers the domain"
			if a.Role == "auditor" {
				what = "may read the domain, its members and its compliance report, and change nothing"
			}
			ew.printf("  %s %s.\n", a.Name, what)
		}
		ew.printf("\n")
	}
	for _, m := range c.Mappings {
		ew.printf("Mapping %s, asserted by %s: measuring %s establishes %s.\n", m.Name, m.Issuer, strings.Join(m.Measured, " or "), claimList(m.Establishes))
	}
	if len(c.Mappings) > 0 {
		ew.printf("\n")
	}
	ew.printf("Flow matrix (rows: source domain/role; columns: destination domain):\n")
	tw := tabwriter.NewWriter(ew, 2, 4, 2, ' ', 0)
	names := make([]string, len(c.Domains))
	for i, d := range c.Domains {
		names[i] = d.Name
	}
	fmt.Fprintf(tw, "\t%s\n", strings.Join(names, "\t"))
	m := c.Matrix
	for cl := 0; cl < m.NumClasses(); cl++ {
		d, r := m.ClassName(flow.ClassID(cl))
		row := []string{d + "/" + r}
		for di := range names {
			if di == m.ClassDomain(flow.ClassID(cl)) {
				row = append(row, "unrestricted")
				continue
			}
			rule, mask := m.Cell(flow.ClassID(cl), di)
			s := rule.String()
			if rule == flow.RulePointToPoint {
				s += " (" + strings.Join(m.RoleNames(di, mask), ",") + ")"
			}
			row = append(row, s)
		}
		fmt.Fprintf(tw, "%s\n", strings.Join(row, "\t"))
	}
	tw.Flush()
	ew.printf("  unrestricted: any member; none: nothing, not even through a gateway;\n")
	ew.printf("  point-to-point: only straight to the listed roles; via-gateway: only through both domains' gateways.\n")
	return ew.err
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, args ...any) { fmt.Fprintf(e, format, args...) }

func timeString(d Duration) string {
	b, _ := d.MarshalJSON()
	return strings.Trim(string(b), `"`)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func lossText(s string) string {
	switch s {
	case "keep-intra":
		return "members keep talking inside the domain on their last plan, cross-domain flows stop, and no one new joins"
	case "keep-all":
		return "members keep their last plan, cross-domain flows included, and no one new joins"
	case "isolate":
		return "members are cut off until the controller is back"
	}
	return s
}

func claimList(m map[string]any) string {
	var out []string
	for _, k := range sortedKeys(m) {
		out = append(out, fmt.Sprintf("%s = %v", k, m[k]))
	}
	return strings.Join(out, ", ")
}
