package api

import (
	"testing"

	"google.golang.org/protobuf/proto"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"

	"github.com/tvd-dev/tvd"
)

func TestConvert(t *testing.T) {
	m := tvd.Member{Domain: "payroll", Role: "web", EE: "web-1"}
	if got, err := MemberFromProto(MemberToProto(m)); err != nil || got != m {
		t.Errorf("member round trip: %v, %v", got, err)
	}
	for _, bad := range []*tvdv1.Member{nil, {}, {Domain: "d", Role: "r"}} {
		if _, err := MemberFromProto(bad); err == nil {
			t.Errorf("MemberFromProto(%v) succeeded", bad)
		}
	}
	for _, a := range []tvd.Assurance{tvd.AssuranceNone, tvd.AssuranceImplicit, tvd.AssuranceTPM} {
		p := AssuranceToProto(a)
		if got, err := AssuranceFromProto(p); err != nil || got != a || int32(p) != int32(a) {
			t.Errorf("assurance %v → %v → %v, %v", a, p, got, err)
		}
	}
	if _, err := AssuranceFromProto(tvdv1.Assurance(99)); err == nil {
		t.Error("unknown assurance accepted")
	}
	for _, s := range []tvd.Status{tvd.StatusUnknown, tvd.StatusVerified, tvd.StatusViolated} {
		p := StatusToProto(s)
		if got := StatusFromProto(p); got != s || int32(p) != int32(s) {
			t.Errorf("status %v → %v → %v", s, p, got)
		}
	}
	if StatusFromProto(tvdv1.Status(99)) != tvd.StatusUnknown {
		t.Error("unknown status is not tvd.StatusUnknown")
	}
	for _, r := range tvd.Reactions {
		p, err := ReactionToProto(r)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := ReactionFromProto(p); err != nil || got != r {
			t.Errorf("reaction %v → %v → %v, %v", r, p, got, err)
		}
	}
	if _, err := ReactionToProto("explode"); err == nil {
		t.Error("unknown reaction accepted")
	}
	if _, err := ReactionFromProto(tvdv1.Reaction_REACTION_UNSPECIFIED); err == nil {
		t.Error("unspecified reaction accepted")
	}
}

// FuzzWireMessages: the messages an unauthenticated or node caller sends
// decode without panicking, and a decoded message re-encodes to an equal
// message.
func FuzzWireMessages(f *testing.F) {
	seeds := []proto.Message{
		&tvdv1.EnrollRequest{JoinToken: "t", NodeName: "n1", Csr: []byte{0x30}, Platform: &tvdv1.EnrollRequest_Tpm{Tpm: &tvdv1.TPMEnrollment{EkPublic: []byte{2}, EkCert: []byte{1}}}},
		&tvdv1.ReportRequest{Node: "n1", Nonce: []byte{1, 2}, Quote: &tvdv1.Quote{Attest: []byte{3}}, Pcrs: []*tvdv1.PCRValue{{HashAlg: 11, Index: 10, Digest: []byte{4}}},
			Acks: []*tvdv1.PlanAck{{PlanVersion: 3, Domains: []*tvdv1.DomainAck{{Domain: "d", Channel: tvdv1.ChannelState_CHANNEL_STATE_UP}}}}},
		&tvdv1.ActivateCredentialRequest{EnrollmentId: "e", Secret: []byte{5}},
		&tvdv1.ApplyPolicyRequest{Files: []*tvdv1.PolicyFile{{Name: "a.yaml", Content: []byte("x: 1")}}},
	}
	for i, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		var msg proto.Message
		switch kind % 4 {
		case 0:
			msg = &tvdv1.EnrollRequest{}
		case 1:
			msg = &tvdv1.ReportRequest{}
		case 2:
			msg = &tvdv1.ActivateCredentialRequest{}
		default:
			msg = &tvdv1.ApplyPolicyRequest{}
		}
		if err := proto.Unmarshal(data, msg); err != nil {
			return
		}
		again, err := proto.Marshal(msg)
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		back := msg.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(again, back); err != nil || !proto.Equal(msg, back) {
			t.Fatalf("round trip changed the message: %v", err)
		}
	})
}
