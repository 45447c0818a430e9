package ca

import (
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"
)

// BenchmarkIssueMember measures member issuance with the key given (name
// admission, template, signing, parsing the result; no key generation) on
// one core, and reports it as a ratio to raw x509.CreateCertificate with the
// same template, parent and key, interleaved in the same run:
// x-vs-createcertificate = raw time / our time (1.0 = no overhead; the goal
// is at least 0.5).
func BenchmarkIssueMember(b *testing.B) {
	c := newTestCA(b, testTD)
	pub := newKey(b).Public()
	id, err := MemberID(testTD, payroll)
	if err != nil {
		b.Fatal(err)
	}
	tmpl, err := c.template(id, KindMember, 5*time.Minute, nil, payroll.EE)
	if err != nil {
		b.Fatal(err)
	}
	var ours, raw time.Duration
	n := 0
	for b.Loop() {
		t1 := time.Now()
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, _, err := c.IssueMember(payroll, pub, 5*time.Minute); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		raw += t2.Sub(t1)
		ours += t3.Sub(t2)
		n++
	}
	b.ReportMetric(float64(ours.Nanoseconds())/float64(n), "ns/issue")
	b.ReportMetric(float64(raw.Nanoseconds())/float64(n), "ns/createcertificate")
	b.ReportMetric(float64(raw)/float64(ours), "x-vs-createcertificate")
}

// BenchmarkVerify measures Bundle.Verify of a member certificate, as a
// ratio to x509.Certificate.Verify with the same pool in the same run.
func BenchmarkVerify(b *testing.B) {
	c := newTestCA(b, testTD)
	cert, _, err := c.IssueMember(payroll, newKey(b).Public(), 5*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	chain := []*x509.Certificate{cert}
	pool := c.Bundle().CertPool()
	opts := x509.VerifyOptions{Roots: pool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	var ours, raw time.Duration
	n := 0
	for b.Loop() {
		t1 := time.Now()
		if _, err := cert.Verify(opts); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := c.Verify(chain, t0); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		raw += t2.Sub(t1)
		ours += t3.Sub(t2)
		n++
	}
	b.ReportMetric(float64(ours.Nanoseconds())/float64(n), "ns/verify")
	b.ReportMetric(float64(raw)/float64(ours), "x-vs-x509verify")
}
