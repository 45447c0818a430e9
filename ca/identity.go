package ca

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tvd-dev/tvd"
)

// Kind is what a certificate identifies.
type Kind int

// The kinds of certificate the CA issues. The zero value is KindUnknown, so
// an Identity nobody parsed never passes for a real one.
const (
	KindUnknown Kind = iota
	KindMember       // an EE's membership in a domain
	KindNode         // a node's agent, for agent↔controller mutual TLS
	KindAdmin        // an administrator, with a Role
	KindServer       // the controller's TLS server
)

func (k Kind) String() string {
	switch k {
	case KindUnknown:
		return "unknown"
	case KindMember:
		return "member"
	case KindNode:
		return "node"
	case KindAdmin:
		return "admin"
	case KindServer:
		return "server"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// RoleKind is the kind of an administrator's role.
type RoleKind int

// The administrator roles of ARCHITECTURE §3. The zero value is
// RoleUnknown, which allows nothing.
const (
	RoleUnknown     RoleKind = iota
	RoleAdmin                // everything, in every domain
	RoleDomainAdmin          // everything in one domain
	RoleAuditor              // read-only view of one domain
)

// Role is an administrator's role: its kind and, except for RoleAdmin, the
// one domain it applies to.
type Role struct {
	Kind   RoleKind
	Domain string // empty for RoleAdmin
}

// Role spellings.
const (
	roleAdmin       = "admin"
	roleDomainAdmin = "domain-admin"
	roleAuditor     = "auditor"
)

// ParseRole parses the textual form of a role: "admin",
// "domain-admin:DOMAIN" or "auditor:DOMAIN", where DOMAIN is a valid SPIFFE
// path segment.
func ParseRole(s string) (Role, error) {
	kind, domain, hasDomain := strings.Cut(s, ":")
	var r Role
	switch kind {
	case roleAdmin:
		if hasDomain {
			return Role{}, fmt.Errorf("role %q: admin takes no domain (want admin, domain-admin:DOMAIN or auditor:DOMAIN)", s)
		}
		return Role{Kind: RoleAdmin}, nil
	case roleDomainAdmin:
		r.Kind = RoleDomainAdmin
	case roleAuditor:
		r.Kind = RoleAuditor
	default:
		return Role{}, fmt.Errorf("role %q: want admin, domain-admin:DOMAIN or auditor:DOMAIN", s)
	}
	if !hasDomain {
		return Role{}, fmt.Errorf("role %q: want %s:DOMAIN", s, kind)
	}
	if err := checkSegment("role domain", domain); err != nil {
		return Role{}, fmt.Errorf("role %q: %w", s, err)
	}
	r.Domain = domain
	return r, nil
}

// String returns the textual form that ParseRole parses.
func (r Role) String() string {
	switch r.Kind {
	case RoleAdmin:
		return roleAdmin
	case RoleDomainAdmin:
		return roleDomainAdmin + ":" + r.Domain
	case RoleAuditor:
		return roleAuditor + ":" + r.Domain
	}
	return "unknown"
}

// Validate reports whether r is a role ParseRole could have returned.
func (r Role) Validate() error {
	switch r.Kind {
	case RoleAdmin:
		if r.Domain != "" {
			return fmt.Errorf("role admin: want no domain, got %q", r.Domain)
		}
		return nil
	case RoleDomainAdmin, RoleAuditor:
		if err := checkSegment("role domain", r.Domain); err != nil {
			return fmt.Errorf("role %s: %w", r, err)
		}
		return nil
	}
	return fmt.Errorf("role kind %d: want admin, domain-admin or auditor", int(r.Kind))
}

// CanRead reports whether the role may see domain's state, members and
// audit entries.
func (r Role) CanRead(domain string) bool {
	switch r.Kind {
	case RoleAdmin:
		return true
	case RoleDomainAdmin, RoleAuditor:
		return domain != "" && r.Domain == domain
	}
	return false
}

// CanWrite reports whether the role may change domain: apply policy, revoke
// members, create join tokens for it.
func (r Role) CanWrite(domain string) bool {
	switch r.Kind {
	case RoleAdmin:
		return true
	case RoleDomainAdmin:
		return domain != "" && r.Domain == domain
	}
	return false
}

// CanWriteDeployment reports whether the role may change deployment-wide
// state (nodes, administrators, the CA): only RoleAdmin.
func (r Role) CanWriteDeployment() bool { return r.Kind == RoleAdmin }

// CanGrant reports whether an administrator with role r may issue a
// certificate carrying target: an admin may grant any valid role; a
// domain-admin may grant domain-admin and auditor roles for its own domain;
// an auditor may grant nothing.
func (r Role) CanGrant(target Role) bool {
	if target.Validate() != nil {
		return false
	}
	switch r.Kind {
	case RoleAdmin:
		return true
	case RoleDomainAdmin:
		return target.Kind != RoleAdmin && r.Domain != "" && target.Domain == r.Domain
	}
	return false
}

// pathSegments is the role's form inside an admin SPIFFE ID, after "role".
func (r Role) pathSegments() []string {
	switch r.Kind {
	case RoleAdmin:
		return []string{roleAdmin}
	case RoleDomainAdmin:
		return []string{roleDomainAdmin, r.Domain}
	case RoleAuditor:
		return []string{roleAuditor, r.Domain}
	}
	return nil
}

// Identity is what a certificate issued by the CA says about its subject.
type Identity struct {
	Kind        Kind
	ID          string // the SPIFFE ID, e.g. spiffe://example.org/node/n1
	TrustDomain string

	Member tvd.Member // KindMember
	Node   string     // KindNode
	Admin  string     // KindAdmin: the administrator's name
	Role   Role       // KindAdmin
	Hosts  []string   // KindServer: DNS names and IP addresses

	Serial    string // hexadecimal serial number, for audit and revocation
	NotBefore time.Time
	NotAfter  time.Time
}

// ServerID is the path of the controller's SPIFFE ID.
const serverSegment = "controller"

// MemberID returns the SPIFFE ID of member m in trustDomain after checking
// every name; it equals m.SPIFFEID(trustDomain).
func MemberID(trustDomain string, m tvd.Member) (spiffeid.ID, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkSegment("domain", m.Domain); err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkSegment("role", m.Role); err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkSegment("ee", m.EE); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "domain", m.Domain, "role", m.Role, "ee", m.EE)
}

// NodeID returns the SPIFFE ID of node in trustDomain.
func NodeID(trustDomain, node string) (spiffeid.ID, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkSegment("node", node); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "node", node)
}

