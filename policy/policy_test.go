package policy

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tvd-dev/tvd"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden compares got with testdata/golden/name, or rewrites it with -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./policy -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the output (run go test ./policy -update after checking):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var posRE = regexp.MustCompile(`^testdata/errors/[a-z0-9-]+\.yaml:\d+:\d+: \S`)

// TestMalformed checks that each malformed policy is refused with the golden
// errors, each naming file, line and column.
func TestMalformed(t *testing.T) {
	files, err := filepath.Glob("testdata/errors/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 20 {
		t.Fatalf("only %d malformed policies in testdata/errors; want at least 20", len(files))
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			_, err := LoadAndCompile(f)
			var pe Errors
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want policy Errors", err)
			}
			for _, e := range pe {
				if !posRE.MatchString(e.Error()) {
					t.Errorf("error without file:line:col: %q", e)
				}
			}
			golden(t, strings.TrimSuffix(f, ".yaml")+".golden", []byte(err.Error()+"\n"))
		})
	}
}

// TestCompiledGolden pins the compiled form of both examples.
func TestCompiledGolden(t *testing.T) {
	for _, ex := range []string{"outsourcing", "payroll"} {
		t.Run(ex, func(t *testing.T) {
			c, err := LoadAndCompile(filepath.Join("..", "examples", ex))
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.MarshalIndent(c, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", "golden", ex+".json"), append(b, '\n'))
		})
	}
}

// TestTable3 reproduces all twelve cells of the paper's Table 3 from
// examples/outsourcing through Query, as `tvd policy query` prints them.
func TestTable3(t *testing.T) {
	c, err := LoadAndCompile("../examples/outsourcing")
	if err != nil {
		t.Fatal(err)
	}
	// For each originating (domain, role) and destination zone: the rule,
	// and a destination role with the direct answer expected there.
	cells := []struct {
		from, zone, rule string
		to               string
		direct           string
		via              []string
	}{
		{"yellow/domain-controller", "yellow", "unrestricted", "yellow/management-console", "allow", nil},
		{"yellow/domain-controller", "red", "none", "red/gateway", "deny", nil},
		{"yellow/gateway", "yellow", "unrestricted", "yellow/domain-controller", "allow", nil},
		{"yellow/gateway", "red", "point-to-point", "red/gateway", "allow", nil},
		{"yellow/management-console", "yellow", "unrestricted", "yellow/gateway", "allow", nil},
		{"yellow/management-console", "red", "via-gateway", "red/client-os", "deny", []string{"yellow/gateway", "red/gateway"}},
		{"red/domain-controller", "yellow", "via-gateway", "yellow/management-console", "deny", []string{"red/gateway", "yellow/gateway"}},
		{"red/domain-controller", "red", "unrestricted", "red/client-os", "allow", nil},
		{"red/gateway", "yellow", "point-to-point", "yellow/gateway", "allow", nil},
		{"red/gateway", "red", "unrestricted", "red/domain-controller", "allow", nil},
		{"red/client-os", "yellow", "none", "yellow/management-console", "deny", nil},
		{"red/client-os", "red", "unrestricted", "red/gateway", "allow", nil},
	}
	for _, cell := range cells {
		q, err := c.Query(cell.from, cell.to)
		if err != nil {
			t.Fatal(err)
		}
		if q.Rule != cell.rule || q.Direct != cell.direct || !slices.Equal(q.Via, cell.via) && len(q.Via)+len(cell.via) > 0 {
			t.Errorf("%s -> %s: got %+v, want rule %s direct %s via %v", cell.from, cell.to, q, cell.rule, cell.direct, cell.via)
		}
		// Every role of the destination zone gets the same rule, and
		// direct is deny for every none and via-gateway cell.
		dp, _ := c.Domain(cell.zone)
		for _, r := range dp.Roles {
			q, err := c.Query(cell.from, cell.zone+"/"+r.Name)
			if err != nil {
				t.Fatal(err)
			}
			if q.Rule != cell.rule {
				t.Errorf("%s -> %s/%s: rule %s, want %s", cell.from, cell.zone, r.Name, q.Rule, cell.rule)
			}
			if (cell.rule == "none" || cell.rule == "via-gateway") && q.Direct != "deny" {
				t.Errorf("%s -> %s/%s: direct %s for a %s cell", cell.from, cell.zone, r.Name, q.Direct, cell.rule)
			}
		}
	}
}

// TestExamplesPassTheirTests runs the examples' own Tests documents.
func TestExamplesPassTheirTests(t *testing.T) {
	for _, ex := range []string{"outsourcing", "payroll"} {
		c, err := LoadAndCompile(filepath.Join("..", "examples", ex))
		if err != nil {
			t.Fatal(err)
		}
		res := c.RunTests()
		if len(res) < 10 {
			t.Errorf("%s: only %d tests", ex, len(res))
		}
		for _, r := range res {
			if !r.Pass {
				t.Errorf("%s: %s: %s failed: got %s", ex, r.Pos, r.Name, r.Got)
			}
		}
	}
}

// TestPolicyTestFailureIsReported makes sure a wrong expectation fails.
func TestPolicyTestFailureIsReported(t *testing.T) {
	src := readExample(t, "outsourcing")
	src = append(src, File{Name: "wrong.yaml", Content: []byte(`kind: Tests
name: wrong
tests:
  - name: red clients reach the console (they must not)
    from: red/client-os
    to: yellow/management-console
    expect: allow
`)})
	c, err := ParseAndCompile(src)
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, r := range c.RunTests() {
		if !r.Pass {
			failed++
			if r.Pos.File != "wrong.yaml" || !strings.Contains(r.Got, "deny") {
				t.Errorf("unexpected failure %+v", r)
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d failures, want 1", failed)
	}
}

func readExample(t testing.TB, name string) []File {
	t.Helper()
	dir := filepath.Join("..", "examples", name)
	names, err := sourceFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []File
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, File{Name: filepath.Base(n), Content: b})
	}
	return out
}

// TestDeterministic compiles the same sources in another order and expects
// the same version.
func TestDeterministic(t *testing.T) {
	src := readExample(t, "payroll")
	a, err := ParseAndCompile(src)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(src)
	b, err := ParseAndCompile(src)
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != b.Version {
		t.Errorf("versions differ with file order: %s vs %s", a.Version, b.Version)
	}
	if !strings.HasPrefix(a.Version, "sha256:") || len(a.Version) != 71 {
		t.Errorf("version %q", a.Version)
	}
}

func TestAdmit(t *testing.T) {
	c, err := LoadAndCompile("../examples/payroll")
	if err != nil {
		t.Fatal(err)
	}
	d, _ := c.Domain("paychecks4tmart")
	ok := Candidate{Role: "store-manager", Assurance: tvd.AssuranceTPM, Isolation: "strong", Claims: map[string]any{"node.tmart_regulations": true}}
	if a := d.Admit(ok); !a.Admit {
		t.Errorf("refused: %v", a.Reasons)
	}
	bad := Candidate{Role: "cashier", Assurance: tvd.AssuranceImplicit, Isolation: "weak", Claims: map[string]any{"node.tmart_regulations": "yes"}}
	a := d.Admit(bad)
	if a.Admit || len(a.Reasons) != 4 {
		t.Errorf("got %+v; want 4 reasons (role, assurance, isolation, claim)", a)
	}
	y, _ := LoadAndCompile("../examples/outsourcing")
	dc, _ := y.Domain("yellow")
	full := Candidate{Role: "domain-controller", Assurance: tvd.AssuranceTPM, Isolation: "strong", InRole: 1}
	if a := dc.Admit(full); a.Admit || !strings.Contains(a.Reasons[0], "full") {
		t.Errorf("second yellow controller: %+v", a)
	}
}

func TestEvalRequirements(t *testing.T) {
	c, err := LoadAndCompile("../examples/payroll")
	if err != nil {
		t.Fatal(err)
	}
	d, _ := c.Domain("paychecks4tmart")
	byID := func(rs []RequirementResult) map[string]RequirementResult {
		m := map[string]RequirementResult{}
		for _, r := range rs {
			m[r.ID] = r
		}
		return m
	}
	claims := map[string]any{
		"ee.role": "payroll-calculation", "ee.protected_disk_gb": int64(500),
		"node.contractor_agreement": false, "node.tmart_regulations": true,
	}
	got := byID(d.EvalRequirements(claims))
	for id, want := range map[string]tvd.Status{"protected-storage": tvd.StatusVerified, "contractors-bound": tvd.StatusVerified, "regulations": tvd.StatusVerified} {
		if got[id].Status != want {
			t.Errorf("%s: %v (%s), want %v", id, got[id].Status, got[id].Detail, want)
		}
	}
	claims["ee.protected_disk_gb"] = int64(100)
	if r := byID(d.EvalRequirements(claims))["protected-storage"]; r.Status != tvd.StatusViolated {
		t.Errorf("100 GB: %v", r.Status)
	}
	delete(claims, "node.tmart_regulations")
	if r := byID(d.EvalRequirements(claims))["regulations"]; r.Status != tvd.StatusUnknown || r.Detail == "" {
		t.Errorf("missing claim: %+v; want unknown with a reason", r)
	}
	est := c.Establish([]string{"tmart-approved"})
	if est["node.tmart_regulations"] != true {
		t.Errorf("mapping did not establish the regulations claim: %v", est)
	}
	if len(c.Establish([]string{"bank-approved"})) != 0 {
		t.Error("bank-approved established a claim")
	}
}

func TestMeasure(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "app"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "data"), []byte("not executable"), 0o644)
	os.Symlink("app", filepath.Join(dir, "bin", "link"))
	out, n, err := Measure(dir, "apps")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("measured %d files, want 1", n)
	}
	p, err := Parse([]File{{Name: "m.yaml", Content: out}})
	if err != nil {
		t.Fatalf("measure output does not parse: %v\n%s", err, out)
	}
	rv := p.ReferenceValues[0]
	if rv.Name.Value != "apps" || len(rv.Entries) != 1 || rv.Entries[0].Name != "/bin/app" {
		t.Errorf("got %+v", rv)
	}
	if _, _, err := Measure(dir, "Bad Name"); err == nil {
		t.Error("bad set name accepted")
	}
	if _, _, err := Measure(t.TempDir(), "x"); err == nil {
		t.Error("empty directory accepted")
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load(); err == nil {
		t.Error("no paths accepted")
	}
	if _, err := Load("testdata/does-not-exist"); err == nil || !strings.Contains(err.Error(), "does-not-exist") {
		t.Errorf("missing path: %v", err)
	}
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no *.yaml") {
		t.Errorf("empty dir: %v", err)
	}
	big := bytes.Repeat([]byte("# x\n"), MaxFileSize/4+1)
	if _, err := Parse([]File{{Name: "big.yaml", Content: big}}); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("oversized file: %v", err)
	}
}

func TestSPIFFERoundTrip(t *testing.T) {
	m := tvd.Member{Domain: "yellow", Role: "gateway", EE: "gw-1"}
	td, got, err := tvd.ParseSPIFFEID(m.SPIFFEID("lab.tvd"))
	if err != nil || td != "lab.tvd" || got != m {
		t.Errorf("got %v %v %v", td, got, err)
	}
}

// TestReferenceValuesAllow checks that a listed digest is allowed in the
// domains that list its set, and nothing else is.
func TestReferenceValuesAllow(t *testing.T) {
	c, err := LoadAndCompile("../examples/outsourcing")
	if err != nil {
		t.Fatal(err)
	}
	var busybox, other [32]byte
	b, _ := hex.DecodeString("3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6")
	copy(busybox[:], b)
	other[0] = 1
	for _, d := range []string{"red", "yellow"} {
		dp, _ := c.Domain(d)
		if name, ok := dp.Allowed(busybox); !ok || !strings.HasSuffix(name, "/bin/busybox") {
			t.Errorf("%s: busybox not allowed (%q)", d, name)
		}
		if _, ok := dp.Allowed(other); ok {
			t.Errorf("%s: an unlisted digest is allowed", d)
		}
	}
}
