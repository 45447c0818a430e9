package tpm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	attestation "github.com/google/go-attestation/attest"
)

// Default locations of the kernel's measurement logs. Newer kernels move
// IMA under integrity/ima and keep ima as a symlink; ReadIMALog tries both.
const (
	IMALogPath      = "/sys/kernel/security/ima/binary_runtime_measurements"
	IMAASCIILogPath = "/sys/kernel/security/ima/ascii_runtime_measurements"
	BootLogPath     = "/sys/kernel/security/tpm0/binary_bios_measurements"

	imaIntegrityDir = "/sys/kernel/security/integrity/ima/"
)

// maxHostLog bounds a host log read (IMA logs of long-running hosts grow
// to a few MiB).
const maxHostLog = 64 << 20

// HostLog is a kernel measurement log, or the fact that the host has none.
type HostLog struct {
	Path    string
	Present bool
	Data    []byte
}

// ReadHostLog reads the log at path. A missing file (no IMA, no TPM, or
// securityfs not mounted) gives Present=false and no error.
func ReadHostLog(path string) (*HostLog, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &HostLog{Path: path}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read host log: %w", err)
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, maxHostLog+1))
	if err != nil {
		return nil, fmt.Errorf("read host log %s: %w", path, err)
	}
	if len(buf) > maxHostLog {
		return nil, fmt.Errorf("read host log %s: larger than %d bytes", path, maxHostLog)
	}
	return &HostLog{Path: path, Present: true, Data: buf}, nil
}

// ReadIMALog reads the kernel's IMA measurement list, binary (the form
// the kernel extends from) or ASCII, from securityfs; Present is false on
// hosts without IMA or without securityfs mounted.
func ReadIMALog(ascii bool) (*HostLog, error) {
	name, path := "binary_runtime_measurements", IMALogPath
	if ascii {
		name, path = "ascii_runtime_measurements", IMAASCIILogPath
	}
	l, err := ReadHostLog(path)
	if err != nil || l.Present {
		return l, err
	}
	return ReadHostLog(imaIntegrityDir + name)
}

// ParseBootLog parses a TCG (crypto-agile or SHA-1) boot event log with
// go-attestation and returns its events. It checks the log's structure,
// not its replay: replaying against quoted PCRs 0-9 is the verifier's job
// (go-attestation's EventLog.Verify).
func ParseBootLog(data []byte) ([]attestation.Event, error) {
	el, err := attestation.ParseEventLog(data)
	if err != nil {
		return nil, fmt.Errorf("parse boot log: %w", err)
	}
	var out []attestation.Event
	for _, alg := range el.Algs {
		if alg == attestation.HashSHA256 {
			return el.Events(alg), nil
		}
	}
	if len(el.Algs) > 0 {
		out = el.Events(el.Algs[0])
	}
	return out, nil
}
