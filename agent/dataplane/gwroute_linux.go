package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tvd-dev/tvd/channel"
)

// Gateway routing. A via-gateway flow is steered hop by hop with policy
// routing: each source that has gateway routes (an EE's link or a domain's
// interface) gets its own routing table, selected by a rule on the
// incoming interface, holding one host route per destination to the next
// gateway. Lookups that find nothing there fall through to the main
// table, so every other packet is routed as before.
const (
	// gwRulePriority is the priority of the per-source rules (before
	// the main table, 32766).
	gwRulePriority = 1000
	// straightRulePriority is the priority of the rule that sends packets
	// marked StraightTOS to the main table, skipping the gateway rules.
	straightRulePriority = 999
	// gwTableBase plus a source's ifindex is the source's table.
	gwTableBase = 0x7d000000
)

type ruleKey struct {
	family int
	iif    string
	table  int
	tos    uint
	prio   int
}

type routeKey struct {
	table int
	dst   netip.Addr
	dev   int
	gw    netip.Addr
}

// gwState is what the gateway routing last installed.
type gwState struct {
	init   bool
	rules  map[ruleKey]bool
	routes map[routeKey]bool
	fwd    map[string]bool // EE namespaces with forwarding switched on
}

func (k ruleKey) rule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = k.family
	r.Priority = k.prio
	r.Table = k.table
	r.IifName = k.iif
	r.Tos = k.tos
	return r
}

func (k routeKey) route() *netlink.Route {
	r := &netlink.Route{Table: k.table, Dst: ipNet(hostPrefix(k.dst)), LinkIndex: k.dev, Protocol: routeProtocol, Scope: netlink.SCOPE_LINK}
	if k.gw.IsValid() {
		r.Gw = k.gw.AsSlice()
		r.Flags = int(netlink.FLAG_ONLINK)
		r.Scope = netlink.SCOPE_UNIVERSE
	}
	return r
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// syncGatewayRoutes makes the rules and routes of the node match the
// plan's gateway routes, for the sources and next hops that are in place
// (a route whose EE link or domain interface is missing is left out until
// a later Apply or Reconcile), and switches on forwarding inside every
// gateway EE a route leads to.
func (d *DataPlane) syncGatewayRoutes(ctx context.Context, want *desired) error {
	g := &d.gw
	if !g.init {
		if err := d.cleanGatewayRoutes(); err != nil {
			return err
		}
		g.init, g.rules, g.routes, g.fwd = true, map[ruleKey]bool{}, map[routeKey]bool{}, map[string]bool{}
	}
	rules := map[ruleKey]bool{}
	routes := map[routeKey]bool{}
	var errs []error
	ifindex := func(name string) (int, bool) {
		l, err := d.nl.LinkByName(name)
		if err != nil {
			return 0, false
		}
		return l.Attrs().Index, true
	}
	for _, r := range want.GatewayRoutes {
		var src string
		switch {
		case r.FromEE != "":
			if d.attached[r.FromEE] == nil {
				continue
			}
			src = VethName(r.FromEE)
		default:
			if d.domains[r.FromDomain] == nil {
				continue
			}
			src = channel.InterfaceName(r.FromDomain)
		}
		var dev string
		var gw netip.Addr
		switch {
		case r.ViaEE != "":
			at := d.attached[r.ViaEE]
			if at == nil {
				continue
			}
			dev, gw = at.name, at.spec.Addr
			if !g.fwd[at.path] {
				if err := eeForwarding(at.path, gw.Is4()); err != nil {
					errs = append(errs, fmt.Errorf("gateway %q: %w", r.ViaEE, err))
					continue
				}
				g.fwd[at.path] = true
			}
		default:
			if d.domains[r.ViaDomain] == nil {
				continue
			}
			dev = channel.InterfaceName(r.ViaDomain)
		}
		si, ok1 := ifindex(src)
		di, ok2 := ifindex(dev)
		if !ok1 || !ok2 {
			continue
		}
		table := gwTableBase + si
		fam := family(r.To)
		rules[ruleKey{family: fam, iif: src, table: table, prio: gwRulePriority}] = true
		rules[ruleKey{family: fam, table: unix.RT_TABLE_MAIN, tos: StraightTOS, prio: straightRulePriority}] = true
		routes[routeKey{table: table, dst: r.To, dev: di, gw: gw}] = true
	}
	// Routes before rules when adding, rules before routes when removing:
	// a rule never selects a half-filled table for long.
	for k := range g.routes {
		if routes[k] {
			continue
		}
		if err := d.nl.RouteDel(k.route()); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete gateway route to %s: %w", k.dst, err))
			continue
		}
		delete(g.routes, k)
	}
	for k := range routes {
		if g.routes[k] {
			continue
		}
		if err := d.nl.RouteReplace(k.route()); err != nil {
			errs = append(errs, fmt.Errorf("gateway route to %s (table %d): %w", k.dst, k.table, err))
			continue
		}
		g.routes[k] = true
	}
	for k := range g.rules {
		if rules[k] {
			continue
		}
		if err := d.nl.RuleDel(k.rule()); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete gateway rule for %s: %w", k.iif, err))
			continue
		}
		delete(g.rules, k)
	}
	keys := make([]ruleKey, 0, len(rules))
	for k := range rules {
		if !g.rules[k] {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].prio < keys[j].prio })
	for _, k := range keys {
		if err := d.nl.RuleAdd(k.rule()); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("gateway rule for %q: %w", k.iif, err))
			continue
		}
		g.rules[k] = true
	}
	if len(routes) > 0 || len(g.routes) > 0 {
		d.log.DebugContext(ctx, "gateway routes", "routes", len(g.routes), "rules", len(g.rules))
	}
	return errors.Join(errs...)
}

// cleanGatewayRoutes removes gateway rules and routes left by an earlier
// run (an agent that crashed): every rule at the two priorities and every
// route of ours in a gateway table.
func (d *DataPlane) cleanGatewayRoutes() error {
	var errs []error
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := d.nl.RuleList(fam)
		if err != nil {
			return fmt.Errorf("list rules: %w", err)
		}
		for _, r := range rules {
			if r.Priority == gwRulePriority || r.Priority == straightRulePriority {
				r := r
				if err := d.nl.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("delete stale rule: %w", err))
				}
			}
		}
		routes, err := d.nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: routeProtocol}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Table >= gwTableBase {
				r := r
				if err := d.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("delete stale route: %w", err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// removeGatewayRoutes deletes everything syncGatewayRoutes installed.
func (d *DataPlane) removeGatewayRoutes() error {
	if !d.gw.init {
		return nil
	}
	err := d.cleanGatewayRoutes()
	d.gw = gwState{}
	return err
}

// eeForwarding lets a gateway EE forward packets: IP forwarding on, and no
// ICMP redirects (a gateway sends forwarded packets back out of the link
// they came in on, to the node, which routes them on).
func eeForwarding(path string, v4 bool) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open EE network namespace %s: %w", path, err)
	}
	defer ns.Close()
	keys := [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/send_redirects", "0"}}
	if !v4 {
		keys = [][2]string{{"net/ipv6/conf/all/forwarding", "1"}}
	}
	for _, kv := range keys {
		if _, err := sysctl(ns, kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}
