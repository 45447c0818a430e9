package policy

import (
	"net/netip"
	"time"
)

// The source model: what the YAML documents say, with the position of
// everything a later check may need to point at. Load fills it; Check and
// Compile read it.

// Name is a string with the position it was written at.
type Name struct {
	Value string
	Pos   Pos
}

// Policy is every document loaded from a set of sources.
type Policy struct {
	Domains         []*Domain
	ReferenceValues []*ReferenceValues
	Claims          []*ClaimsDoc
	Issuers         []*Issuer
	Mappings        []*Mapping
	Tests           []*TestsDoc
	// Files lists the source files in load order, with their contents, so a
	// policy version can be stored and reproduced exactly.
	Files []File
}

// File is one policy source file.
type File struct {
	Name    string
	Content []byte
}

// Domain is a Trusted Virtual Domain.
type Domain struct {
	Pos              Pos
	Name             Name
	Owner            string
	Description      string
	Subnet           netip.Prefix
	SubnetPos        Pos
	Roles            []*Role
	Membership       Membership
	Attestation      Attestation
	OnViolation      []Name
	OnControllerLoss Name
	Flows            []*FlowCell
	Requirements     []*Requirement
	Statements       []*Statement
	Administrators   []*Administrator
	Secrets          []*Secret
	Storage          Name // protected storage key scope: "ee" (default) or "domain"
}

// Secret is a domain secret the controller releases to members in good
// standing (issue 9): its value is derived by the controller, never
// written in the policy.
type Secret struct {
	Pos        Pos
	Name       Name
	Roles      []Name // the roles that receive it; empty: every role
	Bytes      int64  // length of the value; default 32
	BytesPos   Pos
	Generation int64 // bump to rotate the value; default 1
	GenPos     Pos
}

// Role is a role EEs take in a domain.
type Role struct {
	Pos         Pos
	Name        Name
	Description string
	Gateway     bool
	Max         int // 0: unlimited
}

// Membership says who may join the domain.
type Membership struct {
	Pos          Pos
	MinAssurance Name // "tpm" (default) or "implicit"
	Isolation    Name // "strong" (default) or "weak"
	Claims       []Name
}

// Attestation says how often members prove their state, and what they may
// run.
type Attestation struct {
	Pos             Pos
	Interval        time.Duration
	IntervalPos     Pos
	Deadline        time.Duration
	DeadlinePos     Pos
	Integrity       Name // "enforce" (default) or "measure"
	ReferenceValues []Name
}

// FlowCell is one cell of the domain's row of the flow matrix: what EEs of
// role From may send to domain To. "*" is a wildcard for either.
type FlowCell struct {
	Pos   Pos
	From  Name
	To    Name
	Rule  Name
	Roles []Name // for point-to-point
}

// Requirement is a functional or quality requirement: a CEL predicate over
// claims.
type Requirement struct {
	Pos     Pos
	ID      Name
	Kind    Name // functional or quality
	Text    string
	Expr    string
	ExprPos Pos
	// exprQuoted is 1 when the expression was a quoted scalar, so positions
	// inside it are shifted by the quote.
	exprQuoted int
}

// Statement is one secure operational policy statement (paper Table 1).
type Statement struct {
	Pos    Pos
	ID     Name
	Type   Name
	Text   string
	Verify *Verify
}

// Verify names how a statement is verified.
type Verify struct {
	Pos             Pos
	By              Name
	Requirements    []Name // by: requirements
	ReferenceValues []Name // by: attestation
	Owner           Name   // by: owner
	Issuers         []Name // by: issuers
}

// Administrator gives a named administrative identity a role in the domain.
type Administrator struct {
	Pos  Pos
	Name Name
	Role Name // domain-admin or auditor
}

// ReferenceValues is a named integrity allowlist.
type ReferenceValues struct {
	Pos         Pos
	Name        Name
	Description string
	Entries     []*RefEntry
}

// RefEntry is one allowed digest.
type RefEntry struct {
	Pos    Pos
	Name   string
	SHA256 [32]byte
}

// ClaimsDoc declares typed claims.
type ClaimsDoc struct {
	Pos    Pos
	Name   Name
	Claims []*ClaimDecl
}

// ClaimDecl declares one claim.
type ClaimDecl struct {
	Pos         Pos
	Name        Name
	Type        Name // bool, int, double, string, list(string)
	Description string
}

// Issuer is a third party trusted to assert claims through mappings.
type Issuer struct {
	Pos         Pos
	Name        Name
	Description string
	PublicKey   string
}

// Mapping is an implementation/mechanism mapping: measured evidence that
// establishes claims, asserted by an issuer.
type Mapping struct {
	Pos         Pos
	Name        Name
	Issuer      Name
	Text        string
	Measured    []Name // reference value sets; any entry measured on the node counts
	Establishes []*ClaimValue
}

// ClaimValue assigns a value to a claim.
type ClaimValue struct {
	Pos   Pos
	Claim Name
	Value any // bool, int64, float64, string or []string as written
}

// TestsDoc is a list of assertions about the policy.
type TestsDoc struct {
	Pos   Pos
	Name  Name
	Tests []*Test
}

// Test is one assertion: a flow (from, to, expect allow or deny) or an
// admission (admit, expect admit or refuse).
type Test struct {
	Pos    Pos
	Name   string
	From   Name
	To     Name
	Expect Name
	Rule   Name
	Via    []Name
	ViaSet bool
	Admit  *AdmitCase
}

// AdmitCase describes a candidate member for an admission test.
type AdmitCase struct {
	Pos       Pos
	Domain    Name
	Role      Name
	Assurance Name
	Isolation Name
	Claims    []*ClaimValue
}
