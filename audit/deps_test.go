package audit

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPureDependencies keeps audit pure: no networking and no tvd store.
func TestPureDependencies(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH; cannot list dependencies")
	}
	out, err := exec.Command(gobin, "list", "-deps", "github.com/tvd-dev/tvd/audit").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{
		"net", "net/http", "crypto/tls", "connectrpc.com/", "github.com/vishvananda/netlink",
		"github.com/google/nftables", "golang.zx2c4.com/wireguard", "github.com/tvd-dev/tvd/store",
		"go.etcd.io/bbolt",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(dep, f)) || strings.HasPrefix(dep, f+"/") {
				t.Errorf("audit depends on %s", dep)
			}
		}
	}
}
