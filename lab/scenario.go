package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/policy"
)

// ScenarioKind is the kind field of a scenario document.
const ScenarioKind = "Scenario"

// ScenarioFile is the file name `tvd lab up DIR` looks for in DIR.
const ScenarioFile = "scenario.yaml"

// maxScenarioSize bounds a scenario file.
const maxScenarioSize = 1 << 20

// maxNodes bounds the nodes of one lab: each takes an address of the
// underlay's /24 (see Addresses).
const maxNodes = 200

// Scenario is a lab deployment: the policy to apply, the nodes, the EEs
// each node hosts and the administrators to issue credentials for.
//
//	kind: Scenario
//	name: outsourcing
//	policy: ../outsourcing      # policy files or directory, relative to this file
//	eeIsolation: weak           # what the lab's EEs provide (see EEIsolation)
//	nodes:
//	  - name: pc1
//	    ees:
//	      - {name: red-client1, image: busybox, domain: red, role: client-os,
//	         owner: outsourcing-customer, run: [sleep, infinity]}
//	admins:
//	  - {name: tmart-cio, role: "auditor:paychecks4tmart"}
type Scenario struct {
	Kind        string `yaml:"kind"`
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// Policy is the policy's files or directories, relative to the
	// scenario file. Default: the scenario file's directory (the scenario
	// file itself is then left out).
	Policy Paths `yaml:"policy"`
	// EEIsolation is the isolation the lab's EEs get: "strong" runs them
	// as containers of the linux driver (namespaces, overlayfs, cgroups,
	// every exec measured into the node's TPM); "weak" leaves them
	// declarations without a driver, and the lab applies a copy of the
	// policy whose "isolation: strong" requirements are lowered to weak,
	// and says so. Default: weak.
	EEIsolation string `yaml:"eeIsolation"`
	// Images are built by the lab before its nodes start (see Image);
	// EEs name them in image.
	Images []Image `yaml:"images"`
	Nodes  []Node  `yaml:"nodes"`
	Admins []Admin `yaml:"admins"`

	// Path is the file the scenario was read from.
	Path string `yaml:"-"`
}

// Node is one machine of the lab: a network namespace with its own swtpm
// and agent.
type Node struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	EEs         []EE   `yaml:"ees"`
}

// EE is one execution environment a node hosts and the domain it asks to
// join.
type EE struct {
	Name   string `yaml:"name"`
	Image  string `yaml:"image"`
	Domain string `yaml:"domain"`
	Role   string `yaml:"role"`
	Owner  string `yaml:"owner"`
	// Run is the workload command, run inside the EE once EEs are
	// containers.
	Run []string `yaml:"run"`
	// Claims are the EE's declared claims, typed by the policy.
	Claims map[string]string `yaml:"claims"`
}

// Admin is an administrator credential the lab issues after the policy is
// applied, into LABDIR/creds/NAME.
type Admin struct {
	Name string `yaml:"name"`
	Role string `yaml:"role"` // admin, domain-admin:DOMAIN or auditor:DOMAIN
}

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	imageRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$`)
)

// reservedNodes are names the lab uses for its own namespaces.
var reservedNodes = []string{"ul", "ctl", "host", "br"}

// LoadScenario reads a scenario: path is a scenario file, or a directory
// holding scenario.yaml.
func LoadScenario(path string) (*Scenario, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, ScenarioFile)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxScenarioSize+1))
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	s, err := ParseScenario(path, b)
	if err != nil {
		return nil, err
	}
	s.Path = path
	return s, nil
}

// ParseScenario parses and checks a scenario; name is the file name used
// in errors. It checks the scenario on its own; CheckPolicy checks it
// against the policy.
func ParseScenario(name string, b []byte) (*Scenario, error) {
	if len(b) > maxScenarioSize {
		return nil, fmt.Errorf("%s: more than %d bytes", name, maxScenarioSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var s Scenario
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty; want a Scenario document with nodes", name)
		}
		return nil, fmt.Errorf("%s: %w", name, cleanYAMLError(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%s: more than one YAML document; a scenario is one document", name)
	} else if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", name, cleanYAMLError(err))
	}
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &s, nil
}

var (
	unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type \S+`)
	unmarshalRE    = regexp.MustCompile("cannot unmarshal !!(\\w+) (`[^`]*` )?into (\\S+)")
)

// cleanYAMLError words a decoder error for the author of the file.
func cleanYAMLError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
	msg = unknownFieldRE.ReplaceAllString(msg, "unknown field $1")
	msg = unmarshalRE.ReplaceAllStringFunc(msg, func(m string) string {
		sub := unmarshalRE.FindStringSubmatch(m)
		want := map[string]string{"string": "a string", "[]string": "a list of strings", "map[string]string": "a mapping of strings"}[sub[3]]
		if want == "" {
			want = "a " + strings.TrimPrefix(strings.TrimPrefix(sub[3], "[]lab."), "lab.")
			if strings.HasPrefix(sub[3], "[]") {
				want = "a list"
			} else if strings.HasPrefix(sub[3], "lab.") {
				want = "a mapping"
			}
		}
		return fmt.Sprintf("got a %s, want %s", map[string]string{"str": "string", "seq": "list", "map": "mapping", "int": "number", "bool": "boolean", "float": "number", "null": "null"}[sub[1]], want)
	})
	return errors.New(msg)
}

