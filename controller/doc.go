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
// One controller process owns a store at a time.
package controller
