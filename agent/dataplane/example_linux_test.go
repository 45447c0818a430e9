package dataplane_test

import (
	"log/slog"
	"net/netip"
	"path/filepath"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/agent/dataplane"
)

// A node agent gets its data plane like this: the node's underlay address
// (published to peers), the first WireGuard port, its data directory, where
// the EE driver keeps each EE's network namespace, and the controller's
// addresses.
func ExampleNew() {
	dp, err := dataplane.New(dataplane.Config{
		Underlay: netip.MustParseAddr("10.254.0.1"),
		BasePort: dataplane.DefaultBasePort,
		DataDir:  "/var/lib/tvd/agent",
		EENetNS: func(ee string) (string, bool) {
			// e.g. ee/linux with NetNSDir set to /run/netns/tvd
			return filepath.Join("/run/netns/tvd", ee), true
		},
		Controller: []netip.Addr{netip.MustParseAddr("10.254.0.100")},
		Logger:     slog.Default(),
	})
	if err != nil {
		panic(err)
	}
	cfg := agent.Config{DataPlane: dp /* , ... */}
	_ = cfg
}
