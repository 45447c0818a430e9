package controller

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tvd-dev/tvd"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/policy"
)

// enrolTimeout bounds the time between Enroll and ActivateCredential.
const enrolTimeout = time.Minute

// pendingEnrol is a TPM enrolment waiting for credential activation.
type pendingEnrol struct {
	enrol   *attest.Enrollment
	node    string
	req     *tvdv1.EnrollRequest
	keyHash [32]byte
	token   string
	expires time.Time
}

// attestation holds the verifier side of TPM attestation.
type attestation struct {
	mu       sync.Mutex
	ekPolicy attest.EKPolicy
	verifier *attest.Verifier
	pending  map[string]*pendingEnrol
	// states caches each node's parsed attestation state with the bytes it
	// was stored as; a state whose bytes differ from the node record's is
	// parsed again (parsing the AK on every report was a tenth of the
	// controller's time under load).
	states map[string]cachedState
}

type cachedState struct {
	st    *attest.NodeState
	bytes []byte
}

// nodeState returns node n's attestation state, from the cache when it
// matches the stored bytes. It must be called with c.mu held.
func (c *Controller) nodeState(n *nodeRec) (*attest.NodeState, error) {
	if cs, ok := c.att.states[n.Name]; ok && bytes.Equal(cs.bytes, n.AttestState) {
		return cs.st, nil
	}
	st := new(attest.NodeState)
	if err := st.UnmarshalBinary(n.AttestState); err != nil {
		return nil, err
	}
	return st, nil
}

// newVerifier builds the verifier for a policy: its reference values are
// every set of the policy. Each entry is then checked against the member's
// own domain (domainAllows).
func (c *Controller) newVerifier(comp *policy.Compiled) (*attest.Verifier, error) {
	refs := map[[32]byte]string{}
	if comp != nil {
		for _, rs := range comp.ReferenceValues {
			for _, e := range rs.Entries {
				var d [32]byte
				if b, err := hex.DecodeString(e.SHA256); err == nil && len(b) == 32 {
					copy(d[:], b)
					if _, ok := refs[d]; !ok {
						refs[d] = rs.Name + "/" + e.Name
					}
				}
			}
		}
	}
	return attest.NewVerifier(attest.Config{Refs: attest.NewRefSet(refs), EK: c.att.ekPolicy, Now: c.now, Logger: c.log})
}

// beginTPM starts a TPM enrolment: the EK is checked and a credential
// challenge made. It must be called with c.mu held.
func (c *Controller) beginTPM(ctx context.Context, r *tvdv1.EnrollRequest, keyHash [32]byte, tokenID string) (*tvdv1.EnrollResponse, error) {
	tp := r.GetTpm()
	subject := "node/" + r.GetNodeName()
	c.att.mu.Lock()
	defer c.att.mu.Unlock()
	if c.att.verifier == nil {
		return nil, c.refuse(ctx, subject, "", errPrecondition("no policy has been applied yet (tvd policy apply)"), nil)
	}
	e, ch, err := c.att.verifier.BeginEnrollment(tp.GetEkPublic(), tp.GetEkCert(), tp.GetAkPublic())
	if err != nil {
		return nil, c.refuse(ctx, subject, "", errDenied("TPM enrolment refused: %v", err), nil)
	}
	var idb [16]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	now := c.now()
	for k, p := range c.att.pending {
		if now.After(p.expires) {
			delete(c.att.pending, k)
		}
	}
	c.att.pending[id] = &pendingEnrol{enrol: e, node: r.GetNodeName(), req: r, keyHash: keyHash, token: tokenID, expires: now.Add(enrolTimeout)}
	ek := e.EKIdentity()
	c.log.InfoContext(ctx, "TPM enrolment started", "node", r.GetNodeName(), "ek", fmt.Sprintf("%+v", ek))
	return &tvdv1.EnrollResponse{EnrollmentId: id, Challenge: &tvdv1.CredentialChallenge{CredentialBlob: ch.CredentialBlob, EncryptedSecret: ch.EncryptedSecret}}, nil
}

// finishTPM completes a TPM enrolment with the secret the TPM recovered.
func (c *Controller) finishTPM(ctx context.Context, id string, secret []byte) (*pendingEnrol, *attest.NodeState, error) {
	c.att.mu.Lock()
	p := c.att.pending[id]
	delete(c.att.pending, id)
	v := c.att.verifier
	c.att.mu.Unlock()
	if p == nil || c.now().After(p.expires) {
		return nil, nil, errPrecondition("no TPM enrolment %q is pending (it expires %v after Enroll); enrol again", id, enrolTimeout)
	}
	st, err := v.FinishEnrollment(p.enrol, secret)
	if err != nil {
		return p, nil, c.refuse(ctx, "node/"+p.node, "", errDenied("credential activation failed: the attestation key is not in the TPM that holds the endorsement key (%v)", err), nil)
	}
	return p, st, nil
}

