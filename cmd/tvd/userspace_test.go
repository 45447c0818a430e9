package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/tvdtest"
	"github.com/tvd-dev/tvd/workload"
)

// TestUserspaceDataPlaneProcesses runs the binary as a controller and two
// agents with the process driver and the userspace data plane
// (--dataplane userspace: no TUN, no nftables, no root needed): each EE is
// a real process serving a page with busybox httpd on a host port it
// exposes on the overlay. A client that speaks through an EE's overlay
// socket fetches a page exactly when the flow matrix lets the two members
// talk, straight or through the gateways (Rule G: the management console
// reaches a red client on its own node through both gateways on another).
func TestUserspaceDataPlaneProcesses(t *testing.T) {
	dir := t.TempDir()
	ctl := startController(t, dir)
	url, env := ctl.url, ctl.env
	applyOutsourcing(t, dir, env)

	type ee struct{ name, node, domain, role, owner, port string }
	ees := []ee{
		{"yellow-gw", "mgmt", "yellow", "gateway", "ibm-global-services", ""},
		{"red-gw", "mgmt", "red", "gateway", "outsourcing-customer", ""},
		{"yellow-mc1", "pc1", "yellow", "management-console", "ibm-global-services", ""},
		{"red-client1", "pc1", "red", "client-os", "outsourcing-customer", ""},
	}
	agents := map[string]*proc{}
	for i := range ees {
		ees[i].port = strings.TrimPrefix(freePort(t), "127.0.0.1:")
	}
	for _, node := range []string{"mgmt", "pc1"} {
		cfg := "node: " + node + "\nees:\n"
		for _, e := range ees {
			if e.node != node {
				continue
			}
			// The EE's service: a page naming it, on a loopback port
			// the agent exposes at the EE's overlay address, port 7070.
			cmd := fmt.Sprintf("echo %s > index.html; exec httpd -f -p 127.0.0.1:%s -h .", e.name, e.port)
			cfg += fmt.Sprintf("  - name: %s\n    domain: %s\n    role: %s\n    owner: %s\n    command: [sh, -c, %q]\n    expose: [{port: 7070, target: \"127.0.0.1:%s\"}]\n",
				e.name, e.domain, e.role, e.owner, cmd, e.port)
		}
		path := filepath.Join(dir, node+".yaml")
		os.WriteFile(path, []byte(cfg), 0o644)
		token := strings.TrimSpace(run(t, env, "admin", "token", "--node", node))
		agents[node] = startProc(t, "agent "+node, "agent", "--controller", url, "--data", filepath.Join(dir, "agent-"+node),
			"--join-token", token, "--config", path, "--report-every", "300ms", "--ee-driver", "process",
			"--underlay", "127.0.0.1", "--wg-port", "0", "--dataplane", "userspace")
	}
	addrs := map[string]string{}
	tvdtest.Eventually(t, 30*time.Second, "4 verified members with overlay addresses", func() bool {
		n := 0
		for _, m := range members(t, env, "").Members {
			if m.Verdict.Status == "STATUS_VERIFIED" && m.OverlayAddress != "" {
				addrs[m.Member.Ee] = m.OverlayAddress
				n++
			}
		}
		return n == len(ees)
	})
	for node, p := range agents {
		if !strings.Contains(p.log.String(), "data plane: userspace") {
			t.Errorf("agent %s did not start the userspace data plane:\n%s", node, p.log.String())
		}
	}

	fetch := func(from, to ee, wait time.Duration) (string, error) {
		sock := filepath.Join(dir, "agent-"+from.node, "workload", from.name, "overlay.sock")
		tr := &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
			return workload.DialOverlayVia(ctx, sock, a)
		}}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: wait}
		resp, err := c.Get("http://" + netip.AddrPortFrom(netip.MustParseAddr(addrs[to.name]), 7070).String() + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), err
	}
	byName := map[string]ee{}
	for _, e := range ees {
		byName[e.name] = e
	}
	cases := []struct {
		from, to string
		want     bool
	}{
		{"yellow-mc1", "yellow-gw", true},    // intra-domain, across nodes
		{"red-client1", "red-gw", true},      // intra-domain, across nodes
		{"yellow-gw", "red-gw", true},        // point-to-point, one node
		{"red-gw", "yellow-gw", true},        // point-to-point, one node
		{"yellow-mc1", "red-gw", true},       // Rule G: through yellow-gw
		{"yellow-mc1", "red-client1", true},  // Rule G: pc1 -> yellow-gw -> red-gw (mgmt) -> pc1
		{"red-client1", "yellow-mc1", false}, // none, one node
		{"red-client1", "yellow-gw", false},  // none, across nodes
	}
	tvdtest.Eventually(t, 30*time.Second, "the allowed pairs connected", func() bool {
		for _, c := range cases {
			if got, err := fetch(byName[c.from], byName[c.to], 2*time.Second); c.want && (err != nil || got != c.to) {
				return false
			}
		}
		return true
	})
	for _, c := range cases {
		got, err := fetch(byName[c.from], byName[c.to], 3*time.Second)
		switch {
		case c.want && (err != nil || got != c.to):
			t.Errorf("%s -> %s: got %q, %v; want the page of %s", c.from, c.to, got, err, c.to)
		case !c.want && err == nil:
			t.Errorf("%s -> %s: got %q; want no connection", c.from, c.to, got)
		}
	}
	nodes := run(t, env, "nodes")
	if !strings.Contains(nodes, "mgmt") || !strings.Contains(nodes, "pc1") {
		t.Errorf("tvd nodes:\n%s", nodes)
	}
	t.Logf("tvd nodes:\n%s", nodes)
}
