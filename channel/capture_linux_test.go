package channel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// capture records every frame on one interface through a raw AF_PACKET
// socket opened inside a node's namespace.
type capture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	done   chan struct{}
	stopFn func()
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func startCapture(t testing.TB, n *labNode, ifname string) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{})}
	n.do(t, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			unix.Close(fd)
			return fmt.Errorf("capture buffer: %w", err)
		}
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 1<<17)
		for {
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				// A timeout: the queue is drained. Stop if asked to.
				select {
				case <-c.done:
					return
				default:
					continue
				}
			}
			f := append([]byte(nil), buf[:n]...)
			c.mu.Lock()
			c.frames = append(c.frames, f)
			c.mu.Unlock()
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			close(c.done)
			<-stopped
			unix.Close(c.fd)
		})
	}
	t.Cleanup(stop)
	c.stopFn = stop
	return c
}

// stop ends the capture and returns the frames and how many the kernel
// dropped.
func (c *capture) stop() ([][]byte, uint32) {
	st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	drops := uint32(0)
	if err == nil {
		drops = st.Drops
	}
	c.stopFn()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames, drops
}

// wgStats summarises a capture that must hold WireGuard only.
type wgStats struct {
	frames, arp    int
	igmp           int
	types          [5]int // WireGuard message types 1..4
	transportBytes int
}

// checkWireGuardOnly fails unless every IP frame is UDP between the given
// ports carrying a WireGuard message (type 1-4 with zero reserved bytes),
// and no frame contains marker.
func checkWireGuardOnly(t testing.TB, frames [][]byte, port uint16, marker []byte) wgStats {
	t.Helper()
	var s wgStats
	for i, f := range frames {
		s.frames++
		if bytes.Contains(f, marker) {
			t.Fatalf("frame %d carries the plaintext marker on the underlay", i)
		}
		if len(f) < 14 {
			t.Fatalf("frame %d: runt of %d bytes", i, len(f))
		}
		switch et := binary.BigEndian.Uint16(f[12:14]); et {
		case unix.ETH_P_ARP:
			s.arp++
			continue
		case unix.ETH_P_IP:
		default:
			t.Fatalf("frame %d: unexpected ethertype %#04x on the underlay", i, et)
		}
		ip := f[14:]
		if len(ip) < 20 || ip[0]>>4 != 4 {
			t.Fatalf("frame %d: malformed IPv4", i)
		}
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] == unix.IPPROTO_IGMP && ip[16]>>4 == 0xe {
			// The kernel's own multicast membership reports when a link
			// comes up: allowed, like ARP (and checked for the marker above).
			s.igmp++
			continue
		}
		if ip[9] != unix.IPPROTO_UDP {
			t.Fatalf("frame %d: IP protocol %d on the underlay, want only UDP (WireGuard)", i, ip[9])
		}
		udp := ip[ihl:]
		if len(udp) < 8+4 {
			t.Fatalf("frame %d: UDP too short for WireGuard", i)
		}
		sp, dp := binary.BigEndian.Uint16(udp[0:2]), binary.BigEndian.Uint16(udp[2:4])
		if sp != port && dp != port {
			t.Fatalf("frame %d: UDP %d -> %d, want the WireGuard port %d", i, sp, dp, port)
		}
		wg := udp[8:]
		typ := wg[0]
		if typ < 1 || typ > 4 || wg[1] != 0 || wg[2] != 0 || wg[3] != 0 {
			t.Fatalf("frame %d: UDP payload is not a WireGuard message (header % x)", i, wg[:4])
		}
		s.types[typ]++
		if typ == 4 {
			s.transportBytes += len(wg)
		}
	}
	return s
}
