package channel

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetNS runs fn on a fresh OS thread that has entered the network
// namespace ns (or the caller's process namespace when ns is not open). The
// thread stays locked and is discarded when fn returns, so a namespace switch
// can never leak into other goroutines. Sockets and devices created by fn
// belong to ns for their whole life.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the Go runtime terminates a thread whose
		// goroutine exits while locked, which is what we want.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
