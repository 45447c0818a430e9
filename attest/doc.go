// Package attest is the verifier side of TPM 2.0 attestation in tvd: it
// enrols a node (EK check, AK checks, credential activation), verifies
// quotes, replays the node's measurement event log incrementally and
// appraises every new entry against shared reference values.
//
// The package is pure: it does no I/O, no networking and uses no store. Its
// inputs are bytes produced by a TPM (TPMS_ATTEST, TPMT_SIGNATURE,
// TPMT_PUBLIC, EK certificates) and by the attester (event-log entries),
// and its per-node memory is a small NodeState value the caller persists.
//
// # Enrolment
//
//	e, ch, err := v.BeginEnrollment(ekPublic, ekCert, akPublic) // EK trust, AK shape
//	// send ch.CredentialBlob, ch.EncryptedSecret to the node; it runs
//	// TPM2_ActivateCredential and returns the secret
//	st, err := v.FinishEnrollment(e, secret) // the AK lives in the EK's TPM
//
// # Appraisal
//
// Each verdict carries the next nonce (challenge chaining). The node quotes
// over QualifyingData(nonce, tlsKeyHash): SHA-256(nonce || SHA-256(TLS
// SubjectPublicKeyInfo DER)). This binds the node's TLS key to the AK
// without TPM2_Certify (which cannot certify a key outside the TPM): a
// quote is only accepted over the TLS connection whose peer key hash the
// caller passes to Appraise.
//
//	// send st.Nonce() and st.Cursor() to the node; it answers with
//	// Evidence: a quote and the log entries after the cursor
//	res, err := v.Appraise(st, evidence, tlsKeyHash)
//	// res.NextNonce (== st.Nonce()) and st.Cursor() go back with the verdict
//
// Appraise checks, in order: quote structure, magic and type, AK signature
// and qualifiedSigner (the AK must be a child of the enrolled EK: an AK
// outside the endorsement hierarchy gets obfuscated counters),
// nonce binding, firmware version, clock and counters against the previous
// accepted quote, PCR digest over the claimed PCR values, event-log
// sequence, entry digests, replay of the new entries from the stored PCR
// values onto the quoted values, and finally each new entry against the
// RefSet. Errors are typed (NonceError, SignatureError, CounterError,
// PCRDigestError, ReplayError, SequenceError, EventDigestError,
// UnlistedError, ...) and the Result records every check with its evidence.
//
// # What this package does not check
//
//   - PCRs outside the configured event-log PCRs are quoted only if asked;
//     Appraise reports their values (Result.PCRs) but does not appraise
//     them. VerifyBootLog replays a TCG firmware boot log onto those values
//     when the caller asks; what the boot events mean is policy, not
//     checked here.
//   - The Safe flag of the clock is reported but not required.
//   - EK certificates are checked for chain and key match; revocation
//     (CRL/OCSP) of EK certificates is not checked.
//   - Nothing here proves the TPM is free of firmware flaws: a firmware
//     version below Config.MinFirmwareVersion is refused, nothing more.
package attest