// AdminID returns the SPIFFE ID of administrator name with role in
// trustDomain.
func AdminID(trustDomain, name string, role Role) (spiffeid.ID, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkSegment("admin name", name); err != nil {
		return spiffeid.ID{}, err
	}
	if err := role.Validate(); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, append([]string{"admin", name, "role"}, role.pathSegments()...)...)
}

// ServerID returns the SPIFFE ID of the controller in trustDomain.
func ServerID(trustDomain string) (spiffeid.ID, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, serverSegment)
}

// ParseID parses a SPIFFE ID string of one of the four kinds into an
// Identity carrying only Kind, ID, TrustDomain and the kind's names (no
// validity period, no hosts, no serial).
func ParseID(s string) (Identity, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Identity{}, fmt.Errorf("spiffe id %q: %w", s, err)
	}
	return identityFromID(id)
}

func identityFromID(id spiffeid.ID) (Identity, error) {
	ident := Identity{ID: id.String(), TrustDomain: id.TrustDomain().Name()}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	switch {
	case len(segs) == 6 && segs[0] == "domain" && segs[2] == "role" && segs[4] == "ee":
		ident.Kind = KindMember
		ident.Member = tvd.Member{Domain: segs[1], Role: segs[3], EE: segs[5]}
	case len(segs) == 2 && segs[0] == "node":
		ident.Kind = KindNode
		ident.Node = segs[1]
	case len(segs) >= 4 && segs[0] == "admin" && segs[2] == "role":
		role, err := roleFromSegments(segs[3:])
		if err != nil {
			return Identity{}, fmt.Errorf("spiffe id %q: %w", id, err)
		}
		ident.Kind = KindAdmin
		ident.Admin = segs[1]
		ident.Role = role
	case len(segs) == 1 && segs[0] == serverSegment:
		ident.Kind = KindServer
	default:
		return Identity{}, fmt.Errorf("spiffe id %q: want path /domain/D/role/R/ee/E, /node/N, /admin/NAME/role/ROLE or /%s", id, serverSegment)
	}
	return ident, nil
}

