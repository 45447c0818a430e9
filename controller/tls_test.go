package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/store/bolt"
)

// TestExpiredCertificateRefused presents a node certificate of the
// deployment's own CA that has expired: the handshake fails, and the
// refusal is in the audit log.
func TestExpiredCertificateRefused(t *testing.T) {
	dir := t.TempDir()
	st, err := bolt.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := New(ctx, Config{DataDir: dir, Store: st, Listen: l.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.RunListener(ctx, l) }()
	defer func() { cancel(); <-done; c.Close() }()

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c.ca.SetClock(func() time.Time { return time.Now().Add(-50 * time.Second) })
	_, der, err := c.ca.IssueNode("pc1", key.Public(), 10*time.Second)
	c.ca.SetClock(c.now)
	if err != nil {
		t.Fatal(err)
	}
	before := c.audit.log.Size()
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	cl, err := client.New("https://"+l.Addr().String(), c.ca.Bundle().ClientTLSConfig(&cert, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl.Agent.Report(ctx, connect.NewRequest(&tvdv1.ReportRequest{Node: "pc1"}))
	if err == nil {
		t.Fatal("an expired certificate was accepted")
	}
	deadline := time.Now().Add(2 * time.Second)
	for c.audit.log.Size() == before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	found := false
	for i := before; i < c.audit.log.Size(); i++ {
		e, err := c.audit.log.Entry(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == "refuse" && strings.Contains(e.Detail["reason"], "expired") && strings.Contains(e.Subject, "/node/pc1") {
			found = true
		}
	}
	if !found {
		t.Error("the refused handshake is not in the audit log")
	}
}
