// Package client connects to a tvd domain controller: it loads a credential
// directory (cert.pem, key.pem, ca.pem, controller) or takes explicit TLS
// material, and returns connect clients for the admin and agent services
// over mutual TLS. The CLI and the agent reach the controller only through
// it.
package client

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tvd-dev/tvd/api/gen/tvd/v1/tvdv1connect"
	"github.com/tvd-dev/tvd/ca"
)

// Client holds connect clients for one controller.
type Client struct {
	URL   string
	Admin tvdv1connect.AdminServiceClient
	Agent tvdv1connect.AgentServiceClient
	// EE drives EEs (admins); EEAgent carries migration archives (agents).
	EE      tvdv1connect.EEServiceClient
	EEAgent tvdv1connect.EEAgentServiceClient
	// Secrets releases members' secrets and answers peer checks (agents).
	Secrets tvdv1connect.SecretServiceClient
	HTTP    *http.Client
}

// New returns a client for the controller at rawURL ("https://host:port")
// using tlsConf. rawURL may list several replicas, separated by commas
// ("https://a:7443,https://b:7443"): requests go to the one that answered
// last, and move to the next when a replica cannot be reached or answers
// 503 (a standby). A request whose body cannot be sent again (a stream)
// is not retried on the next replica; the caller's next attempt goes
// there.
func New(rawURL string, tlsConf *tls.Config) (*Client, error) {
	hosts, err := parseURLs(rawURL)
	if err != nil {
		return nil, err
	}
	if tlsConf.ServerName == "" && len(hosts) == 1 {
		tlsConf = tlsConf.Clone()
		h, _, err := net.SplitHostPort(hosts[0])
		if err != nil {
			h = hosts[0]
		}
		tlsConf.ServerName = h
	}
	// HTTP/2 only: plan streams and reports share one connection, and
	// pings find a dead controller within 20s.
	tr := &http.Transport{
		TLSClientConfig:     tlsConf,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		HTTP2:               &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 5 * time.Second},
		Protocols:           new(http.Protocols),
	}
	tr.Protocols.SetHTTP2(true)
	var rt http.RoundTripper = tr
	if len(hosts) > 1 {
		rt = &failover{hosts: hosts, next: tr}
	}
	hc := &http.Client{Transport: rt}
	base := "https://" + hosts[0]
	urls := make([]string, len(hosts))
	for i, h := range hosts {
		urls[i] = "https://" + h
	}
	return &Client{
		URL:     strings.Join(urls, ","),
		Admin:   tvdv1connect.NewAdminServiceClient(hc, base),
		Agent:   tvdv1connect.NewAgentServiceClient(hc, base),
		EE:      tvdv1connect.NewEEServiceClient(hc, base),
		EEAgent: tvdv1connect.NewEEAgentServiceClient(hc, base),
		Secrets: tvdv1connect.NewSecretServiceClient(hc, base),
		HTTP:    hc,
	}, nil
}

// parseURLs splits a comma-separated list of controller URLs into their
// host:port parts.
func parseURLs(raw string) ([]string, error) {
	var hosts []string
	for _, part := range strings.Split(raw, ",") {
		part = strings.TrimSpace(part)
		u, err := url.Parse(part)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("controller URL %q: want https://HOST:PORT, or several separated by commas", part)
		}
		hosts = append(hosts, u.Host)
	}
	return hosts, nil
}

// failover sends each request to the replica that answered last, and on
// to the next when it cannot be reached or answers 503.
type failover struct {
	hosts []string
	cur   atomic.Int32
	next  http.RoundTripper
}

func (f *failover) RoundTrip(req *http.Request) (*http.Response, error) {
	n := len(f.hosts)
	start := int(f.cur.Load())
	var errs []error
	for i := 0; i < n; i++ {
		idx := (start + i) % n
		r := req.Clone(req.Context())
		r.URL.Host, r.Host = f.hosts[idx], f.hosts[idx]
		if i > 0 {
			if req.Body != nil && req.Body != http.NoBody {
				if req.GetBody == nil {
					break // a stream: the caller tries again
				}
				b, err := req.GetBody()
				if err != nil {
					break
				}
				r.Body = b
			}
		}
		resp, err := f.next.RoundTrip(r)
		if err == nil && resp.StatusCode != http.StatusServiceUnavailable {
			f.cur.Store(int32(idx))
			return resp, nil
		}
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("%s answered 503 (a standby replica)", f.hosts[idx])
		}
		errs = append(errs, err)
		// The next request starts at the next replica, unless another
		// request already found one that answers.
		f.cur.CompareAndSwap(int32(idx), int32((idx+1)%n))
		if req.Context().Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("no controller replica answered: %w", errors.Join(errs...))
}

