package workload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"
)

// EnvOverlaySocket names the environment variable that gives an EE of the
// process driver its overlay socket (the agent's userspace data plane).
const EnvOverlaySocket = "TVD_OVERLAY_SOCKET"

// DefaultOverlaySocket is the overlay socket's place in an EE, beside the
// Workload API socket.
const DefaultOverlaySocket = "/run/tvd/overlay.sock"

// OverlaySocket returns the overlay socket of this EE: $TVD_OVERLAY_SOCKET,
// else DefaultOverlaySocket.
func OverlaySocket() string {
	if s := os.Getenv(EnvOverlaySocket); s != "" {
		return s
	}
	return DefaultOverlaySocket
}

// DialOverlay opens a TCP connection over the domain's overlay from an EE
// on a node whose agent runs the userspace data plane (the process
// driver, no root): the agent dials addr ("IP:port", an overlay address)
// from the EE's own overlay address, so the connection is judged by the
// flow matrix like any packet of the EE. An EE with a network namespace
// (the linux driver) dials the overlay directly instead.
//
// The socket speaks SOCKS5 (CONNECT, no authentication); tools that speak
// SOCKS5 over a unix socket can use it too.
func DialOverlay(ctx context.Context, addr string) (net.Conn, error) {
	return DialOverlayVia(ctx, OverlaySocket(), addr)
}

// DialOverlayVia is DialOverlay through the overlay socket at socket.
func DialOverlayVia(ctx context.Context, socket, addr string) (net.Conn, error) {
	to, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("workload: dial overlay: expected IP:port, got %q", addr)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("workload: dial overlay: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := socksConnect(c, to); err != nil {
		c.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("workload: dial overlay %s: %w", to, ctx.Err())
		}
		return nil, fmt.Errorf("workload: dial overlay %s: %w", to, err)
	}
	if !stop() {
		c.Close()
		return nil, fmt.Errorf("workload: dial overlay %s: %w", to, ctx.Err())
	}
	return c, nil
}

// ErrOverlayRefused is returned by DialOverlay when the agent could not
// connect: the flow matrix drops the connection, the destination is
// unreachable, or nothing listens there.
var ErrOverlayRefused = errors.New("connection not established over the overlay")

var socksReplies = map[byte]string{
	1: "general failure", 2: "not allowed", 3: "network unreachable", 4: "host unreachable or dropped by the flow policy",
	5: "connection refused", 6: "TTL expired", 7: "command not supported", 8: "address type not supported",
}

// socksConnect runs a SOCKS5 CONNECT to to over c.
func socksConnect(c net.Conn, to netip.AddrPort) error {
	req := []byte{5, 1, 0, 5, 1, 0}
	a := to.Addr().Unmap()
	if a.Is4() {
		b := a.As4()
		req = append(append(req, 1), b[:]...)
	} else {
		b := a.As16()
		req = append(append(req, 4), b[:]...)
	}
	req = append(req, byte(to.Port()>>8), byte(to.Port()))
	if _, err := c.Write(req); err != nil {
		return err
	}
	var hello [2]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return fmt.Errorf("overlay socket: %w", err)
	}
	if hello[0] != 5 || hello[1] != 0 {
		return fmt.Errorf("overlay socket: expected SOCKS5 without authentication, got %d/%d", hello[0], hello[1])
	}
	var rep [4]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		return fmt.Errorf("overlay socket: %w", err)
	}
	if rep[0] != 5 {
		return fmt.Errorf("overlay socket: expected SOCKS5 reply, got version %d", rep[0])
	}
	if rep[1] != 0 {
		why := socksReplies[rep[1]]
		if why == "" {
			why = fmt.Sprintf("code %d", rep[1])
		}
		return fmt.Errorf("%w: %s", ErrOverlayRefused, why)
	}
	n := 0
	switch rep[3] {
	case 1:
		n = 4
	case 4:
		n = 16
	default:
		return fmt.Errorf("overlay socket: expected a bound IP address, got type %d", rep[3])
	}
	if _, err := io.ReadFull(c, make([]byte, n+2)); err != nil {
		return fmt.Errorf("overlay socket: %w", err)
	}
	return nil
}
