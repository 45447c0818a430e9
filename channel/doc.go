// Package channel is the per-domain protected channel of tvd: an encrypted,
// authenticated WireGuard overlay that only a domain's admitted members hold
// keys for. There is one WireGuard interface and one key pair per (node,
// domain).
//
// Two data planes implement the same API:
//
//   - [Interface] (see [New]) runs wireguard-go on a kernel TUN device,
//     optionally created inside a network namespace, with its overlay
//     address and routes programmed over netlink. Kernel WireGuard is
//     detected (by trying to create a link of type wireguard) and logged,
//     but this package always uses wireguard-go: the kernel path would need
//     wgctrl, which is not a dependency of the module.
//   - [Userspace] (see [NewUserspace]) runs wireguard-go over the gVisor
//     netstack, for development without root and for the process isolation
//     driver: the caller dials and listens on [Userspace.Net], and the
//     underlay is an ordinary UDP socket, optionally bound to one address
//     such as 127.0.0.1 (Config.ListenAddr). Given a flow plan
//     ([WithFlowPlan]), the interface is filtered in the process by package
//     channel/filter, with flow/nft's decisions and counter names; a gateway
//     EE's interface ([WithGateway]) also forwards between domains, keeping
//     the origin address.
//
// [InterfaceName] gives the conventional interface name for a domain, and
// [LoadOrCreateKey] the node's persistent key for it.
//
// Peer sets are applied incrementally: [Interface.SetPeers] computes the
// difference to the current peers and sends wireguard-go only the additions,
// removals and changes, so the sessions of unchanged peers survive.
// Revocation is removing a peer: once SetPeers returns, the removed peer's
// handshakes and transport packets are rejected.
//
// Private keys never leave the node: they are persisted with 0600
// permissions by [LoadOrCreateKey], are never logged, and [PrivateKey]
// formats itself as a redacted string.
//
// What the channel does NOT do: it does not decide who is a member (the
// controller does, and hands the agent the peer list), it does not filter
// cross-domain traffic on the TUN plane (flow/nft does; the userspace plane
// filters with channel/filter when given a plan), and it does not authenticate
// underlay endpoints beyond what WireGuard's Noise handshake proves (that the
// sender holds the private key of a configured peer).
package channel
