package flow

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPlanValidate(t *testing.T) {
	m := table3(t)
	a := netip.MustParseAddr
	good := func() *Plan {
		return &Plan{
			Matrix:            m,
			EEInterfaces:      []string{"ee-a", "ee-b"},
			OverlayInterfaces: []string{"wg-yellow"},
			Controllers:       []netip.Addr{a("10.0.0.1")},
			Members: []PlanMember{
				{EE: "a", Class: 0, Addrs: []netip.Addr{a("10.1.0.1"), a("fd00::1")}, Iface: "ee-a"},
				{EE: "b", Class: 4, Addrs: []netip.Addr{a("10.1.0.2")}, Iface: "ee-b"},
				{EE: "remote", Class: 5, Addrs: []netip.Addr{a("10.1.0.3")}},
			},
			Quarantine: []string{"b"},
		}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("good plan: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(p *Plan)
		want   string
	}{
		{"no matrix", func(p *Plan) { p.Matrix = nil }, "no flow matrix"},
		{"duplicate EE", func(p *Plan) { p.Members[1].EE = "a" }, "listed twice"},
		{"empty EE", func(p *Plan) { p.Members[1].EE = "" }, "no EE name"},
		{"class range", func(p *Plan) { p.Members[1].Class = 6 }, "out of range"},
		{"negative class", func(p *Plan) { p.Members[1].Class = -1 }, "out of range"},
		{"no address", func(p *Plan) { p.Members[1].Addrs = nil }, "no overlay address"},
		{"invalid address", func(p *Plan) { p.Members[1].Addrs = []netip.Addr{{}} }, "invalid address"},
		{"mapped address", func(p *Plan) { p.Members[1].Addrs = []netip.Addr{a("::ffff:10.1.0.9")} }, "IPv4-mapped"},
		{"multicast", func(p *Plan) { p.Members[1].Addrs = []netip.Addr{a("224.0.0.1")} }, "not a unicast"},
		{"shared address", func(p *Plan) { p.Members[1].Addrs = []netip.Addr{a("10.1.0.1")} }, "used by members"},
		{"unknown iface", func(p *Plan) { p.Members[1].Iface = "ee-z" }, "not one of the EE interfaces"},
		{"overlay iface for EE", func(p *Plan) { p.Members[1].Iface = "wg-yellow" }, "not one of the EE interfaces"},
		{"shared iface", func(p *Plan) { p.Members[1].Iface = "ee-a" }, "used by members"},
		{"long iface", func(p *Plan) { p.EEInterfaces = append(p.EEInterfaces, "a-very-long-ifname") }, "invalid interface name"},
		{"slash iface", func(p *Plan) { p.OverlayInterfaces = []string{"wg/1"} }, "invalid interface name"},
		{"iface both kinds", func(p *Plan) { p.OverlayInterfaces = []string{"ee-a"} }, "already listed"},
		{"iface twice", func(p *Plan) { p.EEInterfaces = append(p.EEInterfaces, "ee-a") }, "listed twice"},
		{"quarantine non-member", func(p *Plan) { p.Quarantine = []string{"ghost"} }, "not a member"},
		{"controller is member", func(p *Plan) { p.Controllers = []netip.Addr{a("10.1.0.3")} }, "also the address"},
		{"controller invalid", func(p *Plan) { p.Controllers = []netip.Addr{{}} }, "controller"},
	}
	for _, tt := range tests {
		p := good()
		tt.mutate(p)
		err := p.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want error containing %q", tt.name, err, tt.want)
		}
	}
	var nilPlan *Plan
	if err := nilPlan.Validate(); err == nil {
		t.Error("nil plan accepted")
	}
}
