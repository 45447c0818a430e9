package flow

import (
	"slices"
	"testing"
)

// table3 builds the paper's Table 3 by hand.
func table3(t testing.TB) *Matrix {
	t.Helper()
	roles := []string{"domain-controller", "gateway", "management-console"}
	red := []string{"domain-controller", "gateway", "client-os"}
	b, err := NewBuilder([]Domain{
		{Name: "yellow", Roles: roles, Gateways: []int{1}},
		{Name: "red", Roles: red, Gateways: []int{1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	const yellow, redD = 0, 1
	gw := uint64(1 << 1)
	b.Set(b.Class(yellow, 0), redD, RuleNone, 0)
	b.Set(b.Class(yellow, 1), redD, RulePointToPoint, gw)
	b.Set(b.Class(yellow, 2), redD, RuleViaGateway, 0)
	b.Set(b.Class(redD, 0), yellow, RuleViaGateway, 0)
	b.Set(b.Class(redD, 1), yellow, RulePointToPoint, gw)
	b.Set(b.Class(redD, 2), yellow, RuleNone, 0)
	return b.Build()
}

func TestDecideTable3(t *testing.T) {
	m := table3(t)
	cls := func(d, r string) ClassID {
		c, ok := m.Class(d, r)
		if !ok {
			t.Fatalf("no class %s/%s", d, r)
		}
		return c
	}
	names := func(cs []ClassID) []string {
		var out []string
		for _, c := range cs {
			d, r := m.ClassName(c)
			out = append(out, d+"/"+r)
		}
		return out
	}
	tests := []struct {
		from, to string
		rule     Rule
		direct   bool
		via      []string
	}{
		{"yellow/domain-controller", "yellow/gateway", RuleUnrestricted, true, nil},
		{"yellow/domain-controller", "red/gateway", RuleNone, false, nil},
		{"yellow/gateway", "red/gateway", RulePointToPoint, true, nil},
		{"yellow/gateway", "red/client-os", RulePointToPoint, false, []string{"red/gateway"}},
		{"yellow/management-console", "red/client-os", RuleViaGateway, false, []string{"yellow/gateway", "red/gateway"}},
		{"red/domain-controller", "yellow/management-console", RuleViaGateway, false, []string{"red/gateway", "yellow/gateway"}},
		{"red/gateway", "yellow/gateway", RulePointToPoint, true, nil},
		{"red/client-os", "yellow/management-console", RuleNone, false, nil},
		{"red/client-os", "red/domain-controller", RuleUnrestricted, true, nil},
	}
	for _, tt := range tests {
		split := func(s string) (string, string) {
			for i := range s {
				if s[i] == '/' {
					return s[:i], s[i+1:]
				}
			}
			return s, ""
		}
		fd, fr := split(tt.from)
		td, tr := split(tt.to)
		src, dst := cls(fd, fr), cls(td, tr)
		got := m.Decide(src, dst)
		if got.Rule != tt.rule || got.Direct != tt.direct {
			t.Errorf("%s -> %s: got %v direct=%v, want %v direct=%v", tt.from, tt.to, got.Rule, got.Direct, tt.rule, tt.direct)
		}
		if via := names(m.Via(src, dst)); !slices.Equal(via, tt.via) {
			t.Errorf("%s -> %s: via %v, want %v", tt.from, tt.to, via, tt.via)
		}
	}
	if m.MayCross(cls("red", "client-os"), 0) {
		t.Error("red/client-os may cross to yellow through a gateway; Table 3 says no flow")
	}
	if !m.MayCross(cls("yellow", "management-console"), 1) {
		t.Error("yellow/management-console may not cross to red; Table 3 says via gateway")
	}
}

func TestBuilderErrors(t *testing.T) {
	if _, err := NewBuilder([]Domain{{Name: "a"}, {Name: "a"}}); err == nil {
		t.Error("duplicate domain accepted")
	}
	if _, err := NewBuilder([]Domain{{Name: "a", Roles: make([]string, 65)}}); err == nil {
		t.Error("65 roles accepted")
	}
	if _, err := NewBuilder([]Domain{{Name: "a", Roles: []string{"x"}, Gateways: []int{3}}}); err == nil {
		t.Error("gateway index out of range accepted")
	}
}

func TestParseRule(t *testing.T) {
	for _, r := range []Rule{RuleNone, RuleUnrestricted, RulePointToPoint, RuleViaGateway} {
		got, err := ParseRule(r.String())
		if err != nil || got != r {
			t.Errorf("ParseRule(%q) = %v, %v", r.String(), got, err)
		}
	}
	if _, err := ParseRule("allow"); err == nil {
		t.Error("ParseRule accepted allow")
	}
}

func BenchmarkDecide(b *testing.B) {
	m := table3(b)
	src, _ := m.Class("yellow", "gateway")
	dst, _ := m.Class("red", "gateway")
	b.ReportAllocs()
	for b.Loop() {
		if !m.Decide(src, dst).Direct {
			b.Fatal("denied")
		}
	}
}
