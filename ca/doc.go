// Package ca is the public-key infrastructure of one tvd deployment: a root
// certificate authority held by the controller, the certificates it issues,
// and the parsers and verifiers that servers use on presented certificates.
// It is pure cryptography: it opens no connections and keeps no state
// besides the CA itself (and, if asked, the key-encryption key file).
//
// # Identities
//
// Every certificate the CA issues is an X.509-SVID in the SPIFFE sense: it
// carries exactly one URI SAN that is a valid SPIFFE ID in the deployment's
// trust domain, it is not a CA, and its key usage is digitalSignature only,
// so go-spiffe (x509svid.Verify, tlsconfig authorizers) and service meshes
// accept it. The path of the SPIFFE ID says what the certificate is for:
//
//	member  spiffe://TD/domain/DOMAIN/role/ROLE/ee/EE   (tvd.Member.SPIFFEID)
//	node    spiffe://TD/node/NODE
//	admin   spiffe://TD/admin/NAME/role/admin
//	        spiffe://TD/admin/NAME/role/domain-admin/DOMAIN
//	        spiffe://TD/admin/NAME/role/auditor/DOMAIN
//	server  spiffe://TD/controller                      (plus DNS and IP SANs)
//
// An administrator's role is encoded in the path of its one URI SAN rather
// than in a second URI or a private extension: a second URI SAN would make
// the certificate an invalid SVID, and a private extension would be invisible
// to SPIFFE-aware authorizers. The role's textual form (Role.String,
// ParseRole) is "admin", "domain-admin:DOMAIN" or "auditor:DOMAIN"; its path
// form replaces the colon by a slash. An administrator holding two roles holds
// two certificates.
//
// Every name in a path (domain, role, EE, node, administrator) must be a
// valid SPIFFE path segment: letters, digits, '.', '-' and '_', and not "."
// or "..". Issuance refuses anything else.
//
// Extended key usage: member and node certificates have clientAuth and
// serverAuth (they are both ends of mutual TLS); administrator certificates
// have clientAuth only; the controller's server certificate has serverAuth
// only. ParseIdentity refuses a certificate whose key usage does not match
// its kind, so a server certificate cannot be replayed as a client identity.
//
// # Lifetimes and clocks
//
// Certificates are short-lived (minutes for members); renewal is the
// controller's business. Not-before is back-dated by Backdate to absorb clock
// skew between controller and agents. The clock and the randomness (serial
// numbers) are injectable; note that since Go 1.26 the standard library draws
// signature and key-generation randomness from the system source whatever
// reader is passed, so signatures are never deterministic.
//
// # The CA at rest
//
// CA.Marshal encodes the root certificate and its private key as PEM. The
// private key is encrypted with AES-256-GCM under a 32-byte key-encryption key
// (KEK) that the caller supplies; the additional authenticated data binds the
// ciphertext to the root certificate, so a key cannot be swapped under
// another certificate. The KEK must not live in the same place as the
// marshalled CA: the controller keeps it in a file of its data directory with
// permissions 0600 (LoadOrCreateKEK creates and checks such a file) while the
// CA itself lives in the store. Whoever can read both can sign identities for
// the whole deployment. A KMS or HSM can later replace the KEK file.
//
// # TLS
//
// Bundle.ServerTLSConfig and Bundle.ClientTLSConfig build TLS 1.3
// configurations for mutual TLS between agents, administrators and the
// controller: the chain is checked by crypto/tls against the bundle, and
// the peer's certificate must also pass Bundle.Verify (so a certificate
// that chains to the root but is no identity of a known kind is refused);
// clients additionally require the server to hold the controller's
// identity. Bundle.PeerIdentity gives a handler the verified identity of
// its caller. Authorisation (which kind and role may call what) stays with
// the server.
//
// # What this package does not do
//
// It keeps no revocation state: Verify and ParseIdentity say whether a
// certificate was issued by this deployment and is within its validity
// period, not whether its subject is still admitted. The controller checks
// revocation and the current membership against its store, and relies on
// short lifetimes for everybody else.
package ca
