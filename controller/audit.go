package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/store"
)

// auditor is the controller's one audit seam: every security-relevant act
// is recorded through it into the tamper-evident Merkle log.
type auditor struct {
	log     *audit.Log
	storage interface {
		audit.Storage
		Close() error
	}
	batcher *audit.Batcher
	logger  *slog.Logger
	running chan struct{}
}

// sharedAudit, when set, keeps the audit log and its signing key in a
// store shared by controller replicas.
type sharedAudit struct {
	st  store.Store
	kek []byte
}

// openAuditor opens the audit log in dir, creating its signing key on
// first start (dir/signer.key, mode 0600); with shared set, the log and
// the key (sealed under the KEK) live in the shared store instead, and dir
// gets only the verifier key.
func openAuditor(ctx context.Context, dir, trustDomain string, logger *slog.Logger, now func() time.Time, shared *sharedAudit) (*auditor, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	generate := func() (string, error) {
		sk, _, err := audit.GenerateKey(nil, trustDomain+"/audit")
		if err != nil {
			return "", fmt.Errorf("audit key: %w", err)
		}
		return sk, nil
	}
	var sk string
	if shared != nil {
		var err error
		if sk, err = sharedSignerKey(ctx, shared.st, shared.kek, generate); err != nil {
			return nil, err
		}
	} else {
		keyPath := filepath.Join(dir, "signer.key")
		skey, err := os.ReadFile(keyPath)
		if errors.Is(err, os.ErrNotExist) {
			s, gerr := generate()
			if gerr != nil {
				return nil, gerr
			}
			if err := os.WriteFile(keyPath, []byte(s+"\n"), 0o600); err != nil {
				return nil, fmt.Errorf("audit key: %w", err)
			}
			skey = []byte(s)
		} else if err != nil {
			return nil, fmt.Errorf("audit key: %w", err)
		}
		sk = strings.TrimSpace(string(skey))
	}
	signer, err := audit.NewSigner(sk)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	vk, err := audit.VerifierKeyFor(sk)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	verifier, err := audit.NewVerifier(vk)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "verifier.key"), []byte(vk+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	if shared != nil {
		st := storeAudit{shared.st}
		l, err := audit.Open(ctx, st, audit.Config{Signer: signer, Verifier: verifier, Logger: logger, Now: now})
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		return &auditor{log: l, storage: st, batcher: audit.NewBatcher(l, audit.BatcherConfig{MaxBatch: maxStoreAuditLeaves / 2}), logger: logger, running: make(chan struct{})}, nil
	}
	fs, err := audit.OpenFile(filepath.Join(dir, "log"), logger)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	l, err := audit.Open(ctx, fs, audit.Config{Signer: signer, Verifier: verifier, Logger: logger, Now: now})
	if err != nil {
		fs.Close()
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return &auditor{log: l, storage: fs, batcher: audit.NewBatcher(l, audit.BatcherConfig{}), logger: logger, running: make(chan struct{})}, nil
}

func (a *auditor) run(ctx context.Context) error {
	close(a.running)
	err := a.batcher.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (a *auditor) close() error { return a.storage.Close() }

// append records entries: through the batcher while it runs, directly
// before (first start, tests).
func (a *auditor) append(ctx context.Context, entries ...audit.Entry) (uint64, error) {
	select {
	case <-a.running:
		return a.batcher.Append(ctx, entries...)
	default:
		return a.log.Append(ctx, entries...)
	}
}

// record appends one entry and returns its index. An entry that cannot be
// recorded is logged loudly: the act already happened.
func (c *Controller) record(ctx context.Context, e audit.Entry) uint64 {
	if e.Time.IsZero() {
		e.Time = c.now()
	}
	if e.Actor == "" {
		e.Actor = c.self()
	}
	idx, err := c.audit.append(ctx, e)
	if err != nil {
		c.log.ErrorContext(ctx, "audit entry not recorded", "kind", e.Kind, "subject", e.Subject, "err", err)
	}
	return idx
}
