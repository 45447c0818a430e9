package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/audit"
)

// auditEntryFromProto rebuilds the log's entry from its wire form, so that
// its canonical encoding (the Merkle leaf) can be recomputed here rather
// than taken from the controller.
func auditEntryFromProto(e *tvdv1.AuditEntry) (audit.Entry, error) {
	var data struct {
		Subject string            `json:"subject"`
		Detail  map[string]string `json:"detail"`
	}
	if err := json.Unmarshal(e.GetData(), &data); err != nil {
		return audit.Entry{}, fmt.Errorf("entry %d: %w", e.GetIndex(), err)
	}
	return audit.Entry{Time: e.GetTime().AsTime(), Kind: e.GetKind(), Actor: e.GetActor(), Subject: data.Subject, Domain: e.GetDomain(), Detail: data.Detail}, nil
}

func loadVerifierKey(path string) (note.Verifier, error) {
	if path == "" {
		return nil, fmt.Errorf("--key FILE is required: the log's public verifier key (the controller writes DATA/audit/verifier.key); keep your own copy, do not take it from the controller you are checking")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--key: %w", err)
	}
	v, err := audit.NewVerifier(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("--key %s: %w", path, err)
	}
	return v, nil
}

func addAuditVerifyCmds(c *conn, audCmd *cobra.Command) {
	var key string
	show := &cobra.Command{
		Use:   "show INDEX",
		Short: "Print one audit entry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			idx, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("index %q: want a number", args[0])
			}
			cl, err := c.dial()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.AuditProof(cmd.Context(), connect.NewRequest(&tvdv1.AuditProofRequest{Index: idx}))
			if err != nil {
				return apiError(err)
			}
			return printJSON(cmd.OutOrStdout(), resp.Msg.GetEntry())
		},
	}
	prove := &cobra.Command{
		Use:   "prove INDEX --key VERIFIER_KEY",
		Short: "Check, without trusting the controller, that an entry is in the signed log",
		Long: `prove fetches an entry, an inclusion proof and the latest signed checkpoint, recomputes the
entry's leaf from its content, and checks the proof and the checkpoint's signature with the
verifier key you hold.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			idx, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("index %q: want a number", args[0])
			}
			vk, err := loadVerifierKey(key)
			if err != nil {
				return err
			}
			cl, err := c.dial()
			if err != nil {
				return err
			}
			resp, err := cl.Admin.AuditProof(cmd.Context(), connect.NewRequest(&tvdv1.AuditProofRequest{Index: idx}))
			if err != nil {
				return apiError(err)
			}
			e, err := auditEntryFromProto(resp.Msg.GetEntry())
			if err != nil {
				return err
			}
			leaf, err := e.Encode()
			if err != nil {
				return err
			}
			cp, _, err := audit.VerifyInclusion(vk, resp.Msg.GetCheckpoint().GetSigned(), leaf, idx, resp.Msg.GetInclusionProof())
			if err != nil {
				return fmt.Errorf("entry %d is NOT proven: %w", idx, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "entry %d (%s %s) is in the log of %s at size %d, root %x\n", idx, e.Kind, e.Subject, cp.Origin, cp.Size, cp.Hash)
			return nil
		},
	}
	var from, save string
	verify := &cobra.Command{
		Use:   "verify --key VERIFIER_KEY [--from CHECKPOINT] [--save FILE]",
		Short: "Check, without trusting the controller, that the log only grew since a checkpoint you kept",
		Long: `verify fetches the latest signed checkpoint and checks its signature with the verifier key you
hold. With --from it also fetches a consistency proof from the checkpoint you kept and checks
that the log now extends it: no entry was changed, removed or reordered. --save writes the new
checkpoint for next time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vk, err := loadVerifierKey(key)
			if err != nil {
				return err
			}
			cl, err := c.dial()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			tail, err := cl.Admin.AuditTail(ctx, connect.NewRequest(&tvdv1.AuditTailRequest{StartIndex: ^uint64(0) >> 1, Limit: 1}))
			if err != nil {
				return apiError(err)
			}
			newSigned := tail.Msg.GetCheckpoint().GetSigned()
			cur, err := audit.OpenCheckpoint(newSigned, vk)
			if err != nil {
				return fmt.Errorf("the controller's checkpoint does NOT verify: %w", err)
			}
			w := cmd.OutOrStdout()
			if from != "" {
				oldSigned, err := os.ReadFile(from)
				if err != nil {
					return fmt.Errorf("--from: %w", err)
				}
				old, err := audit.OpenCheckpoint(oldSigned, vk)
				if err != nil {
					return fmt.Errorf("--from %s does not verify with this key: %w", from, err)
				}
				var proofs [][]byte
				if old.Size > 0 && old.Size < cur.Size {
					pr, err := cl.Admin.AuditProof(ctx, connect.NewRequest(&tvdv1.AuditProofRequest{Index: 0, TreeSize: cur.Size, OldTreeSize: old.Size}))
					if err != nil {
						return apiError(err)
					}
					proofs = pr.Msg.GetConsistencyProof()
				}
				if _, _, err := audit.VerifyConsistency(vk, oldSigned, newSigned, proofs); err != nil {
					return fmt.Errorf("the log is NOT consistent with %s: %w", from, err)
				}
				fmt.Fprintf(w, "consistent: the log at size %d extends your checkpoint at size %d\n", cur.Size, old.Size)
			}
			fmt.Fprintf(w, "checkpoint verified: %s, size %d, root %x\n", cur.Origin, cur.Size, cur.Hash)
			if save != "" {
				if err := writeFileAtomic(save, newSigned, 0o644); err != nil {
					return err
				}
				fmt.Fprintf(w, "saved to %s\n", save)
			}
			return nil
		},
	}
	for _, cmd := range []*cobra.Command{prove, verify} {
		cmd.Flags().StringVar(&key, "key", "", "the log's verifier key `FILE` (DATA/audit/verifier.key on the controller; keep your own copy)")
	}
	verify.Flags().StringVar(&from, "from", "", "a signed checkpoint `FILE` you kept from before")
	verify.Flags().StringVar(&save, "save", "", "write the verified checkpoint to `FILE`")
	audCmd.AddCommand(show, prove, verify)
}
