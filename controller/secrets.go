package controller

// Domain secrets and protected storage keys (issue 9).
//
// The controller DERIVES every secret value and storage key rather than
// storing it: value = HKDF-SHA256(master, info), where info binds the trust
// domain, the domain, the secret's name and generation (or, for a storage
// key, the domain and, for storage: ee, the EE). The 256-bit master key is
// kept in the store sealed with the controller's key-encryption key
// (AES-256-GCM, the same KEK that seals the CA key), so neither the store
// nor the policy ever holds a secret in plaintext, and a new generation in
// the policy rotates a value. Values leave the controller only in
// SecretService.Release replies over mutual TLS to the node hosting the
// member, and only while that member is admitted, verified within its
// domain's deadline and not quarantined.

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/api"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/store"
)

const (
	keySecretMaster = "secrets/master"
	masterAAD       = "tvd secrets master key v1"
	storageKeyBytes = 32
)

// loadOrCreateMaster returns the secrets master key, creating it sealed
// with kek on first use.
func loadOrCreateMaster(ctx context.Context, st store.Store, kek []byte) ([]byte, error) {
	aead, err := kekAEAD(kek)
	if err != nil {
		return nil, err
	}
	kv, err := st.Get(ctx, keySecretMaster)
	if err == nil {
		b := kv.Value
		if len(b) < aead.NonceSize() {
			return nil, errors.New("secrets master key: stored record too short")
		}
		m, err := aead.Open(nil, b[:aead.NonceSize()], b[aead.NonceSize():], []byte(masterAAD))
		if err != nil {
			return nil, fmt.Errorf("secrets master key: unseal with the key-encryption key: %w", err)
		}
		return m, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("secrets master key: %w", err)
	}
	m := make([]byte, 32)
	nonce := make([]byte, aead.NonceSize())
	rand.Read(m)
	rand.Read(nonce)
	sealed := aead.Seal(nonce, nonce, m, []byte(masterAAD))
	if _, err := st.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent(keySecretMaster)}, Ops: []store.Op{store.Put(keySecretMaster, sealed)}}); err != nil {
		return nil, fmt.Errorf("secrets master key: store: %w", err)
	}
	return m, nil
}

// kekAEAD is AES-GCM under the key-encryption key, which seals the keys the
// controller keeps in the store (the secrets master key, the shared audit
// signer key).
func kekAEAD(kek []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}
	return cipher.NewGCM(b)
}

// derive returns n bytes bound to the labels.
func (c *Controller) derive(n int, labels ...string) ([]byte, error) {
	info := "tvd/v1\x00" + c.ca.TrustDomain() + "\x00" + strings.Join(labels, "\x00")
	return hkdf.Key(sha256.New, c.master, nil, info, n)
}

// storageKey returns the member's protected storage key, its id and scope.
func (c *Controller) storageKey(m *memberRec, scope string) ([]byte, string, error) {
	labels := []string{"storage", m.Domain}
	if scope != "domain" {
		scope = "ee"
		labels = append(labels, "ee", m.EE)
	}
	k, err := c.derive(storageKeyBytes, labels...)
	if err != nil {
		return nil, "", err
	}
	id := sha256.Sum256([]byte(strings.Join(labels, "/")))
	return k, scope + ":" + hex.EncodeToString(id[:8]), nil
}

// secretService implements tvdv1connect.SecretServiceHandler.
type secretService struct{ c *Controller }

func (s *secretService) Release(ctx context.Context, req *connect.Request[tvdv1.ReleaseRequest]) (*connect.Response[tvdv1.ReleaseResponse], error) {
	resp, err := s.c.release(ctx, req.Msg)
	if err != nil {
		return nil, s.c.toConnect(ctx, "release secrets", err)
	}
	return connect.NewResponse(resp), nil
}

// nodeMember returns the node's member named in a request, which must be
// active; c.mu must be held.
func (c *Controller) nodeMember(ctx context.Context, node string, pm *tvdv1.Member) (*memberRec, error) {
	n, err := c.requireNode(ctx, node)
	if err != nil {
		return nil, err
	}
	want, err := api.MemberFromProto(pm)
	if err != nil {
		return nil, errInvalid("%v", err)
	}
	m := c.s.members[want.EE]
	if m == nil || m.Node != n.Name || m.member() != want {
		return nil, c.refuse(ctx, want.SPIFFEID(c.ca.TrustDomain()), want.Domain, errNotFound("member %s is not on node %q", want, n.Name), nil)
	}
	if !m.active() {
		return nil, c.refuse(ctx, want.SPIFFEID(c.ca.TrustDomain()), want.Domain, errDenied("member %s is %s: %s", want, m.State, m.Reason), nil)
	}
	return m, nil
}

