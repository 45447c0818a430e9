package api

import (
	"fmt"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"

	"github.com/tvd-dev/tvd"
)

// MemberToProto converts a member to its wire form.
func MemberToProto(m tvd.Member) *tvdv1.Member {
	return &tvdv1.Member{Domain: m.Domain, Role: m.Role, Ee: m.EE}
}

// MemberFromProto converts a member from its wire form. Every field must be
// set; whether the names are valid SPIFFE path segments is checked where
// identities are made (package ca), not here.
func MemberFromProto(p *tvdv1.Member) (tvd.Member, error) {
	if p == nil {
		return tvd.Member{}, fmt.Errorf("member: missing (want domain, role and ee)")
	}
	m := tvd.Member{Domain: p.GetDomain(), Role: p.GetRole(), EE: p.GetEe()}
	if m.Domain == "" || m.Role == "" || m.EE == "" {
		return tvd.Member{}, fmt.Errorf("member %q: want domain, role and ee all set", m)
	}
	return m, nil
}

// AssuranceToProto converts an assurance level to its wire form.
func AssuranceToProto(a tvd.Assurance) tvdv1.Assurance {
	switch a {
	case tvd.AssuranceImplicit:
		return tvdv1.Assurance_ASSURANCE_IMPLICIT
	case tvd.AssuranceTPM:
		return tvdv1.Assurance_ASSURANCE_TPM
	}
	return tvdv1.Assurance_ASSURANCE_UNSPECIFIED
}

// AssuranceFromProto converts an assurance level from its wire form; an
// unknown value is an error, never a stronger level.
func AssuranceFromProto(a tvdv1.Assurance) (tvd.Assurance, error) {
	switch a {
	case tvdv1.Assurance_ASSURANCE_UNSPECIFIED:
		return tvd.AssuranceNone, nil
	case tvdv1.Assurance_ASSURANCE_IMPLICIT:
		return tvd.AssuranceImplicit, nil
	case tvdv1.Assurance_ASSURANCE_TPM:
		return tvd.AssuranceTPM, nil
	}
	return tvd.AssuranceNone, fmt.Errorf("assurance %d: want unspecified, implicit or tpm", int32(a))
}

// StatusToProto converts a verdict status to its wire form.
func StatusToProto(s tvd.Status) tvdv1.Status {
	switch s {
	case tvd.StatusVerified:
		return tvdv1.Status_STATUS_VERIFIED
	case tvd.StatusViolated:
		return tvdv1.Status_STATUS_VIOLATED
	}
	return tvdv1.Status_STATUS_UNSPECIFIED
}

// StatusFromProto converts a verdict status from its wire form; an unknown
// value becomes tvd.StatusUnknown, which is never a pass.
func StatusFromProto(s tvdv1.Status) tvd.Status {
	switch s {
	case tvdv1.Status_STATUS_VERIFIED:
		return tvd.StatusVerified
	case tvdv1.Status_STATUS_VIOLATED:
		return tvd.StatusViolated
	}
	return tvd.StatusUnknown
}

var reactions = map[tvd.Reaction]tvdv1.Reaction{
	tvd.ReactAlert:      tvdv1.Reaction_REACTION_ALERT,
	tvd.ReactQuarantine: tvdv1.Reaction_REACTION_QUARANTINE,
	tvd.ReactFreeze:     tvdv1.Reaction_REACTION_FREEZE,
	tvd.ReactRevoke:     tvdv1.Reaction_REACTION_REVOKE,
	tvd.ReactRollback:   tvdv1.Reaction_REACTION_ROLLBACK,
}

// ReactionToProto converts a reaction to its wire form.
func ReactionToProto(r tvd.Reaction) (tvdv1.Reaction, error) {
	if p, ok := reactions[r]; ok {
		return p, nil
	}
	return tvdv1.Reaction_REACTION_UNSPECIFIED, fmt.Errorf("reaction %q: want one of %v", r, tvd.Reactions)
}

// ReactionFromProto converts a reaction from its wire form.
func ReactionFromProto(p tvdv1.Reaction) (tvd.Reaction, error) {
	for r, q := range reactions {
		if q == p {
			return r, nil
		}
	}
	return "", fmt.Errorf("reaction %d: want alert, quarantine, freeze, revoke or rollback", int32(p))
}
