// Package tpm is the attester side of tvd's TPM 2.0 attestation: it opens a
// TPM (the kernel resource manager /dev/tpmrm0, a swtpm data socket, or,
// with the tpmsimulator build tag, the in-process Microsoft reference
// simulator), reads the EK and its certificate, creates and loads the
// attestation key (AK), answers credential activation, extends the EE
// measurement PCR while keeping the matching event log, and produces
// quotes and evidence for the verifier in package attest.
//
// # PCR allocation
//
// tvd extends its EE measurements into PCR 13 of the SHA-256 bank
// (attest.EEPCR). The TCG PC Client Platform Firmware Profile gives PCRs
// 8–15 to the static OS, and among those:
//
//   - 8, 9: boot loader (GRUB) command line and files;
//   - 10: Linux IMA;
//   - 11: systemd-stub/UKI and systemd-pcrphase;
//   - 12: kernel command line and credentials (systemd-stub);
//   - 14: shim's MOK lists (on every shim-booted machine);
//   - 15: systemd machine-id and volume keys;
//   - 13: systemd-stub system extensions only, unused on machines that do
//     not boot a UKI with sysext images.
//
// PCR 16 (debug) and PCR 23 (application support) are resettable from
// locality 0, so root on the node could reset them and replay a clean log:
// useless for measurements the node must not be able to take back. PCRs
// 17–22 belong to dynamic launch (DRTM). PCR 13 is not resettable, starts
// at zero after every TPM reset, and is otherwise unused on the hosts tvd
// targets; the verifier therefore replays it from zero at each boot. A host
// that does extend PCR 13 before tvd starts (UKI with sysext) needs another
// PCR: both Measurer and attest.Config take the PCR as a parameter.
//
// # Binding the TLS key
//
// TPM2_Certify cannot certify a key that does not live in the TPM, so the
// node binds its TLS key to the AK through the quote's qualifying data:
// qualifyingData = SHA-256(nonce || SHA-256(TLS SubjectPublicKeyInfo DER))
// (attest.QualifyingData). The verifier recomputes it with the key of the
// TLS connection the evidence arrived on.
//
// # Event log
//
// Each Measure appends an attest.Event whose digest (attest.Event's
// ComputeDigest) is extended into the PCR under one lock, so the log and
// the PCR never diverge inside this process; Evidence quotes and reads the
// PCRs under the same lock. The log's wire encoding is attest.EncodeEvents.
// The agent must persist the log (and the AK's Public/Private blobs) to
// survive its own restart: NewMeasurer takes the saved log and checks it
// replays to the PCR. A lost log leaves the PCR with an unexplainable
// value, so the node fails appraisal until the next reboot (fail closed).
// The log is kept in memory whole; its size grows with the number of
// measurements since boot (about 100 bytes per entry).
//
// # Transports
//
// go-tpm's TCP transport speaks the reference simulator's framing, which
// swtpm's data channel does not; OpenSocket talks raw TPM commands over a
// unix or TCP stream and reads each response by its header length. swtpm's
// control channel (--ctrl) is not used.
//
// Kernel logs: ReadHostLog reads the IMA and TCG boot logs where the host
// has them (a missing file is Present=false, not an error) and
// ParseBootLog parses the boot log with go-attestation. The IMA binary log
// is returned raw: it is neither parsed nor replayed against PCR 10 here.
//
// What this package does not do: it does not provision EK certificates
// (except into the simulator, for tests),
// does not take TPM ownership, and does not protect the AK blob it returns
// (the blob is only usable inside the same TPM).
package tpm
