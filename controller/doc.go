// Package controller is the TVD domain controller (paper §2.3): it enrols
// nodes, admits their execution environments into domains by the policy,
// issues short-lived member identities, computes each node's plan
// (members, overlay peers, flow rules, quarantine, reactions) and streams it
// to the node's agent, takes policy versions, and keeps the state of every
// member. Every security-relevant act is recorded through one audit seam.
//
// The controller serves two connect (gRPC-compatible) services over mutual
// TLS: AgentService for node agents and AdminService for administrators.
// Identities come from the deployment CA (package ca); authorisation is
// decided per call from the caller's certificate, and internal errors become
// API codes in exactly one place (errors.go).
//
// State lives in a store.Store (bbolt by default); the controller keeps a
// copy in memory and writes every change through before acknowledging it.
// One controller process owns a store at a time: with etcd, replicas elect
// a leader and only it runs (SharedStore; see cmd/tvd and store/etcd).
//
// # Concurrency
//
// One mutex (c.mu) guards the in-memory state. A report, the hot path, keeps
// its costly parts out of it: a TPM quote is verified and its log replayed
// on a copy of the node's attestation state before the lock is taken
// (preAppraise), and the report's store write is queued under the lock but
// waited for after it is released. Every store write goes through one
// ordered committer (groupStore) that merges concurrent report writes into
// one transaction, so a later write of a key always lands after an earlier
// one; if a write fails for good the controller stops rather than run with
// memory ahead of the store.
package controller
