package main

import (
	"fmt"
	"github.com/tvd-dev/tvd/cli"
	"io"
	"os"
	"runtime"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tvd-dev/tvd/api/client"
	"github.com/tvd-dev/tvd/fleet"
)

// Goals the fleet benchmark reports against (docs/benchmarks.md).
const (
	goalVerifyRatio     = 0.45 // appraisals per controller core / raw ECDSA P-256 verifies per core
	goalP99             = 50 * time.Millisecond
	goalBytesPerMember  = 64 << 10
	baselineMeasureTime = time.Second
)

// NewBenchCmd returns `tvd bench`: load generators that measure a
// controller.
func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a domain controller under load",
	}
	cmd.AddCommand(newBenchFleetCmd())
	return cmd
}

// flagString reads a flag the command may inherit from the root (creds,
// controller) and falls back to env.
func flagString(cmd *cobra.Command, name, env string) string {
	if f := cmd.Flags().Lookup(name); f != nil && f.Value.String() != "" {
		return f.Value.String()
	}
	if f := cmd.InheritedFlags().Lookup(name); f != nil && f.Value.String() != "" {
		return f.Value.String()
	}
	return os.Getenv(env)
}

func newBenchFleetCmd() *cobra.Command {
	var (
		agents, events, enrolConc int
		interval, duration        time.Duration
		local, skipPolicy, watch  bool
		ekCADir, cpuProfile       string
		domain, prefix            string
	)
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Enrol simulated TPM nodes and measure the controller's appraisals",
		Long: `fleet simulates --agents nodes in this process, each with a software TPM (an ECC
endorsement key certified by the fleet's CA, an attestation key, credential
activation and genuine quotes), enrols them with a controller over mutual TLS and
has each report every --interval with new listed measurements. Once all are
enrolled it measures for --duration and prints appraisals per second, the verdict
latency (report sent to response), the members the controller marked stale
(deadline misses), and, with --local, the controller's CPU and memory, each with
its goal.

With --local the controller runs in this process (bbolt store in a temporary
directory). Otherwise --controller and --creds name a controller and an admin
credential; the controller must trust the fleet's EK CA (tvd controller --ek-ca
DIR/ek-ca.pem, with DIR from --ek-ca), and the fleet policy is applied to it
unless --skip-policy. Use only a deployment made for benchmarking; node names
are --node-prefix plus a number, so a second run against the same controller
needs another prefix.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			if agents <= 0 {
				return fmt.Errorf("--agents %d: want at least 1", agents)
			}
			cfg := fleet.Config{Agents: agents, Interval: interval, Duration: duration, Domain: domain, NodePrefix: prefix,
				EventsPerReport: events, EnrolConcurrency: enrolConc, SkipPolicy: skipPolicy, Profile: local, Watch: watch,
				Progress: func(p fleet.Progress) { fmt.Fprintln(errOut, p.String()) }}
			// A connection per node, both ends in this process with --local,
			// plus the controller's store, listeners and logs.
			files := agents + 512
			if local {
				files += agents
			}
			if err := fleet.EnsureOpenFiles(files); err != nil {
				// Run anyway: the nodes left without a connection are
				// counted apart (StarvedNodes).
				fmt.Fprintf(errOut, "warning: %v\n", err)
			}
			if local {
				// Sample the heap finely enough to attribute it per member.
				runtime.MemProfileRate = 16384
				dir, err := os.MkdirTemp("", "tvd-bench-fleet-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				if ekCADir == "" {
					ekCADir = dir
				}
				if cfg.EKCA, err = fleet.LoadOrCreateEKCA(ekCADir, nil, time.Now()); err != nil {
					return err
				}
				lc, err := fleet.StartLocal(ctx, fleet.LocalConfig{Dir: dir, EKRoots: cfg.EKCA.Pool()})
				if err != nil {
					return err
				}
				defer lc.Close()
				cfg.Controller, cfg.Admin = lc.URL, lc.Admin
			} else {
				if ekCADir == "" {
					return fmt.Errorf("pass --local, or --ek-ca DIR holding the fleet EK CA the controller trusts (created there if absent; start the controller with --ek-ca DIR/ek-ca.pem)")
				}
				// The CA first, so that a first run leaves DIR/ek-ca.pem for
				// the controller even when the credentials are missing.
				var err error
				if cfg.EKCA, err = fleet.LoadOrCreateEKCA(ekCADir, nil, time.Now()); err != nil {
					return err
				}
				creds, err := client.LoadDir(flagString(cmd, "creds", "TVD_CREDS"))
				if err != nil {
					return err
				}
				if cfg.Admin, err = client.Dial(creds, flagString(cmd, "controller", "TVD_CONTROLLER")); err != nil {
					return err
				}
				cfg.Controller = cfg.Admin.URL
			}
			fmt.Fprintf(errOut, "fleet: %d agents, interval %v, window %v, controller %s\n", agents, interval, duration, cfg.Controller)
			res, err := fleet.Run(ctx, cfg)
			if err != nil {
				return err
			}
			if cpuProfile != "" && res.Profile != nil {
				if err := os.WriteFile(cpuProfile, res.Profile, 0o644); err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
			}
			rate, err := fleet.ECDSAVerifyRate(baselineMeasureTime)
			if err != nil {
				return err
			}
			printFleetResult(out, res, rate, local)
			if res.Stale > 0 || res.Violated > 0 || res.LostNodes > 0 {
				return &cli.ExitError{Code: 3}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&agents, "agents", 1000, "number of simulated nodes")
	f.DurationVar(&interval, "interval", 10*time.Second, "reporting interval (written into the fleet policy; whole seconds)")
	f.DurationVar(&duration, "duration", 30*time.Second, "measured window, after every node is enrolled")
	f.BoolVar(&local, "local", false, "run the controller in this process (bbolt store in a temporary directory)")
	f.StringVar(&ekCADir, "ek-ca", "", "`DIR` of the fleet's EK CA (ek-ca.pem, ek-ca-key.pem), created if absent")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write the window's CPU profile to `FILE` (--local; goroutines labelled side=controller|fleet)")
	f.IntVar(&events, "events", 1, "new measurements per node per report")
	f.IntVar(&enrolConc, "enrol-concurrency", 16, "enrolments in flight")
	f.StringVar(&domain, "domain", "fleet", "the fleet's domain")
	f.StringVar(&prefix, "node-prefix", "fleet-", "node name prefix")
	f.BoolVar(&watch, "watch", false, "each node also keeps a plan stream open, as a real agent does")
	f.BoolVar(&skipPolicy, "skip-policy", false, "do not apply the fleet policy (the controller already has it)")
	return cmd
}

func printFleetResult(w io.Writer, r *fleet.Result, verifyRate float64, local bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer func() {
		tw.Flush()
		reasons := make([]string, 0, len(r.Reasons))
		for k := range r.Reasons {
			reasons = append(reasons, k)
		}
		sort.Strings(reasons)
		for i, k := range reasons {
			if i == 10 {
				fmt.Fprintf(w, "  … and %d more reasons\n", len(reasons)-10)
				break
			}
			fmt.Fprintf(w, "  %d members: %s\n", r.Reasons[k], k)
		}
	}()
	offered := float64(r.Agents) / r.Interval.Seconds()
	ok := func(b bool) string {
		if b {
			return "ok"
		}
		return "MISSED"
	}
	fmt.Fprintf(tw, "figure\tvalue\tbaseline / goal\tratio\t\n")
	fmt.Fprintf(tw, "agents enrolled\t%d/%d in %v\t\t\t\n", r.Enrolled, r.Agents, r.EnrolTime.Round(time.Millisecond))
	fmt.Fprintf(tw, "appraisals/s\t%.1f\toffered %.1f/s\t%.3f\t%s\n", r.AppraisalsPerSec, offered, r.AppraisalsPerSec/offered, ok(r.AppraisalsPerSec >= 0.95*offered))
	fmt.Fprintf(tw, "verdict latency p50\t%v\t\t\t\n", r.P50.Round(10*time.Microsecond))
	fmt.Fprintf(tw, "verdict latency p99\t%v\tgoal < %v\t%.3f\t%s\n", r.P99.Round(10*time.Microsecond), goalP99, float64(r.P99)/float64(goalP99), ok(r.P99 < goalP99))
	fmt.Fprintf(tw, "verdict latency max\t%v\t\t\t\n", r.Max.Round(10*time.Microsecond))
	if r.StarvedNodes > 0 {
		// Nodes the fleet could not connect go stale through no fault of
		// the controller's: counted apart.
		fmt.Fprintf(tw, "deadline misses (stale)\t%d, %d of them without a connection\tgoal 0 (the controller's)\t\t%s\n", r.Stale, r.StarvedNodes, ok(r.Stale <= r.StarvedNodes))
	} else {
		fmt.Fprintf(tw, "deadline misses (stale)\t%d\tgoal 0\t\t%s\n", r.Stale, ok(r.Stale == 0))
	}
	fmt.Fprintf(tw, "members verified\t%d/%d\t\t\t%s\n", r.Verified, r.Members, ok(r.Verified == r.Members && r.Members == r.Enrolled))
	fmt.Fprintf(tw, "members violated (not stale)\t%d\t\t\t%s\n", r.Violated, ok(r.Violated == 0))
	fmt.Fprintf(tw, "report errors / lost nodes\t%d / %d\t\t\t\n", r.Errors, r.LostNodes)
	if r.StarvedNodes > 0 {
		fmt.Fprintf(tw, "nodes without a connection\t%d\t(this process's open files limit, not the controller)\t\t\n", r.StarvedNodes)
	}
	if r.Plans > 0 {
		fmt.Fprintf(tw, "plans received (plan streams)\t%d (%d in the window)\t\t\t\n", r.Plans, r.PlansInWindow)
	}
	fmt.Fprintf(tw, "raw ECDSA P-256 verify\t%.0f/s per core\t(baseline, this run)\t\t\n", verifyRate)
	what := "process CPU (controller + agents)"
	if !local {
		what = "process CPU (simulated agents only)"
	}
	fmt.Fprintf(tw, "%s\t%v = %.2f cores of %d\t\t\t\n", what, r.CPU.Round(time.Millisecond), r.CPU.Seconds()/r.Window.Seconds(), runtime.NumCPU())
	if cc := r.ControllerCPU(); local && cc == 0 {
		fmt.Fprintf(tw, "controller CPU\t(too few profile samples; run longer)\t\t\t\n")
	} else if local {
		perCore := float64(r.Reports) / cc.Seconds()
		fmt.Fprintf(tw, "controller CPU\t%v = %.2f cores\t(profile, side=controller)\t\t\n", cc.Round(time.Millisecond), cc.Seconds()/r.Window.Seconds())
		fmt.Fprintf(tw, "appraisals per controller core-s\t%.0f\tvs ECDSA verify %.0f; goal ≥ %.2f\t%.3f\t%s\n", perCore, verifyRate, goalVerifyRatio, perCore/verifyRate, ok(perCore/verifyRate >= goalVerifyRatio))
	}
	if local && r.Members > 0 {
		per := r.ControllerHeapPerMember()
		fmt.Fprintf(tw, "controller heap per member\t%.1f KiB\tgoal ≤ %d KiB (heap profile, attributed)\t%.3f\t%s\n", float64(per)/1024, goalBytesPerMember>>10, float64(per)/goalBytesPerMember, ok(per <= goalBytesPerMember))
		fmt.Fprintf(tw, "process heap per member\t%.1f KiB\t(controller + agents; unattributed %.1f MiB)\t\t\n", float64(r.HeapInuse/uint64(r.Members))/1024, float64(r.Heap.Other)/(1<<20))
		fmt.Fprintf(tw, "goroutine stacks per member\t%.1f KiB\t(controller + agents)\t\t\n", float64(r.StackInuse/uint64(r.Members))/1024)
	}
}
