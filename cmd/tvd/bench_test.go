package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestBenchFleetLocal runs `tvd bench fleet --local` with five simulated
// TPM nodes against an in-process controller and checks the table.
func TestBenchFleetLocal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := newBenchCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"fleet", "--local", "--agents", "5", "--interval", "1s", "--duration", "1s", "--node-prefix", "clibench-"})
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("bench fleet: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	table := out.String()
	for _, want := range []string{"members verified", "5/5", "deadline misses (stale)", "verdict latency p99", "controller CPU", "controller heap per member"} {
		if !strings.Contains(table, want) {
			t.Errorf("output lacks %q:\n%s", want, table)
		}
	}
	if !strings.Contains(errOut.String(), "enrol") && !strings.Contains(errOut.String(), "run ") {
		t.Logf("no progress lines (the run was shorter than a second per phase): %s", errOut.String())
	}
}
