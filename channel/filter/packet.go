package filter

import "encoding/binary"

// IP protocol numbers the parser knows.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	// IPv6 extension headers the parser walks over.
	ext6HopByHop = 0
	ext6Routing  = 43
	ext6Fragment = 44
	ext6DestOpts = 60
	// maxExt6 bounds the extension headers walked before the transport
	// header is given up on.
	maxExt6 = 8
)

// TCP flags the flow table looks at.
const (
	tcpFIN = 0x01
	tcpRST = 0x04
)

// tuple identifies a flow in one direction. IPv4 addresses sit in the first
// four bytes of src and dst. It is comparable and used as a map key.
type tuple struct {
	ver        uint8 // 4 or 6
	proto      uint8
	src, dst   [16]byte
	sport, dpt uint16
}

func (t tuple) reverse() tuple {
	return tuple{ver: t.ver, proto: t.proto, src: t.dst, dst: t.src, sport: t.dpt, dpt: t.sport}
}

// packet is what the filter reads from one IP packet.
type packet struct {
	tuple
	// ports reports whether the transport header was read (TCP, UDP and
	// ICMP echo, first fragment only); without it the ports are zero.
	ports bool
	// tcpFlags are the TCP header's flags (0 for other protocols).
	tcpFlags uint8
}

// parse reads the IP header of b (IPv4 or IPv6, no link header). It
// reports false for anything that is not a well-formed IP packet: a
// truncated header, a length field longer than b, IPv4 options running
// past the header, an unknown version. A transport header that is missing
// or truncated is not an error: the packet is then judged by its addresses
// alone (ports zero). parse does not allocate.
func parse(b []byte, p *packet) bool {
	*p = packet{}
	if len(b) < 1 {
		return false
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < 20 || total < ihl || total > len(b) {
			return false
		}
		p.ver = 4
		p.proto = b[9]
		copy(p.src[:4], b[12:16])
		copy(p.dst[:4], b[16:20])
		// Only the first fragment carries the transport header.
		if binary.BigEndian.Uint16(b[6:8])&0x1fff == 0 {
			l4 = b[ihl:total]
		}
	case 6:
		if len(b) < 40 {
			return false
		}
		total := 40 + int(binary.BigEndian.Uint16(b[4:6]))
		if total > len(b) {
			return false
		}
		p.ver = 6
		copy(p.src[:], b[8:24])
		copy(p.dst[:], b[24:40])
		nh, rest := b[6], b[40:total]
		first := true
	walk:
		for range maxExt6 {
			switch nh {
			case ext6HopByHop, ext6Routing, ext6DestOpts:
				if len(rest) < 8 {
					// Truncated: judge by addresses.
					p.proto = nh
					return true
				}
				n := (int(rest[1]) + 1) * 8
				if n > len(rest) {
					p.proto = nh
					return true
				}
				nh, rest = rest[0], rest[n:]
				continue
			case ext6Fragment:
				if len(rest) < 8 {
					p.proto = nh
					return true
				}
				if binary.BigEndian.Uint16(rest[2:4])&0xfff8 != 0 {
					first = false
				}
				nh, rest = rest[0], rest[8:]
				continue
			}
			break walk
		}
		p.proto = nh
		if first {
			l4 = rest
		}
	default:
		return false
	}
	switch p.proto {
	case protoTCP:
		if len(l4) >= 14 {
			p.sport = binary.BigEndian.Uint16(l4[0:2])
			p.dpt = binary.BigEndian.Uint16(l4[2:4])
			p.tcpFlags = l4[13]
			p.ports = true
		}
	case protoUDP:
		if len(l4) >= 4 {
			p.sport = binary.BigEndian.Uint16(l4[0:2])
			p.dpt = binary.BigEndian.Uint16(l4[2:4])
			p.ports = true
		}
	case protoICMP, protoICMPv6:
		// Echo request and reply share the identifier: use it as both
		// ports so a reply is the reverse of its request.
		if len(l4) >= 8 && isEcho(p.proto, l4[0]) {
			id := binary.BigEndian.Uint16(l4[4:6])
			p.sport, p.dpt = id, id
			p.ports = true
		}
	}
	return true
}

func isEcho(proto, typ uint8) bool {
	if proto == protoICMP {
		return typ == 8 || typ == 0
	}
	return typ == 128 || typ == 129
}
