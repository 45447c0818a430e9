// Package fleet is tvd's load generator: it simulates thousands of TPM
// nodes in one process against a real domain controller, over real mutual
// TLS, with real cryptography and no TPM.
//
// Each simulated node has a SoftTPM: an ECC P-256 endorsement key
// certified by the fleet's EKCA, an ECC P-256 attestation key whose
// TPMT_PUBLIC has the attributes the verifier requires, credential
// activation computed in software (ECDH, KDFe, KDFa, HMAC and AES-CFB as
// TPM2_ActivateCredential does), and genuine TPMS_ATTEST quotes of the EE
// PCR signed by the AK, with a measurement log that grows by listed
// entries every round. Run enrols the nodes (join token, Enroll,
// ActivateCredential) and has each report at the domain's interval,
// recording the verdict latency; the result is appraisals per second,
// latency percentiles, the members the controller marked stale, and the
// controller's CPU and memory when it runs in the same process (Local).
//
// What it does not simulate: an EE runtime, the data plane, plan streams
// (Watch) and certificate renewal; those load the controller too, and a
// real agent opens one plan stream per node. Its keys are in ordinary
// memory: a SoftTPM proves nothing about a machine.
package fleet

import (
	"crypto"
	"crypto/rand"
)

var (
	cryptoRand   = rand.Reader
	cryptoSHA256 = crypto.SHA256
)
