package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// TPM is an open TPM. Its methods serialise access to the transport and
// are safe for concurrent use.
type TPM struct {
	mu     sync.Mutex
	t      transport.TPMCloser
	log    *slog.Logger
	closed bool
}

// New wraps an open go-tpm transport. The TPM must already be started
// (TPM2_Startup done by firmware, swtpm --flags startup-clear, or the
// simulator).
func New(t transport.TPMCloser, log *slog.Logger) *TPM {
	if log == nil {
		log = slog.Default()
	}
	return &TPM{t: t, log: log}
}

// DefaultDevice is the kernel's TPM resource manager.
const DefaultDevice = "/dev/tpmrm0"

// OpenDevice opens a TPM character device, normally DefaultDevice (the
// in-kernel resource manager; /dev/tpm0 works only for one process).
func OpenDevice(path string, log *slog.Logger) (*TPM, error) {
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open tpm device %s: %w", path, err)
	}
	return New(t, log), nil
}

// OpenSocket connects to a TPM speaking raw TPM 2.0 commands over a stream
// socket: swtpm's data channel ("swtpm socket --server type=unixio,path=P"
// → network "unix", address P; or "--server port=N" → "tcp",
// "127.0.0.1:N"). The TPM must be started (swtpm --flags startup-clear).
func OpenSocket(network, addr string, log *slog.Logger) (*TPM, error) {
	conn, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("open tpm socket %s %s: %w", network, addr, err)
	}
	return New(transport.FromReadWriteCloser(&framedConn{c: conn}), log), nil
}

// Startup sends TPM2_Startup(CLEAR) and treats "already initialised" as
// success. Firmware starts a hardware TPM; a swtpm started without
// "--flags startup-clear" needs this before anything else.
func (t *TPM) Startup() error {
	return t.do(func(tp transport.TPM) error {
		_, err := tpm2.Startup{StartupType: tpm2.TPMSUClear}.Execute(tp)
		if err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
			return fmt.Errorf("tpm startup: %w", err)
		}
		return nil
	})
}

// Shutdown sends TPM2_Shutdown(CLEAR), the orderly stop an OS performs
// before power-off: the TPM saves its clock and counters. Use it before
// stopping a swtpm whose state is kept.
func (t *TPM) Shutdown() error {
	return t.do(func(tp transport.TPM) error {
		if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUClear}).Execute(tp); err != nil {
			return fmt.Errorf("tpm shutdown: %w", err)
		}
		return nil
	})
}

// Close closes the transport. Loaded keys are not flushed: a TPM behind a
// resource manager flushes them when the connection closes; callers using
// a raw TPM should Close their AK first.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	return t.t.Close()
}

// errClosed is returned by operations on a closed TPM.
var errClosed = errors.New("tpm is closed")

// do runs f with exclusive use of the transport.
func (t *TPM) do(f func(tp transport.TPM) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errClosed
	}
	return f(t.t)
}

func flush(tp transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tp)
}

// framedConn reads one whole TPM response per Read, using the size in the
// response header, so a response split across stream reads is reassembled.
type framedConn struct {
	c net.Conn
}

const maxResponse = 1 << 16

// commandTimeout bounds one command's round trip on a socket TPM, so a
// stalled swtpm fails the command instead of blocking its caller forever.
const commandTimeout = time.Minute

func (f *framedConn) Write(p []byte) (int, error) {
	if err := f.c.SetDeadline(time.Now().Add(commandTimeout)); err != nil {
		return 0, fmt.Errorf("set tpm socket deadline: %w", err)
	}
	return f.c.Write(p)
}

func (f *framedConn) Read(p []byte) (int, error) {
	var hdr [10]byte
	if _, err := io.ReadFull(f.c, hdr[:]); err != nil {
		return 0, fmt.Errorf("read tpm response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > maxResponse || int(size) > len(p) {
		return 0, fmt.Errorf("tpm response size %d out of range (want 10..%d)", size, min(maxResponse, len(p)))
	}
	copy(p, hdr[:])
	if _, err := io.ReadFull(f.c, p[10:size]); err != nil {
		return 0, fmt.Errorf("read tpm response body: %w", err)
	}
	return int(size), nil
}

func (f *framedConn) Close() error { return f.c.Close() }
