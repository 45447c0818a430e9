package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// routeProtocol marks the routes this package installs (an unassigned
// rtnetlink protocol number; package channel uses 125).
const routeProtocol = netlink.RouteProtocol(0x7e) // 126

// inNS runs fn on a locked OS thread that has entered ns. If the thread
// cannot return to its original namespace it is left locked, so the Go
// runtime retires it with the goroutine.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to original network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// sysctl sets /proc/sys/<key> inside ns and returns the previous value.
func sysctl(ns netns.NsHandle, key, val string) (prev string, err error) {
	err = inNS(ns, func() error {
		p := "/proc/sys/" + key
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		prev = strings.TrimSpace(string(b))
		if prev == val {
			return nil
		}
		return os.WriteFile(p, []byte(val), 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("sysctl %s=%s: %w", key, val, err)
	}
	return prev, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func nlAddr(a netip.Addr) *netlink.Addr {
	addr := &netlink.Addr{IPNet: ipNet(hostPrefix(a))}
	if a.Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}

// attachment is a local member's veth pair.
type attachment struct {
	spec  memberSpec
	name  string // node side
	index int    // node-side ifindex
	path  string // the EE's namespace
}

// attach creates the member's veth pair between the node namespace (handle
// nl) and the EE namespace at eePath, and programs addresses and routes on
// both ends. A stale link of the same name is replaced. On failure nothing
// is left behind.
func attach(nl *netlink.Handle, nodeNS netns.NsHandle, ms memberSpec, eePath string) (*attachment, error) {
	name := VethName(ms.EE)
	eeNS, err := netns.GetFromPath(eePath)
	if err != nil {
		return nil, fmt.Errorf("open EE network namespace %s: %w", eePath, err)
	}
	defer eeNS.Close()
	if old, err := nl.LinkByName(name); err == nil {
		if err := nl.LinkDel(old); err != nil {
			return nil, fmt.Errorf("delete stale link %s: %w", name, err)
		}
	}
	eeNL, err := netlink.NewHandleAt(eeNS)
	if err != nil {
		return nil, fmt.Errorf("netlink in EE namespace: %w", err)
	}
	defer eeNL.Close()
	if old, err := eeNL.LinkByName(EEInterface); err == nil {
		// A leftover of an earlier run whose node side is gone elsewhere.
		if err := eeNL.LinkDel(old); err != nil {
			return nil, fmt.Errorf("delete stale EE link %s: %w", EEInterface, err)
		}
	}
	la := netlink.NewLinkAttrs()
	la.Name = name
	veth := &netlink.Veth{LinkAttrs: la, PeerName: EEInterface, PeerNamespace: netlink.NsFd(int(eeNS))}
	if err := nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s: %w", name, err)
	}
	ok := false
	defer func() {
		if !ok {
			if l, err := nl.LinkByName(name); err == nil {
				nl.LinkDel(l)
			}
		}
	}()
	link, err := nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find veth %s: %w", name, err)
	}
	at := &attachment{spec: ms, name: name, index: link.Attrs().Index, path: eePath}
	if ms.Addr.Is4() {
		// The node side owns the domain's node address, which a remote EE
		// never uses: no reverse-path check is needed (flow/nft checks that
		// each EE sends from its own address, gateways aside).
		if _, err := sysctl(nodeNS, "net/ipv4/conf/"+name+"/rp_filter", "0"); err != nil {
			return nil, err
		}
	}
	if err := nl.AddrReplace(link, nlAddr(ms.Gateway)); err != nil {
		return nil, fmt.Errorf("assign %s to %s: %w", ms.Gateway, name, err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	r := &netlink.Route{LinkIndex: at.index, Dst: ipNet(hostPrefix(ms.Addr)), Scope: netlink.SCOPE_LINK, Protocol: routeProtocol}
	if err := nl.RouteReplace(r); err != nil {
		return nil, fmt.Errorf("route %s via %s: %w", ms.Addr, name, err)
	}
	// The EE side.
	eeLink, err := eeNL.LinkByName(EEInterface)
	if err != nil {
		return nil, fmt.Errorf("find %s in the EE: %w", EEInterface, err)
	}
	if err := eeNL.AddrReplace(eeLink, nlAddr(ms.Addr)); err != nil {
		return nil, fmt.Errorf("assign %s in the EE: %w", ms.Addr, err)
	}
	if err := eeNL.LinkSetUp(eeLink); err != nil {
		return nil, fmt.Errorf("set %s up in the EE: %w", EEInterface, err)
	}
	if lo, err := eeNL.LinkByName("lo"); err == nil {
		eeNL.LinkSetUp(lo)
	}
	def := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if ms.Addr.Is6() {
		def = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	dr := &netlink.Route{LinkIndex: eeLink.Attrs().Index, Dst: ipNet(def), Gw: ms.Gateway.AsSlice(),
		Flags: int(netlink.FLAG_ONLINK), Protocol: routeProtocol}
	if err := eeNL.RouteReplace(dr); err != nil {
		return nil, fmt.Errorf("default route via %s in the EE: %w", ms.Gateway, err)
	}
	ok = true
	return at, nil
}

// detach deletes the member's veth pair (both ends, with their addresses
// and routes). A link that is already gone is not an error.
func detach(nl *netlink.Handle, at *attachment) error {
	l, err := nl.LinkByIndex(at.index)
	if err != nil || l.Attrs().Name != at.name {
		l, err = nl.LinkByName(at.name)
	}
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return fmt.Errorf("find veth %s: %w", at.name, err)
	}
	if err := nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete veth %s: %w", at.name, err)
	}
	return nil
}
