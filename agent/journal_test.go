package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// TestJournal: what the agent began survives a restart (a reopened
// journal), an outcome is reported again, an operation begun without one
// is reported failed with its outcome unknown, and entries leave once the
// plan no longer lists them.
func TestJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)
	for _, b := range []struct{ id, kind string }{{"op-done", "ee-operation"}, {"op-running", "ee-operation"}, {"in-1", "instruction"}} {
		if err := j.begin(b.id, b.kind, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.finish(&tvdv1.EEOperationResult{Id: "op-done", Done: true, SnapshotDigest: "sha256:ab"}); err != nil {
		t.Fatal(err)
	}

	j2, err := openJournal(dir) // the agent restarted
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"op-done", "op-running", "in-1"} {
		if !j2.has(id) {
			t.Errorf("%s forgotten across a restart", id)
		}
	}
	got := map[string]*tvdv1.EEOperationResult{}
	for _, r := range j2.recovered() {
		got[r.GetId()] = r
	}
	if len(got) != 2 {
		t.Fatalf("recovered %v, want the two EE operations", got)
	}
	if r := got["op-done"]; !r.GetDone() || r.GetSnapshotDigest() != "sha256:ab" {
		t.Errorf("finished operation recovered as %v", r)
	}
	if r := got["op-running"]; r.GetDone() || !strings.Contains(r.GetError(), "outcome is unknown") {
		t.Errorf("interrupted operation recovered as %v", r)
	}

	if err := j2.prune(&tvdv1.Plan{EeOperations: []*tvdv1.EEOperationRequest{{Id: "op-running"}}}); err != nil {
		t.Fatal(err)
	}
	j3, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if j3.has("op-done") || j3.has("in-1") || !j3.has("op-running") {
		t.Errorf("after prune: %v, want only op-running", j3.entries)
	}

	// A journal that cannot be read stops the agent rather than letting
	// it forget.
	if err := os.WriteFile(filepath.Join(dir, journalFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openJournal(dir); err == nil || !strings.Contains(err.Error(), "operations.json") {
		t.Errorf("corrupt journal: %v, want an error naming the file", err)
	}
}
