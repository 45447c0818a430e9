// Package audit is tvd's tamper-evident audit log (the paper's "secure audit
// log"): every security-relevant act — enrolment, admission, refusal, verdict
// change, reaction, policy version, key or secret release, snapshot, admin
// action — is an [Entry] appended to an RFC 6962 Merkle tree.
//
// Entries have one canonical JSON encoding ([Entry.Encode], [DecodeEntry]);
// those bytes are the tree's leaves. After every append the [Log] signs a
// checkpoint in the C2SP tlog-checkpoint signed-note format (origin line,
// tree size, base64 root hash, Ed25519 signature lines) with
// golang.org/x/mod/sumdb/note. A [Batcher] groups concurrent appends so that
// one storage write, one fsync and one signature serve many entries.
//
// Persistence goes through the small [Storage] interface: [MemoryStorage]
// for tests and tools, [FileStorage] ([OpenFile]) for a crash-safe directory
// of append-only files, or an adapter to another store.
//
// Third parties verify without trusting the operator: [VerifyConsistency]
// checks that a checkpoint they kept is a prefix of a newer one,
// [VerifyInclusion] that an entry is in a checkpointed tree, and [Fsck]
// recomputes a whole stored log against its signed checkpoints. Each says in
// its doc comment what it does not check; in short, a single log cannot
// prove it showed everyone the same history (that needs checkpoints compared
// between parties), nor that what an entry says is true.
//
// The package is pure: no networking and no tvd store.
package audit
