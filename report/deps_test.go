package report

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPure checks that the package imports no networking and no store.
func TestPure(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list is unavailable here: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		for _, bad := range []string{"net/http", "connectrpc.com/", "github.com/vishvananda/netlink", "github.com/google/nftables", "golang.zx2c4.com/wireguard", "github.com/tvd-dev/tvd/store", "go.etcd.io/bbolt"} {
			if strings.HasPrefix(p, bad) {
				t.Errorf("report depends on %s", p)
			}
		}
		if p == "net" {
			t.Errorf("report depends on package net")
		}
	}
}
