package controller

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/ca"
)

// TestIDCache: a chain verified once is answered from the cache with the
// same identity; outside the chain's validity, or under another bundle,
// it is verified again (and an expired chain refused).
func TestIDCache(t *testing.T) {
	now := time.Now()
	root, err := ca.New("tvd.test", now, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.New("tvd.test", now, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _, err := root.IssueNode("n1", key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{leaf}
	var ic idCache
	id1, err := ic.identity(root.Bundle(), chain, now)
	if err != nil || id1.Node != "n1" {
		t.Fatalf("first: %+v, %v", id1, err)
	}
	if len(ic.m) != 1 {
		t.Fatalf("cache holds %d entries", len(ic.m))
	}
	id2, err := ic.identity(root.Bundle(), chain, now.Add(time.Minute))
	if err != nil || id2.ID != id1.ID || id2.Serial != id1.Serial {
		t.Fatalf("cached: %+v, %v", id2, err)
	}
	if _, err := ic.identity(root.Bundle(), chain, now.Add(2*time.Hour)); err == nil {
		t.Fatal("an expired chain was accepted from the cache")
	}
	if _, err := ic.identity(other.Bundle(), chain, now); err == nil {
		t.Fatal("a chain of another CA was accepted from the cache")
	}
}
