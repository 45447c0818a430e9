package channel

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TestUnrouted: unrouted prefixes are normalised like allowed IPs and
// must be among them.
func TestUnrouted(t *testing.T) {
	var self, k PublicKey
	self[0], k[0] = 1, 2
	p := Peer{PublicKey: k,
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.78.0.4/32"), netip.MustParsePrefix("10.77.0.0/24")},
		Unrouted:   []netip.Prefix{netip.MustParsePrefix("10.78.0.4/32"), netip.MustParsePrefix("10.78.0.4/32")}}
	out, err := normalisePeers([]Peer{p}, self)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out[0].Unrouted, []netip.Prefix{netip.MustParsePrefix("10.78.0.4/32")}) {
		t.Errorf("unrouted %v", out[0].Unrouted)
	}
	if out[0].equal(Peer{PublicKey: k, AllowedIPs: out[0].AllowedIPs}) {
		t.Error("peers differing in unrouted prefixes compare equal")
	}
	p.Unrouted = []netip.Prefix{netip.MustParsePrefix("10.79.0.1/32")}
	if _, err := normalisePeers([]Peer{p}, self); err == nil || !strings.Contains(err.Error(), "expected one of the peer's allowed IPs") {
		t.Errorf("err %v", err)
	}
}
