package tpm_test

import (
	"os"
	"testing"

	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
)

// TestDevice reads the host TPM through the kernel resource manager, when
// the host has one. It only reads: no extend, no keys left behind.
func TestDevice(t *testing.T) {
	if _, err := os.Stat(tpm.DefaultDevice); err != nil {
		t.Skipf("no host TPM at %s: %v", tpm.DefaultDevice, err)
	}
	dev, err := tpm.OpenDevice(tpm.DefaultDevice, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	vals, err := dev.ReadPCRs([]int{0, 7, attest.EEPCR})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host pcrs: %+v", vals)
	ek, err := dev.EK(tpm.EKRSA2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.ParseEK(ek.Public); err != nil {
		t.Fatalf("host ek: %v", err)
	}
	t.Logf("host ek certificate: %d bytes", len(ek.Cert))
}

func TestOpenErrors(t *testing.T) {
	if _, err := tpm.OpenDevice("/nonexistent/tpmrm0", nil); err == nil {
		t.Fatalf("opened a missing device")
	}
	if _, err := tpm.OpenSocket("unix", "/nonexistent/swtpm.sock", nil); err == nil {
		t.Fatalf("opened a missing socket")
	}
}
