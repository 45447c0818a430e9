package dataplane

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReadSOCKSRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want string // address, or the error's text
		code byte   // reply code of a refusal (0: a read error)
	}{
		{"ipv4", []byte{5, 1, 0, 1, 10, 77, 0, 2, 0x1b, 0x9e}, "10.77.0.2:7070", 0},
		{"ipv6", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("fd00::2").AsSlice()...), 0, 80), "[fd00::2]:80", 0},
		{"v4-mapped ipv6 is ipv4", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("::ffff:10.0.0.1").AsSlice()...), 0, 80), "10.0.0.1:80", 0},
		{"bad version", []byte{4, 1, 0, 1, 10, 0, 0, 1, 0, 80}, "expected version 5, got 4", socksGeneralFail},
		{"reserved", []byte{5, 1, 9, 1, 10, 0, 0, 1, 0, 80}, "expected reserved byte 0, got 9", socksGeneralFail},
		{"bind", []byte{5, 2, 0, 1, 10, 0, 0, 1, 0, 80}, "expected command 1 (CONNECT), got 2", socksCmdNotSupp},
		{"udp associate", []byte{5, 3, 0, 1, 10, 0, 0, 1, 0, 80}, "expected command 1 (CONNECT), got 3", socksCmdNotSupp},
		{"host name", []byte{5, 1, 0, 3, 4, 'h', 'o', 's', 't', 0, 80}, "expected an IP address, got a host name", socksAtypNotSupp},
		{"address type", []byte{5, 1, 0, 7}, "expected address type 1 (IPv4) or 4 (IPv6), got 7", socksAtypNotSupp},
		{"port 0", []byte{5, 1, 0, 1, 10, 0, 0, 1, 0, 0}, "expected a unicast address and a port", socksHostUnreach},
		{"unspecified", []byte{5, 1, 0, 1, 0, 0, 0, 0, 0, 80}, "expected a unicast address and a port", socksHostUnreach},
		{"multicast", []byte{5, 1, 0, 1, 224, 0, 0, 1, 0, 80}, "expected a unicast address and a port", socksHostUnreach},
		{"short header", []byte{5, 1}, "socks request: unexpected EOF", 0},
		{"short address", []byte{5, 1, 0, 1, 10, 0}, "socks request: address: unexpected EOF", 0},
		{"short port", []byte{5, 1, 0, 1, 10, 0, 0, 1, 0}, "socks request: port: unexpected EOF", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSOCKSRequest(bytes.NewReader(tc.in))
			if err == nil {
				if got.String() != tc.want {
					t.Fatalf("got %s, want %s", got, tc.want)
				}
				return
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
			var se *socksError
			if errors.As(err, &se) != (tc.code != 0) || se != nil && se.code != tc.code {
				t.Fatalf("error %#v, want reply code %d", err, tc.code)
			}
		})
	}
}

func TestReadSOCKSGreeting(t *testing.T) {
	for _, tc := range []struct {
		in     []byte
		ok     bool
		errSub string
	}{
		{[]byte{5, 1, 0}, true, ""},
		{[]byte{5, 2, 2, 0}, true, ""},
		{[]byte{5, 1, 2}, false, ""},
		{[]byte{4, 1, 0}, false, "expected version 5"},
		{[]byte{5, 0}, false, "expected at least one method"},
		{[]byte{5, 3, 0}, false, "methods: unexpected EOF"},
	} {
		ok, err := readSOCKSGreeting(bytes.NewReader(tc.in))
		if ok != tc.ok || (err == nil) != (tc.errSub == "") || err != nil && !strings.Contains(err.Error(), tc.errSub) {
			t.Errorf("%v: ok=%v err=%v, want ok=%v error containing %q", tc.in, ok, err, tc.ok, tc.errSub)
		}
	}
}

// TestSOCKSServer drives the server over a real unix socket: a CONNECT is
// dialled and spliced, a refused dial and a host name get their reply
// codes, and Close cuts a live connection.
func TestSOCKSServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	good := netip.MustParseAddrPort(echo.Addr().String())
	s := newSOCKSServer(ln, time.Second, func(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
		if to != good {
			return nil, errConnRefused
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", to.String())
	}, slog.New(slog.DiscardHandler))
	defer s.Close()

	exchange := func(req []byte) (net.Conn, []byte) {
		t.Helper()
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(append([]byte{5, 1, 0}, req...)); err != nil {
			t.Fatal(err)
		}
		hello := make([]byte, 2)
		if _, err := io.ReadFull(c, hello); err != nil || hello[0] != 5 || hello[1] != 0 {
			t.Fatalf("greeting reply %v, %v", hello, err)
		}
		rep := make([]byte, 10)
		if _, err := io.ReadFull(c, rep); err != nil {
			t.Fatalf("reply: %v", err)
		}
		return c, rep
	}
	a4 := good.Addr().As4()
	c, rep := exchange(append(append([]byte{5, 1, 0, 1}, a4[:]...), byte(good.Port()>>8), byte(good.Port())))
	if rep[1] != socksSucceeded {
		t.Fatalf("CONNECT to %s: reply code %d", good, rep[1])
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo: %q, %v", got, err)
	}

	r, rep := exchange([]byte{5, 1, 0, 1, 10, 0, 0, 9, 0, 80})
	r.Close()
	if rep[1] != socksConnRefused {
		t.Errorf("refused dial: reply code %d, want %d", rep[1], socksConnRefused)
	}
	h, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.SetDeadline(time.Now().Add(5 * time.Second))
	h.Write([]byte{5, 1, 0, 5, 1, 0, 3, 1, 'x', 0, 80})
	out := make([]byte, 4)
	if _, err := io.ReadFull(h, out); err != nil || out[3] != socksAtypNotSupp {
		t.Errorf("host name: reply %v, %v; want code %d", out, err, socksAtypNotSupp)
	}

	s.Close()
	if _, err := c.Read(got); err == nil {
		t.Error("a live connection survived Close")
	}
}

// FuzzSOCKSRequest: the parser of what an EE sends on its overlay socket
// never panics, accepts only unicast addresses with a port, and refuses
// with a reply code or a read error.
func FuzzSOCKSRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 10, 77, 0, 2, 0x1b, 0x9e})
	f.Add(append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("fd00::2").AsSlice()...), 0, 80))
	f.Add([]byte{5, 1, 0, 3, 4, 'h', 'o', 's', 't', 0, 80})
	f.Add([]byte{5, 2, 0, 1, 10, 0, 0, 1, 0, 80})
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readSOCKSRequest(bytes.NewReader(in))
		if err != nil {
			var se *socksError
			if errors.As(err, &se) && se.code == socksSucceeded {
				t.Fatalf("refusal with the success code: %v", err)
			}
			return
		}
		if !got.IsValid() || got.Port() == 0 || got.Addr().IsUnspecified() || got.Addr().IsMulticast() || got.Addr().Is4In6() {
			t.Fatalf("accepted %s", got)
		}
		rep := socksReply(socksSucceeded, got)
		back, err := readSOCKSRequest(bytes.NewReader(append([]byte{5, 1, 0}, rep[3:]...)))
		if err != nil || back != got {
			t.Fatalf("reply round trip: %s -> %v, %v", got, back, err)
		}
	})
}
