// Package filter is the flow filter of the userspace data plane: it makes
// the decisions flow/nft makes, from the same compiled plan (flow.Plan and
// its flow.Matrix), in the process, for an interface with no kernel behind
// it (channel.Userspace: wireguard-go over the gVisor netstack, no root).
//
// A [Filter] judges the packets of one interface. [Device] wraps the
// tun.Device between wireguard-go and the local stack, so every IPv4 and
// IPv6 packet is judged in both directions before it reaches the other
// side. The member of the plan whose Iface is the filter's Config.Iface is
// the local end of every packet; the other end is on the overlay and is
// known by the packet's address.
//
// # Semantics
//
// The rules are flow/nft's (see its package documentation), judged per hop
// from the hop's origin-side end to its final-side end, in the same order
// and counted under the same counter names:
//
//  1. a controller address on either end accepts (allow-controller), even
//     for a quarantined member;
//  2. a quarantined member on either end drops (deny-quarantine);
//  3. a local end that does not own the packet's address on that end is a
//     spoofer (deny-spoofed-source, deny-misrouted) unless the local member
//     is a gateway, which may forward only flows whose origin class may
//     cross into the final address's domain (flow.Matrix.MayCross), else
//     deny-gateway-refused;
//  4. the two classes select the verdict of flow.Matrix.Decide:
//     allow-intra-domain, allow-unrestricted, allow-point-to-point,
//     deny-point-to-point, deny-none, deny-via-gateway-direct;
//  5. an end that is no member drops (deny-non-member).
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
// most, one address-map lookup per remote end and one table read for the
// verdict: O(1) in the number of members and classes, and no allocation.
// A new flow allocates its table entry. [Filter.Apply] compiles the plan
// into fresh tables (address maps; the verdict and cross tables are reused
// when the matrix is the same) and swaps them in with one atomic store.
//
// # What it does not check
//
//   - It trusts the plan's addresses. The remote end is known only by the
//     packet's address; that the address belongs to the peer that sent it
//     is WireGuard's cryptokey routing (AllowedIPs), not the filter's.
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
//   - Forwarding between domains: the filter judges a gateway's forwarded
//     packets (rule 3) but does not forward; see channel.Userspace for what
//     the userspace data plane does not do.
package filter
