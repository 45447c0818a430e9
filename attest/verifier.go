package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/tvd-dev/tvd"
)

// EEPCR is the PCR tvd's EE monitor extends (SHA-256 bank). See the
// package documentation of attest/tpm for why 13.
const EEPCR = 13

// NonceSize is the size of a verifier nonce.
const NonceSize = 32

// DefaultMaxEvents bounds the new entries one report may carry.
const DefaultMaxEvents = 1 << 16

// Config configures a Verifier.
type Config struct {
	// LogPCRs are the PCRs the event log extends; every quote must cover
	// them. Default: {EEPCR}.
	LogPCRs []int
	// Refs are the reference measurements. Required; shared, never copied.
	Refs *RefSet
	// EK decides which endorsement keys are trusted.
	EK EKPolicy
	// MinFirmwareVersion refuses TPMs reporting a lower firmware version.
	MinFirmwareVersion uint64
	// MaxEvents bounds the new entries per report. Default DefaultMaxEvents.
	MaxEvents int
	// Rand is the source of nonces and credential secrets. Default crypto/rand.
	Rand io.Reader
	// Now is the clock for certificate validity. Default time.Now.
	Now func() time.Time
	// Logger receives debug logs. Default slog.Default().
	Logger *slog.Logger
}

// Validate checks c and fills defaults.
func (c *Config) Validate() error {
	if len(c.LogPCRs) == 0 {
		c.LogPCRs = []int{EEPCR}
	}
	seen := map[int]bool{}
	for _, p := range c.LogPCRs {
		if p < 0 || p >= NumPCRs {
			return fmt.Errorf("log pcr %d out of range (want 0..%d)", p, NumPCRs-1)
		}
		if seen[p] {
			return fmt.Errorf("log pcr %d listed twice", p)
		}
		seen[p] = true
	}
	if c.Refs == nil {
		return errors.New("reference values (Refs) are required")
	}
	if c.MaxEvents <= 0 {
		c.MaxEvents = DefaultMaxEvents
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Verifier enrols nodes and appraises their evidence. It holds only
// configuration and the shared RefSet; it is safe for concurrent use.
// Per-node memory is a NodeState owned by the caller, which must not
// appraise the same NodeState from two goroutines at once.
type Verifier struct {
	cfg  Config
	pcrs []int // sorted LogPCRs
}

// NewVerifier validates cfg and returns a Verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("attest config: %w", err)
	}
	pcrs := slices.Clone(cfg.LogPCRs)
	slices.Sort(pcrs)
	return &Verifier{cfg: cfg, pcrs: pcrs}, nil
}

// Refs returns the verifier's shared reference values.
func (v *Verifier) Refs() *RefSet { return v.cfg.Refs }

// Enrollment is a pending enrolment: the EK is trusted and the AK has the
// right shape, but credential activation has not been answered yet.
type Enrollment struct {
	ek  *EK
	ak  *AK
	id  *EKIdentity
	ch  *Challenge
	pcr []int
}

// EKIdentity returns what the EK certificate (or allowlist) established.
func (e *Enrollment) EKIdentity() EKIdentity { return *e.id }

// BeginEnrollment checks the EK (certificate chain or allowlist), checks
// the AK's attributes, and returns a credential-activation challenge for
// the attester. ekCert may be nil when the EK is allowlisted.
//
// It does not prove that the AK is in the EK's TPM: FinishEnrollment does,
// when the attester returns the challenge's secret.
func (v *Verifier) BeginEnrollment(ekPublic, ekCert, akPublic []byte) (*Enrollment, *Challenge, error) {
	ek, err := ParseEK(ekPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("begin enrollment: %w", err)
	}
	id, err := v.cfg.EK.VerifyEK(ek, ekCert, v.cfg.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("begin enrollment: %w", err)
	}
	ak, err := ParseAK(akPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("begin enrollment: %w", err)
	}
	ch, err := MakeChallenge(v.cfg.Rand, ek, ak)
	if err != nil {
		return nil, nil, fmt.Errorf("begin enrollment: %w", err)
	}
	return &Enrollment{ek: ek, ak: ak, id: id, ch: ch}, ch, nil
}

