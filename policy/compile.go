package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/flow"
)

// Defaults applied where a Domain leaves a setting out.
const (
	DefaultInterval         = 10 * time.Second
	DefaultDeadlineFactor   = 3
	DefaultOnControllerLoss = "keep-intra"
)

// Statement types of the paper's Table 1, and the verifiers that can check
// each. A statement no verifier can check is an error (paper §2.2: "each
// policy statement must be verifiable").
var verifiersFor = map[string][]string{
	"ownership":           {"owner"},
	"information-flow":    {"flow-matrix"},
	"access-control":      {"member-identity", "admin-rbac", "requirements"},
	"channel-protection":  {"overlay"},
	"user-authentication": {"member-identity", "admin-rbac"},
	"monitoring-auditing": {"audit-log"},
	"platform-assurance":  {"attestation", "requirements"},
	"third-party-trust":   {"issuers"},
	"operational-policy":  {"requirements"},
}

// VerifierDoc says, for each verifier, what it checks. explain prints it.
var VerifierDoc = map[string]string{
	"owner":           "the controller checks that every member EE was created by the named owner",
	"flow-matrix":     "every node hosting members acknowledges the compiled flow rules, and the node firewall enforces them outside the EE",
	"member-identity": "members authenticate with short-lived X.509 member certificates from the deployment CA, renewed only while appraisal passes",
	"admin-rbac":      "administrators authenticate with client certificates whose role (admin, domain-admin, auditor) limits what they may do",
	"requirements":    "the listed CEL requirements evaluate to true over the member's claims",
	"overlay":         "members talk over the domain's WireGuard overlay (Curve25519, ChaCha20-Poly1305); every node reports the overlay up with the planned peers",
	"audit-log":       "every security-relevant act is an entry in the tamper-evident Merkle audit log with signed checkpoints",
	"attestation":     "the node's TPM quotes its measurements over a fresh nonce, and every measurement is in the listed reference values",
	"issuers":         "every claim the domain relies on is asserted by one of the listed issuers",
}

var (
	reqKinds          = []string{"functional", "quality"}
	assurances        = []string{"implicit", "tpm"}
	isolations        = []string{"strong", "weak"}
	integrityModes    = []string{"enforce", "measure"}
	controllerLoss    = []string{"keep-intra", "keep-all", "isolate"}
	adminRoles        = []string{"domain-admin", "auditor"}
	statementTypes    = sortedKeys(verifiersFor)
	allVerifiers      = sortedKeys(VerifierDoc)
	reactionSpellings = func() []string {
		var out []string
		for _, r := range tvd.Reactions {
			out = append(out, string(r))
		}
		return out
	}()
)

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Check reports every problem in the policy at once, as Errors.
func (p *Policy) Check() error {
	_, err := p.Compile()
	return err
}

// compiler holds the state of one compilation.
type compiler struct {
	p       *Policy
	e       errs
	out     *Compiled
	domains map[string]*Domain
	refSets map[string]*ReferenceValues
	claims  map[string]string // name -> type
	issuers map[string]*Issuer
	maps    map[string]*Mapping
}

// Compile checks the policy and returns its compiled form. Every problem is
// reported at once, as Errors, and nothing is returned then.
func (p *Policy) Compile() (*Compiled, error) {
	c := &compiler{
		p:       p,
		out:     &Compiled{byDomain: map[string]*DomainPolicy{}, refSets: map[string]*RefSet{}, source: p},
		domains: map[string]*Domain{},
		refSets: map[string]*ReferenceValues{},
		claims:  map[string]string{},
		issuers: map[string]*Issuer{},
		maps:    map[string]*Mapping{},
	}
	c.index()
	env, err := newEnv(c.claims)
	if err != nil {
		return nil, fmt.Errorf("compile policy: claim environment: %w", err)
	}
	c.out.env = env
	c.compileRefSets()
	c.compileMappings()
	names := sortedKeys(c.domains)
	for _, n := range names {
		c.compileDomain(c.domains[n])
	}
	c.checkSubnets()
	c.compileFlows(names)
	c.checkTests()
	if err := c.e.err(); err != nil {
		return nil, err
	}
	c.out.Version = ""
	b, err := json.Marshal(c.out)
	if err != nil {
		return nil, fmt.Errorf("compile policy: encode: %w", err)
	}
	sum := sha256.Sum256(b)
	c.out.Version = "sha256:" + hex.EncodeToString(sum[:])
	return c.out, nil
}

