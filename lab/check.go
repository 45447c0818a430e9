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
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/vishvananda/netns"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// CheckPort is the TCP port `lab check` listens on inside every EE.
const CheckPort = 7070

// Result is one pair of EEs as `lab check` observed it.
type Result struct {
	Pair
	Observed bool   `json:"observed"` // a TCP connection from From reached To
	Detail   string `json:"detail,omitempty"`
}

// Pass reports whether the observation matches the policy.
func (r Result) Pass() bool { return r.Observed == r.Allow }

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

// Check sends a real TCP connection for every ordered pair of EEs of the
// lab, straight from the source EE's network namespace to the destination
// EE's overlay address, and compares what passed with what the policy's
// matrix says (a packet sent straight passes exactly when the cell allows
// it; flows that must cross gateways are expected to be dropped when sent
// straight). It needs the EEs running as containers with the data plane.
//
// Offenders are EEs cut off by a reaction: every flow from or to them is
// expected to be dropped.
func Check(ctx context.Context, st *State, timeout time.Duration, offenders ...string) ([]Result, error) {
	comp, err := LoadPolicy(st)
	if err != nil {
		return nil, err
	}
	pairs, err := Expect(comp, st)
	if err != nil {
		return nil, err
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
		var l net.Listener
		if err := inNetNS(p, func() error {
			var err error
			l, err = net.Listen("tcp", netip.AddrPortFrom(a, CheckPort).String())
			return err
		}); err != nil {
			return nil, fmt.Errorf("listen in %s: %w", ee, err)
		}
		listeners = append(listeners, l)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	results := make([]Result, len(pairs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	cut := map[string]bool{}
	for _, o := range offenders {
		cut[o] = true
	}
	for i, p := range pairs {
		if cut[p.From] || cut[p.To] {
			p.Allow, p.Rule = false, p.Rule+" (offender cut off)"
		}
		results[i] = Result{Pair: p}
		dst, ok := addr[p.To]
		if !ok {
			results[i].Detail = "destination is not a member"
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := inNetNS(where[p.From], func() error {
				d := net.Dialer{Timeout: timeout}
				c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(dst, CheckPort).String())
				if err == nil {
					c.Close()
				}
				return err
			})
			if err == nil {
				results[i].Observed = true
			} else {
				results[i].Detail = err.Error()
			}
		}()
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
	fmt.Fprintln(tw, "FROM\tTO\tRULE\tEXPECTED\tOBSERVED\t")
	failed := 0
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
			failed++
		}
		fmt.Fprintf(tw, "%s (%s)\t%s (%s)\t%s\t%s\t%s\t%s\n", r.From, r.FromClass, r.To, r.ToClass, r.Rule, word(r.Allow), word(r.Observed), mark)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d passed, %d failed\n", len(results)-failed, failed)
	return failed
}
