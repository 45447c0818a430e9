package ca

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// ServerTLSConfig returns a TLS 1.3 configuration for a server (the
// controller, or a member serving its peers) presenting cert. Client
// certificates are requested with clientAuth (tls.RequireAndVerifyClientCert
// for services that admit only known parties, tls.VerifyClientCertIfGiven
// where some calls are unauthenticated, such as enrolment) and, when given,
// must pass Bundle.Verify; PeerIdentity then returns the client's identity.
//
// The configuration does NOT authorise: any identity of the deployment is
// accepted; the server must check the identity's kind and role per call.
func (b *Bundle) ServerTLSConfig(cert tls.Certificate, clientAuth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   clientAuth,
		ClientCAs:    b.CertPool(),
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil // no certificate: ClientAuth already decided whether that is allowed
			}
			_, err := b.VerifyDER(raw, time.Now())
			return err
		},
	}
}

// ClientTLSConfig returns a TLS 1.3 configuration for a client of the
// controller: the server must present a certificate of KindServer from this
// bundle valid for serverName (a DNS name or IP address). cert is the
// client's own certificate (a node or administrator certificate), or nil for
// unauthenticated calls such as enrolment.
func (b *Bundle) ClientTLSConfig(cert *tls.Certificate, serverName string) *tls.Config {
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		RootCAs:    b.CertPool(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := b.PeerIdentity(&cs, time.Now())
			if err != nil {
				return err
			}
			if id.Kind != KindServer {
				return fmt.Errorf("server presented a %s certificate (%s), want the controller's", id.Kind, id.ID)
			}
			return nil
		},
	}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	return conf
}

// PeerIdentity verifies the certificate chain the peer presented on a TLS
// connection with Bundle.Verify at now and returns the peer's identity. It
// fails if the peer presented no certificate. Bundle.Verify's limits apply.
func (b *Bundle) PeerIdentity(cs *tls.ConnectionState, now time.Time) (Identity, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return Identity{}, errors.New("peer identity: no certificate presented")
	}
	return b.Verify(cs.PeerCertificates, now)
}
