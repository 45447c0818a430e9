package report

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// testCase is one testdata/*.json input: a snapshot, and whether to attach
// a checkpoint signed with a fixed test key (and then damage it).
type testCase struct {
	SignAudit   bool     `json:"signAudit"`
	TamperAudit bool     `json:"tamperAudit"`
	Snapshot    Snapshot `json:"snapshot"`
}

func testPolicy(t testing.TB) *policy.Compiled {
	t.Helper()
	comp, err := policy.LoadAndCompile(filepath.Join("testdata", "policy"))
	if err != nil {
		t.Fatal(err)
	}
	return comp
}

// testAudit signs a checkpoint of a 42-entry log with a key from a fixed
// seed, so the golden output is stable.
func testAudit(t testing.TB, tamper bool) *AuditState {
	t.Helper()
	sk, vk, err := audit.KeyFromSeed("tvd.local/audit", bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	s, err := audit.NewSigner(sk)
	if err != nil {
		t.Fatal(err)
	}
	root := sha256.Sum256([]byte("root"))
	signed, err := audit.SignCheckpoint(audit.Checkpoint{Origin: "tvd.local/audit", Size: 42, Hash: root[:]}, s)
	if err != nil {
		t.Fatal(err)
	}
	if tamper {
		signed = bytes.Replace(signed, []byte("\n42\n"), []byte("\n43\n"), 1)
	}
	return &AuditState{Checkpoint: signed, VerifierKey: vk}
}

func loadCase(t testing.TB, path string) *Snapshot {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var tc testCase
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if tc.SignAudit {
		tc.Snapshot.Audit = testAudit(t, tc.TamperAudit)
	}
	return &tc.Snapshot
}

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
		t.Fatalf("%v (run go test ./report -update to create it)", err)
	}
	if bytes.Equal(got, want) {
		return
	}
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			t.Errorf("%s differs from the output at line %d (run go test ./report -update and review the diff):\n got: %s\nwant: %s", path, i+1, gl, wl)
			return
		}
	}
}

// TestGolden renders every testdata case as table, JSON and HTML and
// compares with the golden files.
func TestGolden(t *testing.T) {
	comp := testPolicy(t)
	inputs, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, in := range inputs {
		if strings.HasSuffix(in, ".golden.json") {
			continue
		}
		n++
		base := strings.TrimSuffix(in, ".json")
		t.Run(filepath.Base(base), func(t *testing.T) {
			r, err := Build(comp, loadCase(t, in))
			if err != nil {
				t.Fatal(err)
			}
			if r.PolicyDigest != comp.Version {
				t.Errorf("policy digest %q, want %q", r.PolicyDigest, comp.Version)
			}
			// The digest changes with the compiler's output; the goldens
			// are about the report.
			r.PolicyDigest = "sha256:(digest of testdata/policy)"
			var tb, jb, hb bytes.Buffer
			if err := r.WriteTable(&tb); err != nil {
				t.Fatal(err)
			}
			if err := r.WriteJSON(&jb); err != nil {
				t.Fatal(err)
			}
			if err := r.WriteHTML(&hb); err != nil {
				t.Fatal(err)
			}
			golden(t, base+".golden.txt", tb.Bytes())
			golden(t, base+".golden.json", jb.Bytes())
			golden(t, base+".golden.html", hb.Bytes())
			// The JSON reads back to the same report.
			back, err := ParseJSON(jb.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			var again bytes.Buffer
			if err := back.WriteJSON(&again); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Bytes(), jb.Bytes()) {
				t.Error("the JSON does not read back to the same report")
			}
		})
	}
	if n < 3 {
		t.Fatalf("found %d test cases in testdata, want at least 3", n)
	}
}

// cellOf finds one cell by statement and EE.
func cellOf(t *testing.T, r *Report, statement, ee string) Cell {
	t.Helper()
	for i, st := range r.Statements {
		if st.ID != statement {
			continue
		}
		for j, m := range r.Members {
			if m.EE == ee {
				return r.Cells[i][j]
			}
		}
	}
	t.Fatalf("no cell %s × %s", statement, ee)
	return Cell{}
}

