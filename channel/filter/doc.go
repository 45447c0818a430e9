// Package filter is the flow filter of the userspace data plane: it makes
// the decisions flow/nft makes, from the same compiled plan (flow.Plan and
// its flow.Matrix), in the process, for an interface with no kernel behind
// it (channel.Userspace: wireguard-go over the gVisor netstack, no root).
//
// A [Filter] judges the packets of one interface. [Device] wraps the
// tun.Device between wireguard-go and the local stack, so every IPv4 and
// IPv6 packet is judged in both directions before it reaches the other
// side. The member of the plan whose Iface is the filter's Config.Iface is
// the local end of every packet. The other end is on the overlay: once the
// filter knows the interface's WireGuard peers ([Filter.SetPeers]), it is
// the peer WireGuard routes the packet's remote address to (the longest
// matching allowed IP), and a peer that is one plan member is judged as
// flow/nft judges a local EE behind its interface. Otherwise (no peers
// given, or a peer that is no single member, such as a controller) the
// overlay end is known by the packet's address, as flow/nft knows a remote
// end.
//
// # Gateways
//
// Knowing the peer makes flows through gateways work across interfaces,
// which flow/nft cannot do across nodes (see its documentation): a
// via-gateway flow keeps its origin and final addresses end to end, and
// each hop is judged with the real next or previous hop. WireGuard routes
// the other domain's prefix to the domain's gateway, and the gateways'
// prefixes to each other; [WrapGateway] makes a gateway's Device forward
// an inbound packet that is not for the gateway back out (TTL or hop limit
// decremented), judged again as the gateway's own outbound hop. So the
// hops of a flow from yellow's management console to a red client are:
// console to yellow gateway (allow-intra-domain; the gateway peer does not
// own the destination, so the console's origin must be allowed to cross,
// else deny-gateway-refused), yellow gateway to red gateway
// (allow-point-to-point), red gateway to client (allow-intra-domain).
//
// # Semantics
//
// The rules are flow/nft's (see its package documentation), judged per hop
// from the hop's origin-side end to its final-side end, in the order of
// its rules, and counted under the same counter names:
//
//  1. an end at an interface (the local member, or a peer that is one
//     member) that does not own the packet's address on that end is a
//     spoofer (deny-spoofed-source at the origin end, deny-misrouted at
//     the final end) unless its member is a gateway, which may forward
//     only flows whose origin class may cross into the final address's
//     domain (flow.Matrix.MayCross), else deny-gateway-refused;
//  2. then the hop's two classes (an end at an interface by its member,
//     any other end by its address) select the verdict: a controller
//     address on either end accepts (allow-controller), even for a
//     quarantined member; else a quarantined member on either end drops
//     (deny-quarantine);
//  3. else flow.Matrix.Decide: allow-intra-domain, allow-unrestricted,
//     allow-point-to-point, deny-point-to-point, deny-none,
//     deny-via-gateway-direct;
//  4. an end that is no member, and no controller address, drops
//     (deny-non-member).
//
// Two counters have no nftables counterpart: deny-malformed (not a
// well-formed IPv4 or IPv6 packet) and deny-flow-table-full.
//
// # Flows
//
// A small flow table, keyed by 5-tuple (protocol, addresses, TCP/UDP ports
// or the ICMP echo identifier), plays conntrack's part: a packet whose
// reversed tuple is a live flow is a reply and is judged as the flow it
// answers (origin and final ends swapped), so a reply passes exactly when
// the flow would pass now. As in flow/nft every packet is judged against
// the current plan; the table only gives the direction. An allowed packet
// that belongs to no live flow starts one. Flows expire when idle
// (TCPTimeout, ClosingTimeout after a FIN or RST, OtherTimeout); the table
// holds at most Config.MaxFlows and refuses new flows when full of live
// ones.
//
// # Cost
//
// A packet of a known flow costs a header parse, two flow-table lookups at
// most, and per overlay end one map lookup per prefix length among the
// peers' allowed IPs (one or two in practice, at most 33 or 129) plus one
// address-map lookup, then one table read for the verdict: O(1) in the
// number of members, peers and classes, and no allocation. A new flow
// allocates its table entry. [Filter.Apply] and [Filter.SetPeers] compile
// fresh tables (address and route maps; the verdict and cross tables are
// reused when the matrix is the same) and swap them in with one atomic
// store.
//
// # What it does not check
//
//   - It trusts the plan's addresses and the peers' allowed IPs it is
//     given. That an inbound packet came from the peer its source address
//     routes to is WireGuard's cryptokey routing (wireguard-go drops a
//     packet whose source is not in its sender's allowed IPs), not the
//     filter's. The filter's copy of the routes is updated right after
//     wireguard-go's (channel.Userspace.SetPeers), so for the moment in
//     between a packet may be judged with the old next hop.
//   - Non-first IP fragments carry no ports: they are judged by addresses
//     as a flow of their own, so a reply fragment of a flow whose reverse
//     direction the matrix denies is dropped. ICMP errors are judged as
//     packets of their own, not as part of the flow they report on.
//   - TCP state is not tracked beyond FIN/RST shortening a flow's life: any
//     allowed segment starts a flow (as conntrack's loose mode does).
//   - With no plan applied every packet is dropped as from a non-member,
//     and so is every packet of an interface that no plan member is behind,
//     controller traffic included (fail closed), where flow/nft leaves an
//     interface the plan does not list unfiltered.
//   - A gateway forwards only within its own interface (one WireGuard
//     device on which both domains' prefixes are routed); it sends no ICMP
//     errors (time exceeded, unreachable, packet too big), does not
//     fragment, and drops forwarded packets beyond a queue of 64.
package filter
