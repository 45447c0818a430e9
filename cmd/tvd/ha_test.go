package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/tvdtest"
)

// startEtcd runs a one-member etcd cluster for the test (Debian's
// etcd-server, which make test installs) and returns its client URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		for _, p := range []string{"/usr/bin/etcd", "/usr/local/bin/etcd"} {
			if _, err := os.Stat(p); err == nil {
				bin = p
			}
		}
	}
	if bin == "" {
		t.Skip("SKIP: no etcd binary (apt-get install etcd-server; make test installs it)")
	}
	client, peer := freePort(t), freePort(t)
	p := startProcBin(t, "etcd", bin,
		"--name", "ha", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "ha=http://"+peer, "--log-level", "warn")
	tvdtest.Eventually(t, 20*time.Second, "etcd serving", func() bool { return portOpen(client) })
	_ = p
	return client
}

// TestReplicasFailover runs three controller replicas on one etcd cluster
// and three agents that know all three. While the members are appraised
// continuously, the leading replica is killed with SIGKILL: a standby
// takes over within the election lease, the agents fail over to it, no
// member is ever reported other than verified, and nothing acknowledged
// before the kill (membership, policy versions, the audit log up to a
// checkpoint the test kept) is lost.
func TestReplicasFailover(t *testing.T) {
	etcdURL := startEtcd(t)
	dir := t.TempDir()
	storeURL := "etcd://" + etcdURL + "/tvdha"
	addrs := []string{freePort(t), freePort(t), freePort(t)}
	var urls []string
	for _, a := range addrs {
		urls = append(urls, "https://"+a)
	}
	list := strings.Join(urls, ",")
	data := func(i int) string { return filepath.Join(dir, fmt.Sprintf("replica%d", i)) }
	replica := func(i int) *proc {
		return startProc(t, fmt.Sprintf("replica %d", i), "controller", "--data", data(i), "--listen", addrs[i],
			"--store", storeURL, "--election-ttl", "2s")
	}
	reps := []*proc{replica(0)}
	tvdtest.Eventually(t, 30*time.Second, "replica 0 leading", func() bool { return strings.Contains(reps[0].log.String(), "controller listening") })
	// The other replicas get the deployment's key-encryption key (as an
	// operator would copy it) and stand by.
	kek, err := os.ReadFile(filepath.Join(data(0), "kek"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		os.MkdirAll(data(i), 0o700)
		if err := os.WriteFile(filepath.Join(data(i), "kek"), kek, 0o600); err != nil {
			t.Fatal(err)
		}
		reps = append(reps, replica(i))
	}
	for i := 1; i < 3; i++ {
		tvdtest.Eventually(t, 10*time.Second, "a standby", func() bool { return strings.Contains(reps[i].log.String(), "standing by") })
	}
	creds := filepath.Join(data(0), "admin")
	env := []string{"TVD_CREDS=" + creds, "TVD_CONTROLLER=" + list}

	startOutsourcing(t, dir, env, list)
	verified := func() int {
		n := 0
		for _, x := range members(t, env, "").Members {
			if x.Verdict.Status == "STATUS_VERIFIED" {
				n++
			}
		}
		return n
	}
	tvdtest.Eventually(t, 30*time.Second, "8 verified members", func() bool { return verified() == 8 })
	before := summary(members(t, env, ""))
	history := run(t, env, "policy", "history")
	key := filepath.Join(dir, "verifier.key")
	b, err := os.ReadFile(filepath.Join(data(0), "audit", "verifier.key"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(key, b, 0o644)
	cp := filepath.Join(dir, "checkpoint")
	run(t, env, "audit", "verify", "--key", key, "--save", cp)

	// Watch the members through the failover: every answer must say
	// verified (an unanswered query during the takeover is fine).
	stop := make(chan struct{})
	var mu sync.Mutex
	var wrong []string
	answers := 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			cmd := exec.Command(tvdBin, "members", "-o", "json")
			cmd.Env = append(os.Environ(), env...)
			out, err := cmd.Output()
			if err != nil {
				continue
			}
			var m memberJSON
			if json.Unmarshal(out, &m) != nil {
				continue
			}
			mu.Lock()
			answers++
			for _, x := range m.Members {
				if x.Verdict.Status != "STATUS_VERIFIED" {
					wrong = append(wrong, x.Member.Ee+"="+x.Verdict.Status)
				}
			}
			mu.Unlock()
		}
	}()

	time.Sleep(time.Second)
	killed := time.Now()
	if err := reps[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	reps[0].cmd.Wait()
	var leader int
	tvdtest.Eventually(t, 15*time.Second, "a standby taking over", func() bool {
		for i := 1; i < 3; i++ {
			if strings.Contains(reps[i].log.String(), "controller listening") {
				leader = i
				return true
			}
		}
		return false
	})
	takeover := time.Since(killed)
	tvdtest.Eventually(t, 30*time.Second, "every agent reporting to the new leader", func() bool {
		var n struct {
			Nodes []struct {
				Name         string
				LastReportAt string
			}
		}
		cmd := exec.Command(tvdBin, "nodes", "-o", "json")
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			return false // no replica answers yet
		}
		json.Unmarshal(out, &n)
		fresh := 0
		for _, x := range n.Nodes {
			if ts, err := time.Parse(time.RFC3339Nano, x.LastReportAt); err == nil && ts.After(killed) {
				fresh++
			}
		}
		return fresh == 3
	})
	back := time.Since(killed)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("replica %d took over %v after the kill; all agents reporting to it after %v; %d member listings answered meanwhile",
		leader, takeover.Round(10*time.Millisecond), back.Round(10*time.Millisecond), answers)
	if len(wrong) > 0 {
		t.Errorf("members reported other than verified during the failover: %v", wrong)
	}
	if answers == 0 {
		t.Error("no member listing was answered during the failover")
	}
	if n := verified(); n != 8 {
		t.Errorf("%d verified members after the failover, want 8", n)
	}
	if after := summary(members(t, env, "")); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("membership changed across the failover:\n before %v\n after  %v", before, after)
	}
	if h := run(t, env, "policy", "history"); h != history {
		t.Errorf("policy history changed:\n%s\n%s", history, h)
	}
	// The new leader continues the one log: the checkpoint kept before the
	// kill is consistent with its latest one, signed by the same key.
	if out := run(t, env, "audit", "verify", "--key", key, "--from", cp); !strings.Contains(out, "consistent") {
		t.Errorf("audit verify after the failover:\n%s", out)
	}
	// The killed replica comes back as a standby.
	reps[0] = replica(0)
	tvdtest.Eventually(t, 10*time.Second, "the old leader standing by", func() bool { return strings.Contains(reps[0].log.String(), "standing by") })
	if strings.Contains(reps[0].log.String(), "controller listening") {
		t.Error("the restarted replica serves while another leads")
	}
}
