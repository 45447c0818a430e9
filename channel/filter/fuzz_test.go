package filter

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the packet parser and to Judge in
// both directions: nothing panics, a parsed packet is IPv4 or IPv6 and
// agrees with its header, and a packet the parser refuses is counted as
// malformed.
func FuzzParse(f *testing.F) {
	a4, b4 := netip.MustParseAddr("10.77.0.10"), netip.MustParseAddr("10.78.0.14")
	a6, b6 := netip.MustParseAddr("fd77::a"), netip.MustParseAddr("fd77:0:1::e")
	f.Add(tcp(a4, b4, 1, 2))
	f.Add(tcp(a6, b6, 1, 2))
	f.Add(pkt(a4, b4, protoUDP, 53, 5353, 0))
	f.Add(pkt(a6, b6, protoICMPv6, 7, 7, 0))
	f.Add(pkt(a4, b4, protoICMP, 7, 7, 0))
	// IPv6 with a hop-by-hop and a fragment header before UDP.
	ext := pkt(a6, b6, protoUDP, 1, 2, 0)
	ext = append(ext[:40], append([]byte{ext6Fragment, 0, 0, 0, 0, 0, 0, 0, protoUDP, 0, 0, 0, 0, 0, 0, 1}, ext[40:]...)...)
	ext[6] = ext6HopByHop
	binary.BigEndian.PutUint16(ext[4:], uint16(len(ext)-40))
	f.Add(ext)
	f.Add([]byte{0x45})
	f.Add([]byte{})

	m, err := outsourcing()
	if err != nil {
		f.Fatal(err)
	}
	mems := members(f, m)
	p := planOf(m, mems)
	filt := newFilter(f, mems[1].iface, p, nil)
	// Peers: each member by its addresses, the second one also routing
	// a /16 and an IPv6 /20, so that both route paths are walked.
	var peers [][]netip.Prefix
	for i, mem := range mems {
		ips := []netip.Prefix{netip.PrefixFrom(mem.addr4, 32), netip.PrefixFrom(mem.addr6, 128)}
		if i == 2 {
			ips = append(ips, netip.MustParsePrefix("10.0.0.0/9"), netip.MustParsePrefix("fd70::/20"))
		}
		peers = append(peers, ips)
	}
	filt.SetPeers(peers)
	f.Fuzz(func(t *testing.T, b []byte) {
		var pk packet
		ok := parse(b, &pk)
		if ok {
			switch pk.ver {
			case 4:
				if b[0]>>4 != 4 || pk.proto != b[9] || [4]byte(pk.src[:4]) != [4]byte(b[12:16]) {
					t.Fatalf("IPv4 header misread: %+v", pk)
				}
			case 6:
				if b[0]>>4 != 6 || [16]byte(pk.src[:]) != [16]byte(b[8:24]) || [16]byte(pk.dst[:]) != [16]byte(b[24:40]) {
					t.Fatalf("IPv6 header misread: %+v", pk)
				}
			default:
				t.Fatalf("parsed version %d", pk.ver)
			}
			if !pk.ports && (pk.sport != 0 || pk.dpt != 0) {
				t.Fatalf("ports set without a transport header: %+v", pk)
			}
			if pk.tuple.reverse().reverse() != pk.tuple {
				t.Fatal("reverse is not an involution")
			}
		}
		before := filt.Counters()[CounterMalformed].Packets
		v1 := filt.Judge(b, Outbound)
		v2 := filt.Judge(b, Inbound)
		if !ok && (v1 != VerdictMalformed || v2 != VerdictMalformed) {
			t.Fatalf("unparsable packet judged %v / %v", v1, v2)
		}
		if ok && (v1 == VerdictMalformed || v2 == VerdictMalformed) {
			t.Fatalf("parsable packet judged malformed")
		}
		if after := filt.Counters()[CounterMalformed].Packets; !ok && after != before+2 {
			t.Fatalf("malformed counter %d -> %d", before, after)
		}
	})
}
