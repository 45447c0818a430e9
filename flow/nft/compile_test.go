package nft

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tvd-dev/tvd/flow"
)

// plainPlan is the Table 3 plan without a lab: the six members are local
// EEs behind interfaces named after them.
func plainPlan(t testing.TB, m *flow.Matrix, ms []member, quarantine ...string) *flow.Plan {
	t.Helper()
	p := &flow.Plan{Matrix: m, Quarantine: quarantine, Controllers: []netip.Addr{controllerAddr}, OverlayInterfaces: []string{"wg-yellow"}}
	for _, mem := range ms {
		c, ok := m.Class(mem.domain, mem.role)
		if !ok {
			t.Fatalf("no class %s/%s", mem.domain, mem.role)
		}
		p.EEInterfaces = append(p.EEInterfaces, mem.name)
		p.Members = append(p.Members, flow.PlanMember{EE: mem.name, Class: c, Iface: mem.name,
			Addrs: []netip.Addr{netip.MustParseAddr(mem.a4), netip.MustParseAddr(mem.a6)}})
	}
	return p
}

func TestCompileMatchesDecide(t *testing.T) {
	m := table3(t, false)
	st := compile(plainPlan(t, m, table3EEs))
	accept := map[string]bool{}
	for _, v := range verdictChains {
		accept[v.chain] = v.accept
	}
	n := m.NumClasses()
	// Every class pair; the quarantine class with each class and itself;
	// the controller class with each of those and itself.
	if want := n*n + 2*n + 1 + 2*(n+1) + 1; len(st[mapVerdict]) != want {
		t.Fatalf("verdict map has %d entries, want %d", len(st[mapVerdict]), want)
	}
	for key, chain := range st[mapVerdict] {
		switch {
		case key[:4] == controllerClass || key[4:] == controllerClass:
			if chain != chainController {
				t.Errorf("controller entry %x goes to %s", key, chain)
			}
		case key[:4] == quarantineClass || key[4:] == quarantineClass:
			if chain != chainQuarantine {
				t.Errorf("quarantine entry %x goes to %s", key, chain)
			}
		}
	}
	for s := range n {
		for d := range n {
			sc, dc := flow.ClassID(s), flow.ClassID(d)
			key := classBytes(sc) + classBytes(dc)
			chain, ok := st[mapVerdict][key]
			if !ok {
				t.Fatalf("no verdict for %d -> %d", s, d)
			}
			if accept[chain] != m.Decide(sc, dc).Direct {
				t.Errorf("%d -> %d: chain %s accepts=%v, Decide says %v", s, d, chain, accept[chain], m.Decide(sc, dc).Direct)
			}
			_, cross := st[setCross][key]
			if cross != m.MayCross(sc, m.ClassDomain(dc)) {
				t.Errorf("%d -> %d: cross=%v, MayCross says otherwise", s, d, cross)
			}
		}
	}
	want := map[string]int{
		setScope: 7, setEEIfs: 6, setGwIfs: 2, mapIfCls: 6, mapCls4: 7, mapCls6: 6,
		setBind4: 6, setBind6: 6,
	}
	for set, n := range want {
		if got := len(st[set]); got != n {
			t.Errorf("set %s has %d elements, want %d", set, got, n)
		}
	}
}

