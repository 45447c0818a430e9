package etcd_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/etcd"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files for etcd.
type testPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	client                    tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tvd store/etcd test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	writePEM := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	srvDER, srvKey := issue(2, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	cliDER, cliKey := issue(3, "tvd-controller", x509.ExtKeyUsageClientAuth)
	p := &testPKI{
		caFile:   writePEM("ca.pem", "CERTIFICATE", caDER),
		certFile: writePEM("server.pem", "CERTIFICATE", srvDER),
		keyFile:  writePEM("server-key.pem", "PRIVATE KEY", keyDER(srvKey)),
		pool:     x509.NewCertPool(),
		client:   tls.Certificate{Certificate: [][]byte{cliDER}, PrivateKey: cliKey},
	}
	p.pool.AddCert(ca)
	return p
}

// TestTLS runs the store against an etcd that serves clients only over TLS
// and requires client certificates.
func TestTLS(t *testing.T) {
	t.Parallel() // runs its own etcd
	requireEtcd(t)
	bin, _ := findEtcd()
	pki := newTestPKI(t)
	clientTLS := &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{pki.client}, MinVersion: tls.VersionTLS12}
	e, err := startEtcdWith(bin, t.TempDir(), etcdOptions{
		certFile: pki.certFile, keyFile: pki.keyFile, caFile: pki.caFile, clientTLS: clientTLS,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.kill)
	ctx := context.Background()
	cfg := etcd.Config{Endpoints: []string{e.endpoint()}, Prefix: uniquePrefix(t), TLS: clientTLS}
	s := openWith(t, cfg)
	rev, err := s.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent("ca/key")}, Ops: []store.Op{store.Put("ca/key", []byte("secret"))}})
	if err != nil {
		t.Fatal(err)
	}
	if kv, err := s.Get(ctx, "ca/key"); err != nil || string(kv.Value) != "secret" || kv.Rev != rev {
		t.Fatalf("get over TLS = %+v, %v", kv, err)
	}

	// Open fails, and for a certificate problem says which.
	for _, tc := range []struct {
		name string
		tls  *tls.Config
		want string
	}{
		{"plaintext", nil, ""},
		// TLS 1.3 clients learn of a refused certificate after the
		// handshake: "bad certificate" or a broken pipe.
		{"no client cert", &tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS12}, ""},
		{"unknown server cert", &tls.Config{Certificates: []tls.Certificate{pki.client}, MinVersion: tls.VersionTLS12}, "unknown authority"},
	} {
		name := tc.name
		c := cfg
		c.TLS = tc.tls
		c.DialTimeout = 500 * time.Millisecond
		if tc.want != "" {
			c.DialTimeout = 2 * time.Second // time for a failed handshake even under -race
		}
		s, err := etcd.Open(ctx, c)
		if err == nil {
			s.Close()
			t.Errorf("%s: open succeeded against a TLS etcd that requires client certificates", name)
			continue
		}
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), e.endpoint()) {
			t.Errorf("%s: open: %v, want a deadline error naming the endpoint and saying %q", name, err, tc.want)
		}
		t.Logf("%s: %v", name, err)
	}
}
