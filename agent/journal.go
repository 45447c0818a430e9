package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// journalFile is the operation journal in the agent's data directory.
const journalFile = "operations.json"

// journal records the instructions (reactions) and EE operations the
// agent has begun, before it begins them, and the outcome of each EE
// operation once known. A restarted agent therefore carries none out twice
// (a rollback or a migration run again would undo work done since): one it
// finished is reported again from the journal, and one it was in the
// middle of is reported failed, its outcome unknown. Entries leave the
// journal once the plan no longer lists them (the controller has the
// outcome).
type journal struct {
	path    string
	entries map[string]*journalEntry
}

type journalEntry struct {
	Kind    string          `json:"kind"` // "instruction" or "ee-operation"
	Started time.Time       `json:"started"`
	Result  json.RawMessage `json:"result,omitempty"` // an EE operation's outcome (protojson)
}

// openJournal loads the journal in dir; a missing file is an empty
// journal. A journal that cannot be read is an error: the agent must not
// forget what it began.
func openJournal(dir string) (*journal, error) {
	j := &journal{path: filepath.Join(dir, journalFile), entries: map[string]*journalEntry{}}
	b, err := os.ReadFile(j.path)
	if errors.Is(err, os.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return nil, fmt.Errorf("operation journal: %w", err)
	}
	if err := json.Unmarshal(b, &j.entries); err != nil {
		return nil, fmt.Errorf("operation journal %s: %w (move it aside to start afresh; the operations it lists may then run again)", j.path, err)
	}
	if j.entries == nil {
		j.entries = map[string]*journalEntry{}
	}
	return j, nil
}

func (j *journal) has(id string) bool { _, ok := j.entries[id]; return ok }

// begin records that the operation id starts now, durably, before it
// starts.
func (j *journal) begin(id, kind string, now time.Time) error {
	j.entries[id] = &journalEntry{Kind: kind, Started: now.UTC()}
	return j.save()
}

// finish records an EE operation's outcome.
func (j *journal) finish(res *tvdv1.EEOperationResult) error {
	e := j.entries[res.GetId()]
	if e == nil {
		e = &journalEntry{Kind: "ee-operation"}
		j.entries[res.GetId()] = e
	}
	b, err := protojson.Marshal(res)
	if err != nil {
		return err
	}
	e.Result = b
	return j.save()
}

// recovered returns the outcomes to report again after a restart: EE
// operations with a recorded outcome, and those begun without one
// (failed: the agent stopped while they ran).
func (j *journal) recovered() []*tvdv1.EEOperationResult {
	var out []*tvdv1.EEOperationResult
	for id, e := range j.entries {
		if e.Kind != "ee-operation" {
			continue
		}
		res := &tvdv1.EEOperationResult{Id: id}
		if len(e.Result) == 0 || protojson.Unmarshal(e.Result, res) != nil {
			res = &tvdv1.EEOperationResult{Id: id, Error: "the agent stopped while the operation ran (begun " + e.Started.Format(time.RFC3339) +
				"); its outcome is unknown: check the EE before retrying"}
		}
		out = append(out, res)
	}
	return out
}

// prune drops the entries the plan no longer lists.
func (j *journal) prune(p *tvdv1.Plan) error {
	live := map[string]bool{}
	for _, in := range p.GetInstructions() {
		live[in.GetId()] = true
	}
	for _, op := range p.GetEeOperations() {
		live[op.GetId()] = true
	}
	changed := false
	for id := range j.entries {
		if !live[id] {
			delete(j.entries, id)
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return j.save()
}

// save writes the journal atomically and durably.
func (j *journal) save() error {
	b, err := json.MarshalIndent(j.entries, "", "  ")
	if err != nil {
		return err
	}
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("operation journal: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("operation journal: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("operation journal: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("operation journal: %w", err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		return fmt.Errorf("operation journal: %w", err)
	}
	return nil
}