func (s *Scenario) check() error {
	if s.Kind != ScenarioKind {
		return fmt.Errorf("kind %q: want kind: %s", s.Kind, ScenarioKind)
	}
	if !nameRE.MatchString(s.Name) {
		return fmt.Errorf("name %q: want lower-case letters, digits and dashes", s.Name)
	}
	for i, p := range s.Policy {
		if strings.TrimSpace(p) == "" {
			return fmt.Errorf("policy[%d]: empty path; want a policy file or directory relative to the scenario", i)
		}
	}
	switch s.EEIsolation {
	case "":
		s.EEIsolation = "weak"
	case "weak", "strong":
	default:
		return fmt.Errorf("eeIsolation %q: want weak or strong", s.EEIsolation)
	}
	imgs := map[string]bool{}
	for i, im := range s.Images {
		if err := im.check(fmt.Sprintf("images[%d]", i)); err != nil {
			return err
		}
		if imgs[im.Name] {
			return fmt.Errorf("images[%d]: image %q listed twice", i, im.Name)
		}
		imgs[im.Name] = true
	}
	if len(s.Nodes) == 0 {
		return errors.New("no nodes; want a list of nodes, each with a name and its EEs")
	}
	if len(s.Nodes) > maxNodes {
		return fmt.Errorf("%d nodes; a lab holds at most %d", len(s.Nodes), maxNodes)
	}
	nodes := map[string]bool{}
	ees := map[string]string{}
	for i, n := range s.Nodes {
		where := fmt.Sprintf("nodes[%d]", i)
		if !nameRE.MatchString(n.Name) {
			return fmt.Errorf("%s: name %q: want lower-case letters, digits and dashes", where, n.Name)
		}
		if slices.Contains(reservedNodes, n.Name) {
			return fmt.Errorf("%s: node name %q is reserved by the lab (%s)", where, n.Name, strings.Join(reservedNodes, ", "))
		}
		if nodes[n.Name] {
			return fmt.Errorf("%s: node %q listed twice", where, n.Name)
		}
		nodes[n.Name] = true
		for j, e := range n.EEs {
			where := fmt.Sprintf("nodes[%d] (%s): ees[%d]", i, n.Name, j)
			for _, f := range []struct{ field, v string }{{"name", e.Name}, {"domain", e.Domain}, {"role", e.Role}} {
				if !nameRE.MatchString(f.v) {
					return fmt.Errorf("%s: %s %q: want lower-case letters, digits and dashes", where, f.field, f.v)
				}
			}
			if !imageRE.MatchString(e.Image) {
				return fmt.Errorf("%s (%s): image %q: want an image name such as busybox", where, e.Name, e.Image)
			}
			if e.Owner != "" && !nameRE.MatchString(strings.ReplaceAll(e.Owner, ".", "-")) {
				return fmt.Errorf("%s (%s): owner %q: want lower-case letters, digits, dots and dashes", where, e.Name, e.Owner)
			}
			if prev, dup := ees[e.Name]; dup {
				return fmt.Errorf("%s: EE %q is already on node %s; EE names are unique in a deployment", where, e.Name, prev)
			}
			ees[e.Name] = n.Name
			for k, arg := range e.Run {
				if arg == "" || strings.ContainsRune(arg, 0) {
					return fmt.Errorf("%s (%s): run[%d]: empty or NUL argument", where, e.Name, k)
				}
			}
			for k := range e.Claims {
				if !strings.HasPrefix(k, "ee.") && !strings.HasPrefix(k, "node.") {
					return fmt.Errorf("%s (%s): claim %q: want a name starting with ee. or node.", where, e.Name, k)
				}
			}
		}
	}
	admins := map[string]bool{}
	for i, a := range s.Admins {
		where := fmt.Sprintf("admins[%d]", i)
		if !nameRE.MatchString(a.Name) {
			return fmt.Errorf("%s: name %q: want lower-case letters, digits and dashes", where, a.Name)
		}
		if a.Name == "admin" || admins[a.Name] {
			return fmt.Errorf("%s: admin name %q is taken (admin is the controller's first credential)", where, a.Name)
		}
		admins[a.Name] = true
		if _, err := ca.ParseRole(a.Role); err != nil {
			return fmt.Errorf("%s (%s): role %q: want admin, domain-admin:DOMAIN or auditor:DOMAIN", where, a.Name, a.Role)
		}
	}
	return nil
}