// Credentials is an admin's or a node's TLS identity and the deployment
// bundle.
type Credentials struct {
	Cert       tls.Certificate
	Bundle     *ca.Bundle
	Controller string
}

// LoadDir reads a credential directory: cert.pem, key.pem, ca.pem and, if
// present, controller (the controller URL).
func LoadDir(dir string) (*Credentials, error) {
	if dir == "" {
		return nil, errors.New("no credentials: pass --creds DIR or set TVD_CREDS (the controller writes DATA/admin on first start)")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("credentials %s: %w", dir, err)
	}
	bundlePEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("credentials %s: %w", dir, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("credentials %s: %w", dir, err)
	}
	id, err := ca.ParseIdentity(leaf)
	if err != nil {
		return nil, fmt.Errorf("credentials %s: %w", dir, err)
	}
	bundle, err := ca.ParseBundle(id.TrustDomain, bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("credentials %s: %w", dir, err)
	}
	creds := &Credentials{Cert: cert, Bundle: bundle}
	if b, err := os.ReadFile(filepath.Join(dir, "controller")); err == nil {
		creds.Controller = strings.TrimSpace(string(b))
	}
	return creds, nil
}

// Dial returns a client for creds; url overrides creds.Controller.
func Dial(creds *Credentials, rawURL string) (*Client, error) {
	if rawURL == "" {
		rawURL = creds.Controller
	}
	if rawURL == "" {
		return nil, errors.New("no controller URL: pass --controller https://HOST:PORT or set TVD_CONTROLLER")
	}
	hosts, err := parseURLs(rawURL)
	if err != nil {
		return nil, err
	}
	server := ""
	if len(hosts) == 1 {
		if server, _, err = net.SplitHostPort(hosts[0]); err != nil {
			server = hosts[0]
		}
	}
	cert := creds.Cert
	return New(rawURL, creds.Bundle.ClientTLSConfig(&cert, server))
}

// PinnedTLS returns a TLS configuration for a client that does not hold the
// bundle yet (an agent enrolling): the server's chain must end in a root
// whose SHA-256 is caHash, and the leaf must be a controller certificate.
func PinnedTLS(caHash string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("controller presented no certificate")
			}
			for _, c := range cs.PeerCertificates {
				sum := sha256.Sum256(c.Raw)
				if hex.EncodeToString(sum[:]) != caHash || !c.IsCA {
					continue
				}
				pool := x509.NewCertPool()
				pool.AddCert(c)
				if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
					return fmt.Errorf("controller certificate does not chain to the pinned CA: %w", err)
				}
				id, err := ca.ParseIdentity(cs.PeerCertificates[0])
				if err != nil || id.Kind != ca.KindServer {
					return fmt.Errorf("controller presented a certificate that is not the controller's")
				}
				return nil
			}
			return fmt.Errorf("controller's CA does not match the join token's CA hash %s…; is this the right controller?", caHash[:16])
		},
	}
}

// Hostport returns the host:port of a controller URL, for logs.
func Hostport(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return u.Host + ":443"
	}
	return u.Host
}

// TokenPrefix starts every join token.
const TokenPrefix = "tvd1"

var (
	tokenIDRE     = regexp.MustCompile(`^[0-9a-f]{16}$`)
	tokenSecretRE = regexp.MustCompile(`^[A-Za-z0-9_-]{22,64}$`)
	tokenCARE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ParseJoinToken splits a join token into its id, secret and CA hash.
func ParseJoinToken(s string) (id, secret, caHash string, err error) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 || parts[0] != TokenPrefix || !tokenIDRE.MatchString(parts[1]) || !tokenSecretRE.MatchString(parts[2]) || !tokenCARE.MatchString(parts[3]) {
		return "", "", "", errors.New("malformed join token: want tvd1.ID.SECRET.CAHASH as printed by tvd admin token")
	}
	return parts[1], parts[2], parts[3], nil
}

// WriteCredentials writes a credential directory (created 0700, files
// 0600) that LoadDir reads: cert.pem, key.pem, ca.pem and controller.
func WriteCredentials(dir string, certPEM, keyPEM, bundlePEM []byte, controllerURL string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	for name, data := range map[string][]byte{
		"cert.pem": certPEM, "key.pem": keyPEM, "ca.pem": bundlePEM,
		"controller": []byte(controllerURL + "\n"),
	} {
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			return fmt.Errorf("write credentials: %w", err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("write credentials: %w", err)
		}
	}
	return nil
}
