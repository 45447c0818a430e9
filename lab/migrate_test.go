package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMigrateLab moves a container EE between two lab nodes with
// `tvd ee migrate`: its files come along (compared by digest inside the
// EE before and after), it keeps its domain, role and overlay address, it
// is admitted again on the new node through TPM attestation, the old node
// no longer holds it, and real packets still follow the policy. An
// auditor's credential may list the EEs but not move them.
func TestMigrateLab(t *testing.T) {
	needLab(t)
	dir := labDir(t)
	pol, err := filepath.Abs("../examples/outsourcing")
	if err != nil {
		t.Fatal(err)
	}
	scen := filepath.Join(t.TempDir(), "migrate.yaml")
	src := "kind: Scenario\nname: migrate\npolicy: " + pol + "\neeIsolation: strong\n" +
		"admins:\n  - {name: cio, role: 'auditor:red'}\n" +
		"nodes:\n" +
		"  - name: mgmt\n    ees:\n      - {name: red-gw, image: busybox, domain: red, role: gateway, owner: outsourcing-customer, run: [sleep, infinity]}\n" +
		"  - name: pc1\n    ees:\n      - {name: red-client1, image: busybox, domain: red, role: client-os, owner: outsourcing-customer, run: [sleep, infinity]}\n" +
		"  - name: pc2\n    ees:\n      - {name: yellow-mc2, image: busybox, domain: yellow, role: management-console, owner: ibm-global-services, run: [sleep, infinity]}\n"
	if err := os.WriteFile(scen, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	upAndCheck(t, scen, dir, 3)
	st, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	admin := []string{"TVD_CREDS=" + st.Creds}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// State in the EE that must move with it: written and hashed inside.
	tgt, err := st.Resolve("red-client1")
	if err != nil || !tgt.Contained {
		t.Fatalf("red-client1: %+v %v", tgt, err)
	}
	inEE := func(tgt Target, script string) string {
		t.Helper()
		cmd, err := tgt.Command(ctx, []string{"/bin/sh", "-c", script})
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in %s on %s: %s: %v\n%s", tgt.EE, tgt.Node, script, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	before := inEE(tgt, "mkdir -p /data && head -c 200000 /dev/urandom > /data/state && echo kept > /etc/kept && cat /data/state /etc/kept | sha256sum")
	members := func() map[string]map[string]any {
		var ms struct {
			Members []map[string]any `json:"members"`
		}
		if err := json.Unmarshal([]byte(mustTVD(t, admin, "members", "red", "-o", "json")), &ms); err != nil {
			t.Fatal(err)
		}
		out := map[string]map[string]any{}
		for _, m := range ms.Members {
			out[m["member"].(map[string]any)["ee"].(string)] = m
		}
		return out
	}
	m0 := members()["red-client1"]
	if m0 == nil || m0["node"] != "pc1" {
		t.Fatalf("red-client1 before: %v", m0)
	}

	// ls shows the agents' view; the auditor may list but not migrate.
	ls := mustTVD(t, admin, "ee", "ls")
	for _, want := range []string{"red-client1", "pc1", "client-os", "running", "strong", "admitted"} {
		if !strings.Contains(ls, want) {
			t.Errorf("tvd ee ls lacks %q:\n%s", want, ls)
		}
	}
	var cio string
	for _, a := range st.Admins {
		if a.Name == "cio" {
			cio = a.Dir
		}
	}
	auditor := []string{"TVD_CREDS=" + cio}
	if out := mustTVD(t, auditor, "ee", "ls"); !strings.Contains(out, "red-client1") || strings.Contains(out, "yellow-mc2") {
		t.Errorf("auditor:red's tvd ee ls:\n%s", out)
	}
	if _, err := runTVD(t, auditor, "ee", "migrate", "red-client1", "--to", "pc2"); err == nil || !strings.Contains(err.Error(), "permission_denied") {
		t.Errorf("auditor migrate: %v; want permission denied", err)
	}

	// The migration.
	var status struct {
		AuditSize string `json:"auditSize"`
	}
	if err := json.Unmarshal([]byte(mustTVD(t, admin, "status", "-o", "json")), &status); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out := mustTVD(t, admin, "ee", "migrate", "red-client1", "--to", "pc2", "--reason", "test", "--wait", "90s")
	t.Logf("tvd ee migrate: %v: %s", time.Since(start).Round(10*time.Millisecond), strings.TrimSpace(out))
	if !strings.Contains(out, "migrated red-client1 from pc1 to pc2") {
		t.Errorf("migrate output: %s", out)
	}
	// Admitted on pc2, then verified there by a TPM quote that covers
	// the EE's image and execs, measured into pc2's TPM.
	migrated := time.Now()
	var m1 map[string]any
	deadline := time.Now().Add(30 * time.Second)
	for {
		m1 = members()["red-client1"]
		v, _ := m1["verdict"].(map[string]any)
		at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(v["verifiedAt"]))
		if m1 != nil && m1["node"] == "pc2" && v["status"] == "STATUS_VERIFIED" && strings.Contains(fmt.Sprint(v["reason"]), "TPM quote") && at.After(migrated) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("red-client1 is not a verified member on pc2: %v", m1)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if m1["overlayAddress"] != m0["overlayAddress"] || m1["member"].(map[string]any)["role"] != "client-os" {
		t.Errorf("membership changed: before %v, after %v", m0, m1)
	}
	nodes := mustTVD(t, admin, "nodes", "-o", "json")
	var ns struct {
		Nodes []struct {
			Name      string
			Assurance string
			Ees       []string
		}
	}
	if err := json.Unmarshal([]byte(nodes), &ns); err != nil {
		t.Fatal(err)
	}
	for _, n := range ns.Nodes {
		has := strings.Contains(strings.Join(n.Ees, ","), "red-client1")
		if (n.Name == "pc2") != has || n.Assurance != "ASSURANCE_TPM" {
			t.Errorf("node %s (%s) members %v", n.Name, n.Assurance, n.Ees)
		}
	}
	t.Logf("tvd ee ls after the migration:\n%s", mustTVD(t, admin, "ee", "ls"))
	ls = mustTVD(t, admin, "ee", "ls", "--node", "pc1")
	if strings.Contains(ls, "red-client1") {
		t.Errorf("pc1 still reports red-client1:\n%s", ls)
	}

	// Its files, inside the EE on its new node.
	var pc2 NodeState
	for i, n := range st.Nodes {
		if n.Name == "pc2" {
			pc2 = n
		}
		if n.Name == "pc1" {
			st.Nodes[i].EEs = nil
		}
	}
	pid, err := eePID(eeNetNS(pc2, "red-client1"))
	if err != nil {
		t.Fatal(err)
	}
	after := inEE(Target{Node: "pc2", Netns: pc2.Netns, EE: "red-client1", Contained: true, pid: pid}, "cat /data/state /etc/kept | sha256sum")
	if after != before {
		t.Errorf("the EE's files changed in the migration: digest %s before, %s after", before, after)
	}

	// Real packets still follow the policy with the EE on pc2.
	for i := range st.Nodes {
		if st.Nodes[i].Name == "pc2" {
			st.Nodes[i].EEs = append(st.Nodes[i].EEs, EEState{Name: "red-client1", Domain: "red", Role: "client-os", Image: "busybox"})
		}
	}
	var failed []Result
	deadline = time.Now().Add(30 * time.Second)
	for {
		results, err := Check(ctx, st, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		failed = failed[:0]
		for _, r := range results {
			if !r.Pass() {
				failed = append(failed, r)
			}
		}
		if len(failed) == 0 || time.Now().After(deadline) {
			t.Logf("lab check after the migration: %d pairs, %d failed", len(results), len(failed))
			break
		}
		time.Sleep(time.Second)
	}
	for _, r := range failed {
		t.Errorf("after the migration: %+v", r)
	}
	// The migration is in the audit log, with the admin as the actor.
	audit := mustTVD(t, admin, "audit", "tail", "--from", status.AuditSize, "--limit", "1000")
	var started, archived, ended bool
	for _, l := range strings.Split(audit, "\n") {
		byAdmin := strings.Contains(l, "/admin/admin/role/admin")
		started = started || (byAdmin && strings.Contains(l, `"action":"ee-migrate"`) && strings.Contains(l, `"to":"pc2"`))
		archived = archived || strings.Contains(l, `"archive":"sha256:`) && strings.Contains(l, "ee-migrate-archive")
		ended = ended || (byAdmin && strings.Contains(l, "ee-migrate-result") && strings.Contains(l, `"carried_out":"true"`))
	}
	if !started || !archived || !ended {
		t.Errorf("audit log: migration asked %v, archived %v, ended %v:\n%s", started, archived, ended, audit)
	}
}
