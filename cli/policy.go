package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tvd-dev/tvd/policy"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, compile, explain, test and query TVD policies",
		Long: `A policy is one or more YAML files (or directories of them) holding Domain,
ReferenceValues, Claims, Issuer, Mapping and Tests documents. See docs/policy.md.`,
	}
	cmd.AddCommand(policyLintCmd(), policyCompileCmd(), policyExplainCmd(), policyTestCmd(), policyQueryCmd(), policyMeasureCmd())
	return cmd
}

// compile loads and compiles, printing policy errors one per line.
func compile(cmd *cobra.Command, paths []string) (*policy.Compiled, error) {
	c, err := policy.LoadAndCompile(paths...)
	var pe policy.Errors
	if errors.As(err, &pe) {
		for _, e := range pe {
			fmt.Fprintln(cmd.ErrOrStderr(), e)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "%d %s\n", len(pe), plural(len(pe), "error", "errors"))
		return nil, &ExitError{Code: 1}
	}
	return c, err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func policyLintCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "lint PATH...",
		Short: "Check a policy and report every problem as file:line:col: message",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := compile(cmd, args)
			if err != nil {
				return err
			}
			st := 0
			for _, d := range c.Domains {
				st += len(d.Statements)
			}
			tests := 0
			for _, t := range c.Source().Tests {
				tests += len(t.Tests)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d %s, %d %s, %d flow cells, %d %s, %d %s (version %s)\n",
				len(c.Domains), plural(len(c.Domains), "domain", "domains"),
				st, plural(st, "statement", "statements"), len(c.Flows),
				len(c.ReferenceValues), plural(len(c.ReferenceValues), "reference value set", "reference value sets"),
				tests, plural(tests, "test", "tests"), short(c.Version))
			return nil
		},
	}
}

func short(v string) string {
	if len(v) > 19 {
		return v[:19]
	}
	return v
}

func policyCompileCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "compile PATH...",
		Short: "Compile a policy and print its compiled form as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := compile(cmd, args)
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(c, "", "  ")
			if err != nil {
				return err
			}
			b = append(b, '\n')
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			return writeFileAtomic(out, b, 0o644)
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the compiled form to `FILE` instead of standard output")
	return cmd
}

func policyExplainCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "explain PATH...",
		Short: "Print the policy in plain words, with its flow matrix",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := compile(cmd, args)
			if err != nil {
				return err
			}
			return c.Explain(cmd.OutOrStdout())
		},
	}
}

func policyTestCmd() *cobra.Command {
	var verbose bool
	cmd := &cobra.Command{
		Use:   "test PATH...",
		Short: "Run the policy's Tests documents and report each assertion",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := compile(cmd, args)
			if err != nil {
				return err
			}
			res := c.RunTests()
			if len(res) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "no tests: add a Tests document to the policy")
				return &ExitError{Code: 1}
			}
			w := cmd.OutOrStdout()
			failed := 0
			for _, r := range res {
				switch {
				case !r.Pass:
					failed++
					fmt.Fprintf(w, "FAIL %s: %s\n     got %s\n", r.Pos, r.Name, r.Got)
				case verbose:
					fmt.Fprintf(w, "ok   %s: %s\n", r.Name, r.Got)
				}
			}
			fmt.Fprintf(w, "%d passed, %d failed\n", len(res)-failed, failed)
			if failed > 0 {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print passing tests too")
	return cmd
}

func policyQueryCmd() *cobra.Command {
	var from, to, output string
	cmd := &cobra.Command{
		Use:   "query PATH... --from DOMAIN/ROLE --to DOMAIN/ROLE",
		Short: "Answer whether traffic from one domain/role may reach another",
		Example: `  tvd policy query examples/outsourcing --from yellow/management-console --to red/client-os -o json
  {"rule":"via-gateway","direct":"deny","via":["yellow/gateway","red/gateway"]}`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" || to == "" {
				return fmt.Errorf("query needs --from DOMAIN/ROLE and --to DOMAIN/ROLE")
			}
			if output != "json" && output != "text" {
				return fmt.Errorf("-o %q: expected json or text", output)
			}
			c, err := compile(cmd, args)
			if err != nil {
				return err
			}
			q, err := c.Query(from, to)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				b, err := json.Marshal(q)
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "%s\n", b)
				return nil
			}
			fmt.Fprintf(w, "%s -> %s: %s (rule %s)", from, to, q.Direct, q.Rule)
			if len(q.Via) > 0 {
				fmt.Fprintf(w, "; reachable via %s", strings.Join(q.Via, " -> "))
			}
			fmt.Fprintln(w)
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "source `DOMAIN/ROLE`")
	cmd.Flags().StringVar(&to, "to", "", "destination `DOMAIN/ROLE`")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func policyMeasureCmd() *cobra.Command {
	var name, out string
	cmd := &cobra.Command{
		Use:   "measure DIR",
		Short: "Write a ReferenceValues document allowing every executable in DIR",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" {
				name = strings.ToLower(filepath.Base(filepath.Clean(args[0])))
			}
			b, n, err := policy.Measure(args[0], name)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			if err := writeFileAtomic(out, b, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "measured %d executables into %s\n", n, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the reference value set (default: the directory's name)")
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to `FILE` instead of standard output")
	return cmd
}

// writeFileAtomic writes data to name through a temporary file and a
// rename, so a reader never sees a half-written file.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(name)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, perm)
	}
	if werr == nil {
		werr = os.Rename(tmp, name)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, werr)
	}
	return nil
}
