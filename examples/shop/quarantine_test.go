//go:build tpmsimulator

package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/agent"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/tvdtest"
	"github.com/tvd-dev/tvd/workload"
)

// TestQuarantinedMemberCannotDecrypt: a customer on a TPM-attested node
// runs a program that is not on the shop's allowlist; the domain
// quarantines it (onViolation: [alert, quarantine]). Within one push its
// secrets and storage key are withdrawn (its sealed blob no longer opens)
// and the shop serves it as a non-member, though it is still admitted.
func TestQuarantinedMemberCannotDecrypt(t *testing.T) {
	sim, err := tpm.OpenSimulator(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	mfr := newEKCA(t)
	ek, err := sim.EK(tpm.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	pek, err := attest.ParseEK(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.ProvisionEKCert(tpm.EKECCP256, mfr.issue(t, pek.Key)); err != nil {
		t.Fatal(err)
	}
	env := tvdtest.New(t, tvdtest.Options{EKRoots: mfr.pool})
	var files []policy.File
	for _, n := range []string{"shop.yaml", "reference-values.yaml"} {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, policy.File{Name: n, Content: []byte(strings.ReplaceAll(string(b), "onViolation: [alert, revoke]", "onViolation: [alert, quarantine]"))})
	}
	env.ApplyFiles(files)
	shopNode := env.StartAgent(agent.NodeConfig{Node: "tvdwl-shop", EEs: []agent.EEConfig{{Name: "shop-web", Domain: "shop", Role: "web", Owner: "example-shop"}}})
	custNode := env.StartAgentWith(agent.NodeConfig{Node: "tvdwl-tpm", EEs: []agent.EEConfig{{Name: "alice", Domain: "shop", Role: "customer", Owner: "alice"}}}, agent.Config{TPM: sim.TPM})
	open := func(a *tvdtest.RunningAgent, ee string) *workload.Client {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := workload.OpenSocket(ctx, a.WorkloadSocket(ee))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	web, alice := open(shopNode, "shop-web"), open(custNode, "alice")
	l, err := web.Listen("tcp", "127.0.0.1:0", workload.AllowNonMembers())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: NewShop(web, nil)}
	go srv.Serve(l)
	defer srv.Close()
	url := "https://" + l.Addr().String()
	ctx := context.Background()
	hc := alice.HTTPClient()
	tvdtest.Eventually(t, 10*time.Second, "alice's first appraisal at assurance tpm", func() bool {
		rc, _ := orderMaybe(hc, url, 150_00)
		return rc.Accepted && rc.Member
	})
	st, err := alice.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "wallet", []byte("alice's wallet")); err != nil {
		t.Fatal(err)
	}
	before := custNode.Plan().GetVersion()
	if err := custNode.Measure("alice", "/tmp/evil", sha256.Sum256([]byte("not on the shop's list"))); err != nil {
		t.Fatal(err)
	}
	tvdtest.Eventually(t, 5*time.Second, "alice to be quarantined", func() bool {
		for _, m := range env.Members("shop") {
			if m.GetMember().GetEe() == "alice" && m.GetQuarantined() {
				return true
			}
		}
		return false
	})
	tvdtest.Eventually(t, 5*time.Second, "the push withdrawing alice's secrets", func() bool {
		for _, m := range custNode.Plan().GetMembers() {
			if m.GetMember().GetEe() == "alice" {
				return m.GetSecretsWithdrawn()
			}
		}
		return false
	})
	if v := custNode.Plan().GetVersion(); v != before+1 {
		t.Errorf("plan %d -> %d; want the withdrawal in one push", before, v)
	}
	if _, err := st.Get(ctx, "wallet"); err == nil {
		t.Error("a quarantined member still decrypts its store")
	}
	if _, err := alice.Secret(ctx, "loyalty-key"); err == nil {
		t.Error("a quarantined member still gets its secret")
	}
	time.Sleep(workload.CheckInterval)
	if rc, code := orderMaybe(hc, url, 150_00); rc.Accepted || rc.Member {
		t.Errorf("quarantined member's $150 order: %+v (HTTP %d); want refused", rc, code)
	}
	var status tvdv1.Status
	for _, m := range env.Members("shop") {
		if m.GetMember().GetEe() == "alice" {
			status = m.GetVerdict().GetStatus()
		}
	}
	if status != tvdv1.Status_STATUS_VIOLATED {
		t.Errorf("alice's verdict %v; want violated", status)
	}
}

// ekCA is a TPM manufacturer's CA for the simulator's endorsement key.
type ekCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newEKCA(t *testing.T) *ekCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tvdwl test TPM manufacturer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &ekCA{cert, key, pool}
}

// issue makes an EK certificate as the TCG EK credential profile has it.
func (c *ekCA) issue(t *testing.T, pub crypto.PublicKey) []byte {
	rdn := pkix.RDNSequence{{
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: "id:54455354"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: "tvd-sim"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: "id:00010002"},
	}}
	name, _ := asn1.Marshal(rdn)
	san, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, UnknownExtKeyUsage: []asn1.ObjectIdentifier{{2, 23, 133, 8, 1}},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
