//go:build tpmsimulator

package controller_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"math/big"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/tvdtest"
)

// ekCA is a TPM manufacturer's CA for the simulator's endorsement key.
type ekCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newEKCA(t *testing.T) *ekCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tvd test TPM manufacturer"},
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

// issue makes an EK certificate as the TCG EK credential profile has it,
// with the TPM's manufacturer, model and version in a critical SAN.
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

// tpmPolicy is examples/outsourcing with yellow kept at TPM assurance and
// red relaxed to implicit (so a second, TPM-less node can be a red peer in
// one test process, which can hold only one simulator), and weak isolation
// allowed (no EE driver runs here).
func tpmPolicy(t *testing.T) []policy.File {
	p, err := policy.Load("../examples/outsourcing")
	if err != nil {
		t.Fatal(err)
	}
	var out []policy.File
	for _, f := range p.Files {
		s := strings.ReplaceAll(string(f.Content), "isolation: strong", "isolation: weak")
		if strings.Contains(s, "name: red\n") {
			s = strings.ReplaceAll(s, "minAssurance: tpm", "minAssurance: implicit")
			s = strings.Replace(s, "    verify: {by: attestation}\n", "    verify: {by: flow-matrix}\n", 1)
			s = strings.Replace(s, "type: platform-assurance\n    text: Every executable on a red member", "type: information-flow\n    text: Every executable on a red member", 1)
		}
		if strings.Contains(s, "kind: Tests") {
			continue
		}
		out = append(out, policy.File{Name: filepath.Base(f.Name), Content: []byte(s)})
	}
	if _, err := policy.ParseAndCompile(out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTPMNodeJoinsAndViolates enrols a node backed by a real TPM 2.0 (the
// simulator) with an EK certificate from a test manufacturer CA. It joins at
// assurance tpm; a listed measurement keeps it verified; an unlisted one
// makes the controller mark the member violating within one push, run the
// domain's reactions, refuse to renew its certificate, and drop it from its
// peers' plans.
func TestTPMNodeJoinsAndViolates(t *testing.T) {
	sim, err := tpm.OpenSimulator(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	manufacturer := newEKCA(t)
	ek, err := sim.EK(tpm.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	pek, err := attest.ParseEK(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.ProvisionEKCert(tpm.EKECCP256, manufacturer.issue(t, pek.Key)); err != nil {
		t.Fatal(err)
	}

	env := tvdtest.New(t, tvdtest.Options{EKRoots: manufacturer.pool})
	env.ApplyFiles(tpmPolicy(t))
	pc1 := env.StartAgentWith(agent.NodeConfig{Node: "pc1", EEs: []agent.EEConfig{
		{Name: "yellow-mc1", Domain: "yellow", Role: "management-console", Owner: "ibm-global-services"},
		{Name: "red-client1", Domain: "red", Role: "client-os", Owner: "outsourcing-customer"},
	}}, agent.Config{TPM: sim.TPM})
	mgmt := env.StartAgent(agent.NodeConfig{Node: "mgmt", EEs: []agent.EEConfig{{Name: "red-gw", Domain: "red", Role: "gateway"}}})
	tvdtest.Eventually(t, 10*time.Second, "3 verified members", func() bool {
		ms := env.Members("")
		ok := 0
		for _, m := range ms {
			if m.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VERIFIED {
				ok++
			}
		}
		return ok == 3 && len(mgmt.Plan().GetFlow().GetClasses()) > 0
	})
	ns := nodes(t, env)
	for _, n := range ns {
		want := tvdv1.Assurance_ASSURANCE_IMPLICIT
		if n.GetName() == "pc1" {
			want = tvdv1.Assurance_ASSURANCE_TPM
		}
		if n.GetAssurance() != want {
			t.Errorf("node %s has assurance %v, want %v", n.GetName(), n.GetAssurance(), want)
		}
	}

	// A listed executable: the lab image's busybox, in both domains' lists.
	var busybox [32]byte
	b, _ := hex.DecodeString("3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6")
	copy(busybox[:], b)
	if err := pc1.Measure("yellow-mc1", "/bin/busybox", busybox); err != nil {
		t.Fatal(err)
	}
	if err := pc1.Measure("red-client1", "/bin/busybox", busybox); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	for _, m := range env.Members("") {
		if m.GetVerdict().GetStatus() != tvdv1.Status_STATUS_VERIFIED {
			t.Fatalf("listed measurement: %v is %v (%s)", m.GetMember(), m.GetVerdict().GetStatus(), m.GetVerdict().GetReason())
		}
	}
	redAddr := ""
	for _, m := range env.Members("red") {
		if m.GetMember().GetEe() == "red-client1" {
			redAddr = m.GetOverlayAddress()
		}
	}
	if !planMentions(mgmt.Plan(), "red-client1", redAddr) {
		t.Fatal("mgmt's plan does not hold red-client1 before the violation")
	}

	// An unlisted executable copied into the red client and run.
	mgmtVersion := mgmt.Plan().GetVersion()
	start := time.Now()
	if err := pc1.Measure("red-client1", "/tmp/evil", sha256.Sum256([]byte("not on the customer's list"))); err != nil {
		t.Fatal(err)
	}
	var got *tvdv1.MemberInfo
	tvdtest.Eventually(t, 5*time.Second, "red-client1 to violate", func() bool {
		for _, m := range env.Members("red") {
			if m.GetMember().GetEe() == "red-client1" && m.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VIOLATED {
				got = m
				return true
			}
		}
		return false
	})
	t.Logf("measurement to violating verdict: %v", time.Since(start).Round(time.Millisecond))
	if r := got.GetVerdict().GetReason(); !strings.Contains(r, "unlisted executable /tmp/evil") || !strings.Contains(r, "customer-approved") {
		t.Errorf("reason %q does not name the measurement and the reference values", r)
	}
	if !got.GetQuarantined() {
		t.Error("red's reactions include quarantine, but the member is not quarantined")
	}
	// The other member of the same node is unaffected.
	for _, m := range env.Members("yellow") {
		if m.GetVerdict().GetStatus() != tvdv1.Status_STATUS_VERIFIED {
			t.Errorf("%v on the same node is %v", m.GetMember(), m.GetVerdict().GetStatus())
		}
	}
	// It leaves its peers' plans within one push, and its own node is told
	// to quarantine and freeze it.
	tvdtest.Eventually(t, 5*time.Second, "mgmt's next plan", func() bool { return mgmt.Plan().GetVersion() > mgmtVersion })
	if planMentions(mgmt.Plan(), "red-client1", redAddr) {
		t.Error("the violating member is still in its peer's plan")
	}
	if v := mgmt.Plan().GetVersion(); v != mgmtVersion+1 {
		t.Errorf("mgmt's plan went from %d to %d; want one push", mgmtVersion, v)
	}
	tvdtest.Eventually(t, 5*time.Second, "pc1's plan with the reactions", func() bool {
		p := pc1.Plan()
		q := slices.ContainsFunc(p.GetQuarantine(), func(q *tvdv1.QuarantinedMember) bool { return q.GetMember().GetEe() == "red-client1" })
		f := slices.ContainsFunc(p.GetInstructions(), func(in *tvdv1.Instruction) bool {
			return in.GetReaction() == tvdv1.Reaction_REACTION_FREEZE && in.GetMember().GetEe() == "red-client1"
		})
		return q && f
	})
	// Its certificate is not renewed.
	creds, err := client.LoadDir(filepath.Join(pc1.DataDir, "node"))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.Dial(creds, env.URL)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := ca.NewCSR(key)
	_, err = cl.Agent.RenewMember(context.Background(), connect.NewRequest(&tvdv1.RenewMemberRequest{Node: "pc1",
		Member: &tvdv1.Member{Domain: "red", Role: "client-os", Ee: "red-client1"}, Csr: csr}))
	if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "not in good standing") {
		t.Errorf("renewal of a violating member: %v; want permission denied", err)
	}
	_ = tls.Certificate{}
}
