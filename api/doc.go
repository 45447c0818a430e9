// Package api holds the protobuf definitions of the tvd controller's API
// (proto/tvd/v1) and, under gen/, the Go code generated from them:
//
//   - gen/tvd/v1 (package tvdv1): the messages;
//   - gen/tvd/v1/tvdv1connect (package tvdv1connect): Connect handlers and
//     clients for AgentService (node agent ↔ controller), AdminService
//     (administrators and auditors ↔ controller), EEService (tvd ee:
//     administrators drive EEs) and EEAgentService (agents carry migration
//     archives).
//
// This package itself converts between the vocabulary of package tvd and
// the wire types (MemberToProto, StatusFromProto, ...). Unknown wire values
// never become a stronger assurance or a passing status.
//
// The services speak the Connect, gRPC and gRPC-Web protocols over HTTP/2
// with mutual TLS; certificates come from package ca. The generated code is
// committed; scripts/generate.sh regenerates it with pinned versions of buf,
// protoc-gen-go and protoc-gen-connect-go, and `scripts/generate.sh --check`
// fails if it is stale.
//
// Compatibility: within v1, fields and RPCs are only added, never renumbered
// or given a new meaning (buf's FILE breaking-change rules).
package api
