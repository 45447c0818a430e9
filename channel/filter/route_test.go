package filter

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// TestRouteLongestMatch: the peer of an address is the one with the
// longest matching allowed IP, over IPv4 and IPv6 and odd prefix lengths.
func TestRouteLongestMatch(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	p := planOf(m, mems)
	f := newFilter(t, mems[0].iface, p, nil)
	f.SetPeers([][]netip.Prefix{
		{netip.PrefixFrom(mems[1].addr4, 32), pfx("10.0.0.0/8"), netip.PrefixFrom(mems[1].addr6, 128), pfx("fd00::/8")},
		{netip.PrefixFrom(mems[2].addr4, 32), pfx("10.78.0.0/15"), pfx("fd77::/19")},
		{pfx("10.78.0.0/17"), pfx("0.0.0.0/0")},                                    // no member: known by address
		{netip.PrefixFrom(mems[3].addr4, 32), netip.PrefixFrom(mems[4].addr4, 32)}, // two members: ambiguous
	})
	tab := f.tab.Load()
	for _, c := range []struct {
		addr string
		want int32
	}{
		{mems[1].addr4.String(), 1},
		{mems[2].addr4.String(), 2},
		{"10.77.200.1", 1}, // 10.78.0.0/15 is 10.78-10.79: only 10/8 matches
		{"10.78.1.1", -1},  // 10.78.0.0/17 (no member) beats /15
		{"10.78.200.1", 2}, // outside /17, inside /15
		{"10.1.2.3", 1},    // only 10/8
		{"192.0.2.1", -1},  // only 0/0
		{mems[3].addr4.String(), -1},
		{mems[1].addr6.String(), 1},
		{"fd77:1fff::1", 2}, // inside fd77::/19
		{"fd77:2000::1", 1}, // outside /19, inside fd00::/8
		{"2001:db8::1", -1}, // no route
	} {
		a := netip.MustParseAddr(c.addr)
		var k [16]byte
		ver := uint8(6)
		if a.Is4() {
			ver = 4
			b := a.As4()
			copy(k[:], b[:])
		} else {
			k = a.As16()
		}
		if got := tab.route(ver, &k); got != c.want {
			t.Errorf("route(%s) = %d, want %d", c.addr, got, c.want)
		}
	}
	// Peers given before the first plan are kept for it.
	g, err := New(Config{Iface: mems[0].iface})
	if err != nil {
		t.Fatal(err)
	}
	g.SetPeers([][]netip.Prefix{{netip.PrefixFrom(mems[1].addr4, 32)}})
	if err := g.Apply(p); err != nil {
		t.Fatal(err)
	}
	var k [16]byte
	b := mems[1].addr4.As4()
	copy(k[:], b[:])
	if got := g.tab.Load().route(4, &k); got != 1 {
		t.Errorf("peers set before the first Apply: route = %d", got)
	}
}

// TestPeerEnds: with peers known, an overlay end is the member behind the
// peer: a packet routed to (or received from) a peer that does not own the
// address is a hop with that peer, allowed only when it is a gateway and
// the origin may cross.
func TestPeerEnds(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	yc, yd := byName(t, mems, "y-management-console"), byName(t, mems, "y-domain-controller")
	yg, ro := byName(t, mems, "y-gateway"), byName(t, mems, "r-client-os")
	p := planOf(m, mems)
	red, _ := ro.addr4.Prefix(16)
	for _, c := range []struct {
		name  string
		local member
		peers [][]netip.Prefix
		pkt   []byte
		dir   Direction
		want  Verdict
	}{
		{"console to red through its gateway", yc, [][]netip.Prefix{{netip.PrefixFrom(yg.addr4, 32), red}},
			tcp(yc.addr4, ro.addr4, 1, 2), Outbound, VerdictIntra},
		{"domain controller to red through the gateway", yd, [][]netip.Prefix{{netip.PrefixFrom(yg.addr4, 32), red}},
			tcp(yd.addr4, ro.addr4, 1, 2), Outbound, VerdictGatewayRefused},
		{"console to red through a non-gateway", yc, [][]netip.Prefix{{netip.PrefixFrom(yd.addr4, 32), red}},
			tcp(yc.addr4, ro.addr4, 1, 2), Outbound, VerdictMisroute},
		{"red client through a non-gateway", yc, [][]netip.Prefix{{netip.PrefixFrom(yd.addr4, 32), red}},
			tcp(ro.addr4, yc.addr4, 1, 2), Inbound, VerdictSpoof},
		{"console to red straight", yc, [][]netip.Prefix{{netip.PrefixFrom(ro.addr4, 32)}},
			tcp(yc.addr4, ro.addr4, 1, 2), Outbound, VerdictViaDirect},
		{"console to red, no route", yc, nil,
			tcp(yc.addr4, ro.addr4, 1, 2), Outbound, VerdictViaDirect},
	} {
		f := newFilter(t, c.local.iface, p, nil)
		f.SetPeers(c.peers)
		if v := f.Judge(c.pkt, c.dir); v != c.want {
			t.Errorf("%s: %v, want %v", c.name, v, c.want)
		}
	}
}

// checksum computes the IPv4 header checksum of h (its checksum field
// included: a valid header sums to zero).
func checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = (sum & 0xffff) + (sum >> 16)
	}
	return ^uint16(sum)
}

// TestDecrementTTL: the incremental checksum update leaves a valid header,
// for every TTL and many starting checksums.
func TestDecrementTTL(t *testing.T) {
	b := tcp(netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.78.0.2"), 1, 2)
	for ttl := 2; ttl < 256; ttl++ {
		for id := 0; id < 65536; id += 257 {
			b[8] = byte(ttl)
			binary.BigEndian.PutUint16(b[4:], uint16(id))
			binary.BigEndian.PutUint16(b[10:], 0)
			binary.BigEndian.PutUint16(b[10:], checksum(b[:20]))
			if !canForward(b) {
				t.Fatalf("TTL %d not forwardable", ttl)
			}
			decrementTTL(b)
			if b[8] != byte(ttl-1) || checksum(b[:20]) != 0 {
				t.Fatalf("TTL %d id %d: after decrement TTL %d, checksum sums to %#x", ttl, id, b[8], checksum(b[:20]))
			}
		}
	}
	b[8] = 1
	if canForward(b) {
		t.Fatal("TTL 1 forwardable")
	}
	v6 := tcp(netip.MustParseAddr("fd77::1"), netip.MustParseAddr("fd78::2"), 1, 2)
	decrementTTL(v6)
	if v6[7] != 63 {
		t.Fatalf("hop limit %d, want 63", v6[7])
	}
}