// FinishEnrollment checks the secret the attester recovered with
// TPM2_ActivateCredential and, if it matches, returns the node's initial
// state holding the AK and the first nonce (NodeState.Nonce).
func (v *Verifier) FinishEnrollment(e *Enrollment, secret []byte) (*NodeState, error) {
	if e == nil || e.ch == nil {
		return nil, errors.New("finish enrollment: no pending enrollment")
	}
	if err := e.ch.Check(secret); err != nil {
		return nil, fmt.Errorf("finish enrollment: %w", err)
	}
	qn, err := AKQualifiedName(e.ek, e.ak)
	if err != nil {
		return nil, fmt.Errorf("finish enrollment: %w", err)
	}
	st := &NodeState{ak: e.ak, ekFingerprint: e.ek.Fingerprint(), signerQN: qn}
	st.pcrs = slices.Clone(v.pcrs)
	st.values = make([][32]byte, len(v.pcrs))
	if err := v.issueNonce(st); err != nil {
		return nil, fmt.Errorf("finish enrollment: %w", err)
	}
	return st, nil
}

func (v *Verifier) issueNonce(st *NodeState) error {
	var n [NonceSize]byte
	if _, err := io.ReadFull(v.cfg.Rand, n[:]); err != nil {
		st.hasNonce = false
		return fmt.Errorf("read nonce: %w", err)
	}
	st.nonce, st.hasNonce = n, true
	return nil
}

// TLSKeyHash returns SHA-256 of the DER SubjectPublicKeyInfo of pub.
func TLSKeyHash(pub crypto.PublicKey) ([32]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return [32]byte{}, fmt.Errorf("tls key hash: %w", err)
	}
	return sha256.Sum256(der), nil
}

