package fleet

import (
	"syscall"
	"time"
)

// processCPU returns this process's user plus system CPU time.
func processCPU() time.Duration { return rusage(syscall.RUSAGE_SELF) }

// threadCPU returns the calling OS thread's CPU time; lock the goroutine
// to its thread around the measurement.
func threadCPU() time.Duration { return rusage(syscall.RUSAGE_THREAD) }

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
