package audit_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/tvd-dev/tvd/audit"
)

// A controller keeps the log in a directory, appends through a Batcher, and
// hands out checkpoints and proofs; an auditor verifies them offline with
// only the log's public key.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "tvd-audit-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Operator side. In production the seed comes from the controller's
	// encrypted store, or GenerateKey(crypto/rand.Reader, origin).
	skey, vkey, err := audit.KeyFromSeed("tvd.example/audit", bytes.Repeat([]byte{42}, 32))
	if err != nil {
		log.Fatal(err)
	}
	signer, _ := audit.NewSigner(skey)
	verifier, _ := audit.NewVerifier(vkey)
	st, err := audit.OpenFile(dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	l, err := audit.Open(ctx, st, audit.Config{Signer: signer, Verifier: verifier})
	if err != nil {
		log.Fatal(err)
	}
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	if _, err := l.Append(ctx,
		audit.Entry{Time: at, Kind: audit.KindEnrol, Actor: "controller", Subject: "node-1"},
		audit.Entry{Time: at, Kind: audit.KindAdmit, Actor: "controller", Subject: "spiffe://tvd.example/domain/tmart/role/web/ee/web-1", Domain: "tmart"},
	); err != nil {
		log.Fatal(err)
	}
	kept := l.Checkpoint() // the auditor stores this
	idx, err := l.Append(ctx, audit.Entry{Time: at.Add(time.Second), Kind: audit.KindAdmin,
		Actor: "spiffe://tvd.example/admin/alice", Subject: "policy tmart@2", Domain: "tmart",
		Detail: map[string]string{"action": "activate"}})
	if err != nil {
		log.Fatal(err)
	}
	latest := l.Checkpoint()
	size, _ := l.Root()
	consistency, _ := l.ConsistencyProof(ctx, 2, size)
	inclusion, _ := l.InclusionProof(ctx, idx, size)
	leaf, _ := l.Leaf(ctx, idx)

	// Auditor side: only the verifier key, the kept checkpoint and what the
	// operator sent.
	v, err := audit.NewVerifier(vkey)
	if err != nil {
		log.Fatal(err)
	}
	oldCP, newCP, err := audit.VerifyConsistency(v, kept, latest, consistency)
	if err != nil {
		log.Fatal(err)
	}
	_, e, err := audit.VerifyInclusion(v, latest, leaf, idx, inclusion)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("log grew from %d to %d entries, append-only\n", oldCP.Size, newCP.Size)
	fmt.Printf("entry %d: %s by %s: %s\n", idx, e.Kind, e.Actor, e.Subject)
	fmt.Printf("checkpoint origin line: %s\n", bytes.SplitN(latest, []byte("\n"), 2)[0])

	rep, err := audit.Fsck(ctx, st, v)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("fsck: %d entries, %d checkpoints verified\n", rep.Size, rep.Checkpoints)
	// Output:
	// log grew from 2 to 3 entries, append-only
	// entry 2: admin by spiffe://tvd.example/admin/alice: policy tmart@2
	// checkpoint origin line: tvd.example/audit
	// fsck: 3 entries, 3 checkpoints verified
}
