package report

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPure checks that the package imports no networking and no store,
// directly or through a dependency (package net only directly: crypto/x509
// needs it for addresses in certificates).
func TestPure(t *testing.T) {
	direct, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, ".").Output()
	if err != nil {
		t.Skipf("go list is unavailable here: %v", err)
	}
	for _, p := range strings.Fields(string(direct)) {
		if p == "net" || p == "os/exec" {
			t.Errorf("report imports %s", p)
		}
	}
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list is unavailable here: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		for _, bad := range []string{"net/http", "crypto/tls", "connectrpc.com/", "google.golang.org/grpc", "github.com/vishvananda/netlink", "github.com/google/nftables", "golang.zx2c4.com/wireguard", "github.com/tvd-dev/tvd/store", "go.etcd.io/bbolt"} {
			if strings.HasPrefix(p, bad) {
				t.Errorf("report depends on %s", p)
			}
		}
	}
}
