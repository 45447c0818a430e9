package agent

import (
	"strings"
	"testing"
)

func TestParseNodeConfig(t *testing.T) {
	good := `node: pc1
ees:
  - name: red-client1
    domain: red
    role: client-os
    owner: outsourcing-customer
    expose:
      - port: 8080
      - port: 9000
        target: 127.0.0.1:9001
`
	c, err := ParseNodeConfig("node.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.EEs) != 1 || len(c.EEs[0].Expose) != 2 || c.EEs[0].Expose[1] != (ExposeConfig{Port: 9000, Target: "127.0.0.1:9001"}) {
		t.Fatalf("parsed %+v", c)
	}
	for _, tc := range []struct{ name, in, want string }{
		{"unknown field", "node: pc1\nnodes: []\n", "field nodes not found"},
		{"node name", "node: PC_1\n", `node.yaml: node name "PC_1"`},
		{"ee name", "ees:\n  - {name: A, domain: red, role: r}\n", `node.yaml: ees[0]: name "A"`},
		{"twice", "ees:\n  - {name: a, domain: red, role: r}\n  - {name: a, domain: red, role: r}\n", `node.yaml: ees[1]: EE "a" listed twice`},
		{"port 0", "ees:\n  - {name: a, domain: red, role: r, expose: [{port: 0}]}\n", "node.yaml: ees[0].expose[0]: expected a port between 1 and 65535"},
		{"port range", "ees:\n  - {name: a, domain: red, role: r, expose: [{port: 70000}]}\n", "node.yaml"},
		{"port twice", "ees:\n  - {name: a, domain: red, role: r, expose: [{port: 80}, {port: 80}]}\n", "node.yaml: ees[0].expose[1]: port 80 listed twice"},
		{"target", "ees:\n  - {name: a, domain: red, role: r, expose: [{port: 80, target: localhost}]}\n", `node.yaml: ees[0].expose[0]: target "localhost": expected IP:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseNodeConfig("node.yaml", []byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// FuzzParseNodeConfig: a node configuration never panics the parser, and
// one it accepts has valid names and ports.
func FuzzParseNodeConfig(f *testing.F) {
	f.Add([]byte("node: pc1\nees:\n  - {name: a, domain: red, role: r, expose: [{port: 80}]}\n"))
	f.Add([]byte("ees:\n  - {name: a, domain: red, role: r, claims: {x: y}, command: [sh]}\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseNodeConfig("node.yaml", in)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "node.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, e := range c.EEs {
			if !nameRE.MatchString(e.Name) || !nameRE.MatchString(e.Domain) || !nameRE.MatchString(e.Role) {
				t.Fatalf("accepted EE %+v", e)
			}
			for _, x := range e.Expose {
				if x.Port == 0 {
					t.Fatalf("accepted port 0 in %+v", e)
				}
			}
		}
	})
}
