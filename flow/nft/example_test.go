package nft_test

import (
	"log/slog"
	"net/netip"

	"github.com/tvd-dev/tvd/flow"
	"github.com/tvd-dev/tvd/flow/nft"
)

// A node agent programs its namespace from the plan the controller sent,
// then re-applies each new plan; only the difference reaches the kernel.
func Example() {
	b, err := flow.NewBuilder([]flow.Domain{
		{Name: "yellow", Roles: []string{"gateway", "app"}, Gateways: []int{0}},
		{Name: "red", Roles: []string{"gateway", "db"}, Gateways: []int{0}},
	})
	if err != nil {
		panic(err)
	}
	b.Set(b.Class(0, 0), 1, flow.RulePointToPoint, 1<<0) // yellow/gateway -> red gateways
	b.Set(b.Class(0, 1), 1, flow.RuleViaGateway, 0)      // yellow/app -> red via gateways
	m := b.Build()
	app, _ := m.Class("yellow", "app")
	db, _ := m.Class("red", "db")

	plan := &flow.Plan{
		Matrix:            m,
		EEInterfaces:      []string{"ee-app"},
		OverlayInterfaces: []string{"wg-yellow"},
		Controllers:       []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		Members: []flow.PlanMember{
			{EE: "app-1", Class: app, Iface: "ee-app", Addrs: []netip.Addr{netip.MustParseAddr("10.10.0.2")}},
			{EE: "db-1", Class: db, Addrs: []netip.Addr{netip.MustParseAddr("10.20.0.2")}}, // on another node
		},
	}
	p, err := nft.New(nft.Config{NetNS: "/run/netns/node1", Logger: slog.Default()})
	if err != nil {
		return
	}
	defer p.Close()
	if err := p.Apply(plan); err != nil { // builds table inet tvd
		return
	}
	plan.Quarantine = []string{"app-1"}
	if err := p.Apply(plan); err != nil { // one transaction: app-1's entries change class
		return
	}
	counters, _ := p.Counters()
	_ = counters[nft.CounterQuarantine]
}