func roleFromSegments(segs []string) (Role, error) {
	switch {
	case len(segs) == 1 && segs[0] == roleAdmin:
		return Role{Kind: RoleAdmin}, nil
	case len(segs) == 2 && segs[0] == roleDomainAdmin:
		return Role{Kind: RoleDomainAdmin, Domain: segs[1]}, nil
	case len(segs) == 2 && segs[0] == roleAuditor:
		return Role{Kind: RoleAuditor, Domain: segs[1]}, nil
	}
	return Role{}, fmt.Errorf("admin role path %q: want admin, domain-admin/DOMAIN or auditor/DOMAIN", strings.Join(segs, "/"))
}

// ParseIdentity reads the identity of a certificate issued by a tvd CA: its
// one URI SAN must be a SPIFFE ID of one of the four kinds, and its key usage
// must match that kind (no CA flag, no certificate or CRL signing,
// digitalSignature present, extended key usage as documented in the package
// comment).
//
// ParseIdentity does NOT check the signature, the issuer, the validity
// period or revocation: it trusts that cert was verified already. Call
// Bundle.Verify (or CA.Verify) on certificates from the network.
func ParseIdentity(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("parse identity: no certificate")
	}
	if len(cert.URIs) != 1 {
		return Identity{}, fmt.Errorf("parse identity: want exactly one URI SAN, got %d", len(cert.URIs))
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return Identity{}, fmt.Errorf("parse identity: URI SAN %q: %w", cert.URIs[0], err)
	}
	ident, err := identityFromID(id)
	if err != nil {
		return Identity{}, fmt.Errorf("parse identity: %w", err)
	}
	if cert.IsCA || cert.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return Identity{}, fmt.Errorf("parse identity %s: a CA certificate is not an identity", ident.ID)
	}
	if cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return Identity{}, fmt.Errorf("parse identity %s: want key usage digitalSignature", ident.ID)
	}
	want := extKeyUsage(ident.Kind)
	if !sameUsages(cert.ExtKeyUsage, want) {
		return Identity{}, fmt.Errorf("parse identity %s: extended key usage %v does not fit kind %s (want %v)",
			ident.ID, cert.ExtKeyUsage, ident.Kind, want)
	}
	if len(cert.UnknownExtKeyUsage) != 0 {
		return Identity{}, fmt.Errorf("parse identity %s: unknown extended key usage %v (want only %v)",
			ident.ID, cert.UnknownExtKeyUsage, want)
	}
	if ident.Kind == KindServer {
		ident.Hosts = append(ident.Hosts, cert.DNSNames...)
		for _, ip := range cert.IPAddresses {
			ident.Hosts = append(ident.Hosts, ip.String())
		}
	} else if len(cert.DNSNames) != 0 || len(cert.IPAddresses) != 0 || len(cert.EmailAddresses) != 0 {
		return Identity{}, fmt.Errorf("parse identity %s: a %s certificate carries no DNS, IP or email SANs", ident.ID, ident.Kind)
	}
	if cert.SerialNumber != nil {
		ident.Serial = cert.SerialNumber.Text(16)
	}
	ident.NotBefore = cert.NotBefore
	ident.NotAfter = cert.NotAfter
	return ident, nil
}

func extKeyUsage(k Kind) []x509.ExtKeyUsage {
	switch k {
	case KindMember, KindNode:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	case KindAdmin:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case KindServer:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	return nil
}

func sameUsages(got, want []x509.ExtKeyUsage) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			return false
		}
	}
	return true
}

func parseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	if s == "" || strings.Contains(s, "/") || strings.Contains(s, ":") {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: want a bare name such as example.org", s)
	}
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: %w", s, err)
	}
	return td, nil
}

func checkSegment(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s: empty (want letters, digits, '.', '-' or '_')", what)
	}
	if err := spiffeid.ValidatePathSegment(s); err != nil {
		return fmt.Errorf("%s %q: want letters, digits, '.', '-' or '_', not \".\" or \"..\": %w", what, s, err)
	}
	return nil
}

// checkHost validates one controller host name or address.
func checkHost(h string) (net.IP, error) {
	if ip := net.ParseIP(h); ip != nil {
		return ip, nil
	}
	if h == "" || len(h) > 253 {
		return nil, fmt.Errorf("host %q: want a DNS name or an IP address", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return nil, fmt.Errorf("host %q: want a DNS name or an IP address", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return nil, fmt.Errorf("host %q: want a DNS name or an IP address", h)
			}
		}
	}
	return nil, nil
}
