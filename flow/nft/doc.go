// Package nft enforces a node's flow plan (flow.Plan) with nftables, over
// netlink (google/nftables; no nft binary).
//
// A Programmer owns one table, "inet tvd", in the node's network namespace.
// Its base chain hooks forward; only packets entering or leaving through an
// EE-facing or overlay interface of the plan are judged, so the encrypted
// underlay is never cut. Enforcement sits outside the EEs: root inside an
// EE cannot lift it.
//
// # Per-packet cost
//
// The rule set is fixed; members, interfaces, the quarantine and the matrix
// live in sets and maps, so the work per packet does not grow with the
// number of members (hash lookups only):
//
//   - cls4/cls6: overlay address -> class; ifcls: EE interface -> class of
//     the local EE behind it;
//   - verdict: "hop origin class . hop final class" -> jump to a verdict
//     chain. The two classes
//     are looked up into adjacent 32-bit registers and the 8-byte
//     concatenation is looked up in the verdict map. Each verdict chain has
//     a named counter (allow-intra-domain, allow-unrestricted,
//     allow-point-to-point, deny-point-to-point, deny-none,
//     deny-via-gateway-direct);
//   - cross: "origin class . final class" pairs for which
//     flow.Matrix.MayCross(origin, domain of final) holds;
//   - bind4/bind6: "EE interface . address" -> class, for each address a
//     local EE owns: one lookup both checks that the EE behind the
//     interface owns the address and classifies it (the fast path for the
//     common hop); gwifs: interfaces of local gateway EEs;
//   - reach4/reach6: "overlay interface . address" -> class, for
//     addresses that cross the overlay on a via-gateway flow (flow.Reach):
//     a remote end found there is the gateway on the peer node, whatever
//     the address's own class. It is looked up before cls4/cls6.
//
// Two reserved classes cost no extra rule either: a quarantined member
// keeps its map entries but with the quarantine class, and every verdict
// entry with it on either side drops (deny-quarantine); the controller
// addresses are in cls4/cls6 with the controller class, and every verdict
// entry with it on either side accepts (allow-controller), the quarantine
// class included.
//
// # Semantics
//
// A packet is judged per hop: a hop goes from the packet's origin-side end
// to its final-side end. A local end (an EE interface) is classified by its
// interface, a remote end (through the overlay) by the packet's address. In
// the reply direction of a conntrack entry the roles swap, so a reply
// passes exactly when the flow it answers would pass now: a changed cell or
// a removed member also cuts established flows.
//
//  1. Traffic from or to a quarantined EE (by address or, for a local EE,
//     by its interface) is dropped, except with a controller address:
//     both are reserved classes in the verdict map (see above).
//  2. Traffic from or to a controller address is accepted.
//  3. A local end whose EE does not own the packet's address on that end is
//     either a gateway forwarding someone else's flow or a spoofer: if the
//     EE is not a gateway the packet is dropped (deny-spoofed-source,
//     deny-misrouted); if it is, the flow's origin class must be allowed
//     to cross into the final destination's domain (cross set), else
//     deny-gateway-refused. A forwarded packet keeps its origin source
//     address.
//  4. The hop's two classes select the verdict: intra-domain allow,
//     unrestricted allow, none drop, point-to-point allow only to the
//     cell's roles, via-gateway drop when direct (flow.Matrix.Decide).
//     So the hops of a via-gateway flow pass one by one: origin to its
//     gateway (intra-domain), gateway to gateway (point-to-point), gateway
//     to destination (intra-domain).
//  5. An end that is in no map (a non-member) is dropped (deny-non-member).
//
// # Updates
//
// The first Apply builds the table in one transaction. Every later Apply
// computes the difference to the last applied plan and sends only the
// changed set and map elements as one netlink transaction (one batch,
// atomic in the kernel); chains and rules are created once and keep their
// handles. When only members or the quarantine changed, the difference is
// computed from the changed members alone.
//
// # What it does not do
//
// It filters the forward hook only: traffic between an EE and the node
// itself (input/output) is not judged. A remote end of a hop (through the
// overlay) is known only by the packet's address and, for the reach maps,
// the interface: a packet that keeps its origin address across the
// overlay on a via-gateway flow is judged as a hop with the peer's gateway
// only when the plan lists it in Reach; otherwise it is judged as going
// straight from its origin (and a via-gateway flow is refused, fail
// closed). Reach entries are trusted as given: the plan's author (the
// controller) must list an address on an interface only where the peer's
// WireGuard allowed IPs accept it from that peer alone, the peer's gateway
// node having judged the gateway hop and the origin's right to cross. It trusts the plan's addresses
// and interfaces. It does not notice changes made to its table by someone
// else until a transaction fails, after which the next Apply rebuilds the
// table. Conntrack is on in the node's namespace once the table exists (the
// reply direction is read from it).
package nft
