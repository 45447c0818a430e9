package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// createdFile lists the EEs created on this node through the controller
// (tvd ee create, a migration in), which the node configuration does not
// name. A restarted agent starts them again, as it starts the configured
// ones (from their image: an EE's writable state does not outlive the
// agent), and serves their Workload API.
const createdFile = "created-ees.json"

// loadCreated reads the created EEs; a missing file is none.
func loadCreated(dir string) ([]EEConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, createdFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("created EEs: %w", err)
	}
	var out []EEConfig
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("created EEs %s: %w", filepath.Join(dir, createdFile), err)
	}
	for i, e := range out {
		if !nameRE.MatchString(e.Name) || !nameRE.MatchString(e.Domain) || !nameRE.MatchString(e.Role) {
			return nil, fmt.Errorf("created EEs %s: entry %d: %q in %q as %q: names want lower-case letters, digits and dashes",
				filepath.Join(dir, createdFile), i, e.Name, e.Domain, e.Role)
		}
	}
	return out, nil
}

// rememberCreated records e as created here (replacing an entry of the
// same name).
func (a *Agent) rememberCreated(e EEConfig) error {
	e.WorkloadDir = ""
	return a.updateCreated(func(list []EEConfig) []EEConfig {
		return append(slices.DeleteFunc(list, func(x EEConfig) bool { return x.Name == e.Name }), e)
	})
}

// forgetCreated drops ee from the record (it left the node).
func (a *Agent) forgetCreated(ee string) error {
	return a.updateCreated(func(list []EEConfig) []EEConfig {
		return slices.DeleteFunc(list, func(x EEConfig) bool { return x.Name == ee })
	})
}

// updateCreated rewrites the record with change applied, unless change
// left it as it was.
func (a *Agent) updateCreated(change func([]EEConfig) []EEConfig) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	list, err := loadCreated(a.cfg.DataDir)
	if err != nil {
		return err
	}
	before, err := json.Marshal(list)
	if err != nil {
		return err
	}
	list = change(list)
	if after, err := json.Marshal(list); err == nil && string(after) == string(before) {
		return nil
	}
	return a.saveCreated(list)
}

func (a *Agent) saveCreated(list []EEConfig) error {
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(a.cfg.DataDir, createdFile)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("created EEs: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("created EEs: %w", err)
	}
	return nil
}
