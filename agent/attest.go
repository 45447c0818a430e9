package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
)

// attester is the node's TPM side of attestation: its endorsement key, the
// attestation key created under it, and the measurement log of the EE PCR,
// kept in the data directory so that the log survives agent restarts.
type attester struct {
	t        *tpm.TPM
	ek       *tpm.EK
	ak       *tpm.AK
	measurer *tpm.Measurer
	logPath  string

	mu     sync.Mutex
	cursor attest.Cursor
}

type akFile struct {
	Kind    tpm.EKKind `json:"kind"`
	Public  []byte     `json:"public"`
	Private []byte     `json:"private"`
}

// openAttester prepares the TPM: the EK (ECC if it has a certificate, else
// RSA), the AK (created once and kept wrapped in dir/ak.json: only this TPM
// can load it) and the measurement log (dir/events.log).
func openAttester(t *tpm.TPM, dir string) (*attester, error) {
	a := &attester{t: t, logPath: filepath.Join(dir, "events.log")}
	var err error
	akPath := filepath.Join(dir, "ak.json")
	if b, rerr := os.ReadFile(akPath); rerr == nil {
		var f akFile
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("attestation key %s: %w", akPath, err)
		}
		if a.ek, err = t.EK(f.Kind); err != nil {
			return nil, fmt.Errorf("endorsement key: %w", err)
		}
		if a.ak, err = t.LoadAK(f.Kind, f.Public, f.Private); err != nil {
			return nil, fmt.Errorf("load attestation key: %w", err)
		}
	} else if errors.Is(rerr, os.ErrNotExist) {
		for _, kind := range []tpm.EKKind{tpm.EKECCP256, tpm.EKRSA2048} {
			ek, err := t.EK(kind)
			if err == nil && ek.Cert != nil {
				a.ek = ek
				break
			}
			if err == nil && a.ek == nil {
				a.ek = ek // no certificate: the controller must allowlist it
			}
		}
		if a.ek == nil {
			return nil, errors.New("endorsement key: the TPM has neither an ECC nor an RSA EK")
		}
		if a.ak, err = t.CreateAK(a.ek.Kind); err != nil {
			return nil, fmt.Errorf("create attestation key: %w", err)
		}
		b, _ := json.Marshal(akFile{Kind: a.ak.Kind, Public: a.ak.Public, Private: a.ak.Private})
		if err := os.WriteFile(akPath, b, 0o600); err != nil {
			return nil, fmt.Errorf("save attestation key: %w", err)
		}
	} else {
		return nil, fmt.Errorf("attestation key %s: %w", akPath, rerr)
	}
	var prior []attest.Event
	if b, err := os.ReadFile(a.logPath); err == nil {
		if prior, err = attest.DecodeEvents(b, attest.DefaultMaxEvents*16); err != nil {
			return nil, fmt.Errorf("measurement log %s: %w", a.logPath, err)
		}
	}
	if a.measurer, err = tpm.NewMeasurer(t, attest.EEPCR, prior); err != nil {
		return nil, fmt.Errorf("measurement log: %w", err)
	}
	return a, nil
}

// enrolment is the TPM evidence for Enroll.
func (a *attester) enrolment() *tvdv1.TPMEnrollment {
	return &tvdv1.TPMEnrollment{EkPublic: a.ek.Public, EkCert: a.ek.Cert, AkPublic: a.ak.Public}
}

// measure extends the EE PCR with one measurement and appends it to the
// log on disk before returning, so the log never falls behind the PCR.
func (a *attester) measure(typ attest.EventType, ee, path string, digest [32]byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ev, _, err := a.measurer.Measure(typ, ee, path, digest)
	if err != nil {
		return err
	}
	rec, err := attest.AppendEvent(nil, &ev)
	if err != nil {
		return fmt.Errorf("measurement log: %w", err)
	}
	f, err := os.OpenFile(a.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("measurement log: %w", err)
	}
	_, werr := f.Write(rec)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("measurement log: %w", err)
	}
	return nil
}

func (a *attester) setCursor(c *tvdv1.AttestCursor) {
	if c == nil {
		return
	}
	a.mu.Lock()
	a.cursor = attest.Cursor{ResetCount: c.GetResetCount(), Seq: c.GetNextSeq(), Valid: c.GetValid()}
	a.mu.Unlock()
}

// evidence quotes over nonce (bound to the node's TLS key) and fills the
// report with the quote, the PCRs and the log entries the controller has
// not replayed.
func (a *attester) evidence(r *tvdv1.ReportRequest, nonce []byte, tlsKeyHash [32]byte) error {
	a.mu.Lock()
	cur := a.cursor
	a.mu.Unlock()
	ev, err := a.measurer.Evidence(a.ak, nonce, tlsKeyHash, cur)
	if err != nil {
		return err
	}
	r.Quote = &tvdv1.Quote{Attest: ev.Attest, Signature: ev.Signature}
	for _, p := range ev.PCRs {
		r.Pcrs = append(r.Pcrs, &tvdv1.PCRValue{HashAlg: 0x000B, Index: uint32(p.Index), Digest: p.Value[:]})
	}
	r.FirstEventSeq = ev.FirstSeq
	r.Events, err = attest.EncodeEvents(ev.Events)
	return err
}

// enrollTPM runs TPM enrolment: Enroll with the EK and AK, then prove with
// credential activation that the AK lives in the TPM holding the EK.
func (a *Agent) enrollTPM(ctx context.Context, cl *client.Client, req *tvdv1.EnrollRequest) (*tvdv1.NodeCredentials, []byte, error) {
	req.Platform = &tvdv1.EnrollRequest_Tpm{Tpm: a.att.enrolment()}
	resp, err := cl.Agent.Enroll(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, nil, fmt.Errorf("agent: enrol node %q: %w", a.name, err)
	}
	ch := resp.Msg.GetChallenge()
	if ch == nil {
		return nil, nil, errors.New("agent: the controller sent no credential challenge for TPM enrolment")
	}
	secret, err := a.att.ak.ActivateCredential(ch.GetCredentialBlob(), ch.GetEncryptedSecret())
	if err != nil {
		return nil, nil, fmt.Errorf("agent: activate credential: %w", err)
	}
	act, err := cl.Agent.ActivateCredential(ctx, connect.NewRequest(&tvdv1.ActivateCredentialRequest{EnrollmentId: resp.Msg.GetEnrollmentId(), Secret: secret}))
	if err != nil {
		return nil, nil, fmt.Errorf("agent: activate credential with the controller: %w", err)
	}
	return act.Msg.GetCredentials(), act.Msg.GetNonce(), nil
}

// Measure records an execution inside an EE: it extends the TPM's EE PCR
// and appends to the measurement log, then makes the agent report at once
// so the controller appraises it within one push. On a node without a TPM
// it only triggers the report.
func (a *Agent) Measure(ee, path string, digest [32]byte) error {
	typ := attest.EventExec
	if strings.HasPrefix(path, "image:") {
		typ = attest.EventEEStart // the EE starts from this image
	}
	if a.att != nil {
		if err := a.att.measure(typ, ee, path, digest); err != nil {
			return fmt.Errorf("measure %s in %s: %w", path, ee, err)
		}
	}
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return nil
}