// appraise checks a TPM node's evidence. It returns the members that
// violate, with the reason, and those whose measurements passed; it
// updates the node's attestation state in upd. It must be called with c.mu
// held.
// preAppraisal is the costly part of appraising a TPM node's report (the
// log decoded, the quote's signature verified, the log replayed), done by
// preAppraise outside c.mu on a copy of the node's attestation state.
type preAppraisal struct {
	base []byte            // the state bytes the copy was taken from
	st   *attest.NodeState // the state after the appraisal
	res  *attest.Result
	aerr error
}

// preAppraise appraises a TPM node's report outside c.mu, so that reports
// of many nodes are appraised in parallel. It returns nil when the report
// is not one it can take (not a TPM node, a caller that is not the node,
// a stale nonce): report then does, or refuses, the whole work under
// c.mu as before. appraise uses the result only if the node's state is
// still the one copied.
func (c *Controller) preAppraise(ctx context.Context, r *tvdv1.ReportRequest) *preAppraisal {
	c.mu.Lock()
	n, err := c.requireNode(ctx, r.GetNode())
	if err != nil || n.Assurance != tvd.AssuranceTPM.String() {
		c.mu.Unlock()
		return nil
	}
	st, err := c.nodeState(n)
	base, keyHex := n.AttestState, n.KeyHash
	c.mu.Unlock()
	if err != nil || !bytes.Equal(r.GetNonce(), st.Nonce()) {
		return nil
	}
	// st may be the cached state others read under c.mu: appraise a copy.
	// Its fields are read-only to everyone but the appraiser, which holds
	// c.mu for the cached one.
	c.mu.Lock()
	st = st.Clone()
	c.mu.Unlock()
	ev, events, derr, err := evidenceOf(r)
	if err != nil {
		return nil
	}
	ev.Events = events
	var keyHash [32]byte
	if b, err := hex.DecodeString(keyHex); err == nil && len(b) == 32 {
		copy(keyHash[:], b)
	}
	c.att.mu.Lock()
	v := c.att.verifier
	c.att.mu.Unlock()
	p := &preAppraisal{base: base, st: st}
	if derr != nil {
		p.aerr = fmt.Errorf("measurement log: %w", derr)
	} else {
		p.res, p.aerr = v.Appraise(st, ev, keyHash)
	}
	return p
}

// evidenceOf reads a report's quote, PCRs and log.
func evidenceOf(r *tvdv1.ReportRequest) (ev *attest.Evidence, events []attest.Event, derr, err error) {
	ev = &attest.Evidence{FirstSeq: r.GetFirstEventSeq()}
	if q := r.GetQuote(); q != nil {
		ev.Attest, ev.Signature = q.GetAttest(), q.GetSignature()
	}
	for _, p := range r.GetPcrs() {
		if p.GetHashAlg() != 0x000B || len(p.GetDigest()) != 32 {
			return nil, nil, nil, errInvalid("PCR %d: want a SHA-256 (0x000B) value of 32 bytes", p.GetIndex())
		}
		var v [32]byte
		copy(v[:], p.GetDigest())
		ev.PCRs = append(ev.PCRs, attest.PCR{Index: int(p.GetIndex()), Value: v})
	}
	events, derr = attest.DecodeEvents(r.GetEvents(), attest.DefaultMaxEvents)
	return ev, events, derr, nil
}

