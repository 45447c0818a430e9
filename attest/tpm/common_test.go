package tpm_test

import (
	"crypto/sha256"

	"github.com/tvd-dev/tvd/attest"
)

func fileDigest(content string) [32]byte { return sha256.Sum256([]byte(content)) }

var (
	imgDigest = fileDigest("alpine-3.20 rootfs manifest")
	shDigest  = fileDigest("busybox 1.36 /bin/sh")
	appDigest = fileDigest("tmart web server v1")
	dbDigest  = fileDigest("paychecks db v2")
	badDigest = fileDigest("cryptominer")
	tlsHash   = sha256.Sum256([]byte("node tls spki der"))
)

func testRefs() *attest.RefSet {
	return attest.NewRefSet(map[[32]byte]string{
		imgDigest: "image/alpine-3.20",
		shDigest:  "busybox-1.36/bin/sh",
		appDigest: "tmart/web-1",
		dbDigest:  "paychecks/db-2",
	})
}