// TestDecisions checks the verifiers' decisions on the mixed case one by
// one, so that a golden update cannot silently change their meaning.
func TestDecisions(t *testing.T) {
	r, err := Build(testPolicy(t), loadCase(t, filepath.Join("testdata", "yellow-mixed.json")))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		statement, ee string
		want          Status
		reason        string
	}{
		{"owned-by-igs", "yellow-dc", StatusVerified, "required owner"},
		{"owned-by-igs", "yellow-mc1", StatusViolated, "someone-else"},
		{"zone-separation", "yellow-dc", StatusVerified, "current flow matrix"},
		{"zone-separation", "yellow-mc1", StatusUnknown, "not the current"},
		{"zone-separation", "yellow-mc2", StatusViolated, "reports an error"},
		{"console-access", "yellow-dc", StatusVerified, "unexpired certificate"},
		{"console-access", "yellow-mc1", StatusViolated, "expired"},
		{"console-access", "yellow-mc2", StatusUnknown, "no certificate"},
		{"encrypted-channel", "yellow-dc", StatusVerified, "overlay up"},
		{"encrypted-channel", "yellow-mc1", StatusUnknown, "does not report"},
		{"encrypted-channel", "yellow-mc2", StatusViolated, "failed"},
		{"operators-authenticated", "yellow-mc1", StatusVerified, "by construction"},
		{"audited", "yellow-mc2", StatusVerified, "signed by the log key"},
		{"approved-software-only", "yellow-dc", StatusVerified, "quote appraised"},
		{"approved-software-only", "yellow-gw", StatusUnknown, "no appraised TPM quote"},
		{"approved-software-only", "yellow-mc1", StatusViolated, "violated"},
		{"trusted-certifiers", "yellow-dc", StatusVerified, "listed issuer"},
		{"trusted-certifiers", "yellow-gw", StatusUnknown, "own declaration"},
		{"itcs104-certified", "yellow-dc", StatusVerified, "itcs104"},
		{"itcs104-certified", "yellow-mc1", StatusViolated, "false"},
		{"itcs104-certified", "yellow-mc2", StatusUnknown, "not declared"},
	}
	for _, c := range cases {
		got := cellOf(t, r, c.statement, c.ee)
		if got.Status != c.want || !strings.Contains(got.Evidence.Reason, c.reason) {
			t.Errorf("%s × %s = %s (%s); want %s with %q", c.statement, c.ee, got.Status, got.Evidence.Reason, c.want, c.reason)
		}
	}
	if r.Summary.Weakest != "yellow-mc1" {
		t.Errorf("weakest = %q, want yellow-mc1", r.Summary.Weakest)
	}
	if len(r.Summary.PastDeadline) != 1 || r.Summary.PastDeadline[0] != "yellow-mc1" {
		t.Errorf("past deadline = %v, want [yellow-mc1]", r.Summary.PastDeadline)
	}
	if got := r.Summary.Verified + r.Summary.Violated + r.Summary.Unknown; got != len(r.Statements)*len(r.Members) || got != r.Summary.Cells {
		t.Errorf("cells %d, want %d", got, len(r.Statements)*len(r.Members))
	}
	if len(r.Summary.PolicyVersions) != 2 || r.Summary.PolicyVersions[0].Version != 3 || !r.Summary.PolicyVersions[0].Current || r.Summary.PolicyVersions[1].Members != 1 {
		t.Errorf("policy versions = %+v", r.Summary.PolicyVersions)
	}
	if len(r.NotEstablished) < 5 {
		t.Errorf("not-established list has %d items", len(r.NotEstablished))
	}
}

// TestAuditTampered checks that a checkpoint altered after signing makes
// the audit-log statement violated.
func TestAuditTampered(t *testing.T) {
	r, err := Build(testPolicy(t), loadCase(t, filepath.Join("testdata", "red-tampered-audit.json")))
	if err != nil {
		t.Fatal(err)
	}
	if c := cellOf(t, r, "audited", "red-client1"); c.Status != StatusViolated {
		t.Errorf("tampered checkpoint: %s (%s), want violated", c.Status, c.Evidence.Reason)
	}
}

// TestFreshnessMovesWithTime checks that the same snapshot read later
// loses its verified cells to the deadline.
func TestFreshnessMovesWithTime(t *testing.T) {
	comp := testPolicy(t)
	snap := loadCase(t, filepath.Join("testdata", "yellow-mixed.json"))
	r1, err := Build(comp, snap)
	if err != nil {
		t.Fatal(err)
	}
	snap.Now = snap.Now.Add(time.Minute)
	r2, err := Build(comp, snap)
	if err != nil {
		t.Fatal(err)
	}
	if c := cellOf(t, r2, "zone-separation", "yellow-dc"); c.Status != StatusUnknown {
		t.Errorf("a minute later, zone-separation × yellow-dc = %s, want unknown", c.Status)
	}
	if r2.Summary.Verified >= r1.Summary.Verified || len(r2.Summary.PastDeadline) != 4 {
		t.Errorf("a minute later: verified %d (was %d), past deadline %v", r2.Summary.Verified, r1.Summary.Verified, r2.Summary.PastDeadline)
	}
}

func TestErrors(t *testing.T) {
	if _, err := Build(nil, &Snapshot{Domain: "red"}); err == nil {
		t.Error("Build without a policy succeeded")
	}
	if _, err := Build(testPolicy(t), &Snapshot{Domain: "green"}); err == nil || !strings.Contains(err.Error(), `"green"`) {
		t.Errorf("Build for an unknown domain: %v", err)
	}
	if _, err := ParseJSON([]byte(`{"statements":[{"id":"a"}],"cells":[]}`)); err == nil {
		t.Error("ParseJSON accepted a report whose cells do not match its statements")
	}
	var s Status
	if err := s.UnmarshalText([]byte("fine")); err == nil {
		t.Error("Status accepted \"fine\"")
	}
}

func TestMentions(t *testing.T) {
	for _, c := range []struct {
		expr, name string
		want       bool
	}{
		{"node.itcs104", "node.itcs104", true},
		{"node.itcs104 && x", "node.itcs104", true},
		{"!node.itcs104", "node.itcs104", true},
		{"node.itcs1045", "node.itcs104", false},
		{"my.node.itcs104", "node.itcs104", false},
		{"a || node.itcs104x || node.itcs104", "node.itcs104", true},
	} {
		if got := mentions(c.expr, c.name); got != c.want {
			t.Errorf("mentions(%q, %q) = %v", c.expr, c.name, got)
		}
	}
}
