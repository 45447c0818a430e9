package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkloadSocketPathTooLong: a data directory too deep for a unix
// socket path is refused with a clear error, not the kernel's EINVAL.
func TestWorkloadSocketPathTooLong(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 80))
	a := &Agent{cfg: Config{DataDir: dir, Node: &NodeConfig{EEs: []EEConfig{{Name: "web"}}}}, log: slog.New(slog.DiscardHandler)}
	err := a.serveWorkload(context.Background())
	a.closeWorkload()
	if err == nil || !strings.Contains(err.Error(), "unix sockets allow at most 107") {
		t.Fatalf("got %v; want the socket path limit named", err)
	}
}
