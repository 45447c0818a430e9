package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/vishvananda/netns"

	"github.com/tvd-dev/tvd/agent/dataplane"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// CheckPort is the TCP port `lab check` listens on inside every EE.
const CheckPort = 7070

// Result is one pair of EEs as `lab check` observed it, with two probes:
// a connection sent straight (marked to skip the gateway routes) and one
// routed as the node routes it (through the gateways where the matrix
// sends the flow through them).
type Result struct {
	Pair
	Observed bool `json:"observed"` // the straight connection reached To
	// Routed is whether a routed connection should pass: straight, or
	// through the gateways of Via.
	Routed         bool   `json:"routed"`
	ObservedRouted bool   `json:"observedRouted"` // the routed connection reached To
	Detail         string `json:"detail,omitempty"`
	RoutedDetail   string `json:"routedDetail,omitempty"`
}

// Pass reports whether both observations match the policy.
func (r Result) Pass() bool { return r.Observed == r.Allow && r.ObservedRouted == r.Routed }

// Probes is the number of probes of the result that match the policy, and
// of those that do not.
func (r Result) Probes() (passed, failed int) {
	for _, ok := range []bool{r.Observed == r.Allow, r.ObservedRouted == r.Routed} {
		if ok {
			passed++
		} else {
			failed++
		}
	}
	return passed, failed
}

// eeNetNS is where a node's agent keeps an EE's network namespace (the
// linux EE driver bind-mounts it there).
func eeNetNS(n NodeState, ee string) string {
	return filepath.Join(n.AgentData, "ee", "netns", ee)
}

