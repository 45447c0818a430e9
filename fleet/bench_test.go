package fleet

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/attest"
)

// BenchmarkSoftTPMEvidence times one round of a simulated node (one new
// measurement, quote and signature) against raw ecdsa.Sign P-256 of a
// digest in the same loop: the fleet's own cost per report as a fraction
// of a signature (x-vs-ecdsa-sign near 1 means signing dominates).
func BenchmarkSoftTPMEvidence(b *testing.B) {
	listed := sha256.Sum256([]byte("listed"))
	_, st, tp := enrolled(b, listed)
	tls := sha256.Sum256([]byte("tls"))
	key := tp.akKey
	digest := sha256.Sum256([]byte("baseline"))
	var base, subj time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, _, err := ecdsa.Sign(cryptoRand, key, digest[:]); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		// As after an accepted report: the verifier has seen every entry.
		cur := attest.Cursor{ResetCount: 1, Seq: tp.Events(), Valid: true}
		tp.Measure(attest.EventExec, "ee", "/bin/x", listed)
		ev, err := tp.Evidence(st.Nonce(), tls, cur)
		if err != nil {
			b.Fatal(err)
		}
		tp.Discard(ev.FirstSeq + uint64(len(ev.Events)))
		base += t1.Sub(t0)
		subj += time.Since(t1)
	}
	b.ReportMetric(float64(base)/float64(subj), "x-vs-ecdsa-sign")
	b.ReportMetric(float64(subj.Nanoseconds())/float64(b.N), "subject-ns/op")
}

// BenchmarkActivateCredential times the software TPM2_ActivateCredential
// against one raw ECDH P-256 (its dominant step) in the same loop.
func BenchmarkActivateCredential(b *testing.B) {
	ca, err := NewEKCA(cryptoRand, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	v, err := attest.NewVerifier(attest.Config{Refs: attest.NewRefSet(nil), EK: attest.EKPolicy{Roots: ca.Pool()}})
	if err != nil {
		b.Fatal(err)
	}
	tp, err := NewSoftTPM(nil, nil, ca)
	if err != nil {
		b.Fatal(err)
	}
	_, ch, err := v.BeginEnrollment(tp.EKPublic(), tp.EKCert(), tp.AKPublic())
	if err != nil {
		b.Fatal(err)
	}
	peer, err := tp.ekKey.Curve().GenerateKey(cryptoRand)
	if err != nil {
		b.Fatal(err)
	}
	var base, subj time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := tp.ekKey.ECDH(peer.PublicKey()); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := tp.ActivateCredential(ch.CredentialBlob, ch.EncryptedSecret); err != nil {
			b.Fatal(err)
		}
		base += t1.Sub(t0)
		subj += time.Since(t1)
	}
	b.ReportMetric(float64(base)/float64(subj), "x-vs-ecdh")
	b.ReportMetric(float64(subj.Nanoseconds())/float64(b.N), "subject-ns/op")
}

// FuzzActivateCredential feeds arbitrary challenges (which come from the
// network) to the software TPM: it must refuse them with an error, never
// panic, and accept only the genuine one.
func FuzzActivateCredential(f *testing.F) {
	ca, err := NewEKCA(cryptoRand, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	v, err := attest.NewVerifier(attest.Config{Refs: attest.NewRefSet(nil), EK: attest.EKPolicy{Roots: ca.Pool()}})
	if err != nil {
		f.Fatal(err)
	}
	tp, err := NewSoftTPM(nil, nil, ca)
	if err != nil {
		f.Fatal(err)
	}
	_, ch, err := v.BeginEnrollment(tp.EKPublic(), tp.EKCert(), tp.AKPublic())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ch.CredentialBlob, ch.EncryptedSecret)
	f.Add([]byte{0, 32}, []byte{0, 0, 0, 0})
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, blob, enc []byte) {
		secret, err := tp.ActivateCredential(blob, enc)
		if err == nil && ch.Check(secret) != nil && string(blob) == string(ch.CredentialBlob) && string(enc) == string(ch.EncryptedSecret) {
			t.Fatal("genuine challenge gave the wrong secret")
		}
	})
}
