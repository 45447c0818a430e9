// Package lab builds a whole TVD deployment on one Linux machine
// (ARCHITECTURE §7): a domain controller process, and per node a network
// namespace with its own swtpm (EK certificate from a lab CA) and its own
// `tvd agent` process attested at assurance tpm, all wired to an underlay
// bridge. A scenario file (Scenario) names the policy, the nodes and the
// EEs each node hosts, and images to build first (Image: the busybox base
// plus a Go main package compiled with CGO_ENABLED=0, into LABDIR/images,
// with its allowlist measured into the policy's named ReferenceValues).
//
// Up creates the lab and waits until every EE is a verified member; Down
// removes everything by name (namespaces and links starting with Prefix,
// processes recorded in LABDIR/lab.json or naming LABDIR on their command
// line), also after a crashed Up; Status reads the controller's view
// through api/client; State.Resolve and Target.Command run a command inside
// a node (and, once EEs are containers, inside an EE); Expect lists every
// ordered pair of EEs with the policy's decision, for `tvd lab check`.
//
// On the host the lab owns: the namespaces tvdlab-ul (the underlay bridge
// tvdlab-br) and tvdlab-NODE, the host link tvdlab-host with 10.250.0.1/24
// (where the controller listens), and the directory LABDIR. It touches no
// other address, link or firewall rule of the host.
//
// What the lab does not provide yet: EEs are declarations the agent
// reports, not containers, so they run no workload and have weak isolation
// (the lab lowers the policy's "isolation: strong" in its applied copy and
// says so); the agents program no data plane, so `tvd lab check` (real
// packets for every pair of EEs) is not possible yet.
package lab
