package tvd_test

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// goList runs `go list` with a template over the module's packages.
func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-tags", "tpmsimulator"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestPackageDocs fails when a package has no doc comment (STYLE.md,
// after tailscale's pkgdoc_test.go).
func TestPackageDocs(t *testing.T) {
	for _, l := range goList(t, "-f", "{{.ImportPath}}\t{{.Doc}}", "./...") {
		path, doc, _ := strings.Cut(l, "\t")
		if doc == "" {
			t.Errorf("package %s has no doc comment; add one that says what it is for", path)
		}
	}
}

const module = "github.com/tvd-dev/tvd"

// TestImportRules encodes ARCHITECTURE §8: policy, attest, audit and flow
// are pure. They import no networking and no store, directly or through a
// dependency; cli reaches the controller only through the API client.
func TestImportRules(t *testing.T) {
	pure := []string{"policy", "attest", "audit", "flow", "report"}
	// Forbidden anywhere below a pure package. crypto/x509 needs package
	// net for IP addresses in certificates, so net itself is checked only
	// among direct imports.
	forbiddenDeep := []string{
		"net/http", "net/rpc", "net/smtp", "crypto/tls",
		"connectrpc.com/", "google.golang.org/grpc",
		"github.com/google/nftables", "github.com/vishvananda/netlink", "github.com/mdlayher/netlink",
		"golang.zx2c4.com/wireguard",
		module + "/store", "go.etcd.io/bbolt", "go.etcd.io/etcd",
	}
	for _, p := range pure {
		pkgs := goList(t, "-f", "{{.ImportPath}}", "./"+p+"/...")
		for _, pkg := range pkgs {
			if strings.HasPrefix(pkg, module+"/attest/tpm") || strings.HasPrefix(pkg, module+"/flow/nft") {
				continue // the TPM attester and the nftables programmer talk to the kernel; they are not pure
			}
			for _, imp := range goList(t, "-f", `{{join .Imports "\n"}}`, pkg) {
				if imp == "net" || imp == "os/exec" {
					t.Errorf("%s imports %s; pure packages perform no networking and run no programs", pkg, imp)
				}
			}
			for _, dep := range goList(t, "-deps", "-f", "{{.ImportPath}}", pkg) {
				for _, f := range forbiddenDeep {
					if dep == f || strings.HasPrefix(dep, f+"/") || strings.HasSuffix(f, "/") && strings.HasPrefix(dep, f) {
						t.Errorf("%s depends on %s; pure packages must not (ARCHITECTURE §8)", pkg, dep)
					}
				}
			}
		}
	}
	// cli talks to the controller only through the API client, directly
	// or through any dependency.
	for _, pkg := range goList(t, "-f", "{{.ImportPath}}", "./cli/...") {
		for _, dep := range goList(t, "-deps", "-f", "{{.ImportPath}}", pkg) {
			if strings.HasPrefix(dep, module+"/controller") || strings.HasPrefix(dep, module+"/store") {
				t.Errorf("%s imports %s; the CLI reaches the controller only through api/client", pkg, dep)
			}
		}
	}
}