// index builds the name tables and reports duplicates.
func (c *compiler) index() {
	dup := func(m map[string]Pos, kind string, n Name) bool {
		if n.Value == "" {
			return true
		}
		if first, ok := m[n.Value]; ok {
			c.e.add(n.Pos, "duplicate %s %q; first defined at %s", kind, n.Value, first)
			return true
		}
		m[n.Value] = n.Pos
		return false
	}
	seen := map[string]Pos{}
	for _, d := range c.p.Domains {
		if !dup(seen, "Domain", d.Name) {
			c.domains[d.Name.Value] = d
		}
	}
	seen = map[string]Pos{}
	for _, r := range c.p.ReferenceValues {
		if !dup(seen, "ReferenceValues", r.Name) {
			c.refSets[r.Name.Value] = r
		}
	}
	seen = map[string]Pos{}
	for _, is := range c.p.Issuers {
		if !dup(seen, "Issuer", is.Name) {
			c.issuers[is.Name.Value] = is
		}
		if is.PublicKey != "" && !validPublicKey(is.PublicKey) {
			c.e.add(is.Pos, "issuer %q: publicKey must be ed25519:BASE64 (32 bytes); got %q", is.Name.Value, is.PublicKey)
		}
	}
	seen = map[string]Pos{}
	for _, m := range c.p.Mappings {
		if !dup(seen, "Mapping", m.Name) {
			c.maps[m.Name.Value] = m
		}
	}
	seen = map[string]Pos{}
	for _, t := range c.p.Tests {
		dup(seen, "Tests", t.Name)
	}
	for n, t := range builtinClaims {
		c.claims[n] = t
	}
	claimPos := map[string]Pos{}
	for _, cd := range c.p.Claims {
		for _, cl := range cd.Claims {
			n := cl.Name.Value
			if n == "" {
				continue
			}
			if !validClaimName(n) {
				c.e.add(cl.Name.Pos, "claim name %q must be node.NAME or ee.NAME, NAME made of lower-case letters, digits and underscores", n)
				continue
			}
			if _, ok := builtinClaims[n]; ok {
				c.e.add(cl.Name.Pos, "claim %q is built in; choose another name", n)
				continue
			}
			if first, ok := claimPos[n]; ok {
				c.e.add(cl.Name.Pos, "duplicate claim %q; first declared at %s", n, first)
				continue
			}
			if !isOneOf(cl.Type.Value, claimTypes...) {
				c.e.add(cl.Type.Pos, "claim %q: unknown type %q; expected one of: %s%s", n, cl.Type.Value, strings.Join(claimTypes, ", "), suggest(cl.Type.Value, claimTypes))
				continue
			}
			claimPos[n] = cl.Name.Pos
			c.claims[n] = cl.Type.Value
		}
	}
}

