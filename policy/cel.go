package policy

import (
	"fmt"
	"sort"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
)

// builtinClaims are the claims every policy may use without declaring them.
// The controller fills them from enrolment and appraisal.
var builtinClaims = map[string]string{
	"node.name":      "string", // the node's enrolled name
	"node.assurance": "string", // "implicit" or "tpm"
	"node.tpm":       "bool",   // the node proved its state by TPM attestation
	"ee.name":        "string", // the EE's name
	"ee.domain":      "string", // the domain the EE asks to join
	"ee.role":        "string", // the role it asks for
	"ee.owner":       "string", // the party that created the EE
	"ee.image":       "string", // the image digest, sha256:HEX
	"ee.isolation":   "string", // "strong" (namespaces) or "weak" (process)
}

func celType(t string) *cel.Type {
	switch t {
	case "bool":
		return cel.BoolType
	case "int":
		return cel.IntType
	case "double":
		return cel.DoubleType
	case "string":
		return cel.StringType
	case "list(string)":
		return cel.ListType(cel.StringType)
	}
	return nil
}

// newEnv returns a CEL environment declaring every claim.
func newEnv(claims map[string]string) (*cel.Env, error) {
	names := make([]string, 0, len(claims))
	for n := range claims {
		names = append(names, n)
	}
	sort.Strings(names)
	opts := make([]cel.EnvOption, 0, len(names))
	for _, n := range names {
		opts = append(opts, cel.Variable(n, celType(claims[n])))
	}
	return cel.NewEnv(opts...)
}

// compileExpr type-checks a requirement expression. Problems are reported
// at their position inside the source file.
func compileExpr(env *cel.Env, r *Requirement, e *errs) cel.Program {
	ast, iss := env.Compile(r.Expr)
	if iss != nil && iss.Err() != nil {
		for _, ce := range iss.Errors() {
			loc := ce.Location
			p := r.ExprPos
			if loc.Line() <= 1 {
				p.Col += r.exprQuoted + loc.Column()
			} else {
				p.Line += loc.Line() - 1
				p.Col = loc.Column() + 1
			}
			msg := ce.Message
			if strings.HasPrefix(msg, "undeclared reference") {
				if id := identAt(r.Expr, loc.Line(), loc.Column()); id != "" {
					msg = fmt.Sprintf("claim %q is not declared; declare it in a Claims document, or use a built-in claim (%s)", id, strings.Join(sortedKeys(builtinClaims), ", "))
				}
			}
			e.add(p, "requirement %q: %s", r.ID.Value, msg)
		}
		return nil
	}
	if !ast.OutputType().IsExactType(types.BoolType) {
		e.add(r.ExprPos, "requirement %q: expression has type %s; expected bool (a predicate that holds or not)", r.ID.Value, ast.OutputType())
		return nil
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(100), cel.CostLimit(100000))
	if err != nil {
		e.add(r.ExprPos, "requirement %q: %v", r.ID.Value, err)
		return nil
	}
	return prg
}

// valueMatches reports whether v, as decoded from YAML, has claim type t.
func valueMatches(v any, t string) bool {
	switch v.(type) {
	case bool:
		return t == "bool"
	case int64:
		return t == "int" || t == "double"
	case float64:
		return t == "double"
	case string:
		return t == "string"
	case []string:
		return t == "list(string)"
	}
	return false
}

// normalize converts a YAML claim value to what CEL expects for type t.
func normalize(v any, t string) any {
	if t == "double" {
		if i, ok := v.(int64); ok {
			return float64(i)
		}
	}
	return v
}

func typeName(v any) string {
	switch v.(type) {
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "double"
	case string:
		return "string"
	case []string:
		return "list(string)"
	}
	return fmt.Sprintf("%T", v)
}

// identAt returns the dotted identifier starting at line/col (1-based line,
// 0-based column) of src.
func identAt(src string, line, col int) string {
	lines := strings.Split(src, "\n")
	if line < 1 || line > len(lines) || col < 0 || col >= len(lines[line-1]) {
		return ""
	}
	l := lines[line-1][col:]
	end := 0
	for end < len(l) {
		c := l[end]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' {
			end++
			continue
		}
		break
	}
	return strings.TrimRight(l[:end], ".")
}
