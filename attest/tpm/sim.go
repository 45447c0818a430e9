//go:build tpmsimulator

package tpm

import (
	"fmt"
	"log/slog"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Simulator is an open in-process TPM simulator (Microsoft reference
// implementation, cgo). Only one may be open per process; a second
// OpenSimulator blocks until the first is closed.
type Simulator struct {
	*TPM
	sim *simulator.Simulator
}

// OpenSimulator starts the in-process TPM simulator. Available only with
// the tpmsimulator build tag.
func OpenSimulator(log *slog.Logger) (*Simulator, error) {
	sim, err := simulator.Get()
	if err != nil {
		return nil, fmt.Errorf("open tpm simulator: %w", err)
	}
	return &Simulator{TPM: New(transport.FromReadWriteCloser(sim), log), sim: sim}, nil
}

// Reset resets the simulated TPM as a host reboot would (with an orderly
// TPM2_Shutdown first): PCRs return to their initial values and resetCount
// increments. Loaded transient objects are lost.
func (s *Simulator) Reset() error {
	return s.do(func(tp transport.TPM) error {
		if err := s.sim.Reset(); err != nil {
			return fmt.Errorf("reset simulator: %w", err)
		}
		return nil
	})
}

// ProvisionEKCert writes an EK certificate into the kind's NV index, as a
// TPM manufacturer does (platform authorisation, which the simulator
// leaves empty). The simulator ships without EK certificates.
func (s *Simulator) ProvisionEKCert(kind EKKind, der []byte) error {
	_, idx, err := kind.template()
	if err != nil {
		return err
	}
	if len(der) == 0 || len(der) > 2048 {
		return fmt.Errorf("ek certificate is %d bytes (want 1..2048)", len(der))
	}
	platform := tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)}
	return s.do(func(tp transport.TPM) error {
		pub := tpm2.TPMSNVPublic{
			NVIndex: idx,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{
				PPWrite: true, PPRead: true, OwnerRead: true, AuthRead: true,
				NoDA: true, PlatformCreate: true, NT: tpm2.TPMNTOrdinary, Written: false,
			},
			DataSize: uint16(len(der)),
		}
		if _, err := (tpm2.NVDefineSpace{AuthHandle: platform, PublicInfo: tpm2.New2B(pub)}).Execute(tp); err != nil {
			return fmt.Errorf("define ek certificate index: %w", err)
		}
		pub.Attributes.Written = true
		name, err := tpm2.NVName(&pub)
		if err != nil {
			return err
		}
		for off := 0; off < len(der); off += nvChunk {
			end := min(off+nvChunk, len(der))
			// The index is unwritten until the first write; its name
			// changes after it.
			h := tpm2.NamedHandle{Handle: idx, Name: *name}
			if off == 0 {
				pub.Attributes.Written = false
				n0, err := tpm2.NVName(&pub)
				if err != nil {
					return err
				}
				h.Name = *n0
				pub.Attributes.Written = true
			}
			if _, err := (tpm2.NVWrite{AuthHandle: platform, NVIndex: h,
				Data: tpm2.TPM2BMaxNVBuffer{Buffer: der[off:end]}, Offset: uint16(off)}).Execute(tp); err != nil {
				return fmt.Errorf("write ek certificate: %w", err)
			}
		}
		return nil
	})
}