// Paths is one path or a list of them.
type Paths []string

// UnmarshalYAML accepts a scalar or a sequence of scalars.
func (p *Paths) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*p = Paths{n.Value}
		return nil
	case yaml.SequenceNode:
		var out []string
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: policy: want a path or a list of paths", c.Line)
			}
			out = append(out, c.Value)
		}
		*p = out
		return nil
	}
	return fmt.Errorf("line %d: policy: want a path or a list of paths", n.Line)
}

// EECount returns the number of EEs in the scenario.
func (s *Scenario) EECount() int {
	n := 0
	for _, x := range s.Nodes {
		n += len(x.EEs)
	}
	return n
}

// FindEE returns the node hosting the EE named ee.
func (s *Scenario) FindEE(ee string) (*Node, *EE, bool) {
	for i := range s.Nodes {
		for j := range s.Nodes[i].EEs {
			if s.Nodes[i].EEs[j].Name == ee {
				return &s.Nodes[i], &s.Nodes[i].EEs[j], true
			}
		}
	}
	return nil, nil, false
}

// NodeConfig returns the agent's configuration for node n.
func (n *Node) NodeConfig() *agent.NodeConfig {
	nc := &agent.NodeConfig{Node: n.Name}
	for _, e := range n.EEs {
		img := e.Image
		if img == "busybox" {
			img = "" // the EE host's base image, built from Debian's busybox-static
		}
		nc.EEs = append(nc.EEs, agent.EEConfig{Name: e.Name, Image: img, Command: e.Run, Domain: e.Domain, Role: e.Role, Owner: e.Owner, Claims: e.Claims})
	}
	return nc
}

// PolicyFiles reads the scenario's policy sources: the files of its
// policy paths (*.yaml and *.yml, directories walked, dot-directories
// skipped), without the scenario file itself.
func (s *Scenario) PolicyFiles() ([]policy.File, error) {
	base := filepath.Dir(s.Path)
	paths := s.Policy
	if len(paths) == 0 {
		paths = []string{"."}
	}
	self, _ := filepath.Abs(s.Path)
	var names []string
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			p = filepath.Join(base, p)
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s: policy: %w", s.Path, err)
		}
		if !st.IsDir() {
			names = append(names, filepath.Clean(p))
			continue
		}
		err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && path != p && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
				names = append(names, filepath.Clean(path))
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%s: policy: %w", s.Path, err)
		}
	}
	sort.Strings(names)
	var files []policy.File
	seen := map[string]bool{}
	for _, n := range names {
		abs, _ := filepath.Abs(n)
		if abs == self || seen[abs] {
			continue
		}
		seen[abs] = true
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("%s: policy: %w", s.Path, err)
		}
		files = append(files, policy.File{Name: n, Content: b})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: policy %v: no *.yaml files", s.Path, paths)
	}
	return files, nil
}

// CheckPolicy checks the scenario against the compiled policy: every EE's
// domain and role exist, role limits hold, and every declared claim is
// declared by the policy.
func (s *Scenario) CheckPolicy(c *policy.Compiled) error {
	var domains []string
	for _, d := range c.Domains {
		domains = append(domains, d.Name)
	}
	declared := map[string]bool{}
	for _, cl := range c.Claims {
		declared[cl.Name] = true
	}
	inRole := map[string]int{}
	for i, n := range s.Nodes {
		for j, e := range n.EEs {
			where := fmt.Sprintf("%s: nodes[%d] (%s): ees[%d] (%s)", s.Path, i, n.Name, j, e.Name)
			d, ok := c.Domain(e.Domain)
			if !ok {
				return fmt.Errorf("%s: domain %q is not in the policy (it has: %s)", where, e.Domain, strings.Join(domains, ", "))
			}
			r, ok := d.Role(e.Role)
			if !ok {
				var roles []string
				for _, r := range d.Roles {
					roles = append(roles, r.Name)
				}
				return fmt.Errorf("%s: domain %s has no role %q (it has: %s)", where, e.Domain, e.Role, strings.Join(roles, ", "))
			}
			key := e.Domain + "/" + e.Role
			inRole[key]++
			if r.Max > 0 && inRole[key] > r.Max {
				return fmt.Errorf("%s: role %s allows at most %d members", where, key, r.Max)
			}
			for k := range e.Claims {
				if !declared[k] {
					return fmt.Errorf("%s: claim %q is not declared by the policy (kind: Claims)", where, k)
				}
			}
		}
	}
	for i, a := range s.Admins {
		r, _ := ca.ParseRole(a.Role)
		if r.Domain != "" {
			if _, ok := c.Domain(r.Domain); !ok {
				return fmt.Errorf("%s: admins[%d] (%s): domain %q is not in the policy (it has: %s)", s.Path, i, a.Name, r.Domain, strings.Join(domains, ", "))
			}
		}
	}
	return nil
}
