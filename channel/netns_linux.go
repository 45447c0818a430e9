package channel

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetNS runs fn on an OS thread that has entered the network namespace ns
// (or directly, in the caller's namespace, when ns is not open). Sockets and
// devices created by fn belong to ns for their whole life. The thread is
// locked to a fresh goroutine for the duration and returned to the scheduler
// only after switching back to its original namespace; if that switch fails
// the goroutine exits still locked, so the Go runtime retires the thread and
// the namespace can never leak into other goroutines.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
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
			if rerr := netns.Set(orig); rerr == nil {
				runtime.UnlockOSThread()
			}
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if rerr := netns.Set(orig); rerr != nil {
			// Stay locked: the thread is discarded when this goroutine ends.
			errc <- errors.Join(ferr, fmt.Errorf("return to original network namespace: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
