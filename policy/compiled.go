package policy

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"cel.dev/cel-go/cel"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/flow"
)

// Compiled is the compiled form of a checked policy: what the controller,
// the agents and the enforcement points consume. It is deterministic: the
// same sources give the same JSON and the same Version. It is immutable and
// safe for concurrent use.
type Compiled struct {
	// Version is "sha256:" and the hex SHA-256 of the compiled form's
	// canonical JSON (with Version empty).
	Version         string          `json:"version"`
	Domains         []*DomainPolicy `json:"domains"`
	Flows           []flow.Row      `json:"flows"`
	ReferenceValues []*RefSet       `json:"referenceValues,omitempty"`
	Claims          []ClaimType     `json:"claims,omitempty"`
	Issuers         []IssuerInfo    `json:"issuers,omitempty"`
	Mappings        []*MappingC     `json:"mappings,omitempty"`

	// Matrix answers flow decisions.
	Matrix *flow.Matrix `json:"-"`

	byDomain map[string]*DomainPolicy
	refSets  map[string]*RefSet
	env      *cel.Env
	source   *Policy
}

// DomainPolicy is one compiled domain.
type DomainPolicy struct {
	Name             string         `json:"name"`
	Owner            string         `json:"owner"`
	Description      string         `json:"description,omitempty"`
	Subnet           string         `json:"subnet,omitempty"`
	Roles            []RoleC        `json:"roles"`
	MinAssurance     string         `json:"minAssurance"`
	Isolation        string         `json:"isolation"`
	RequiredClaims   []string       `json:"requiredClaims,omitempty"`
	Interval         Duration       `json:"interval"`
	Deadline         Duration       `json:"deadline"`
	Integrity        string         `json:"integrity"`
	ReferenceValues  []string       `json:"referenceValues,omitempty"`
	Reactions        []tvd.Reaction `json:"reactions"`
	OnControllerLoss string         `json:"onControllerLoss"`
	Requirements     []RequirementC `json:"requirements,omitempty"`
	Statements       []StatementC   `json:"statements"`
	Administrators   []AdminC       `json:"administrators,omitempty"`
	// Secrets are the domain's secrets; the controller derives their
	// values and releases them to members in good standing.
	Secrets []SecretC `json:"secrets,omitempty"`
	// Storage is the scope of the protected storage key: "ee" (one key
	// per EE; the default, written as "") or "domain" (one key shared by
	// the domain's members).
	Storage string `json:"storage,omitempty"`

	assurance tvd.Assurance
	allow     map[[32]byte]string
	programs  []cel.Program
}

// SecretC is a compiled secret declaration.
type SecretC struct {
	Name       string   `json:"name"`
	Roles      []string `json:"roles,omitempty"` // empty: every role
	Bytes      int      `json:"bytes"`
	Generation int      `json:"generation"`
}

// SecretFor returns the declaration of secret name if a member in role
// may receive it.
func (d *DomainPolicy) SecretFor(name, role string) (SecretC, bool) {
	for _, s := range d.Secrets {
		if s.Name == name && (len(s.Roles) == 0 || slices.Contains(s.Roles, role)) {
			return s, true
		}
	}
	return SecretC{}, false
}

// RoleC is a compiled role.
type RoleC struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Gateway     bool   `json:"gateway,omitempty"`
	Max         int    `json:"max,omitempty"`
}

// RequirementC is a compiled requirement.
type RequirementC struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	Text string `json:"text,omitempty"`
	Expr string `json:"expr"`
}

// StatementC is a compiled statement with the verifier that checks it.
type StatementC struct {
	ID              string   `json:"id"`
	Type            string   `json:"type"`
	Text            string   `json:"text"`
	Verifier        string   `json:"verifier"`
	Requirements    []string `json:"requirements,omitempty"`
	ReferenceValues []string `json:"referenceValues,omitempty"`
	Owner           string   `json:"owner,omitempty"`
	Issuers         []string `json:"issuers,omitempty"`
}

// AdminC gives an administrative identity a role in a domain.
type AdminC struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// RefSet is a compiled reference value set.
type RefSet struct {
	Name        string     `json:"name"`
	Description string     `json:"description,omitempty"`
	Entries     []RefValue `json:"entries"`
}

// RefValue is one allowed digest.
type RefValue struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// ClaimType declares one claim.
type ClaimType struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// IssuerInfo describes a trusted issuer.
type IssuerInfo struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	PublicKey   string `json:"publicKey,omitempty"`
}

// MappingC is a compiled mechanism mapping.
type MappingC struct {
	Name        string         `json:"name"`
	Issuer      string         `json:"issuer"`
	Text        string         `json:"text,omitempty"`
	Measured    []string       `json:"measured"`
	Establishes map[string]any `json:"establishes"`
}

// Duration is a time.Duration that reads and writes as "10s".
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// Domain returns the named compiled domain.
func (c *Compiled) Domain(name string) (*DomainPolicy, bool) {
	d, ok := c.byDomain[name]
	return d, ok
}

// RefSet returns the named reference value set.
func (c *Compiled) RefSet(name string) (*RefSet, bool) {
	r, ok := c.refSets[name]
	return r, ok
}

// Source returns the policy the compiled form was made from.
func (c *Compiled) Source() *Policy { return c.source }

// Assurance returns the domain's minimum assurance level.
func (d *DomainPolicy) Assurance() tvd.Assurance { return d.assurance }

// Allowed looks a measured digest up in the domain's reference values and
// returns the name it is listed under.
func (d *DomainPolicy) Allowed(digest [32]byte) (name string, ok bool) {
	name, ok = d.allow[digest]
	return name, ok
}

// Role returns the named role.
func (d *DomainPolicy) Role(name string) (RoleC, bool) {
	for _, r := range d.Roles {
		if r.Name == name {
			return r, true
		}
	}
	return RoleC{}, false
}

// GatewayRoles returns the names of the domain's gateway roles.
func (d *DomainPolicy) GatewayRoles() []string {
	var out []string
	for _, r := range d.Roles {
		if r.Gateway {
			out = append(out, r.Name)
		}
	}
	return out
}
