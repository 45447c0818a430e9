// Package monitor is the EE Monitor of the paper (§2.5, Table 2): it measures
// every program executed inside an execution environment (EE) before the
// program runs and, in enforce mode, refuses programs that are not on the
// EE's allowlist.
//
// The monitor is Linux-only. It uses fanotify permission events
// (FAN_OPEN_EXEC_PERM): the kernel stops every execve of a file on an EE's
// root filesystem until the monitor answers. For each event the monitor
// hashes the file with SHA-256 through the file descriptor the kernel hands
// over (so replacing the file by path after the check gains nothing), asks
// the caller's allowlist, answers FAN_ALLOW or FAN_DENY (a denied execve
// fails with EPERM), and delivers an Event to the caller's sink before it
// answers, so a sink that extends the measurement into a TPM records it
// before the code runs.
//
// Each EE root must be its own filesystem (normally the EE's overlayfs
// mount). The monitor marks the whole filesystem (FAN_MARK_FILESYSTEM), so an
// exec through any mount of it, in any mount namespace (the EE's own, or a
// bind mount), is caught; a FAN_MARK_MOUNT mark would not follow the mount
// into the EE's mount namespace. Each EE has its own fanotify group, so an
// event is attributed to its EE by the group it arrives on.
//
// The process that runs a Monitor must never itself exec a file on a watched
// filesystem: Go's os/exec forks with vfork, so the forking thread stalls
// until the monitor answers, and a garbage collection in that window stops
// the monitor's goroutines too: the process deadlocks. Start programs inside
// an EE from another process (the EE's init, or a re-executed helper).
//
// What the monitor does NOT check:
//
//   - Code that is not started by execve of a file on the EE root
//     filesystem: shared libraries mapped by the dynamic loader (the loader
//     itself is measured), scripts
//     read by an interpreter ("sh x.sh"; "./x.sh" is measured, with its
//     interpreter), code loaded by interpreters or JITs, and executables on
//     other filesystems mounted inside the EE (a tmpfs /tmp or /dev/shm,
//     memfd_create + execveat). The isolation driver must mount every other
//     writable filesystem of the EE noexec and set vm.memfd_noexec=2 in the
//     EE's pid namespace.
//   - A process that opens the file for writing in the instant between the
//     monitor's answer and the kernel's deny-write-on-exec can change the
//     content after it was measured. (A file already open for writing makes
//     the exec fail with ETXTBSY, and the monitor refuses in enforce mode,
//     or reports in measure mode, a change it sees while hashing; writes
//     made from the host directly to an overlay layer are not stopped by
//     ETXTBSY, but the next exec re-measures them.)
//   - When the monitor's fanotify group is closed (Unwatch, Close, or the
//     process dies) the kernel allows every pending and later exec on that
//     filesystem. The agent must treat a dead monitor as a violation.
//   - The allowlist's content: the monitor only reports which name the
//     allowlist gave a digest.
package monitor