func TestDiff(t *testing.T) {
	m := table3(t, false)
	base := compile(plainPlan(t, m, table3EEs))
	if ch := diff(base, compile(plainPlan(t, m, table3EEs))); len(ch) != 0 {
		t.Errorf("same plan: changes %v", ch)
	}
	count := func(chs []setChange) map[string][2]int {
		out := map[string][2]int{}
		for _, c := range chs {
			out[c.name] = [2]int{len(c.del), len(c.add)}
		}
		return out
	}
	// One member more: its interface, classes and bindings, nothing else.
	grown := compile(plainPlan(t, m, append(append([]member{}, table3EEs...), outsider)))
	got := count(diff(base, grown))
	want := map[string][2]int{
		setScope: {0, 1}, setEEIfs: {0, 1}, mapIfCls: {0, 1}, mapCls4: {0, 1}, mapCls6: {0, 1},
		setBind4: {0, 1}, setBind6: {0, 1},
	}
	if !equalCounts(got, want) {
		t.Errorf("add member: %v, want %v", got, want)
	}
	// And back: the same elements deleted.
	got = count(diff(grown, base))
	for k, v := range want {
		want[k] = [2]int{v[1], v[0]}
	}
	if !equalCounts(got, want) {
		t.Errorf("remove member: %v, want %v", got, want)
	}
	// A changed cell: red/client-os -> yellow becomes unrestricted: three
	// verdict entries replaced and three crossings added.
	got = count(diff(base, compile(plainPlan(t, table3(t, true), table3EEs))))
	want = map[string][2]int{mapVerdict: {3, 3}, setCross: {0, 3}}
	if !equalCounts(got, want) {
		t.Errorf("changed cell: %v, want %v", got, want)
	}
	// Quarantine: the EE's addresses and interface change class.
	got = count(diff(base, compile(plainPlan(t, m, table3EEs, "y-mc"))))
	want = map[string][2]int{mapIfCls: {1, 1}, mapCls4: {1, 1}, mapCls6: {1, 1}, setBind4: {1, 1}, setBind6: {1, 1}}
	if !equalCounts(got, want) {
		t.Errorf("quarantine: %v, want %v", got, want)
	}
}

func equalCounts(a, b map[string][2]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestApplyRejectsBadPlan(t *testing.T) {
	// Validation happens before any netlink traffic, so a programmer for
	// the caller's namespace is enough; the table is never built.
	p := &Programmer{}
	if err := p.Apply(&flow.Plan{}); err == nil {
		t.Error("plan without a matrix accepted")
	}
}

// TestMemberDiffMatchesCompile checks the member-level fast path against a
// full compile and diff over a run of membership changes.
func TestMemberDiffMatchesCompile(t *testing.T) {
	m := table3(t, false)
	plan := withRemoteMembers(plainPlan(t, m, table3EEs), 50)
	a := record(plan, compile(plan))
	step := func(name string, next *flow.Plan) {
		t.Helper()
		if err := next.Validate(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !a.sameGlobal(next) {
			t.Fatalf("%s: global part changed", name)
		}
		fast, commit := a.memberDiff(next)
		full := diff(a.st, compile(next))
		if fmt.Sprint(fast) != fmt.Sprint(full) {
			t.Errorf("%s: member diff %v, full diff %v", name, fast, full)
		}
		commit()
		if !reflect.DeepEqual(a.st, compile(next)) {
			t.Errorf("%s: recorded state differs from the plan's", name)
		}
		plan = next
	}
	clone := func() *flow.Plan { return withRemoteMembers(plan, 0) }

	next := clone()
	next.Members = append(next.Members, remoteMember(900, 3))
	step("add", next)
	next = clone()
	next.Members = slices.Delete(next.Members, 10, 11)
	step("remove", next)
	next = clone()
	next.Members[7].Addrs = []netip.Addr{netip.MustParseAddr("10.200.0.1")}
	step("readdress", next)
	next = clone()
	next.Members[2].Class = 5
	step("reclass", next)
	next = clone()
	next.Quarantine = []string{"y-mc", "remote-3"}
	step("quarantine", next)
	next = clone()
	next.Quarantine = nil
	step("release", next)
	next = clone()
	next.Members[0].EE = "renamed"
	step("rename", next)
	step("same", clone())
}

func TestNewRejectsNonNamespace(t *testing.T) {
	f := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{NetNS: f}); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("regular file accepted as namespace: %v", err)
	}
	if _, err := New(Config{NetNS: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("missing namespace file accepted")
	}
	if _, err := New(Config{Table: strings.Repeat("t", 300)}); err == nil {
		t.Error("300-byte table name accepted")
	}
}
