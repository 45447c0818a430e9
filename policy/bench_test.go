package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"cel.dev/cel-go/cel"

	"github.com/tvd-dev/tvd/flow"
)

func flowClass(i int) flow.ClassID { return flow.ClassID(i) }

// generated returns a policy of n domains with r roles each. Role 0 is the
// gateway. Each domain reaches its three next neighbours: the gateway
// point-to-point, role 1 via the gateways, role 2 unrestricted; everything
// else is none.
func generated(n, r int) []File {
	var b strings.Builder
	b.WriteString("kind: ReferenceValues\nname: approved\nentries:\n  - name: /bin/busybox\n    sha256: 3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6\n")
	for i := range n {
		fmt.Fprintf(&b, "---\nkind: Domain\nname: d%d\nowner: o%d\nsubnet: 10.%d.%d.0/24\nroles:\n", i, i, i/256, i%256)
		for j := range r {
			fmt.Fprintf(&b, "  - name: r%d\n", j)
			if j == 0 {
				b.WriteString("    gateway: true\n")
			}
		}
		b.WriteString("attestation:\n  referenceValues: [approved]\nflows:\n")
		for j, rule := range []string{"point-to-point", "via-gateway", "unrestricted"} {
			fmt.Fprintf(&b, "  r%d:\n", j)
			for k := 1; k <= 3; k++ {
				fmt.Fprintf(&b, "    d%d: %s\n", (i+k)%n, rule)
			}
		}
		b.WriteString("  \"*\":\n    \"*\": none\n")
		b.WriteString("statements:\n  - id: flows\n    type: information-flow\n    text: Flows follow the matrix.\n    verify: {by: flow-matrix}\n")
	}
	return []File{{Name: "generated.yaml", Content: []byte(b.String())}}
}

// BenchmarkCompileGenerated compiles 1,000 domains x 20 roles and reports
// the time per matrix cell ((domain, role) x destination domain).
func BenchmarkCompileGenerated(b *testing.B) {
	const domains, roles = 1000, 20
	src := generated(domains, roles)
	b.ReportAllocs()
	var start time.Time
	var total time.Duration
	for b.Loop() {
		start = time.Now()
		c, err := ParseAndCompile(src)
		total += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if c.Matrix.NumClasses() != domains*roles {
			b.Fatalf("%d classes", c.Matrix.NumClasses())
		}
	}
	cells := float64(domains * roles * domains)
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/cells, "ns/cell")
}

// celRule is the same decision written as a CEL predicate, as a generic
// policy engine would evaluate it per packet.
const celRule = `src_domain == dst_domain ||
  (cell_rule == "unrestricted") ||
  (cell_rule == "point-to-point" && dst_role in cell_roles)`

// BenchmarkFlowDecision measures one flow decision on the compiled matrix
// and the same rule evaluated by CEL, in the same run, and reports the
// ratio. Goal: under 100 ns and 0 allocations per matrix decision.
func BenchmarkFlowDecision(b *testing.B) {
	c, err := LoadAndCompile("../examples/outsourcing")
	if err != nil {
		b.Fatal(err)
	}
	src, _ := c.Class("yellow/gateway")
	dst, _ := c.Class("red/gateway")
	env, err := cel.NewEnv(
		cel.Variable("src_domain", cel.StringType), cel.Variable("dst_domain", cel.StringType),
		cel.Variable("dst_role", cel.StringType), cel.Variable("cell_rule", cel.StringType),
		cel.Variable("cell_roles", cel.ListType(cel.StringType)))
	if err != nil {
		b.Fatal(err)
	}
	ast, iss := env.Compile(celRule)
	if iss.Err() != nil {
		b.Fatal(iss.Err())
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		b.Fatal(err)
	}
	act, _ := cel.NewActivation(map[string]any{
		"src_domain": "yellow", "dst_domain": "red", "dst_role": "gateway",
		"cell_rule": "point-to-point", "cell_roles": []string{"gateway"},
	})
	// Both loops run b.N times in the same run; the ratio is what counts.
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if !c.Matrix.Decide(src, dst).Direct {
			b.Fatal("denied")
		}
	}
	matrixNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	start = time.Now()
	for i := 0; i < b.N; i++ {
		v, _, err := prg.Eval(act)
		if err != nil || v.Value() != true {
			b.Fatal("denied", err)
		}
	}
	celNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	b.ReportMetric(matrixNs, "ns/matrix-decision")
	b.ReportMetric(celNs, "ns/cel-eval")
	b.ReportMetric(celNs/matrixNs, "x-faster-than-cel")
}

// BenchmarkMatrixDecide reports the allocations of a matrix decision alone.
func BenchmarkMatrixDecide(b *testing.B) {
	c, err := LoadAndCompile("../examples/outsourcing")
	if err != nil {
		b.Fatal(err)
	}
	src, _ := c.Class("yellow/management-console")
	dst, _ := c.Class("red/client-os")
	b.ReportAllocs()
	for b.Loop() {
		if c.Matrix.Decide(src, dst).Direct {
			b.Fatal("allowed")
		}
	}
}
