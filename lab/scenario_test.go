package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/policy"
)

func TestExampleScenarios(t *testing.T) {
	for _, name := range []string{"outsourcing", "payroll"} {
		t.Run(name, func(t *testing.T) {
			s, err := LoadScenario(filepath.Join("..", "examples", name, "scenario.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			files, err := s.PolicyFiles()
			if err != nil {
				t.Fatal(err)
			}
			if s.EEIsolation != "strong" {
				t.Errorf("the example runs its EEs with %q isolation; want strong (containers)", s.EEIsolation)
			}
			// The lab applies the policy unchanged when EEs are containers;
			// with weak EEs it would lower every strong requirement.
			if same, changes, err := RelaxIsolation(files, "strong"); err != nil || len(changes) != 0 || len(same) != len(files) {
				t.Errorf("strong EEs: %d changes, %v", len(changes), err)
			}
			relaxed, changes, err := RelaxIsolation(files, "weak")
			if err != nil {
				t.Fatal(err)
			}
			comp, err := policy.ParseAndCompile(relaxed)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.CheckPolicy(comp); err != nil {
				t.Fatal(err)
			}
			for _, d := range comp.Domains {
				if d.Isolation == "strong" {
					t.Errorf("domain %s still asks for strong isolation after relaxing", d.Name)
				}
			}
			orig, err := policy.ParseAndCompile(files)
			if err != nil {
				t.Fatal(err)
			}
			strong := 0
			for _, d := range orig.Domains {
				if d.Isolation == "strong" {
					strong++
				}
			}
			if len(changes) != strong || strong == 0 {
				t.Errorf("%d relaxations for %d strong domains", len(changes), strong)
			}
			for _, n := range s.Nodes {
				nc := n.NodeConfig()
				if nc.Node != n.Name || len(nc.EEs) != len(n.EEs) {
					t.Fatalf("node config %+v", nc)
				}
			}
		})
	}
	s, err := LoadScenario(filepath.Join("..", "examples", "outsourcing", "scenario.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// Figure 4: the management machine hosts both controllers and
	// gateways; every PC a yellow console and a red client.
	if n, _, _ := s.FindEE("red-gw"); n == nil || n.Name != "mgmt" {
		t.Errorf("red-gw on %v", n)
	}
	pcs := 0
	for _, n := range s.Nodes {
		roles := map[string]bool{}
		for _, e := range n.EEs {
			roles[e.Domain+"/"+e.Role] = true
		}
		if roles["yellow/management-console"] && roles["red/client-os"] {
			pcs++
		}
	}
	if pcs < 2 {
		t.Errorf("%d client PCs with a console and a client OS; want at least 2", pcs)
	}
}

// TestShopScenario: the shop's scenario declares its image, and bad image
// declarations are refused.
func TestShopScenario(t *testing.T) {
	s, err := LoadScenario(filepath.Join("..", "examples", "shop"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Images) != 1 || s.Images[0].Name != "shop" || s.Images[0].ReferenceValues != "shop-image" {
		t.Errorf("images %+v", s.Images)
	}
	files, err := s.PolicyFiles()
	if err != nil {
		t.Fatal(err)
	}
	comp, err := policy.ParseAndCompile(files)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckPolicy(comp); err != nil {
		t.Fatal(err)
	}
	base := "kind: Scenario\nname: x\nnodes: [{name: a, ees: [{name: e, image: shop, domain: d, role: r}]}]\n"
	for _, tc := range []struct{ images, want string }{
		{"images: [{name: busybox, build: .}]\n", "not busybox"},
		{"images: [{name: shop}]\n", "build: want the directory"},
		{"images: [{name: shop, build: ., referenceValues: Bad_Name}]\n", "referenceValues"},
		{"images: [{name: shop, build: .}, {name: shop, build: x}]\n", "listed twice"},
	} {
		_, err := ParseScenario("s.yaml", []byte(base+tc.images))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.images, err, tc.want)
		}
	}
}

// TestRelaxKeepsLayout checks that relaxing edits only the isolation
// scalar: block and flow style, comments kept.
func TestRelaxKeepsLayout(t *testing.T) {
	src := "# a comment\nkind: Domain\nname: a\nmembership:\n  minAssurance: tpm\n  isolation: strong   # keep me\n---\nkind: Domain\nname: b\nmembership: {minAssurance: tpm, isolation: strong}\n---\nkind: Domain\nname: c\nmembership: {isolation: weak}\n"
	out, changes, err := RelaxIsolation([]policy.File{{Name: "p.yaml", Content: []byte(src)}}, "weak")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(strings.Replace(src, "isolation: strong   # keep me", "isolation: weak   # keep me", 1), "isolation: strong}", "isolation: weak}", 1)
	if string(out[0].Content) != want {
		t.Errorf("relaxed:\n%s\nwant:\n%s", out[0].Content, want)
	}
	if len(changes) != 2 || changes[0].Domain != "a" || changes[0].Line != 6 || changes[1].Domain != "b" || changes[1].Line != 10 {
		t.Errorf("changes %+v", changes)
	}
	same, changes, err := RelaxIsolation([]policy.File{{Name: "p.yaml", Content: []byte(src)}}, "strong")
	if err != nil || len(changes) != 0 || string(same[0].Content) != src {
		t.Errorf("strong EEs changed the policy: %v %v", changes, err)
	}
}

// TestRelaxDefaults relaxes domains that ask for strong isolation by
// default: no isolation key (block and flow style), no membership at all.
func TestRelaxDefaults(t *testing.T) {
	src := "kind: Domain\nname: a\nmembership:\n  minAssurance: tpm\n---\nkind: Domain\nname: b\nmembership: {minAssurance: tpm}\n---\nkind: Domain\nname: c\nmembership: {}\n---\n# no membership\nkind: Domain\nname: d\n"
	out, changes, err := RelaxIsolation([]policy.File{{Name: "p.yaml", Content: []byte(src)}}, "weak")
	if err != nil {
		t.Fatal(err)
	}
	want := "kind: Domain\nname: a\nmembership:\n  isolation: weak\n  minAssurance: tpm\n---\nkind: Domain\nname: b\nmembership: {isolation: weak, minAssurance: tpm}\n---\nkind: Domain\nname: c\nmembership: {isolation: weak}\n---\n# no membership\nmembership: {isolation: weak}\nkind: Domain\nname: d\n"
	if string(out[0].Content) != want {
		t.Errorf("relaxed:\n%s\nwant:\n%s", out[0].Content, want)
	}
	if len(changes) != 4 {
		t.Errorf("changes %+v", changes)
	}
	for _, c := range changes {
		if c.From != "strong (default)" {
			t.Errorf("change %v", c)
		}
	}
}

func TestScenarioErrors(t *testing.T) {
	const ok = "kind: Scenario\nname: s\nnodes:\n  - name: n1\n    ees:\n      - {name: e1, image: busybox, domain: d, role: r}\n"
	for _, c := range []struct{ name, src, want string }{
		{"empty", "", "empty; want a Scenario document"},
		{"kind", strings.Replace(ok, "Scenario", "Domain", 1), `kind "Domain": want kind: Scenario`},
		{"unknown field", ok + "extra: 1\n", "line 7: unknown field extra"},
		{"wrong type", "kind: Scenario\nname: s\nnodes: {a: b}\n", "line 3: got a mapping, want a list"},
		{"run type", strings.Replace(ok, "role: r}", "role: r, run: x}", 1), "got a string, want a list of strings"},
		{"no nodes", "kind: Scenario\nname: s\n", "no nodes"},
		{"bad node", strings.Replace(ok, "name: n1", "name: N_1", 1), `nodes[0]: name "N_1"`},
		{"reserved", strings.Replace(ok, "name: n1", "name: ul", 1), "reserved by the lab"},
		{"dup node", ok + "  - name: n1\n", `node "n1" listed twice`},
		{"dup ee", ok + "  - name: n2\n    ees:\n      - {name: e1, image: busybox, domain: d, role: r}\n", `EE "e1" is already on node n1`},
		{"no image", strings.Replace(ok, "image: busybox, ", "", 1), `image "": want an image name`},
		{"bad domain", strings.Replace(ok, "domain: d", "domain: D", 1), `domain "D"`},
		{"isolation", ok + "eeIsolation: medium\n", `eeIsolation "medium": want weak or strong`},
		{"claim", strings.Replace(ok, "role: r}", "role: r, claims: {foo: x}}", 1), `claim "foo": want a name starting with ee. or node.`},
		{"run", strings.Replace(ok, "role: r}", "role: r, run: [\"\"]}", 1), "run[0]: empty"},
		{"admin role", ok + "admins: [{name: a, role: king}]\n", `role "king": want admin, domain-admin:DOMAIN or auditor:DOMAIN`},
		{"admin name", ok + "admins: [{name: admin, role: admin}]\n", "is taken"},
		{"two docs", ok + "---\nkind: Scenario\n", "more than one YAML document"},
		{"policy type", ok + "policy: {a: b}\n", "want a path or a list of paths"},
		{"not yaml", "kind: [", "s.yaml: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseScenario("s.yaml", []byte(c.src))
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "s.yaml: ") {
				t.Errorf("error %v; want one naming s.yaml and containing %q", err, c.want)
			}
		})
	}
	if _, err := ParseScenario("s.yaml", []byte(ok)); err != nil {
		t.Fatalf("good scenario: %v", err)
	}
}

func TestCheckPolicy(t *testing.T) {
	comp, err := policy.LoadAndCompile(filepath.Join("..", "examples", "outsourcing"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ ee, want string }{
		{"{name: e1, image: busybox, domain: blue, role: r}", `domain "blue" is not in the policy (it has: red, yellow)`},
		{"{name: e1, image: busybox, domain: red, role: king}", `domain red has no role "king"`},
		{"{name: e1, image: busybox, domain: red, role: client-os, claims: {node.nope: x}}", `claim "node.nope" is not declared`},
		{"{name: e1, image: busybox, domain: red, role: domain-controller}\n      - {name: e2, image: busybox, domain: red, role: domain-controller}", "allows at most 1 members"},
	} {
		s, err := ParseScenario("s.yaml", []byte("kind: Scenario\nname: s\nnodes:\n  - name: n1\n    ees:\n      - "+c.ee+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		s.Path = "s.yaml"
		if err := s.CheckPolicy(comp); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", c.ee, err, c.want)
		}
	}
}

// TestPolicyFilesSkipsScenario puts the scenario beside the policy (the
// layout once the policy loader ignores kind Scenario): the scenario file
// is not a policy file.
func TestPolicyFilesSkipsScenario(t *testing.T) {
	dir := t.TempDir()
	src, err := filepath.Glob(filepath.Join("..", "examples", "outsourcing", "*.yaml"))
	if err != nil || len(src) == 0 {
		t.Fatal(err)
	}
	for _, f := range src {
		b, _ := os.ReadFile(f)
		os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600)
	}
	b, _ := os.ReadFile(filepath.Join("..", "examples", "outsourcing", "scenario.yaml"))
	os.WriteFile(filepath.Join(dir, ScenarioFile), []byte(strings.Replace(string(b), "policy: ../outsourcing\n", "", 1)), 0o600)
	s, err := LoadScenario(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := s.PolicyFiles()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(src)-1 {
		t.Fatalf("%d policy files, want %d (all but the scenario)", len(files), len(src)-1)
	}
	if _, err := policy.ParseAndCompile(files); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseScenario(f *testing.F) {
	for _, p := range []string{"outsourcing", "payroll"} {
		b, err := os.ReadFile(filepath.Join("..", "examples", p, "scenario.yaml"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("kind: Scenario\nname: s\nnodes: [{name: n, ees: [{name: e, image: i, domain: d, role: r}]}]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseScenario("fuzz.yaml", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml: ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		// An accepted scenario yields node configurations the agent
		// accepts, and its EE names are unique.
		seen := map[string]bool{}
		for _, n := range s.Nodes {
			if _, err := agent.ParseNodeConfig("node.yaml", mustYAML(t, n.NodeConfig())); err != nil {
				t.Fatalf("node %s: agent refuses its configuration: %v", n.Name, err)
			}
			for _, e := range n.EEs {
				if seen[e.Name] {
					t.Fatalf("EE %s twice", e.Name)
				}
				seen[e.Name] = true
			}
		}
		if s.EECount() != len(seen) {
			t.Fatalf("EECount %d, %d EEs", s.EECount(), len(seen))
		}
	})
}

func mustYAML(t *testing.T, v any) []byte {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzRelaxIsolation: relaxing never panics, and a policy that compiled
// still compiles afterwards, with no domain asking for strong isolation.
func FuzzRelaxIsolation(f *testing.F) {
	ex, _ := filepath.Glob(filepath.Join("..", "examples", "*", "*.yaml"))
	for _, p := range ex {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("kind: Domain\nname: b\nmembership: {minAssurance: tpm}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := []policy.File{{Name: "p.yaml", Content: b}}
		out, _, err := RelaxIsolation(in, "weak")
		if err != nil {
			return
		}
		if _, err := policy.ParseAndCompile(in); err != nil {
			return
		}
		comp, err := policy.ParseAndCompile(out)
		if err != nil {
			t.Fatalf("relaxed policy no longer compiles: %v\n%s", err, out[0].Content)
		}
		for _, d := range comp.Domains {
			if d.Isolation == "strong" {
				t.Fatalf("domain %s still strong:\n%s", d.Name, out[0].Content)
			}
		}
	})
}

// TestExpectTable3 lists what `tvd lab check` will test for case study 1,
// and spot-checks it against the paper's Table 3.
func TestExpectTable3(t *testing.T) {
	s, err := LoadScenario(filepath.Join("..", "examples", "outsourcing", "scenario.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := s.PolicyFiles()
	if err != nil {
		t.Fatal(err)
	}
	comp, err := policy.ParseAndCompile(files)
	if err != nil {
		t.Fatal(err)
	}
	st := &State{}
	for _, n := range s.Nodes {
		ns := NodeState{Name: n.Name}
		for _, e := range n.EEs {
			ns.EEs = append(ns.EEs, EEState{Name: e.Name, Domain: e.Domain, Role: e.Role})
		}
		st.Nodes = append(st.Nodes, ns)
	}
	pairs, err := Expect(comp, st)
	if err != nil {
		t.Fatal(err)
	}
	if len(pairs) != 8*7 {
		t.Fatalf("%d pairs, want 56", len(pairs))
	}
	find := func(from, to string) Pair {
		for _, p := range pairs {
			if p.From == from && p.To == to {
				return p
			}
		}
		t.Fatalf("no pair %s -> %s", from, to)
		return Pair{}
	}
	for _, c := range []struct {
		from, to, rule string
		allow          bool
		via            string
	}{
		{"red-client1", "yellow-mc1", "none", false, ""},
		{"yellow-gw", "red-gw", "point-to-point", true, ""},
		{"yellow-mc1", "red-client2", "via-gateway", false, "yellow/gateway,red/gateway"},
		{"red-client1", "red-client2", "unrestricted", true, ""},
		{"red-gw", "yellow-mc2", "point-to-point", false, "yellow/gateway"},
	} {
		p := find(c.from, c.to)
		if p.Rule != c.rule || p.Allow != c.allow || strings.Join(p.Via, ",") != c.via {
			t.Errorf("%s -> %s: %+v; want rule %s allow %v via %q", c.from, c.to, p, c.rule, c.allow, c.via)
		}
	}
}
