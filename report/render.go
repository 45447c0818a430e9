package report

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("report: encode json: %w", err)
	}
	return nil
}

// ParseJSON reads a report written by WriteJSON.
func ParseJSON(b []byte) (*Report, error) {
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("report: decode json: %w", err)
	}
	if len(r.Cells) != len(r.Statements) {
		return nil, fmt.Errorf("report: decode json: %d cell rows for %d statements", len(r.Cells), len(r.Statements))
	}
	for i, row := range r.Cells {
		if len(row) != len(r.Members) {
			return nil, fmt.Errorf("report: decode json: statement %d has %d cells for %d members", i, len(row), len(r.Members))
		}
	}
	return &r, nil
}

// mark is a cell's one-character form in the table.
func mark(s Status) string {
	switch s {
	case StatusVerified:
		return "+"
	case StatusViolated:
		return "X"
	}
	return "?"
}

// WriteTable writes the report as plain text: the figures, the matrix of
// statements × members (+ verified, X violated, ? unknown), the evidence
// of every cell that is not verified, and what the report does not
// establish.
func (r *Report) WriteTable(w io.Writer) error {
	var b bytes.Buffer
	s := r.Summary
	fmt.Fprintf(&b, "Compliance report: domain %s (owner %s)\n", r.Domain, r.Owner)
	fmt.Fprintf(&b, "policy version %d (%s), generated %s, deadline %s\n\n", r.PolicyVersion, r.PolicyDigest, r.GeneratedAt.Format(time.RFC3339), r.Deadline)
	fmt.Fprintf(&b, "verified %d of %d statement×member cells (%.1f%%); violated %d; unknown %d\n", s.Verified, s.Cells, 100*s.VerifiedShare, s.Violated, s.Unknown)
	if s.Weakest != "" {
		fmt.Fprintf(&b, "weakest member: %s\n", s.Weakest)
	}
	if len(s.PastDeadline) > 0 {
		fmt.Fprintf(&b, "past their deadline: %s\n", strings.Join(s.PastDeadline, ", "))
	} else {
		fmt.Fprintf(&b, "past their deadline: none\n")
	}
	var vs []string
	for _, v := range s.PolicyVersions {
		cur := ""
		if v.Current {
			cur = " (current)"
		}
		vs = append(vs, fmt.Sprintf("v%d%s: %d", v.Version, cur, v.Members))
	}
	if len(vs) == 0 {
		vs = append(vs, "none")
	}
	fmt.Fprintf(&b, "policy versions run: %s\n\n", strings.Join(vs, ", "))

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "STATEMENT\tVERIFIER")
	for _, m := range r.Members {
		fmt.Fprintf(tw, "\t%s", m.EE)
	}
	fmt.Fprint(tw, "\tVERIFIED\n")
	for i, st := range r.Statements {
		fmt.Fprintf(tw, "%s\t%s", st.ID, st.Verifier)
		for _, c := range r.Cells[i] {
			fmt.Fprintf(tw, "\t%s", mark(c.Status))
		}
		fmt.Fprintf(tw, "\t%d/%d\n", st.Verified, st.Verified+st.Violated+st.Unknown)
	}
	tw.Flush()

	b.WriteString("\nMEMBERS\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "EE\tROLE\tNODE\tSTATUS\tLAST VERIFIED\tPOLICY\tCELLS +/X/?\n")
	for _, m := range r.Members {
		lv := "never"
		if !m.LastVerified.IsZero() {
			lv = m.LastVerified.Format(time.RFC3339)
		}
		flags := ""
		if m.PastDeadline {
			flags += " past-deadline"
		}
		if m.Quarantined {
			flags += " quarantined"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s%s\t%s\tv%d\t%d/%d/%d\n", m.EE, m.Role, m.Node, m.Status, flags, lv, m.PolicyVersion, m.Verified, m.Violated, m.Unknown)
	}
	tw.Flush()

	b.WriteString("\nEVIDENCE (cells not verified)\n")
	any := false
	for i, st := range r.Statements {
		for j, c := range r.Cells[i] {
			if c.Status == StatusVerified {
				continue
			}
			any = true
			fmt.Fprintf(&b, "  %s %s × %s: %s", mark(c.Status), st.ID, r.Members[j].EE, c.Evidence.Reason)
			if c.Evidence.Measurement != "" {
				fmt.Fprintf(&b, " [%s]", c.Evidence.Measurement)
			}
			b.WriteByte('\n')
		}
	}
	if !any {
		b.WriteString("  none\n")
	}
	b.WriteString("\nTHIS REPORT DOES NOT ESTABLISH\n")
	for _, n := range r.NotEstablished {
		fmt.Fprintf(&b, "  - %s\n", n)
	}
	_, err := w.Write(b.Bytes())
	return err
}

//go:embed report.html.tmpl
var htmlSource string

// Templates holds the report's HTML templates: "page" (a whole document)
// and "matrix" (the figures and the statement × member matrix, for
// embedding in another page).
var Templates = template.Must(template.New("report").Funcs(template.FuncMap{
	"status": func(s Status) string { return s.String() },
	"mark":   mark,
	"pct":    func(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) },
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format(time.RFC3339)
	},
	"cell": func(r *Report, i, j int) Cell { return r.Cells[i][j] },
}).Parse(htmlSource))

// WriteHTML writes the report as a self-contained HTML document.
func (r *Report) WriteHTML(w io.Writer) error {
	if err := Templates.ExecuteTemplate(w, "page", r); err != nil {
		return fmt.Errorf("report: render html: %w", err)
	}
	return nil
}

// HTMLMatrix returns the report's figures and matrix as an HTML fragment.
func (r *Report) HTMLMatrix() (template.HTML, error) {
	var b bytes.Buffer
	if err := Templates.ExecuteTemplate(&b, "matrix", r); err != nil {
		return "", fmt.Errorf("report: render html: %w", err)
	}
	return template.HTML(b.String()), nil
}
