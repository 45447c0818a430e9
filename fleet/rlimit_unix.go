//go:build unix

package fleet

import (
	"fmt"
	"syscall"
)

// EnsureOpenFiles makes sure this process may hold need open files: a
// fleet run keeps one connection per simulated node (two, counting the
// controller's end, with --local). It raises the soft limit, and the hard
// one where the process may (root); otherwise it says what to raise, so a
// run is not quietly short of connections (nodes whose connections fail
// would count as the controller's deadline misses).
func EnsureOpenFiles(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("fleet: open files limit: %w", err)
	}
	if lim.Cur >= uint64(need) {
		return nil
	}
	want := lim
	want.Cur = uint64(need)
	if want.Max < want.Cur {
		want.Max = want.Cur
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("fleet: this run needs about %d open files in this process (a connection per node, both ends with --local); the limit is %d (hard %d) and cannot be raised (%v): raise it (ulimit -n %d) or run fewer --agents",
			need, lim.Cur, lim.Max, err, need)
	}
	return nil
}