func (c *Controller) appraise(ctx context.Context, n, upd *nodeRec, r *tvdv1.ReportRequest, pre *preAppraisal) (violations map[string]string, passed map[string][]string, cursor *tvdv1.AttestCursor, err error) {
	violations, passed = map[string]string{}, map[string][]string{}
	var st *attest.NodeState
	var res *attest.Result
	var aerr error
	if pre != nil && bytes.Equal(pre.base, n.AttestState) {
		// Appraised outside the lock against the state still in force.
		st, res, aerr = pre.st, pre.res, pre.aerr
	} else {
		if st, err = c.nodeState(n); err != nil {
			return nil, nil, nil, fmt.Errorf("node %s attestation state: %w", n.Name, err)
		}
		if !bytes.Equal(r.GetNonce(), st.Nonce()) {
			return nil, nil, nil, errPrecondition("report answers an old or unknown nonce (a replay?); reopen the plan stream for the current one")
		}
		ev, events, derr, err := evidenceOf(r)
		if err != nil {
			return nil, nil, nil, err
		}
		ev.Events = events
		var keyHash [32]byte
		if b, err := hex.DecodeString(n.KeyHash); err == nil && len(b) == 32 {
			copy(keyHash[:], b)
		}
		c.att.mu.Lock()
		v := c.att.verifier
		c.att.mu.Unlock()
		if derr != nil {
			aerr = fmt.Errorf("measurement log: %w", derr)
		} else {
			res, aerr = v.Appraise(st, ev, keyHash)
		}
	}
	// The nonce is spent whatever the outcome: store the new state. The
	// cache holds it with its bytes; if the store refuses them, the node
	// record keeps the old bytes and the next report parses those again.
	if b, err := st.MarshalBinary(); err == nil {
		upd.AttestState = b
		c.att.states[n.Name] = cachedState{st: st, bytes: b}
	} else {
		delete(c.att.states, n.Name)
	}
	cur := st.Cursor()
	cursor = &tvdv1.AttestCursor{ResetCount: cur.ResetCount, NextSeq: cur.Seq, Valid: cur.Valid}
	var unlisted *attest.UnlistedError
	if aerr != nil && !errors.As(aerr, &unlisted) {
		for _, m := range c.s.members {
			if m.Node == n.Name && m.active() {
				violations[m.EE] = "attestation failed: " + aerr.Error()
			}
		}
		return violations, passed, cursor, nil
	}
	// Appraise every new entry against the reference values of the domain
	// of the EE it belongs to.
	for _, e := range res.Entries {
		if e.EE == "" {
			continue
		}
		m := c.s.members[e.EE]
		if m == nil || m.Node != n.Name || !m.active() {
			continue
		}
		d, ok := c.s.policy.Domain(m.Domain)
		if !ok {
			continue
		}
		if e.Type == attest.EventEEStart {
			// The EE started from an image: it must be the one the EE
			// declared when it asked to join.
			if m.Image != "" && m.Image != "sha256:"+hex.EncodeToString(e.FileDigest[:]) {
				if _, dup := violations[m.EE]; !dup {
					violations[m.EE] = fmt.Sprintf("EE started from image sha256:%x, not the image %s it joined with; log entry %d", e.FileDigest, m.Image, e.Seq)
				}
			}
			continue
		}
		if name, ok := d.Allowed(e.FileDigest); ok {
			set, _, _ := strings.Cut(name, "/")
			if !slices.Contains(passed[m.EE], set) {
				passed[m.EE] = append(passed[m.EE], set)
			}
			continue
		}
		if _, dup := violations[m.EE]; !dup {
			violations[m.EE] = fmt.Sprintf("unlisted executable %s (sha256:%x) is not in %s's reference values (%s); measured in PCR %d, log entry %d",
				e.Path, e.FileDigest, m.Domain, strings.Join(d.ReferenceValues, ", "), e.PCR, e.Seq)
		}
	}
	return violations, passed, cursor, nil
}

// violate marks a member violating and runs its domain's reactions, in
// order. It returns the audit entries to record. It must be called with
// c.mu held; the caller stores m.
func (c *Controller) violate(m *memberRec, reason string, now time.Time) []audit.Entry {
	subject := m.member().SPIFFEID(c.ca.TrustDomain())
	m.Status, m.StatusReason = tvd.StatusViolated, reason
	entries := []audit.Entry{{Kind: audit.KindVerdict, Subject: subject, Domain: m.Domain, Detail: map[string]string{"status": "violated", "reason": reason, "node": m.Node}}}
	d, ok := c.s.policy.Domain(m.Domain)
	if !ok {
		return entries
	}
	for i, r := range d.Reactions {
		detail := map[string]string{"reaction": string(r), "reason": reason, "node": m.Node, "order": fmt.Sprint(i + 1)}
		switch r {
		case tvd.ReactQuarantine:
			m.Quarantined = true
		case tvd.ReactRevoke:
			m.State, m.Reason, m.Since = memberRevoked, "revoked on violation: "+reason, now
		case tvd.ReactFreeze, tvd.ReactRollback:
			var idb [8]byte
			rand.Read(idb[:])
			in := instruction{ID: hex.EncodeToString(idb[:]), Reaction: r, Reason: reason, IssuedAt: now}
			m.Instructions = append(m.Instructions, in)
			detail["instruction"] = in.ID
		}
		entries = append(entries, audit.Entry{Kind: audit.KindReaction, Subject: subject, Domain: m.Domain, Detail: detail})
	}
	return entries
}

// ekSummary describes what the EK check established, for the node record.
func ekSummary(e *attest.Enrollment) string {
	id := e.EKIdentity()
	return fmt.Sprintf("%+v", id)
}
