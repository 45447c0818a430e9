package attest

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPure checks that attest stays pure: no networking, no store, neither
// directly nor through a dependency (crypto/x509 and go-tpm's tpmutil
// import package net for types only; net/http and above are refused).
func TestPure(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH: cannot list dependencies")
	}
	out, err := exec.Command(goTool, "list", "-f", "{{join .Imports \"\\n\"}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, imp := range strings.Fields(string(out)) {
		if imp == "net" || strings.HasPrefix(imp, "net/") {
			t.Errorf("attest imports %s directly", imp)
		}
	}
	out, err = exec.Command(goTool, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{"net/http", "connectrpc.com/", "github.com/vishvananda/netlink", "github.com/google/nftables",
		"golang.zx2c4.com/wireguard", "github.com/tvd-dev/tvd/store", "go.etcd.io/bbolt", "github.com/tvd-dev/tvd/attest/tpm"}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("attest depends on %s", dep)
			}
		}
	}
}
