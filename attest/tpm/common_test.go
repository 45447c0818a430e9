package tpm_test

import (
	"crypto/sha256"
	"testing"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
)

func fileDigest(content string) [32]byte { return sha256.Sum256([]byte(content)) }

var (
	imgDigest = fileDigest("alpine-3.20 rootfs manifest")
	shDigest  = fileDigest("busybox 1.36 /bin/sh")
	appDigest = fileDigest("tmart web server v1")
	dbDigest  = fileDigest("paychecks db v2")
	badDigest = fileDigest("cryptominer")
	tlsHash   = sha256.Sum256([]byte("node tls spki der"))
)

func testRefs() *attest.RefSet {
	return attest.NewRefSet(map[[32]byte]string{
		imgDigest: "image/alpine-3.20",
		shDigest:  "busybox-1.36/bin/sh",
		appDigest: "tmart/web-1",
		dbDigest:  "paychecks/db-2",
	})
}

// enroll runs the whole enrolment of ak against ek.
func enroll(t *testing.T, v *attest.Verifier, ek *tpm.EK, ak *tpm.AK) *attest.NodeState {
	t.Helper()
	e, ch, err := v.BeginEnrollment(ek.Public, ek.Cert, ak.Public)
	if err != nil {
		t.Fatalf("begin enrollment: %v", err)
	}
	secret, err := ak.ActivateCredential(ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatalf("activate credential: %v", err)
	}
	st, err := v.FinishEnrollment(e, secret)
	if err != nil {
		t.Fatalf("finish enrollment: %v", err)
	}
	return st
}

func measure(t *testing.T, m *tpm.Measurer, typ attest.EventType, ee, path string, d [32]byte) {
	t.Helper()
	if _, _, err := m.Measure(typ, ee, path, d); err != nil {
		t.Fatalf("measure %s: %v", path, err)
	}
}

func evidence(t *testing.T, m *tpm.Measurer, ak *tpm.AK, st *attest.NodeState) *attest.Evidence {
	t.Helper()
	ev, err := m.Evidence(ak, st.Nonce(), tlsHash, st.Cursor())
	if err != nil {
		t.Fatalf("evidence: %v", err)
	}
	return ev
}

func mustAppraise(t *testing.T, v *attest.Verifier, st *attest.NodeState, ev *attest.Evidence) *attest.Result {
	t.Helper()
	res, err := v.Appraise(st, ev, tlsHash)
	if err != nil {
		t.Fatalf("appraise: %v", err)
	}
	if res.Status != tvd.StatusVerified {
		t.Fatalf("status %v, want verified", res.Status)
	}
	for _, c := range res.Checks {
		if c.Status != tvd.StatusVerified {
			t.Fatalf("check %s: %v %s", c.Name, c.Status, c.Detail)
		}
	}
	return res
}
