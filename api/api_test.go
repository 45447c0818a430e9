package api_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/api/gen/tvd/v1/tvdv1connect"
	"github.com/tvd-dev/tvd/ca"
)

// agentServer serves AgentService's Enroll (issuing the node certificate
// for the request's CSR), Report (answering with the caller's node name)
// and Watch (two plans). Every other method is the generated Unimplemented
// one.
type agentServer struct {
	tvdv1connect.UnimplementedAgentServiceHandler
	ca *ca.CA
}

type identityKey struct{}

func (s *agentServer) Enroll(_ context.Context, req *connect.Request[tvdv1.EnrollRequest]) (*connect.Response[tvdv1.EnrollResponse], error) {
	cert, der, err := s.ca.IssueNodeCSR(req.Msg.GetNodeName(), req.Msg.GetCsr(), time.Hour)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	return connect.NewResponse(&tvdv1.EnrollResponse{
		EnrollmentId: "e-" + req.Msg.GetNodeName(),
		Credentials: &tvdv1.NodeCredentials{
			NodeCert:    der,
			CaBundle:    s.ca.Bundle().PEM(),
			TrustDomain: s.ca.TrustDomain(),
			Expires:     timestamppb.New(cert.NotAfter),
		},
		Assurance: tvdv1.Assurance_ASSURANCE_IMPLICIT,
	}), nil
}

func (s *agentServer) Report(ctx context.Context, req *connect.Request[tvdv1.ReportRequest]) (*connect.Response[tvdv1.ReportResponse], error) {
	id, ok := ctx.Value(identityKey{}).(ca.Identity)
	if !ok || id.Kind != ca.KindNode {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("report needs a node certificate"))
	}
	if id.Node != req.Msg.GetNode() {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("report for another node"))
	}
	return connect.NewResponse(&tvdv1.ReportResponse{NextNonce: []byte(id.Node)}), nil
}

// Watch sends the two plans after last_plan_version, then ends the stream.
func (s *agentServer) Watch(ctx context.Context, req *connect.Request[tvdv1.WatchRequest], stream *connect.ServerStream[tvdv1.WatchResponse]) error {
	if id, ok := ctx.Value(identityKey{}).(ca.Identity); !ok || id.Node != req.Msg.GetNode() {
		return connect.NewError(connect.CodePermissionDenied, errors.New("watch needs the node's certificate"))
	}
	for v := req.Msg.GetLastPlanVersion() + 1; v <= req.Msg.GetLastPlanVersion()+2; v++ {
		if err := stream.Send(&tvdv1.WatchResponse{Plan: &tvdv1.Plan{Version: v}}); err != nil {
			return err
		}
	}
	return nil
}

// withIdentity puts the identity of a client that presented a certificate
// (verified by the TLS configuration) into the request context.
func withIdentity(b *ca.Bundle, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			id, err := b.PeerIdentity(r.TLS, time.Now())
			if err != nil {
				http.Error(w, "bad client certificate", http.StatusUnauthorized)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), identityKey{}, id))
		}
		next.ServeHTTP(w, r)
	})
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestAgentServiceRoundTrip serves AgentService over HTTPS (HTTP/2,
// certificates from package ca) and calls it with the generated client in
// each protocol Connect speaks: an unauthenticated Enroll, then a Report
// and a Watch stream authenticated by the node certificate Enroll returned.
func TestAgentServiceRoundTrip(t *testing.T) {
	authority, err := ca.New("tvd.test", time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	serverKey := newKey(t)
	_, serverDER, err := authority.IssueServer([]string{"127.0.0.1"}, serverKey.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(tvdv1connect.NewAgentServiceHandler(&agentServer{ca: authority}))
	srv := httptest.NewUnstartedServer(withIdentity(authority.Bundle(), mux))
	srv.EnableHTTP2 = true
	srv.TLS = authority.Bundle().ServerTLSConfig(
		tls.Certificate{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}, tls.VerifyClientCertIfGiven)
	srv.StartTLS()
	defer srv.Close()

	httpClient := func(cert *tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{
			ForceAttemptHTTP2: true,
			TLSClientConfig:   authority.Bundle().ClientTLSConfig(cert, "127.0.0.1"),
		}}
	}
	for name, opts := range map[string][]connect.ClientOption{
		"connect":  nil,
		"grpc":     {connect.WithGRPC()},
		"grpc-web": {connect.WithGRPCWeb()},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			nodeKey := newKey(t)
			csr, err := ca.NewCSR(nodeKey)
			if err != nil {
				t.Fatal(err)
			}
			anon := tvdv1connect.NewAgentServiceClient(httpClient(nil), srv.URL, opts...)
			resp, err := anon.Enroll(ctx, connect.NewRequest(&tvdv1.EnrollRequest{NodeName: "node-" + name, Csr: csr}))
			if err != nil {
				t.Fatalf("Enroll: %v", err)
			}
			creds := resp.Msg.GetCredentials()
			bundle, err := ca.ParseBundle(creds.GetTrustDomain(), creds.GetCaBundle())
			if err != nil {
				t.Fatalf("bundle: %v", err)
			}
			id, err := bundle.VerifyDER([][]byte{creds.GetNodeCert()}, time.Now())
			if err != nil || id.Kind != ca.KindNode || id.Node != "node-"+name {
				t.Fatalf("node certificate: %+v, %v", id, err)
			}

			// The same call with a CSR that is not DER fails with the
			// handler's code, carried across the protocol.
			_, err = anon.Enroll(ctx, connect.NewRequest(&tvdv1.EnrollRequest{NodeName: "x", Csr: []byte("junk")}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("Enroll with a bad CSR: %v, want invalid_argument", err)
			}

			node := tvdv1connect.NewAgentServiceClient(
				httpClient(&tls.Certificate{Certificate: [][]byte{creds.GetNodeCert()}, PrivateKey: nodeKey}), srv.URL, opts...)
			rep, err := node.Report(ctx, connect.NewRequest(&tvdv1.ReportRequest{Node: "node-" + name}))
			if err != nil {
				t.Fatalf("Report: %v", err)
			}
			if string(rep.Msg.GetNextNonce()) != "node-"+name {
				t.Errorf("Report answered %q", rep.Msg.GetNextNonce())
			}
			if _, err := node.Report(ctx, connect.NewRequest(&tvdv1.ReportRequest{Node: "someone-else"})); connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Errorf("Report for another node: %v, want permission_denied", err)
			}
			if _, err := anon.Report(ctx, connect.NewRequest(&tvdv1.ReportRequest{Node: "node-" + name})); connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("Report without a client certificate: %v, want unauthenticated", err)
			}
			ws, err := node.Watch(ctx, connect.NewRequest(&tvdv1.WatchRequest{Node: "node-" + name, LastPlanVersion: 41}))
			if err != nil {
				t.Fatalf("Watch: %v", err)
			}
			var versions []uint64
			for ws.Receive() {
				versions = append(versions, ws.Msg().GetPlan().GetVersion())
			}
			if err := ws.Err(); err != nil || len(versions) != 2 || versions[0] != 42 || versions[1] != 43 {
				t.Errorf("Watch received versions %v, err %v; want [42 43]", versions, err)
			}
			ws.Close()
			if _, err := node.Leave(ctx, connect.NewRequest(&tvdv1.LeaveRequest{Node: "node-" + name})); connect.CodeOf(err) != connect.CodeUnimplemented {
				t.Errorf("Leave: %v, want unimplemented", err)
			}
		})
	}
}
