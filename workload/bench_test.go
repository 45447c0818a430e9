package workload_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"testing"

	"connectrpc.com/connect"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/api/gen/tvd/v1/tvdv1connect"
	"github.com/tvd-dev/tvd/workload"
)

// BenchmarkDial: one mutual-TLS handshake between two members of the
// domain; each end's peer check is served from the SDK's cache after the
// first (CheckInterval), so this is the TLS 1.3 handshake plus the chain
// verification against the bundle.
func BenchmarkDial(b *testing.B) {
	ctx := context.Background()
	web, err := workload.OpenSocket(ctx, os.Getenv(workload.EnvSocket))
	if err != nil {
		b.Fatal(err)
	}
	defer web.Close()
	alice, err := workload.OpenSocket(ctx, aliceSocket)
	if err != nil {
		b.Fatal(err)
	}
	defer alice.Close()
	l, err := web.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	b.ResetTimer()
	for b.Loop() {
		c, err := alice.Dial(ctx, "tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkCheckPeer: one peer check through the Workload API, without
// the SDK's cache (EE -> agent -> controller).
func BenchmarkCheckPeer(b *testing.B) {
	ctx := context.Background()
	alice, err := workload.OpenSocket(ctx, aliceSocket)
	if err != nil {
		b.Fatal(err)
	}
	defer alice.Close()
	cert, err := alice.TLSConfig(false).GetClientCertificate(nil)
	if err != nil {
		b.Fatal(err)
	}
	sock := os.Getenv(workload.EnvSocket)
	api := tvdv1connect.NewWorkloadServiceClient(&http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}, "http://workload.tvd")
	for b.Loop() {
		r, err := api.CheckPeer(ctx, connect.NewRequest(&tvdv1.CheckPeerRequest{CertChain: cert.Certificate}))
		if err != nil || !r.Msg.GetPeer().GetAuthorized() {
			b.Fatal(r, err)
		}
	}
}

// BenchmarkSecret: one Secret call (EE -> agent, released value cached in
// the agent's memory).
func BenchmarkSecret(b *testing.B) {
	ctx := context.Background()
	web, err := workload.OpenSocket(ctx, os.Getenv(workload.EnvSocket))
	if err != nil {
		b.Fatal(err)
	}
	defer web.Close()
	for b.Loop() {
		if _, err := web.Secret(ctx, "order-signing-key"); err != nil {
			b.Fatal(err)
		}
	}
}
