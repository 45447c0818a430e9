package fleet

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/tvd-dev/tvd/api/client"
	"github.com/tvd-dev/tvd/controller"
	"github.com/tvd-dev/tvd/store/bolt"
)

// Local is a domain controller running in this process on a loopback port,
// with a bbolt store, audit log and keys in Dir (as tvd controller keeps
// them). Its goroutines carry the profiler label side=controller, so a CPU
// profile of a fleet run separates the controller's work from the
// simulated agents' (go tool pprof -tagfocus side=controller).
type Local struct {
	Dir        string
	URL        string
	AdminDir   string
	Controller *controller.Controller
	Admin      *client.Client
	cancel     context.CancelFunc
	done       chan error
	closeStore func() error
}

// LocalConfig configures StartLocal.
type LocalConfig struct {
	// Dir holds the controller's data. Required; the caller removes it.
	Dir string
	// EKRoots are the CAs trusted for endorsement keys (the fleet's EKCA).
	EKRoots *x509.CertPool
	// Logger receives the controller's logs. Default: discard.
	Logger *slog.Logger
}

// StartLocal starts a controller. Close stops it.
func StartLocal(ctx context.Context, cfg LocalConfig) (*Local, error) {
	if cfg.Dir == "" {
		return nil, errors.New("fleet: local controller: Dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	data := filepath.Join(cfg.Dir, "controller")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, fmt.Errorf("fleet: local controller: %w", err)
	}
	st, err := bolt.Open(filepath.Join(data, "state.db"))
	if err != nil {
		return nil, fmt.Errorf("fleet: local controller: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("fleet: local controller: %w", err)
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c, err := controller.New(cctx, controller.Config{DataDir: data, Store: st, Listen: l.Addr().String(), Logger: cfg.Logger, EKRoots: cfg.EKRoots})
	if err != nil {
		cancel()
		l.Close()
		st.Close()
		return nil, fmt.Errorf("fleet: local controller: %w", err)
	}
	lc := &Local{Dir: cfg.Dir, URL: "https://" + l.Addr().String(), AdminDir: filepath.Join(data, "admin"), Controller: c,
		cancel: cancel, done: make(chan error, 1), closeStore: st.Close}
	// Every goroutine the controller starts inherits the label.
	pprof.Do(cctx, pprof.Labels("side", "controller"), func(ctx context.Context) {
		go func() { lc.done <- c.RunListener(ctx, l) }()
	})
	creds, err := client.LoadDir(lc.AdminDir)
	if err == nil {
		lc.Admin, err = client.Dial(creds, lc.URL)
	}
	if err != nil {
		lc.Close()
		return nil, fmt.Errorf("fleet: local controller admin: %w", err)
	}
	return lc, nil
}

// Close stops the controller and closes its store.
func (l *Local) Close() error {
	l.cancel()
	var err error
	select {
	case err = <-l.done:
	case <-time.After(10 * time.Second):
		err = errors.New("fleet: local controller did not stop within 10s")
	}
	if l.Admin != nil {
		l.Admin.HTTP.CloseIdleConnections()
	}
	return errors.Join(err, l.Controller.Close(), l.closeStore())
}
