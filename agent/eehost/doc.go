// Package eehost is the node agent's EE host, the paper's container (§2.3)
// for execution environments: it creates and runs the node's EEs with an
// isolation driver (ee/linux, or ee/process for development without root),
// puts each EE's root under the EE Monitor (ee/monitor), reports every
// measured exec to the agent, and carries out the controller's reactions
// on EEs: freeze (cgroup freezer) and rollback (restore the last trusted
// snapshot, restart, re-measure). It also carries out the operations an
// administrator drives through the controller (tvd ee, see ops.go): create
// an EE at run time (optionally restoring a migrated EE's archive before its
// first exec), start, stop, freeze, thaw, snapshot, restore, logs, remove.
//
// # How an EE's execs reach the monitor
//
// The monitor marks a whole filesystem (FAN_MARK_FILESYSTEM) that must be
// mounted in the agent's own mount namespace, while the linux driver
// mounts each EE's overlay inside the EE's private mount namespace, where
// the agent cannot name it, and starts the workload at once. So the host
// gives every EE a filesystem of its own in the agent's namespace (a tmpfs
// at DataDir/ees/<ee>, size Config.FSBytes) holding a verified copy of the
// image (the overlay's lower layer) and the driver's upper and work
// directories (bind-mounted over the driver's state directory for the
// EE). The overlay opens every file it executes from that filesystem, so
// the kernel raises the exec permission event on it too, and the mark is
// placed before the driver starts the workload: the first program the EE
// runs is measured like every later one.
//
// Every monitor event becomes one call of Config.Measure (the agent's
// Measure: TPM extend, log append, immediate report). A program already
// measured in the EE with the same path and digest is not measured again
// (as IMA does) until the EE is rolled back; a failed Measure is retried
// at the next exec, and the EE is frozen and reported FAILED, since the
// code ran without its measurement on record.
//
// # The Workload API socket
//
// An EE whose configuration carries a WorkloadDir (the agent sets it) gets
// that directory bind-mounted at /run/tvd (ee/linux), where package
// workload finds /run/tvd/workload.sock; with the process driver the EE's
// environment names the socket in TVD_WORKLOAD_SOCKET instead.
//
// # What the host does NOT do
//
//   - Measure anything with the process driver: its EEs are directories on
//     the host's filesystem, which the monitor cannot mark (and the driver
//     isolates nothing anyway). Only the image is measured at start.
//   - Keep EE state across agent restarts: each EE's filesystem is a tmpfs
//     (memory, capped by Config.FSBytes, holding a full copy of the image),
//     Close destroys every EE, and NewDriver removes what an agent that
//     died left behind, so every agent start recreates the EEs from their
//     images. Trusted snapshots are files in DataDir/snapshots and go with
//     their EE.
//   - Close the monitor's blind spots (see ee/monitor): code not started by
//     execve of a file on the EE's filesystem is not measured. In
//     particular memfd_create + execveat is not stopped unless the driver
//     sets vm.memfd_noexec=2 in the EE's pid namespace, which ee/linux
//     does not do yet.
//   - Re-measure a program that runs again unchanged: the agent's log
//     holds one entry per (EE, path, content) between rollbacks.
//   - Decide what is trusted: MarkTrusted snapshots whatever the EE holds
//     when the agent calls it, and Lookup is the agent's allowlist.
//   - Quarantine: that is the data plane's; Do accepts it and does nothing.
package eehost
