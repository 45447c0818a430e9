// Package policy parses, checks and compiles TVD policies.
//
// A policy is a set of YAML documents, from one file, several files or a
// directory of files. Each document has a kind:
//
//   - Domain: one Trusted Virtual Domain: owner, roles, membership rules,
//     attestation settings, reactions on violation, behaviour on controller
//     loss, overlay subnet, its row of the cross-domain flow matrix,
//     functional and quality requirements (CEL predicates over claims), the
//     statements of the paper's Table 1 (each naming its verifier) and who
//     administers and audits it;
//   - ReferenceValues: a named integrity allowlist of SHA-256 digests;
//   - Claims: typed claims that requirements may use;
//   - Issuer: a third party trusted to assert claims;
//   - Mapping: an implementation/mechanism mapping: which measured evidence
//     establishes which claim, asserted by which issuer;
//   - Tests: assertions the policy must keep satisfying.
//
// Load reads sources, Check reports every problem at once as
// file:line:col: message, and Compile turns a checked policy into the
// deterministic compiled form (a flow.Matrix for flow decisions, and per
// domain the requirements, reference values and reactions) that the
// controller, the agents and the enforcement points consume.
//
// The package is pure: it performs no networking and touches no store. The
// only files it reads are the policy sources given to Load and, for
// Measure, the directory being measured.
package policy
