package fleet

import (
	"math"
	"runtime"
	"strings"
)

// Heap is the heap in use split by who allocated it, from the runtime's
// sampled heap profile (so estimates, scaled as pprof scales them).
type Heap struct {
	Controller uint64 // allocated under the controller: its handlers, store, server connections
	Fleet      uint64 // allocated under the simulated agents and their client connections
	Other      uint64 // neither (runtime, package init, the profiler)
}

// Markers that attribute an allocation by the frames of its stack, from
// the leaf up: the first frame that matches decides.
var (
	controllerFrames = []string{
		"/tvd/controller.", "/tvd/store", "/tvd/audit.", "go.etcd.io/bbolt.",
		"http2.(*serverConn)", "http2.(*Server)", "net/http.(*conn)", "net/http.(*Server)", "net/http.(*http2serverConn)",
	}
	fleetFrames = []string{
		"/tvd/fleet.", "/tvd/api/client.", "http2.(*Transport)", "http2.(*ClientConn)", "http2.(*clientStream)", "http2.(*clientConnReadLoop)",
	}
)

// HeapBySide runs a garbage collection and attributes the live heap. Set
// runtime.MemProfileRate low (e.g. 4096) before the allocations of
// interest for a useful estimate.
func HeapBySide() Heap {
	runtime.GC()
	runtime.GC()
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+64)
		var ok bool
		if n, ok = runtime.MemProfile(recs, false); ok {
			recs = recs[:n]
			break
		}
	}
	rate := float64(runtime.MemProfileRate)
	var h Heap
	for i := range recs {
		r := &recs[i]
		count, bytes := r.InUseObjects(), r.InUseBytes()
		if count <= 0 || bytes <= 0 {
			continue
		}
		// Undo the sampling bias as pprof does (scaleHeapSample).
		v := float64(bytes)
		if rate > 1 {
			avg := float64(bytes) / float64(count)
			v /= 1 - math.Exp(-avg/rate)
		}
		switch side(r.Stack()) {
		case "controller":
			h.Controller += uint64(v)
		case "fleet":
			h.Fleet += uint64(v)
		default:
			h.Other += uint64(v)
		}
	}
	return h
}

func side(stack []uintptr) string {
	frames := runtime.CallersFrames(stack)
	for {
		f, more := frames.Next()
		for _, m := range controllerFrames {
			if strings.Contains(f.Function, m) {
				return "controller"
			}
		}
		for _, m := range fleetFrames {
			if strings.Contains(f.Function, m) {
				return "fleet"
			}
		}
		if !more {
			return ""
		}
	}
}
