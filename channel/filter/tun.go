package filter

import (
	"encoding/binary"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
)

// Device wraps the tun.Device between wireguard-go and the local network
// stack (the gVisor netstack of a userspace interface, or a kernel TUN):
// packets the stack sends (wireguard-go's Read) are judged Outbound,
// packets wireguard-go delivers (Write) Inbound, and dropped ones never
// reach the other side.
//
// A gateway's Device (see WrapGateway) also forwards: an inbound packet
// for an address the local member does not own, once judged, goes back
// out to wireguard-go as an outbound packet of the gateway, with its
// origin address kept, and is judged again as such.
type Device struct {
	tun.Device
	f *Filter

	// Gateway mode only.
	gw        bool
	stack     chan []byte // packets read from the stack
	stackFree chan []byte
	fwd       chan []byte // packets to forward (no offset)
	fwdFree   chan []byte
	pumpErr   error // set before stack is closed
	closeOnce sync.Once
}

var _ tun.Device = (*Device)(nil)

// Wrap returns dev filtered by f.
func Wrap(dev tun.Device, f *Filter) *Device { return &Device{Device: dev, f: f} }

// forwardBuffers bounds the packets waiting to be forwarded; more are
// dropped (as a congested router drops).
const forwardBuffers = 64

// WrapGateway returns dev filtered by f, forwarding inbound packets that
// are not for the local member. It reads the stack on its own goroutine,
// which ends when dev's Read fails (when dev is closed).
func WrapGateway(dev tun.Device, f *Filter) *Device {
	mtu, err := dev.MTU()
	if err != nil || mtu <= 0 {
		mtu = 65535
	}
	d := &Device{Device: dev, f: f, gw: true,
		stack: make(chan []byte), stackFree: make(chan []byte, 2),
		fwd: make(chan []byte, forwardBuffers), fwdFree: make(chan []byte, forwardBuffers)}
	for range 2 {
		d.stackFree <- make([]byte, mtu)
	}
	for range forwardBuffers {
		d.fwdFree <- make([]byte, 0, 65535)
	}
	go d.pump()
	return d
}

// pump reads the stack's packets one at a time for Read.
func (d *Device) pump() {
	bufs, sizes := make([][]byte, 1), make([]int, 1)
	for {
		b := <-d.stackFree
		bufs[0] = b
		n, err := d.Device.Read(bufs, sizes, 0)
		if err != nil {
			d.pumpErr = err
			close(d.stack)
			return
		}
		if n == 0 || sizes[0] < 1 {
			d.stackFree <- b
			continue
		}
		d.stack <- b[:sizes[0]]
	}
}

// Filter returns the device's filter.
func (d *Device) Filter() *Filter { return d.f }

// Read reads packets from the stack and blanks the dropped ones (size 0,
// which wireguard-go skips). It does not return until at least one packet
// passes or the underlying device fails.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if d.gw {
		return d.readGateway(bufs, sizes, offset)
	}
	for {
		n, err := d.Device.Read(bufs, sizes, offset)
		pass := 0
		now := d.f.clock()
		for i := range n {
			if sizes[i] < 1 {
				continue
			}
			if d.f.judgeAt(bufs[i][offset:offset+sizes[i]], Outbound, now).Allowed() {
				pass++
			} else {
				sizes[i] = 0
			}
		}
		if pass > 0 || err != nil || n == 0 {
			return n, err
		}
	}
}

func (d *Device) readGateway(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		var pkt []byte
		select {
		case b, ok := <-d.stack:
			if !ok {
				return 0, d.pumpErr
			}
			n := copy(bufs[0][offset:], b)
			d.stackFree <- b[:cap(b)]
			pkt = bufs[0][offset : offset+n]
		case b := <-d.fwd:
			n := copy(bufs[0][offset:], b)
			d.fwdFree <- b[:0]
			pkt = bufs[0][offset : offset+n]
		}
		if len(pkt) > 0 && d.f.Judge(pkt, Outbound).Allowed() {
			sizes[0] = len(pkt)
			return 1, nil
		}
	}
}

// Write judges each packet and writes the ones that pass. It moves the
// passing packets to the front of bufs (the caller's slice is reordered,
// not its buffers) and reports every packet as written: a dropped packet
// is consumed, as a firewall would. In gateway mode a passing packet that
// is not for the local member is forwarded instead (its TTL or hop limit
// decremented; dropped when it reaches zero).
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	pass := 0
	now := d.f.clock() // one clock read per batch
	for i, b := range bufs {
		if len(b) <= offset {
			continue
		}
		v, foreign := d.f.judgeInbound(b[offset:], now)
		if !v.Allowed() {
			continue
		}
		if foreign && d.gw {
			d.forward(b[offset:])
			continue
		}
		bufs[pass], bufs[i] = b, bufs[pass]
		pass++
	}
	if pass == 0 {
		return len(bufs), nil
	}
	if _, err := d.Device.Write(bufs[:pass], offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}

// forward queues a copy of pkt for Read, with its TTL or hop limit
// decremented. It drops the packet when the TTL runs out or the queue is
// full.
func (d *Device) forward(pkt []byte) {
	if !canForward(pkt) {
		return
	}
	var b []byte
	select {
	case b = <-d.fwdFree:
	default:
		return
	}
	b = append(b, pkt...)
	decrementTTL(b)
	select {
	case d.fwd <- b:
	default:
		d.fwdFree <- b[:0]
	}
}

// canForward reports whether the TTL (IPv4) or hop limit (IPv6) of b, a
// packet parse accepted, lets it be forwarded once more.
func canForward(b []byte) bool {
	switch b[0] >> 4 {
	case 4:
		return b[8] > 1
	case 6:
		return b[7] > 1
	}
	return false
}

// decrementTTL decrements the IPv4 TTL (updating the header checksum) or
// the IPv6 hop limit of b, a packet parse accepted.
func decrementTTL(b []byte) {
	switch b[0] >> 4 {
	case 4:
		b[8]--
		// RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'). The TTL is the high
		// byte of its 16-bit word, so ~m + m' = ~0x0100.
		sum := uint32(^binary.BigEndian.Uint16(b[10:12])) + uint32(^uint16(0x0100))
		sum = (sum & 0xffff) + (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16)
		binary.BigEndian.PutUint16(b[10:12], ^uint16(sum))
	case 6:
		b[7]--
	}
}

// Close closes the underlying device (which ends a gateway's reader).
func (d *Device) Close() error {
	var err error
	d.closeOnce.Do(func() { err = d.Device.Close() })
	return err
}