func validClaimName(n string) bool {
	scope, rest, ok := strings.Cut(n, ".")
	if !ok || (scope != "node" && scope != "ee") || rest == "" || len(rest) > 64 {
		return false
	}
	for _, r := range rest {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

func (c *compiler) compileRefSets() {
	for _, n := range sortedKeys(c.refSets) {
		r := c.refSets[n]
		rs := &RefSet{Name: n, Description: r.Description}
		if len(r.Entries) == 0 {
			c.e.add(r.Pos, "ReferenceValues %q has no entries", n)
		}
		for _, e := range r.Entries {
			if e.Name == "" {
				c.e.add(e.Pos, "reference value needs a name")
			}
			rs.Entries = append(rs.Entries, RefValue{Name: e.Name, SHA256: hex.EncodeToString(e.SHA256[:])})
		}
		c.out.ReferenceValues = append(c.out.ReferenceValues, rs)
		c.out.refSets[n] = rs
	}
	for _, n := range sortedKeys(c.claims) {
		c.out.Claims = append(c.out.Claims, ClaimType{Name: n, Type: c.claims[n]})
	}
	for _, n := range sortedKeys(c.issuers) {
		is := c.issuers[n]
		c.out.Issuers = append(c.out.Issuers, IssuerInfo{Name: n, Description: is.Description, PublicKey: is.PublicKey})
	}
}

func (c *compiler) compileMappings() {
	for _, n := range sortedKeys(c.maps) {
		m := c.maps[n]
		mc := &MappingC{Name: n, Issuer: m.Issuer.Value, Text: m.Text, Establishes: map[string]any{}}
		if _, ok := c.issuers[m.Issuer.Value]; !ok && m.Issuer.Value != "" {
			c.e.add(m.Issuer.Pos, "mapping %q: issuer %q is not defined; expected the name of an Issuer document%s", n, m.Issuer.Value, suggest(m.Issuer.Value, sortedKeys(c.issuers)))
		}
		if len(m.Measured) == 0 {
			c.e.add(m.Pos, "mapping %q: measured lists no reference value sets; a mapping must name the evidence that establishes its claims", n)
		}
		for _, ms := range m.Measured {
			c.refSet(ms, "mapping "+quote(n))
			mc.Measured = append(mc.Measured, ms.Value)
		}
		if len(m.Establishes) == 0 {
			c.e.add(m.Pos, "mapping %q establishes no claim", n)
		}
		for _, cv := range m.Establishes {
			t, ok := c.claims[cv.Claim.Value]
			switch {
			case !ok:
				c.e.add(cv.Claim.Pos, "mapping %q: claim %q is not declared; declare it in a Claims document%s", n, cv.Claim.Value, suggest(cv.Claim.Value, sortedKeys(c.claims)))
			case builtinClaims[cv.Claim.Value] != "":
				c.e.add(cv.Claim.Pos, "mapping %q: claim %q is built in and set by the controller; a mapping cannot establish it", n, cv.Claim.Value)
			case cv.Value != nil && !valueMatches(cv.Value, t):
				c.e.add(cv.Pos, "mapping %q: claim %q has type %s; got a %s value", n, cv.Claim.Value, t, typeName(cv.Value))
			default:
				mc.Establishes[cv.Claim.Value] = normalize(cv.Value, t)
			}
		}
		c.out.Mappings = append(c.out.Mappings, mc)
	}
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// refSet reports a dangling reference value set name.
func (c *compiler) refSet(n Name, where string) bool {
	if _, ok := c.refSets[n.Value]; ok {
		return true
	}
	c.e.add(n.Pos, "%s: reference value set %q is not defined; expected the name of a ReferenceValues document%s", where, n.Value, suggest(n.Value, sortedKeys(c.refSets)))
	return false
}

// choice reports a value that is not one of the options.
func (c *compiler) choice(n Name, what string, options []string) bool {
	if isOneOf(n.Value, options...) {
		return true
	}
	c.e.add(n.Pos, "unknown %s %q; expected one of: %s%s", what, n.Value, strings.Join(options, ", "), suggest(n.Value, options))
	return false
}

func (c *compiler) compileDomain(d *Domain) {
	dn := d.Name.Value
	where := "domain " + quote(dn)
	out := &DomainPolicy{
		Name: dn, Owner: d.Owner, Description: d.Description,
		allow: map[[32]byte]string{},
	}
	if d.Owner == "" {
		c.e.add(d.Pos, "%s: owner must not be empty; name the party that owns the domain", where)
	}
	if d.Subnet.IsValid() {
		out.Subnet = d.Subnet.String()
	}

	// Roles.
	if len(d.Roles) == 0 {
		c.e.add(d.Pos, "%s declares no roles; every EE joins in a role", where)
	}
	if len(d.Roles) > flow.MaxRoles {
		c.e.add(d.Pos, "%s declares %d roles; at most %d are allowed", where, len(d.Roles), flow.MaxRoles)
	}
	rolePos := map[string]Pos{}
	for _, r := range d.Roles {
		if r.Name.Value == "" {
			continue
		}
		if first, ok := rolePos[r.Name.Value]; ok {
			c.e.add(r.Name.Pos, "%s: duplicate role %q; first defined at %s", where, r.Name.Value, first)
			continue
		}
		rolePos[r.Name.Value] = r.Name.Pos
		out.Roles = append(out.Roles, RoleC{Name: r.Name.Value, Description: r.Description, Gateway: r.Gateway, Max: r.Max})
	}

	// Membership.
	m := d.Membership
	out.MinAssurance = "tpm"
	if m.MinAssurance.Value != "" && c.choice(m.MinAssurance, "minAssurance", assurances) {
		out.MinAssurance = m.MinAssurance.Value
	}
	out.assurance, _ = tvd.ParseAssurance(out.MinAssurance)
	out.Isolation = "strong"
	if m.Isolation.Value != "" && c.choice(m.Isolation, "isolation", isolations) {
		out.Isolation = m.Isolation.Value
	}
	for _, cl := range m.Claims {
		t, ok := c.claims[cl.Value]
		switch {
		case !ok:
			c.e.add(cl.Pos, "%s: membership claim %q is not declared; declare it in a Claims document%s", where, cl.Value, suggest(cl.Value, sortedKeys(c.claims)))
		case t != "bool":
			c.e.add(cl.Pos, "%s: membership claim %q has type %s; a required claim must be bool (use a requirement for other tests)", where, cl.Value, t)
		default:
			out.RequiredClaims = append(out.RequiredClaims, cl.Value)
		}
	}

	// Attestation.
	a := d.Attestation
	out.Interval = Duration(DefaultInterval)
	if a.Interval > 0 {
		out.Interval = Duration(a.Interval)
	}
	out.Deadline = Duration(DefaultDeadlineFactor * time.Duration(out.Interval))
	if a.Deadline > 0 {
		out.Deadline = Duration(a.Deadline)
		if a.Deadline <= time.Duration(out.Interval) {
			c.e.add(a.DeadlinePos, "%s: deadline %v must be longer than the interval %v, or every member would miss it", where, a.Deadline, time.Duration(out.Interval))
		}
	}
	out.Integrity = "enforce"
	if a.Integrity.Value != "" && c.choice(a.Integrity, "integrity mode", integrityModes) {
		out.Integrity = a.Integrity.Value
	}
	for _, rv := range a.ReferenceValues {
		if c.refSet(rv, where) {
			out.ReferenceValues = append(out.ReferenceValues, rv.Value)
			for _, e := range c.refSets[rv.Value].Entries {
				if _, ok := out.allow[e.SHA256]; !ok {
					out.allow[e.SHA256] = rv.Value + "/" + e.Name
				}
			}
		}
	}
	if out.Integrity == "enforce" && len(a.ReferenceValues) == 0 {
		p := a.Pos
		if p.Line == 0 {
			p = d.Pos
		}
		c.e.add(p, "%s: integrity is enforce but attestation lists no referenceValues; every executable would be refused. List reference values, or set integrity: measure", where)
	}

	// Reactions.
	seenR := map[string]bool{}
	for _, r := range d.OnViolation {
		if !c.choice(r, "reaction", reactionSpellings) {
			continue
		}
		if seenR[r.Value] {
			c.e.add(r.Pos, "%s: reaction %q listed twice", where, r.Value)
			continue
		}
		seenR[r.Value] = true
		out.Reactions = append(out.Reactions, tvd.Reaction(r.Value))
	}
	if len(out.Reactions) == 0 {
		out.Reactions = []tvd.Reaction{tvd.ReactAlert}
	}
	out.OnControllerLoss = DefaultOnControllerLoss
	if d.OnControllerLoss.Value != "" && c.choice(d.OnControllerLoss, "onControllerLoss", controllerLoss) {
		out.OnControllerLoss = d.OnControllerLoss.Value
	}

	// Requirements.
	reqPos := map[string]Pos{}
	for _, r := range d.Requirements {
		if r.ID.Value == "" {
			continue
		}
		if first, ok := reqPos[r.ID.Value]; ok {
			c.e.add(r.ID.Pos, "%s: duplicate requirement %q; first defined at %s", where, r.ID.Value, first)
			continue
		}
		reqPos[r.ID.Value] = r.ID.Pos
		c.choice(r.Kind, "requirement kind", reqKinds)
		prg := compileExpr(c.out.env, r, &c.e)
		out.Requirements = append(out.Requirements, RequirementC{ID: r.ID.Value, Kind: r.Kind.Value, Text: r.Text, Expr: r.Expr})
		out.programs = append(out.programs, prg)
	}

	// Statements.
	stPos := map[string]Pos{}
	if len(d.Statements) == 0 {
		c.e.add(d.Pos, "%s has no statements; a domain's policy must state what it guarantees (paper Table 1)", where)
	}
	for _, s := range d.Statements {
		if s.ID.Value == "" {
			continue
		}
		if first, ok := stPos[s.ID.Value]; ok {
			c.e.add(s.ID.Pos, "%s: duplicate statement %q; first defined at %s", where, s.ID.Value, first)
			continue
		}
		stPos[s.ID.Value] = s.ID.Pos
		if st, ok := c.statement(d, out, s, reqPos); ok {
			out.Statements = append(out.Statements, st)
		}
	}

	// Administrators.
	adm := map[string]Pos{}
	for _, a := range d.Administrators {
		if first, ok := adm[a.Name.Value]; ok {
			c.e.add(a.Name.Pos, "%s: administrator %q listed twice; first at %s", where, a.Name.Value, first)
			continue
		}
		adm[a.Name.Value] = a.Name.Pos
		if c.choice(a.Role, "administrator role", adminRoles) {
			out.Administrators = append(out.Administrators, AdminC{Name: a.Name.Value, Role: a.Role.Value})
		}
	}

	// Secrets and protected storage.
	secPos := map[string]Pos{}
	for _, sc := range d.Secrets {
		if sc.Name.Value == "" {
			continue
		}
		if first, ok := secPos[sc.Name.Value]; ok {
			c.e.add(sc.Name.Pos, "%s: duplicate secret %q; first declared at %s", where, sc.Name.Value, first)
			continue
		}
		secPos[sc.Name.Value] = sc.Name.Pos
		out1 := SecretC{Name: sc.Name.Value, Bytes: 32, Generation: 1}
		ok := true
		if sc.BytesPos.Line != 0 {
			if sc.Bytes < 16 || sc.Bytes > 1024 {
				c.e.add(sc.BytesPos, "%s: secret %q: bytes must be between 16 and 1024; got %d", where, sc.Name.Value, sc.Bytes)
				ok = false
			}
			out1.Bytes = int(sc.Bytes)
		}
		if sc.GenPos.Line != 0 {
			if sc.Generation < 1 || sc.Generation > 1<<31 {
				c.e.add(sc.GenPos, "%s: secret %q: generation must be between 1 and %d; got %d", where, sc.Name.Value, 1<<31, sc.Generation)
				ok = false
			}
			out1.Generation = int(sc.Generation)
		}
		seenRole := map[string]bool{}
		for _, r := range sc.Roles {
			if _, known := rolePos[r.Value]; !known {
				var names []string
				for _, rc := range out.Roles {
					names = append(names, rc.Name)
				}
				c.e.add(r.Pos, "%s: secret %q names unknown role %q; expected one of: %s%s", where, sc.Name.Value, r.Value, strings.Join(names, ", "), suggest(r.Value, names))
				ok = false
				continue
			}
			if !seenRole[r.Value] {
				seenRole[r.Value] = true
				out1.Roles = append(out1.Roles, r.Value)
			}
		}
		if ok {
			out.Secrets = append(out.Secrets, out1)
		}
	}
	if d.Storage.Value != "" && c.choice(d.Storage, "storage", []string{"domain", "ee"}) && d.Storage.Value == "domain" {
		out.Storage = "domain"
	}

	c.out.Domains = append(c.out.Domains, out)
	c.out.byDomain[dn] = out
}

// statement checks one statement and its verifier.
func (c *compiler) statement(d *Domain, out *DomainPolicy, s *Statement, reqs map[string]Pos) (StatementC, bool) {
	where := fmt.Sprintf("statement %q", s.ID.Value)
	st := StatementC{ID: s.ID.Value, Type: s.Type.Value, Text: s.Text}
	if !c.choice(s.Type, "statement type", statementTypes) {
		return st, false
	}
	valid := verifiersFor[s.Type.Value]
	if s.Verify == nil {
		c.e.add(s.Pos, "%s (%s) does not say how it is verified; every statement must be verifiable (paper §2.2). Add verify: {by: ...} with one of: %s", where, s.Type.Value, strings.Join(valid, ", "))
		return st, false
	}
	v := s.Verify
	by := v.By.Value
	if !isOneOf(by, allVerifiers...) {
		c.e.add(v.By.Pos, "%s: unknown verifier %q; for a %s statement expected one of: %s%s", where, by, s.Type.Value, strings.Join(valid, ", "), suggest(by, valid))
		return st, false
	}
	if !isOneOf(by, valid...) {
		c.e.add(v.By.Pos, "%s: a %s statement cannot be verified by %q; no verifier could check it that way. Expected one of: %s", where, s.Type.Value, by, strings.Join(valid, ", "))
		return st, false
	}
	st.Verifier = by
	// Parameters belong to one verifier each.
	param := func(given bool, p Pos, name, owner string) {
		if given && by != owner {
			c.e.add(p, "%s: %s is a parameter of the %s verifier, not of %s", where, name, owner, by)
		}
	}
	param(len(v.Requirements) > 0, v.Pos, "requirements", "requirements")
	param(len(v.ReferenceValues) > 0, v.Pos, "referenceValues", "attestation")
	param(v.Owner.Value != "", v.Owner.Pos, "owner", "owner")
	param(len(v.Issuers) > 0, v.Pos, "issuers", "issuers")
	ok := true
	switch by {
	case "requirements":
		if len(v.Requirements) == 0 {
			c.e.add(v.Pos, "%s: the requirements verifier needs requirements: [ID, ...]", where)
			ok = false
		}
		for _, r := range v.Requirements {
			if _, found := reqs[r.Value]; !found {
				c.e.add(r.Pos, "%s: requirement %q is not defined in domain %q%s", where, r.Value, d.Name.Value, suggest(r.Value, sortedKeys(reqs)))
				ok = false
				continue
			}
			st.Requirements = append(st.Requirements, r.Value)
		}
	case "attestation":
		if out.MinAssurance != "tpm" {
			c.e.add(v.By.Pos, "%s: attestation needs TPM evidence, but membership.minAssurance is %q: members admitted with implicit trust could never verify it. Set minAssurance: tpm, or verify the statement another way", where, out.MinAssurance)
			ok = false
		}
		sets := v.ReferenceValues
		if len(sets) == 0 {
			sets = d.Attestation.ReferenceValues
		}
		if len(sets) == 0 {
			c.e.add(v.Pos, "%s: attestation needs reference values; list them here or in the domain's attestation.referenceValues", where)
			ok = false
		}
		for _, rv := range sets {
			if c.refSet(rv, where) {
				st.ReferenceValues = append(st.ReferenceValues, rv.Value)
			} else {
				ok = false
			}
		}
	case "owner":
		st.Owner = d.Owner
		if v.Owner.Value != "" {
			st.Owner = v.Owner.Value
		}
	case "issuers":
		if len(v.Issuers) == 0 {
			c.e.add(v.Pos, "%s: the issuers verifier needs issuers: [NAME, ...]", where)
			ok = false
		}
		trusted := map[string]bool{}
		for _, is := range v.Issuers {
			if _, found := c.issuers[is.Value]; !found {
				c.e.add(is.Pos, "%s: issuer %q is not defined; expected the name of an Issuer document%s", where, is.Value, suggest(is.Value, sortedKeys(c.issuers)))
				ok = false
				continue
			}
			trusted[is.Value] = true
			st.Issuers = append(st.Issuers, is.Value)
		}
		// Every mapping that establishes a claim this domain relies on must
		// come from a trusted issuer.
		if ok {
			for _, m := range c.mappingsUsedBy(d) {
				if !trusted[m.Issuer.Value] {
					c.e.add(m.Issuer.Pos, "mapping %q establishes %s, which domain %q relies on, but its issuer %q is not among the domain's trusted issuers (%s at %s)", m.Name.Value, establishedNames(m), d.Name.Value, m.Issuer.Value, s.ID.Value, s.ID.Pos)
				}
			}
		}
	}
	return st, ok
}

// mappingsUsedBy returns the mappings establishing claims that the domain's
// membership rules or requirements mention.
func (c *compiler) mappingsUsedBy(d *Domain) []*Mapping {
	used := map[string]bool{}
	for _, cl := range d.Membership.Claims {
		used[cl.Value] = true
	}
	var out []*Mapping
	for _, n := range sortedKeys(c.maps) {
		m := c.maps[n]
		for _, cv := range m.Establishes {
			hit := used[cv.Claim.Value]
			for _, r := range d.Requirements {
				if strings.Contains(r.Expr, cv.Claim.Value) {
					hit = true
				}
			}
			if hit {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

func establishedNames(m *Mapping) string {
	var out []string
	for _, cv := range m.Establishes {
		out = append(out, cv.Claim.Value)
	}
	return strings.Join(out, ", ")
}

func (c *compiler) checkSubnets() {
	type sn struct {
		d   *Domain
		pfx netip.Prefix
	}
	var list []sn
	for _, n := range sortedKeys(c.domains) {
		d := c.domains[n]
		if d.Subnet.IsValid() {
			list = append(list, sn{d, d.Subnet})
		}
	}
	for i := range list {
		for j := i + 1; j < len(list); j++ {
			if list[i].pfx.Overlaps(list[j].pfx) {
				a, b := list[i], list[j]
				if b.d.SubnetPos.File < a.d.SubnetPos.File || (b.d.SubnetPos.File == a.d.SubnetPos.File && b.d.SubnetPos.Line < a.d.SubnetPos.Line) {
					a, b = b, a
				}
				c.e.add(b.d.SubnetPos, "domain %q: subnet %s overlaps subnet %s of domain %q (%s); each domain needs its own address range", b.d.Name.Value, b.pfx, a.pfx, a.d.Name.Value, a.d.SubnetPos)
			}
		}
	}
}

// compileFlows builds the flow matrix from every domain's row.
func (c *compiler) compileFlows(names []string) {
	specs := make([]flow.Domain, 0, len(names))
	for _, n := range names {
		dp := c.out.byDomain[n]
		fd := flow.Domain{Name: n}
		for i, r := range dp.Roles {
			fd.Roles = append(fd.Roles, r.Name)
			if r.Gateway {
				fd.Gateways = append(fd.Gateways, i)
			}
		}
		if len(fd.Roles) > flow.MaxRoles {
			fd.Roles = fd.Roles[:flow.MaxRoles]
			fd.Gateways = slices.DeleteFunc(fd.Gateways, func(i int) bool { return i >= flow.MaxRoles })
		}
		specs = append(specs, fd)
	}
	b, err := flow.NewBuilder(specs)
	if err != nil {
		c.e.add(Pos{}, "flow matrix: %v", err)
		return
	}
	domIdx := map[string]int{}
	for i, n := range names {
		domIdx[n] = i
	}
	// origin remembers which written cell set each via-gateway matrix cell,
	// so a contradiction found after building points at the cell the user
	// wrote.
	type key struct {
		src flow.ClassID
		dst int
	}
	origin := map[key]*FlowCell{}
	for di, n := range names {
		d := c.domains[n]
		roles := specs[di].Roles
		roleIdx := map[string]int{}
		for i, r := range roles {
			roleIdx[r] = i
		}
		// Resolve wildcards: a specific role and domain beat "*". The
		// lookups are per source role, so the dense matrix is filled with
		// one small map probe per cell.
		type roleCells struct {
			byDom map[int]*FlowCell
			star  *FlowCell
		}
		rc := map[string]*roleCells{}
		get := func(role string) *roleCells {
			if rc[role] == nil {
				rc[role] = &roleCells{byDom: map[int]*FlowCell{}}
			}
			return rc[role]
		}
		for _, fc := range d.Flows {
			ok := true
			if fc.From.Value != "*" {
				if _, found := roleIdx[fc.From.Value]; !found {
					c.e.add(fc.From.Pos, "domain %q flows: source role %q is not a role of %q; expected one of: %s%s", n, fc.From.Value, n, strings.Join(roles, ", "), suggest(fc.From.Value, roles))
					ok = false
				}
			}
			dj := -1
			if fc.To.Value == n {
				c.e.add(fc.To.Pos, "domain %q flows: a cell towards its own domain contradicts the rule that intra-domain traffic is always allowed; remove it", n)
				ok = false
			} else if fc.To.Value != "*" {
				var found bool
				if dj, found = domIdx[fc.To.Value]; !found {
					c.e.add(fc.To.Pos, "domain %q flows: destination domain %q is not defined%s", n, fc.To.Value, suggest(fc.To.Value, names))
					ok = false
				}
			}
			rule, err := flow.ParseRule(fc.Rule.Value)
			if err != nil {
				c.e.add(fc.Rule.Pos, "domain %q flows %s -> %s: unknown rule %q; expected one of: unrestricted, none, point-to-point, via-gateway%s", n, fc.From.Value, fc.To.Value, fc.Rule.Value, suggest(fc.Rule.Value, []string{"unrestricted", "none", "point-to-point", "via-gateway"}))
				ok = false
			}
			if len(fc.Roles) > 0 && rule != flow.RulePointToPoint && err == nil {
				c.e.add(fc.Rule.Pos, "domain %q flows %s -> %s: roles apply only to point-to-point, not to %s", n, fc.From.Value, fc.To.Value, rule)
				ok = false
			}
			if rule == flow.RuleViaGateway && fc.From.Value != "*" && err == nil {
				if i, found := roleIdx[fc.From.Value]; found && slices.Contains(specs[di].Gateways, i) {
					c.e.add(fc.Rule.Pos, "domain %q flows: role %q is a gateway; a gateway cannot route via-gateway through itself. Use point-to-point to the destination's gateway", n, fc.From.Value)
					ok = false
				}
			}
			if !ok {
				continue
			}
			r := get(fc.From.Value)
			if dj < 0 {
				r.star = fc
			} else {
				r.byDom[dj] = fc
			}
		}
		star := get("*")
		for ri, r := range roles {
			src := b.Class(di, ri)
			own := get(r)
			isGateway := slices.Contains(specs[di].Gateways, ri)
			for dj := range names {
				if dj == di {
					continue
				}
				fc := own.byDom[dj]
				if fc == nil {
					fc = own.star
				}
				if fc == nil {
					fc = star.byDom[dj]
				}
				if fc == nil {
					fc = star.star
				}
				if fc == nil {
					continue // RuleNone by default
				}
				rule, _ := flow.ParseRule(fc.Rule.Value)
				// A wildcard via-gateway does not apply to gateway roles:
				// they are asked to use point-to-point explicitly.
				if rule == flow.RuleViaGateway && isGateway {
					continue
				}
				var mask uint64
				if rule == flow.RulePointToPoint {
					mask = c.p2pMask(n, fc, specs[dj])
					if mask == 0 {
						continue
					}
				}
				if rule == flow.RuleNone {
					continue
				}
				b.Set(src, dj, rule, mask)
				if rule == flow.RuleViaGateway {
					origin[key{src, dj}] = fc
				}
			}
		}
	}
	m := b.Build()
	c.out.Matrix = m
	c.out.Flows = m.Rows()
	// Contradictions visible only in the whole matrix: a via-gateway cell
	// with no gateway path.
	reported := map[*FlowCell]bool{}
	for k, fc := range origin {
		rule, _ := m.Cell(k.src, k.dst)
		if rule != flow.RuleViaGateway || reported[fc] {
			continue
		}
		sd := m.ClassDomain(k.src)
		msg := ""
		switch {
		case len(specs[sd].Gateways) == 0:
			msg = fmt.Sprintf("domain %q has no gateway role", names[sd])
		case len(specs[k.dst].Gateways) == 0:
			msg = fmt.Sprintf("destination domain %q has no gateway role", names[k.dst])
		default:
			sg := b2class(m, names[sd], specs[sd])
			dg := b2class(m, names[k.dst], specs[k.dst])
			if !m.Decide(sg, dg).Direct {
				r, _ := m.Cell(sg, k.dst)
				msg = fmt.Sprintf("%s/%s cannot reach %s/%s directly (its cell is %s); give it point-to-point to %q's gateway", names[sd], specs[sd].Roles[specs[sd].Gateways[0]], names[k.dst], specs[k.dst].Roles[specs[k.dst].Gateways[0]], r, names[k.dst])
			}
		}
		if msg != "" {
			reported[fc] = true
			d, r := m.ClassName(k.src)
			c.e.add(fc.Rule.Pos, "flow %s/%s -> %s is via-gateway, but there is no gateway path: %s", d, r, names[k.dst], msg)
		}
	}
}

func b2class(m *flow.Matrix, d string, spec flow.Domain) flow.ClassID {
	cl, _ := m.Class(d, spec.Roles[spec.Gateways[0]])
	return cl
}

// p2pMask returns the destination role mask of a point-to-point cell,
// defaulting to the destination's gateway roles.
func (c *compiler) p2pMask(src string, fc *FlowCell, dst flow.Domain) uint64 {
	var mask uint64
	if len(fc.Roles) == 0 {
		for _, g := range dst.Gateways {
			mask |= 1 << g
		}
		if mask == 0 && fc.To.Value != "*" {
			c.e.add(fc.Rule.Pos, "domain %q flows %s -> %s: point-to-point defaults to the destination's gateway role, but %q has none; list roles: [...]", src, fc.From.Value, dst.Name, dst.Name)
		}
		return mask
	}
	for _, r := range fc.Roles {
		i := slices.Index(dst.Roles, r.Value)
		if i < 0 {
			if fc.To.Value != "*" {
				c.e.add(r.Pos, "domain %q flows %s -> %s: %q is not a role of %q; expected one of: %s%s", src, fc.From.Value, dst.Name, r.Value, dst.Name, strings.Join(dst.Roles, ", "), suggest(r.Value, dst.Roles))
			}
			continue
		}
		mask |= 1 << i
	}
	return mask
}
