package ca

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies checks that ca stays a crypto package: no HTTP, RPC,
// data-plane or store code, and no tvd package but the vocabulary, neither
// directly nor through a dependency (crypto/tls and net/url bring package
// net for types only).
func TestDependencies(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH: cannot list dependencies")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{"net/http", "net/rpc", "connectrpc.com/", "google.golang.org/grpc", "github.com/vishvananda/netlink",
		"github.com/google/nftables", "golang.zx2c4.com/wireguard", "go.etcd.io/", "github.com/google/go-tpm"}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("ca depends on %s", dep)
			}
		}
		if strings.HasPrefix(dep, "github.com/tvd-dev/tvd/") && dep != "github.com/tvd-dev/tvd/ca" {
			t.Errorf("ca depends on %s; it may use only the root vocabulary package", dep)
		}
	}
}