// fresh reports whether m's verdict is within its domain's deadline.
func (c *Controller) fresh(m *memberRec) bool {
	if c.s.policy == nil {
		return false
	}
	pol, ok := c.s.policy.Domain(m.Domain)
	return ok && c.now().Sub(m.LastVerified) <= time.Duration(pol.Deadline)
}

func (c *Controller) release(ctx context.Context, r *tvdv1.ReleaseRequest) (*tvdv1.ReleaseResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.nodeMember(ctx, r.GetNode(), r.GetMember())
	if err != nil {
		return nil, err
	}
	subject := m.member().SPIFFEID(c.ca.TrustDomain())
	switch {
	case c.s.policy == nil:
		return nil, errPrecondition("no policy is applied")
	case m.Quarantined || m.Status != tvd.StatusVerified:
		return nil, c.refuse(ctx, subject, m.Domain, errDenied("member %s is not in good standing (%s: %s); no secret is released", m.member(), m.Status, m.StatusReason), map[string]string{"secret": "release"})
	case !c.fresh(m):
		return nil, c.refuse(ctx, subject, m.Domain, errDenied("member %s has no fresh verdict (last %s); no secret is released", m.member(), m.LastVerified.UTC().Format(time.RFC3339)), map[string]string{"secret": "release"})
	}
	pol, ok := c.s.policy.Domain(m.Domain)
	if !ok {
		return nil, errPrecondition("domain %q is not in the current policy", m.Domain)
	}
	resp := &tvdv1.ReleaseResponse{PolicyVersion: c.s.polVer}
	var names []string
	for _, sc := range pol.Secrets {
		if _, ok := pol.SecretFor(sc.Name, m.Role); !ok {
			continue
		}
		v, err := c.derive(sc.Bytes, "secret", m.Domain, sc.Name, strconv.Itoa(sc.Generation))
		if err != nil {
			return nil, fmt.Errorf("derive secret %q: %w", sc.Name, err)
		}
		resp.Secrets = append(resp.Secrets, &tvdv1.ReleasedSecret{Name: sc.Name, Value: v, Generation: uint32(sc.Generation)})
		names = append(names, fmt.Sprintf("%s@%d", sc.Name, sc.Generation))
	}
	key, id, err := c.storageKey(m, pol.Storage)
	if err != nil {
		return nil, fmt.Errorf("derive storage key: %w", err)
	}
	resp.StorageKey, resp.StorageKeyId, resp.StorageScope = key, id, strings.SplitN(id, ":", 2)[0]
	if !m.SecretsReleased {
		cp := *m
		cp.SecretsReleased = true
		op, err := putJSON(prefixMembers+m.EE, &cp)
		if err != nil {
			return nil, err
		}
		if _, err := c.st.Commit(ctx, store.Batch{Ops: []store.Op{op}}); err != nil {
			return nil, fmt.Errorf("release %s: %w", m.member(), err)
		}
		c.s.put(&cp)
	}
	c.record(ctx, audit.Entry{Kind: audit.KindSecret, Subject: subject, Domain: m.Domain, Detail: map[string]string{
		"action": "release", "node": m.Node, "secrets": strings.Join(names, ","), "storage_key": id, "policy_version": strconv.FormatUint(c.s.polVer, 10)}})
	return resp, nil
}

// auditWithdrawals records the withdrawal of the secrets of every member
// of node that holds released secrets and is no longer in good standing,
// as the plan that withdraws them goes out. c.mu must be held.
func (c *Controller) auditWithdrawals(ctx context.Context, node string) {
	var ops []store.Op
	var done []*memberRec
	for _, m := range c.s.nodeMembers(node) {
		if !m.SecretsReleased || m.inGoodStanding() {
			continue
		}
		cp := *m
		cp.SecretsReleased = false
		op, err := putJSON(prefixMembers+m.EE, &cp)
		if err != nil {
			c.log.ErrorContext(ctx, "secret withdrawal", "member", m.member().String(), "err", err)
			continue
		}
		ops = append(ops, op)
		done = append(done, &cp)
	}
	if len(ops) == 0 {
		return
	}
	if _, err := c.st.Commit(ctx, store.Batch{Ops: ops}); err != nil {
		// The plan withdraws them anyway; the entry is written at the next
		// push.
		c.log.ErrorContext(ctx, "secret withdrawal not stored", "node", node, "err", err)
		return
	}
	for _, m := range done {
		c.s.put(m)
		why := m.StatusReason
		switch {
		case !m.active():
			why = m.State + ": " + m.Reason
		case m.Quarantined:
			why = "quarantined: " + m.StatusReason
		}
		c.record(ctx, audit.Entry{Kind: audit.KindSecret, Subject: m.member().SPIFFEID(c.ca.TrustDomain()), Domain: m.Domain, Detail: map[string]string{
			"action": "withdraw", "node": m.Node, "reason": why}})
	}
}

