package fleet

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"time"

	"github.com/tvd-dev/tvd/policy"
)

// Reference is the i-th executable a fleet node measures: its path and the
// SHA-256 the fleet policy lists for it.
func Reference(i int) (path string, digest [32]byte) {
	path = fmt.Sprintf("/usr/bin/fleet-tool-%02d", i%NumReferences)
	return path, sha256.Sum256([]byte("tvd fleet reference " + path))
}

// NumReferences is how many listed executables the fleet policy has.
const NumReferences = 32

// Policy returns the fleet's policy: one domain of TPM-assured members
// (role worker) reporting every interval, whose reference values list the
// executables the simulated nodes measure, and a /10 subnet (four million
// overlay addresses).
func Policy(domain string, interval time.Duration) []policy.File {
	var refs strings.Builder
	for i := range NumReferences {
		p, d := Reference(i)
		fmt.Fprintf(&refs, "  - name: %s\n    sha256: %x\n", p, d)
	}
	dom := fmt.Sprintf(`kind: Domain
name: %[1]s
owner: tvd-bench
description: Simulated TPM nodes of the tvd fleet benchmark.
subnet: 10.64.0.0/10
roles:
  - name: worker
    description: A simulated node's only EE.
membership:
  minAssurance: tpm
  isolation: weak
attestation:
  interval: %[2]s
  deadline: %[3]s
  integrity: measure
  referenceValues: [fleet-tools]
onViolation: [alert, quarantine]
statements:
  - id: measured
    type: platform-assurance
    text: Every executable on a fleet member is measured by its TPM and listed.
    verify: {by: attestation}
`, domain, interval, 3*interval)
	rv := "kind: ReferenceValues\nname: fleet-tools\ndescription: The executables fleet nodes run.\nentries:\n" + refs.String()
	return []policy.File{{Name: "fleet.yaml", Content: []byte(dom)}, {Name: "fleet-refs.yaml", Content: []byte(rv)}}
}
