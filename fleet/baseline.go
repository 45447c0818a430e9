package fleet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"fmt"
	"runtime"
	"time"
)

// ECDSAVerifyRate measures raw ECDSA P-256 verifications (of a signature
// over a SHA-256 digest, as a quote's) per second of CPU time on one
// thread, verifying for about d of that thread's CPU time. On a loaded
// machine CPU time, not wall time, is what the controller's figures are
// compared against.
func ECDSAVerifyRate(d time.Duration) (float64, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), cryptoRand)
	if err != nil {
		return 0, err
	}
	digest := sha256.Sum256([]byte("tvd fleet baseline"))
	r, s, err := ecdsa.Sign(cryptoRand, key, digest[:])
	if err != nil {
		return 0, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := threadCPU()
	wall := time.Now()
	n := 0
	for {
		for range 16 {
			if !ecdsa.Verify(&key.PublicKey, digest[:], r, s) {
				return 0, fmt.Errorf("baseline signature does not verify")
			}
		}
		n += 16
		used := threadCPU() - start
		if used <= 0 && time.Since(wall) > d { // no thread CPU clock here
			used = time.Since(wall)
		}
		if used >= d {
			return float64(n) / used.Seconds(), nil
		}
	}
}