func (s *secretService) CheckPeer(ctx context.Context, req *connect.Request[tvdv1.SecretServiceCheckPeerRequest]) (*connect.Response[tvdv1.SecretServiceCheckPeerResponse], error) {
	p, err := s.c.checkPeer(ctx, req.Msg)
	if err != nil {
		return nil, s.c.toConnect(ctx, "check peer", err)
	}
	return connect.NewResponse(&tvdv1.SecretServiceCheckPeerResponse{Peer: p}), nil
}

// maxPeerChain bounds the chain a peer check accepts.
const maxPeerChain = 8

func (c *Controller) checkPeer(ctx context.Context, r *tvdv1.SecretServiceCheckPeerRequest) (*tvdv1.PeerInfo, error) {
	if len(r.GetCertChain()) == 0 || len(r.GetCertChain()) > maxPeerChain {
		return nil, errInvalid("peer certificate chain: want 1 to %d certificates, got %d", maxPeerChain, len(r.GetCertChain()))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	self, err := c.nodeMember(ctx, r.GetNode(), r.GetMember())
	if err != nil {
		return nil, err
	}
	info := &tvdv1.PeerInfo{}
	// The chain says who the peer is; its current standing comes from the
	// member record. A chain that expired since its handshake (a live
	// connection across a rotation) still names its member: checking the
	// validity period at the handshake is the caller's (the SDK does).
	at := c.now()
	if leaf, err := x509.ParseCertificate(r.GetCertChain()[0]); err == nil && leaf.NotAfter.Before(at) {
		at = leaf.NotAfter
	}
	id, err := c.ca.Bundle().VerifyDER(r.GetCertChain(), at)
	if err != nil {
		info.Reason = "not a valid identity of this deployment: " + err.Error()
		return info, nil
	}
	if id.Kind != ca.KindMember {
		info.SpiffeId, info.Reason = id.ID, "not a member identity ("+id.Kind.String()+")"
		return info, nil
	}
	info.SpiffeId, info.Member = id.ID, api.MemberToProto(id.Member)
	info.SameDomain = id.Member.Domain == self.Domain
	m := c.s.members[id.Member.EE]
	if m == nil || m.member() != id.Member || !m.active() {
		info.Reason = "no longer a member of domain " + id.Member.Domain
		if m != nil && m.member() == id.Member {
			info.Reason = "member " + m.State + ": " + m.Reason
		}
		return info, nil
	}
	if n := c.s.nodes[m.Node]; n != nil {
		info.Assurance = n.Assurance
	}
	info.Isolation = m.Claims["ee.isolation"]
	if info.Isolation == "" {
		info.Isolation = "weak"
	}
	info.Status = api.StatusToProto(m.Status)
	if !m.LastVerified.IsZero() {
		info.VerifiedAt = timestamppb.New(m.LastVerified)
	}
	info.VerdictFresh = c.fresh(m) && m.Status == tvd.StatusVerified
	info.Quarantined = m.Quarantined
	switch {
	case !m.inGoodStanding():
		info.Reason = fmt.Sprintf("member not in good standing (%s: %s)", m.Status, m.StatusReason)
	case !info.VerdictFresh:
		info.Reason = "member's verdict is not fresh (last " + m.LastVerified.UTC().Format(time.RFC3339) + ")"
	case !c.flowAllowed(self, m):
		info.Reason = fmt.Sprintf("the flow matrix does not let %s/%s and %s/%s talk directly", self.Domain, self.Role, m.Domain, m.Role)
	default:
		info.Authorized = true
	}
	return info, nil
}

// flowAllowed reports whether the flow matrix lets a and b talk directly,
// in either direction.
func (c *Controller) flowAllowed(a, b *memberRec) bool {
	if a.Domain == b.Domain {
		return true
	}
	if c.s.policy == nil || c.s.policy.Matrix == nil {
		return false
	}
	mx := c.s.policy.Matrix
	ka, ok1 := mx.Class(a.Domain, a.Role)
	kb, ok2 := mx.Class(b.Domain, b.Role)
	if !ok1 || !ok2 {
		return false
	}
	return mx.Decide(ka, kb).Direct || mx.Decide(kb, ka).Direct
}