// inNetNS runs fn on a thread inside the network namespace at path. Sockets
// fn creates stay in that namespace.
func inNetNS(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter %s: %w", path, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace: never give it back.
		return errors.Join(ferr, fmt.Errorf("leave %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Check sends two real TCP connections for every ordered pair of EEs of
// the lab, from the source EE's network namespace to the destination EE's
// overlay address, and compares what passed with what the policy's matrix
// says. The first is sent straight (IP TOS dataplane.StraightTOS, which
// skips the gateway routes): it passes exactly when the cell allows a
// packet straight. The second is routed as the nodes route it: through the
// gateways where the matrix sends the flow through them, so it passes
// exactly when the cell allows the flow straight or through gateways
// (flow.Matrix.Via). It needs the EEs running as containers with the data
// plane.
//
// Offenders are EEs cut off by a reaction: every flow from or to them is
// expected to be dropped.
func Check(ctx context.Context, st *State, timeout time.Duration, offenders ...string) ([]Result, error) {
	return check(ctx, st, timeout, "", offenders)
}

// CheckInvolving is Check restricted to the pairs from or to ee, with ee
// taken as an offender (every flow from or to it is expected dropped):
// the demo's quick probe of whether a reaction has cut ee off.
func CheckInvolving(ctx context.Context, st *State, timeout time.Duration, ee string) ([]Result, error) {
	return check(ctx, st, timeout, ee, []string{ee})
}

func check(ctx context.Context, st *State, timeout time.Duration, only string, offenders []string) ([]Result, error) {
	comp, err := LoadPolicy(st)
	if err != nil {
		return nil, err
	}
	pairs, err := Expect(comp, st)
	if err != nil {
		return nil, err
	}
	if only != "" {
		pairs = slices.DeleteFunc(pairs, func(p Pair) bool { return p.From != only && p.To != only })
	}
	cl, err := Dial(st)
	if err != nil {
		return nil, err
	}
	resp, err := cl.Admin.ListMembers(ctx, connect.NewRequest(&tvdv1.ListMembersRequest{}))
	if err != nil {
		return nil, fmt.Errorf("members: %w", err)
	}
	addr := map[string]netip.Addr{}
	for _, m := range resp.Msg.GetMembers() {
		if a, err := netip.ParseAddr(m.GetOverlayAddress()); err == nil {
			addr[m.GetMember().GetEe()] = a
		}
	}
	where := map[string]string{} // EE -> its network namespace
	for _, n := range st.Nodes {
		for _, e := range n.EEs {
			p := eeNetNS(n, e.Name)
			if _, err := os.Stat(p); err != nil {
				return nil, fmt.Errorf("EE %s has no network namespace at %s: lab check needs the EEs running as containers (eeIsolation: strong)", e.Name, p)
			}
			where[e.Name] = p
		}
	}
	// A listener inside every EE, on its overlay address.
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for ee, p := range where {
		a, ok := addr[ee]
		if !ok {
			continue
		}
		l, err := listenIn(p, a)
		if err != nil {
			return nil, fmt.Errorf("listen in %s: %w", ee, err)
		}
		listeners = append(listeners, l)
	}
	// A flow through gateways needs a member of every gateway class of
	// its path (not cut off).
	classUp := map[string]bool{}
	for _, n := range st.Nodes {
		for _, e := range n.EEs {
			if _, ok := addr[e.Name]; ok && !slices.Contains(offenders, e.Name) {
				classUp[e.Domain+"/"+e.Role] = true
			}
		}
	}
	gatewaysUp := func(via []string) bool {
		for _, c := range via {
			if !classUp[c] {
				return false
			}
		}
		return true
	}
	results := make([]Result, len(pairs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	cut := map[string]bool{}
	for _, o := range offenders {
		cut[o] = true
	}
	for i, p := range pairs {
		if cut[p.From] || cut[p.To] {
			p.Allow, p.Via, p.Rule = false, nil, p.Rule+" (offender cut off)"
		}
		results[i] = Result{Pair: p, Routed: p.Allow || len(p.Via) > 0 && gatewaysUp(p.Via)}
		dst, ok := addr[p.To]
		if !ok {
			results[i].Detail = "destination is not a member"
			continue
		}
		for _, straight := range []bool{true, false} {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				err := dialFrom(ctx, where[p.From], dst, timeout, straight)
				switch {
				case straight && err == nil:
					results[i].Observed = true
				case straight:
					results[i].Detail = err.Error()
				case err == nil:
					results[i].ObservedRouted = true
				default:
					results[i].RoutedDetail = err.Error()
				}
			}()
		}
	}
	wg.Wait()
	return results, ctx.Err()
}

// WriteCheck prints the table of expected against observed and the line
// "N passed, M failed"; it returns M.
func WriteCheck(w io.Writer, results []Result) int {
	sort.SliceStable(results, func(i, j int) bool {
		if results[i].Pass() != results[j].Pass() {
			return !results[i].Pass()
		}
		return false
	})
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tRULE\tSTRAIGHT\tOBSERVED\tROUTED\tOBSERVED\t")
	passed, failed := 0, 0
	word := func(b bool) string {
		if b {
			return "pass"
		}
		return "drop"
	}
	for _, r := range results {
		mark := "ok"
		if !r.Pass() {
			mark = "MISMATCH"
		}
		p, f := r.Probes()
		passed += p
		failed += f
		routed := word(r.Routed)
		if len(r.Via) > 0 && !r.Allow {
			routed += " via " + strings.Join(r.Via, ", ")
		}
		fmt.Fprintf(tw, "%s (%s)\t%s (%s)\t%s\t%s\t%s\t%s\t%s\t%s\n", r.From, r.FromClass, r.To, r.ToClass, r.Rule,
			word(r.Allow), word(r.Observed), routed, word(r.ObservedRouted), mark)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d passed, %d failed (two probes per pair: straight, and routed through the gateways)\n", passed, failed)
	return failed
}

// listenIn listens on CheckPort of address a inside the network namespace
// at path, accepting and closing every connection until it is closed.
func listenIn(path string, a netip.Addr) (net.Listener, error) {
	var l net.Listener
	if err := inNetNS(path, func() error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(a, CheckPort).String())
		return err
	}); err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l, nil
}

// dialFrom opens (and closes) a TCP connection to CheckPort of dst from
// inside the network namespace at path; straight marks it to skip the
// gateway routes.
func dialFrom(ctx context.Context, path string, dst netip.Addr, timeout time.Duration, straight bool) error {
	return inNetNS(path, func() error {
		d := net.Dialer{Timeout: timeout}
		if straight {
			d.Control = straightTOS
		}
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(dst, CheckPort).String())
		if err == nil {
			c.Close()
		}
		return err
	})
}

// straightTOS marks a probe's socket with dataplane.StraightTOS, so the
// nodes route it straight to its destination, skipping the gateway routes.
func straightTOS(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_TCLASS, dataplane.StraightTOS)
			return
		}
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TOS, dataplane.StraightTOS)
	})
	if err != nil {
		return err
	}
	return serr
}
