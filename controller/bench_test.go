package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/store/bolt"
)

// BenchmarkAdmission measures admitting one EE (membership rules, address
// allocation, member certificate issuance) on one core, and raw
// x509.CreateCertificate with an equivalent template in the same run. It
// reports admissions per second and the ratio to the raw primitive (goal
// at least 0.5).
func BenchmarkAdmission(b *testing.B) {
	dir := b.TempDir()
	st, err := bolt.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	c, err := New(ctx, Config{DataDir: dir, Store: st, Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	comp, err := policy.ParseAndCompile([]policy.File{{Name: "bench.yaml", Content: []byte(`kind: Domain
name: red
owner: outsourcing-customer
subnet: 10.0.0.0/8
roles:
  - name: client-os
membership: {minAssurance: implicit, isolation: weak}
attestation: {integrity: measure}
statements:
  - id: flows
    type: information-flow
    text: Flows follow the matrix.
    verify: {by: flow-matrix}
`)}})
	if err != nil {
		b.Fatal(err)
	}
	c.s.policy, c.s.polVer = comp, 1
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := ca.NewCSR(key)
	if err != nil {
		b.Fatal(err)
	}
	n := &nodeRec{Name: "pc1", Assurance: "implicit"}
	now := time.Now()

	// Raw primitive: the same kind of certificate, signed by the same
	// curve, with no checks around it.
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: now, NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	root, _ := x509.ParseCertificate(rootDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now, NotAfter: now.Add(5 * time.Minute), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}

	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		spec := &tvdv1.EESpec{Name: fmt.Sprintf("red-client-%d", i), Domain: "red", Role: "client-os", Csr: csr}
		m, reason := c.admit(n, spec, now, map[string]bool{}, map[string]bool{})
		if reason != "" || m.Cert == nil {
			b.Fatalf("refused: %s", reason)
		}
	}
	admitNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	start = time.Now()
	for i := 0; i < b.N; i++ {
		leafTmpl.SerialNumber = big.NewInt(int64(i + 2))
		if _, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, key.Public(), rootKey); err != nil {
			b.Fatal(err)
		}
	}
	rawNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	b.ReportMetric(1e9/admitNs, "admissions/s")
	b.ReportMetric(rawNs/admitNs, "x-vs-createcertificate")
}