// QualifyingData returns the quote's qualifying data for a nonce and the
// node's TLS key hash: SHA-256(nonce || tlsKeyHash).
func QualifyingData(nonce []byte, tlsKeyHash [32]byte) [32]byte {
	h := sha256.New()
	h.Write(nonce)
	h.Write(tlsKeyHash[:])
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// Evidence is what a node sends for one appraisal round.
type Evidence struct {
	Attest    []byte  // TPMS_ATTEST exactly as signed by the TPM
	Signature []byte  // TPMT_SIGNATURE (ECDSA, SHA-256)
	PCRs      []PCR   // claimed SHA-256 values of the quoted PCRs, in selection order
	FirstSeq  uint64  // sequence number (within this TPM boot) of Events[0]
	Events    []Event // entries not sent before
}

// Check names, as they appear in Result.Checks.
const (
	CheckQuoteFormat = "quote-format"
	CheckSignature   = "signature"
	CheckNonce       = "nonce"
	CheckFirmware    = "firmware"
	CheckCounters    = "counters"
	CheckPCRDigest   = "pcr-digest"
	CheckSequence    = "sequence"
	CheckReplay      = "replay"
	CheckReferences  = "reference-values"
)

// Check is the outcome of one appraisal step.
type Check struct {
	Name   string
	Status tvd.Status
	Detail string // the error for a failed check
}

// EntryResult is the appraisal of one event-log entry.
type EntryResult struct {
	Seq        uint64
	PCR        int
	Type       EventType
	EE, Path   string
	Digest     [32]byte // extended into PCR
	FileDigest [32]byte // looked up in the reference values
	Reference  string   // reference name, if Listed
	Listed     bool
}

// Result is the verdict of one appraisal with its evidence.
type Result struct {
	Status    tvd.Status // Verified only if every check passed
	Checks    []Check
	Entries   []EntryResult // new entries, in log order
	Clock     ClockInfo
	Firmware  uint64
	PCRs      []PCR  // quoted PCR values (after a passing pcr-digest check)
	NextNonce []byte // the nonce for the next round; always set unless randomness failed
}

func (r *Result) pass(name string) {
	r.Checks = append(r.Checks, Check{Name: name, Status: tvd.StatusVerified})
}

func (r *Result) fail(name string, err error) error {
	r.Checks = append(r.Checks, Check{Name: name, Status: tvd.StatusViolated, Detail: err.Error()})
	r.Status = tvd.StatusViolated
	return err
}

// Appraise verifies one round of evidence from the node whose state is st,
// received over a TLS connection whose peer key hashes to tlsKeyHash.
//
// The outstanding nonce is consumed whatever the outcome and a new one is
// returned in Result.NextNonce (challenge chaining: every nonce is
// accepted at most once). If the evidence is not authentic or not
// consistent (any error other than *UnlistedError), st is otherwise
// unchanged. If the evidence is authentic but an entry is not in the
// reference values, st advances (the entries are part of the node's
// history now), Result.Status is Violated and the error is *UnlistedError.
//
// It does not check: PCRs outside
// Config.LogPCRs (reported in Result.PCRs, not appraised), the clock's Safe
// flag, nor anything about the TLS key beyond its hash.
func (v *Verifier) Appraise(st *NodeState, ev *Evidence, tlsKeyHash [32]byte) (*Result, error) {
	res := &Result{Status: tvd.StatusVerified, Checks: make([]Check, 0, 9)}
	if st == nil || st.ak == nil || ev == nil {
		res.Status = tvd.StatusUnknown
		return res, errors.New("appraise: want an enrolled node state and evidence")
	}
	if !slices.Equal(st.pcrs, v.pcrs) {
		res.Status = tvd.StatusUnknown
		return res, fmt.Errorf("appraise: node state replays pcrs %v, verifier is configured for %v (re-enrol the node)", st.pcrs, v.pcrs)
	}
	pending, had := st.nonce, st.hasNonce
	if err := v.issueNonce(st); err != nil {
		res.Status = tvd.StatusUnknown
		return res, fmt.Errorf("appraise: %w", err)
	}
	res.NextNonce = st.nonce[:]
	var expect [32]byte
	if had {
		expect = QualifyingData(pending[:], tlsKeyHash)
	}
	err := v.appraise(st, ev, had, &expect, res)
	if err != nil {
		v.cfg.Logger.Debug("appraisal refused", "err", err)
	}
	return res, err
}

func (v *Verifier) appraise(st *NodeState, ev *Evidence, hadNonce bool, expect *[32]byte, res *Result) error {
	q, err := ParseQuote(ev.Attest)
	if err == nil && q.Magic != tpmGeneratedValue {
		err = &QuoteFormatError{Field: "magic", Msg: fmt.Sprintf("0x%08x is not TPM_GENERATED_VALUE", q.Magic)}
	}
	if err != nil {
		return res.fail(CheckQuoteFormat, err)
	}
	sig, err := ParseSignature(ev.Signature)
	if err != nil {
		return res.fail(CheckQuoteFormat, err)
	}
	res.pass(CheckQuoteFormat)
	digest := sha256.Sum256(ev.Attest)
	if !ecdsa.Verify(st.ak.Key, digest[:], sig.R, sig.S) {
		return res.fail(CheckSignature, &SignatureError{Reason: "not signed by the enrolled AK"})
	}
	if !bytes.Equal(q.QualifiedSigner, st.signerQN) {
		return res.fail(CheckSignature, &SignatureError{Reason: fmt.Sprintf(
			"qualifiedSigner %x is not the enrolled AK under the enrolled EK (%x)", q.QualifiedSigner, st.signerQN)})
	}
	res.pass(CheckSignature)
	res.Clock, res.Firmware = q.ClockInfo, q.FirmwareVersion

	switch {
	case !hadNonce:
		return res.fail(CheckNonce, &NonceError{Reason: "no nonce outstanding"})
	case !bytes.Equal(q.ExtraData, expect[:]):
		return res.fail(CheckNonce, &NonceError{Want: expect[:], Got: q.ExtraData})
	}
	res.pass(CheckNonce)

	c, prev := q.ClockInfo, st.clock
	switch {
	case q.FirmwareVersion < v.cfg.MinFirmwareVersion:
		return res.fail(CheckFirmware, &FirmwareError{Prev: st.firmware, Got: q.FirmwareVersion,
			Reason: fmt.Sprintf("below minimum 0x%x", v.cfg.MinFirmwareVersion)})
	case st.quoted && q.FirmwareVersion != st.firmware && c.ResetCount == prev.ResetCount:
		return res.fail(CheckFirmware, &FirmwareError{Prev: st.firmware, Got: q.FirmwareVersion,
			Reason: "changed without a TPM reset"})
	}
	res.pass(CheckFirmware)

	if st.quoted {
		if err := checkCounters(prev, c); err != nil {
			return res.fail(CheckCounters, err)
		}
	}
	res.pass(CheckCounters)

	if err := v.checkPCRs(q, ev.PCRs); err != nil {
		return res.fail(CheckPCRDigest, err)
	}
	res.PCRs = ev.PCRs
	res.pass(CheckPCRDigest)

	// Where does this report's log continue from?
	values := make([][32]byte, len(st.pcrs))
	next := st.nextSeq
	newBoot := !st.logStarted || c.ResetCount != st.logReset
	restarted := st.logStarted && c.RestartCount != prev.RestartCount && ev.FirstSeq == 0
	switch {
	case newBoot || restarted:
		// PCRs start from zero after TPM Reset (and after TPM Restart,
		// which the attester signals by starting its log again at 0).
		next = 0
	default:
		copy(values, st.values)
	}
	if ev.FirstSeq != next {
		return res.fail(CheckSequence, &SequenceError{Want: next, Got: ev.FirstSeq})
	}
	if len(ev.Events) > v.cfg.MaxEvents {
		return res.fail(CheckSequence, &EventError{Seq: next, Reason: fmt.Sprintf("%d new entries (want at most %d)", len(ev.Events), v.cfg.MaxEvents)})
	}
	res.pass(CheckSequence)

	if err := st.replay(ev.Events, next, values); err != nil {
		return res.fail(CheckReplay, err)
	}
	for i, p := range st.pcrs {
		quoted := findPCR(ev.PCRs, p)
		if values[i] != quoted.Value {
			return res.fail(CheckReplay, &ReplayError{PCR: p, Want: quoted.Value, Got: values[i]})
		}
	}
	res.pass(CheckReplay)

	// The evidence is authentic and consistent: commit.
	st.quoted, st.clock, st.firmware = true, c, q.FirmwareVersion
	st.logStarted, st.logReset = true, c.ResetCount
	st.nextSeq = next + uint64(len(ev.Events))
	copy(st.values, values)

	if err := v.appraiseEntries(ev.Events, next, res); err != nil {
		return res.fail(CheckReferences, err)
	}
	res.pass(CheckReferences)
	return nil
}

// appraiseEntries looks every entry up in the reference values and
// records the outcome in res.Entries; unlisted entries give *UnlistedError.
func (v *Verifier) appraiseEntries(events []Event, first uint64, res *Result) error {
	res.Entries = make([]EntryResult, len(events))
	var unlisted []EntryResult
	for i := range events {
		e := &events[i]
		name, ok := v.cfg.Refs.Lookup(e.FileDigest)
		res.Entries[i] = EntryResult{Seq: first + uint64(i), PCR: e.PCR, Type: e.Type, EE: e.EE, Path: e.Path,
			Digest: e.Digest, FileDigest: e.FileDigest, Reference: name, Listed: ok}
		if !ok {
			unlisted = append(unlisted, res.Entries[i])
		}
	}
	if unlisted != nil {
		return &UnlistedError{Entries: unlisted}
	}
	return nil
}

// checkCounters refuses a quote whose counters or clock are behind prev.
// Clock may fall back only across a TPM reset or restart that the TPM
// flagged as unsafe (Safe=NO: Clock was restored from NV after a
// disorderly shutdown, as TPM 2.0 Part 1 §36.3 allows).
func checkCounters(prev, c ClockInfo) error {
	switch {
	case c.ResetCount < prev.ResetCount:
		return &CounterError{Field: "resetCount", Prev: uint64(prev.ResetCount), Got: uint64(c.ResetCount)}
	case c.ResetCount == prev.ResetCount && c.RestartCount < prev.RestartCount:
		return &CounterError{Field: "restartCount", Prev: uint64(prev.RestartCount), Got: uint64(c.RestartCount)}
	}
	sameBoot := c.ResetCount == prev.ResetCount && c.RestartCount == prev.RestartCount
	switch {
	case sameBoot && c.Clock < prev.Clock:
		return &CounterError{Field: "clock", Prev: prev.Clock, Got: c.Clock}
	case !sameBoot && c.Clock < prev.Clock && c.Safe:
		return &CounterError{Field: "clock", Prev: prev.Clock, Got: c.Clock}
	}
	return nil
}

func findPCR(pcrs []PCR, idx int) *PCR {
	for i := range pcrs {
		if pcrs[i].Index == idx {
			return &pcrs[i]
		}
	}
	return nil
}

// checkPCRs checks the claimed values match the quote's SHA-256 selection
// exactly, cover the log PCRs, and hash to pcrDigest.
func (v *Verifier) checkPCRs(q *Quote, claimed []PCR) error {
	sel, err := q.sha256Selection()
	if err != nil {
		return &SelectionError{Reason: err.Error()}
	}
	if len(sel) != len(claimed) {
		return &SelectionError{Reason: fmt.Sprintf("quote selects %d PCRs %v, evidence claims %d values", len(sel), sel, len(claimed))}
	}
	for i, p := range sel {
		if claimed[i].Index != p {
			return &SelectionError{Reason: fmt.Sprintf("claimed value %d is for pcr %d, quote selects pcr %d there", i, claimed[i].Index, p)}
		}
	}
	for _, p := range v.pcrs {
		if !slices.Contains(sel, p) {
			return &SelectionError{Reason: fmt.Sprintf("quote does not cover log pcr %d", p)}
		}
	}
	got := PCRDigest(claimed)
	if !bytes.Equal(q.PCRDigest, got[:]) {
		return &PCRDigestError{Want: q.PCRDigest, Got: got[:]}
	}
	return nil
}
