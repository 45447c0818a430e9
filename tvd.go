// Package tvd holds the shared vocabulary of Trusted Virtual Domains: the
// names every other package uses for assurance levels, verdicts, reactions
// and member identities. It has no behaviour beyond formatting and parsing
// these values, and it imports nothing outside the standard library.
//
// The model follows the IBM Research white paper "Trusted Virtual Domains:
// Secure Foundations for Business and IT Services": a domain (TVD) is a set
// of execution environments (EEs) on nodes, governed by one secure
// operational policy, connected by a protected channel, and managed by a
// domain controller.
package tvd

import (
	"fmt"
	"strings"
)

// Assurance is how strongly a node's platform state has been established.
// Higher values are stronger.
type Assurance int

const (
	// AssuranceNone means nothing has been established about the node.
	AssuranceNone Assurance = iota
	// AssuranceImplicit is trust without hardware evidence: the node was
	// enrolled by a one-time join token (paper, Table 2, case 4).
	AssuranceImplicit
	// AssuranceTPM is trust established by TCG attestation: an EK-backed
	// attestation key quoted the node's measurements (paper, Table 2, case 1).
	AssuranceTPM
)

// ParseAssurance parses the policy spelling of an assurance level.
func ParseAssurance(s string) (Assurance, error) {
	switch s {
	case "none":
		return AssuranceNone, nil
	case "implicit":
		return AssuranceImplicit, nil
	case "tpm":
		return AssuranceTPM, nil
	}
	return AssuranceNone, fmt.Errorf("unknown assurance level %q (want implicit or tpm)", s)
}

func (a Assurance) String() string {
	switch a {
	case AssuranceNone:
		return "none"
	case AssuranceImplicit:
		return "implicit"
	case AssuranceTPM:
		return "tpm"
	}
	return fmt.Sprintf("Assurance(%d)", int(a))
}

// Status is the outcome of checking one policy statement for one member.
// The zero value is StatusUnknown, so a verdict nobody computed is never a
// pass.
type Status int

const (
	// StatusUnknown means the statement could not be checked (no evidence, or
	// the evidence is stale). Unknown is never treated as verified.
	StatusUnknown Status = iota
	// StatusVerified means fresh evidence shows the statement holds.
	StatusVerified
	// StatusViolated means evidence shows the statement does not hold.
	StatusViolated
)

func (s Status) String() string {
	switch s {
	case StatusUnknown:
		return "unknown"
	case StatusVerified:
		return "verified"
	case StatusViolated:
		return "violated"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Reaction is something the domain controller does to a member that violates
// its domain's policy. A domain lists its reactions in the order they run.
type Reaction string

// The reactions, in escalating order (paper, case study 1).
const (
	ReactAlert      Reaction = "alert"      // record and notify; nothing changes
	ReactQuarantine Reaction = "quarantine" // drop all traffic except to the controller
	ReactFreeze     Reaction = "freeze"     // stop the EE's processes for later inspection
	ReactRevoke     Reaction = "revoke"     // withdraw membership and keys at every peer
	ReactRollback   Reaction = "rollback"   // restore the last trusted snapshot, re-attest
)

// Reactions lists every reaction in escalating order.
var Reactions = []Reaction{ReactAlert, ReactQuarantine, ReactFreeze, ReactRevoke, ReactRollback}

// Valid reports whether r is one of the known reactions.
func (r Reaction) Valid() bool {
	for _, k := range Reactions {
		if r == k {
			return true
		}
	}
	return false
}

// Member names one execution environment's membership in a domain.
type Member struct {
	Domain string // the TVD
	Role   string // the EE's role in that domain
	EE     string // the EE's name, unique in the deployment
}

// SPIFFEID returns the member's SPIFFE-compatible identity in trustDomain:
// spiffe://<trust-domain>/domain/<domain>/role/<role>/ee/<ee>.
func (m Member) SPIFFEID(trustDomain string) string {
	return "spiffe://" + trustDomain + "/domain/" + m.Domain + "/role/" + m.Role + "/ee/" + m.EE
}

// ParseSPIFFEID parses an identity produced by Member.SPIFFEID and returns
// its trust domain and member.
func ParseSPIFFEID(id string) (trustDomain string, m Member, err error) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", Member{}, fmt.Errorf("member id %q: want scheme spiffe://", id)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 7 || parts[1] != "domain" || parts[3] != "role" || parts[5] != "ee" {
		return "", Member{}, fmt.Errorf("member id %q: want spiffe://TRUST-DOMAIN/domain/D/role/R/ee/E", id)
	}
	for _, p := range parts {
		if p == "" {
			return "", Member{}, fmt.Errorf("member id %q: empty path segment", id)
		}
	}
	return parts[0], Member{Domain: parts[2], Role: parts[4], EE: parts[6]}, nil
}

func (m Member) String() string { return m.Domain + "/" + m.Role + "/" + m.EE }
