// Package dataplane is a node's data plane: it turns each plan the domain
// controller sends (tvdv1.Plan) into the node's protected channels
// (package channel: one WireGuard interface per domain) and its flow
// enforcement (package flow/nft: one nftables table), and attaches the
// node's local EEs to them. It implements agent.DataPlane.
//
// There are two: [DataPlane] (below: kernel TUN devices, veths into the
// EEs' network namespaces, nftables; root) and [Userspace] (the same plans
// in the agent's process: wireguard-go over a userspace network stack per
// EE, the flow decisions made by channel/filter; no root, for the process
// driver, whose EEs have no namespace).
//
// # Topology on one node
//
// Everything lives in the node's network namespace (Config.NodeNetNS):
//
//   - per domain D with overlay prefix P (DomainPeers.overlay_prefix), the
//     node-side address G = the first host of P (e.g. 10.77.0.1; the
//     controller never hands it to a member). The WireGuard interface
//     channel.InterfaceName(D) carries G/32 and one peer per other node
//     with members in D; the channel package routes each peer's allowed
//     /32s over it. It listens on a UDP port that stays the domain's on
//     this node (persisted in DataDir/channel/ports.json, allocated from
//     Config.BasePort upwards).
//   - per local member (an EE with an overlay address A in D) a veth pair:
//     the node side VethName(ee) ("v" and 8 hex digits of the EE name's
//     SHA-256) with G/32 and a /32 route to A; the EE side, EEInterface
//     ("tvd0") in the EE's own namespace (Config.EENetNS), with A/32 and a
//     default route via G (onlink). Every destination, in any domain or
//     none, is thus routed to the node, where the nftables rules decide.
//   - IPv4 forwarding (and IPv6 forwarding when a domain is IPv6) is
//     switched on in the node namespace, and restored by Close.
//   - the flow plan (flow.Plan) lists every member the plan's classes name,
//     local ones with their veth, the quarantined ones, the controller
//     addresses (Config.Controller), the veths as EE interfaces and the
//     WireGuard interfaces as overlay interfaces. Replies are judged as the
//     flow they answer (conntrack direction, see flow/nft), so the reply to
//     an allowed flow passes and no separate "established" rule is needed.
//   - flow/nft judges forwarded traffic only; a second table, NodeTable
//     ("inet tvd-node"), drops whatever an EE addresses to the node itself
//     (G, the underlay, the node's services), IPv6 neighbour discovery
//     aside. Its set of EE interfaces is updated incrementally too.
//   - gateway routes (Plan.gateway_routes) carry via-gateway flows hop by
//     hop: each source with routes (an EE's veth, or a domain's WireGuard
//     interface) gets its own routing table (gwTableBase + its ifindex),
//     selected by an "iif" rule at priority 1000, with a host route per
//     destination to the next gateway EE's veth (via its address, onlink)
//     or to the WireGuard interface towards the gateway's node. A lookup
//     that finds nothing falls through to the main table. A rule at
//     priority 999 sends packets marked StraightTOS to the main table (the
//     lab's straight probe). Inside every gateway EE a route leads to, IP
//     forwarding is switched on.
//   - reach addresses (Peer.reach) become the peer's WireGuard allowed IPs
//     without a route (channel.Peer.Unrouted), never one another peer
//     already has, and flow/nft's reach maps judge a hop with them as one
//     with the peer's gateway (flow.Reach).
//
// # Incremental updates
//
// Apply compares the plan with what it applied last: members that are new
// or whose domain, role or address changed get a veth, members gone lose
// theirs, peers are passed to the channel only when a domain's peer list
// changed (and the channel itself updates wireguard-go incrementally), an
// interface is opened for a new domain and closed when the node has no
// more members there, and the flow plan goes to nft, which sends only the
// changed set elements. Untouched interfaces keep their ifindex and the
// nftables chains are never rebuilt.
//
// Order is chosen to fail closed: a removed member's veth is deleted and a
// left domain's interface closed before the flow rules forget them; a new
// member's veth and a new domain's interface are created only after the
// flow rules that judge them are in force, and not at all if those failed.
// Peer removals (revocation) are applied even when the flow rules failed.
//
// # What it does not do
//
//   - Cross-domain traffic between two nodes rides on the interfaces the
//     controller chooses (the carrier pair for straight flows, see
//     docs/design/cross-domain-peering.md; gateway routes and reach for
//     via-gateway flows); where the plan gives none, a packet leaves on
//     its destination domain's interface and the receiving peer drops it
//     (fail closed).
//   - It does not resolve host names in peer endpoints (an endpoint must be
//     "address:port"), does not choose the underlay address (Config.Underlay),
//     and does not create EE namespaces (the EE driver does).
//   - Traffic from the node itself to an EE is not filtered; the node
//     answers ARP for G.
//   - A quarantined EE may reach the controller addresses, but nothing
//     translates its overlay source address: the controller host must route
//     the overlay back to the node for the reply to arrive.
//   - It runs no timer: a member whose EE namespace is not known yet, or an
//     EE restarted in a new namespace, is attached by the next Apply or by
//     Reconcile, which the agent should call when its EE host starts or
//     restarts an EE.
package dataplane
