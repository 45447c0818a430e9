package filter

import (
	"golang.zx2c4.com/wireguard/tun"
)

// Device wraps the tun.Device between wireguard-go and the local network
// stack (the gVisor netstack of a userspace interface, or a kernel TUN):
// packets the stack sends (wireguard-go's Read) are judged Outbound,
// packets wireguard-go delivers (Write) Inbound, and dropped ones never
// reach the other side.
type Device struct {
	tun.Device
	f *Filter
}

var _ tun.Device = (*Device)(nil)

// Wrap returns dev filtered by f.
func Wrap(dev tun.Device, f *Filter) *Device { return &Device{Device: dev, f: f} }

// Filter returns the device's filter.
func (d *Device) Filter() *Filter { return d.f }

// Read reads packets from the stack and blanks the dropped ones (size 0,
// which wireguard-go skips). It does not return until at least one packet
// passes or the underlying device fails.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		n, err := d.Device.Read(bufs, sizes, offset)
		pass := 0
		for i := range n {
			if sizes[i] < 1 {
				continue
			}
			if d.f.Judge(bufs[i][offset:offset+sizes[i]], Outbound).Allowed() {
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

// Write judges each packet and writes the ones that pass. It moves the
// passing packets to the front of bufs (the caller's slice is reordered,
// not its buffers) and reports every packet as written: a dropped packet
// is consumed, as a firewall would.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	pass := 0
	now := d.f.clock() // one clock read per batch
	for i, b := range bufs {
		if len(b) <= offset {
			continue
		}
		if d.f.judgeAt(b[offset:], Inbound, now).Allowed() {
			bufs[pass], bufs[i] = b, bufs[pass]
			pass++
		}
	}
	if pass == 0 {
		return len(bufs), nil
	}
	if _, err := d.Device.Write(bufs[:pass], offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}
