package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// The SOCKS5 subset (RFC 1928) the userspace data plane serves to an EE on
// its overlay socket: no authentication (the socket is the EE's own, in
// its Workload API directory), CONNECT only, IPv4 or IPv6 literal
// addresses only (the overlay has no names).
const (
	socksVersion       = 5
	socksNoAuth        = 0
	socksNoAcceptable  = 0xff
	socksCmdConnect    = 1
	socksAtypIPv4      = 1
	socksAtypDomain    = 3
	socksAtypIPv6      = 4
	socksSucceeded     = 0
	socksGeneralFail   = 1
	socksNotAllowed    = 2
	socksHostUnreach   = 4
	socksConnRefused   = 5
	socksCmdNotSupp    = 7
	socksAtypNotSupp   = 8
	socksHandshakeWait = 10 * time.Second
)

// socksError is a request the server refuses, with the reply code it sends.
type socksError struct {
	code byte
	msg  string
}

func (e *socksError) Error() string { return e.msg }

// readSOCKSGreeting reads the client's method list and reports whether it
// offers "no authentication".
func readSOCKSGreeting(r io.Reader) (bool, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return false, fmt.Errorf("socks greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return false, fmt.Errorf("socks greeting: expected version 5, got %d", hdr[0])
	}
	if hdr[1] == 0 {
		return false, errors.New("socks greeting: expected at least one method, got none")
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return false, fmt.Errorf("socks greeting: methods: %w", err)
	}
	for _, m := range methods {
		if m == socksNoAuth {
			return true, nil
		}
	}
	return false, nil
}

// readSOCKSRequest reads a CONNECT request and returns its destination.
// Anything else is a *socksError carrying the reply code, or a read error.
func readSOCKSRequest(r io.Reader) (netip.AddrPort, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("socks request: %w", err)
	}
	if hdr[0] != socksVersion {
		return netip.AddrPort{}, &socksError{socksGeneralFail, fmt.Sprintf("socks request: expected version 5, got %d", hdr[0])}
	}
	if hdr[2] != 0 {
		return netip.AddrPort{}, &socksError{socksGeneralFail, fmt.Sprintf("socks request: expected reserved byte 0, got %d", hdr[2])}
	}
	var addr netip.Addr
	switch hdr[3] {
	case socksAtypIPv4:
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return netip.AddrPort{}, fmt.Errorf("socks request: address: %w", err)
		}
		addr = netip.AddrFrom4(b)
	case socksAtypIPv6:
		var b [16]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return netip.AddrPort{}, fmt.Errorf("socks request: address: %w", err)
		}
		addr = netip.AddrFrom16(b).Unmap()
	case socksAtypDomain:
		return netip.AddrPort{}, &socksError{socksAtypNotSupp, "socks request: expected an IP address, got a host name (the overlay has no names)"}
	default:
		return netip.AddrPort{}, &socksError{socksAtypNotSupp, fmt.Sprintf("socks request: expected address type 1 (IPv4) or 4 (IPv6), got %d", hdr[3])}
	}
	var pb [2]byte
	if _, err := io.ReadFull(r, pb[:]); err != nil {
		return netip.AddrPort{}, fmt.Errorf("socks request: port: %w", err)
	}
	if hdr[1] != socksCmdConnect {
		return netip.AddrPort{}, &socksError{socksCmdNotSupp, fmt.Sprintf("socks request: expected command 1 (CONNECT), got %d", hdr[1])}
	}
	port := uint16(pb[0])<<8 | uint16(pb[1])
	if port == 0 || addr.IsUnspecified() || addr.IsMulticast() {
		return netip.AddrPort{}, &socksError{socksHostUnreach, fmt.Sprintf("socks request: expected a unicast address and a port, got %s", netip.AddrPortFrom(addr, port))}
	}
	return netip.AddrPortFrom(addr, port), nil
}

// socksReply encodes a reply with the bound address bnd.
func socksReply(code byte, bnd netip.AddrPort) []byte {
	a := bnd.Addr()
	if !a.IsValid() {
		a = netip.IPv4Unspecified()
	}
	out := []byte{socksVersion, code, 0}
	if a.Is4() {
		b := a.As4()
		out = append(append(out, socksAtypIPv4), b[:]...)
	} else {
		b := a.As16()
		out = append(append(out, socksAtypIPv6), b[:]...)
	}
	return append(out, byte(bnd.Port()>>8), byte(bnd.Port()))
}

// socksServer serves one EE's overlay socket: each CONNECT is dialled
// from the EE's own overlay stack, so it leaves with the EE's overlay
// address and is judged by the EE's flow filter.
type socksServer struct {
	ln      net.Listener
	dial    func(ctx context.Context, to netip.AddrPort) (net.Conn, error)
	timeout time.Duration // per CONNECT
	log     *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

func newSOCKSServer(ln net.Listener, timeout time.Duration, dial func(context.Context, netip.AddrPort) (net.Conn, error), log *slog.Logger) *socksServer {
	ctx, cancel := context.WithCancel(context.Background())
	s := &socksServer{ln: ln, dial: dial, timeout: timeout, log: log, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	return s
}

func (s *socksServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Warn("overlay socket: accept", "err", err)
			}
			return
		}
		if !s.track(c, true) {
			c.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.track(c, false)
			s.handle(c)
		}()
	}
}

// track adds or removes a live connection; it refuses new ones after close.
func (s *socksServer) track(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.conns, c)
		return true
	}
	if s.ctx.Err() != nil {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *socksServer) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(socksHandshakeWait))
	ok, err := readSOCKSGreeting(c)
	if err != nil {
		s.log.Debug("overlay socket: bad greeting", "err", err)
		return
	}
	if !ok {
		c.Write([]byte{socksVersion, socksNoAcceptable})
		return
	}
	if _, err := c.Write([]byte{socksVersion, socksNoAuth}); err != nil {
		return
	}
	to, err := readSOCKSRequest(c)
	if err != nil {
		var se *socksError
		if errors.As(err, &se) {
			c.Write(socksReply(se.code, netip.AddrPort{}))
		}
		s.log.Debug("overlay socket: bad request", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	out, err := s.dial(ctx, to)
	cancel()
	if err != nil {
		code := byte(socksHostUnreach)
		if errors.Is(err, errConnRefused) {
			code = socksConnRefused
		}
		c.Write(socksReply(code, netip.AddrPort{}))
		s.log.Debug("overlay socket: connect", "to", to, "err", err)
		return
	}
	defer out.Close()
	bnd, _ := netip.ParseAddrPort(out.LocalAddr().String())
	if _, err := c.Write(socksReply(socksSucceeded, bnd)); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	if !s.track(out, true) {
		return
	}
	defer s.track(out, false)
	splice(c, out)
}

// errConnRefused marks a dial the destination refused (a RST).
var errConnRefused = errors.New("connection refused")

// splice copies both ways until both directions are done, half-closing
// where the connection allows it.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// Close stops accepting, cuts every live connection and waits for the
// handlers.
func (s *socksServer) Close() error {
	s.cancel()
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
