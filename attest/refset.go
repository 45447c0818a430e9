package attest

import "maps"

// RefSet is a set of reference measurements: SHA-256 file digests mapped
// to the name of the reference they come from (for example
// "busybox-1.36/bin/sh"). A RefSet is immutable once built and safe to
// share between all nodes and goroutines; per-node memory never copies it.
type RefSet struct {
	m map[[32]byte]string
}

// NewRefSet builds a RefSet from digest → reference name. The map is
// copied; later changes to it do not affect the RefSet.
func NewRefSet(refs map[[32]byte]string) *RefSet {
	return &RefSet{m: maps.Clone(refs)}
}

// Lookup returns the reference name of digest, and whether it is listed.
func (r *RefSet) Lookup(digest [32]byte) (string, bool) {
	if r == nil {
		return "", false
	}
	name, ok := r.m[digest]
	return name, ok
}

// Len returns the number of reference digests.
func (r *RefSet) Len() int {
	if r == nil {
		return 0
	}
	return len(r.m)
}
