package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/policy/promote"
	"github.com/attestd/attestd/store"
)

// errDenied makes `policy test` exit 1 without more noise.
var errDenied = errors.New("denied")

func (r *runner) policyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Evaluate a policy, for CI and policy authors"}
	var file, image, input string
	var printInput bool
	test := &cobra.Command{
		Use:   "test --policy FILE (--image REF | --input FACTS.json)",
		Short: "Print the decision and its reasons; exit 0 allow, 1 deny",
		Long: `Evaluates a policy file (and the Rego modules it names) against an image — whose
signatures and attestations are verified first, with the configured trust root, exactly
as the gate does — or against an input document (docs/policy-input.schema.json).
--print-input shows the input the policy saw.`,
		Example: `  attestd policy test --policy policy.yaml --image registry.example.com/team/app:v1.2.3 -c attestd.yaml
  attestd policy test --policy policy.yaml --input facts.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" || (image == "") == (input == "") {
				return usageError{errors.New("give --policy FILE and exactly one of --image REF and --input FACTS.json")}
			}
			ctx := cmd.Context()
			pol, err := loadPolicy(ctx, file)
			if err != nil {
				return err
			}
			var in policy.Input
			if input != "" {
				b, err := os.ReadFile(input)
				if err != nil {
					return err
				}
				dec := json.NewDecoder(strings.NewReader(string(b)))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&in); err != nil {
					return usageError{fmt.Errorf("--input %s: %w (schema: docs/policy-input.schema.json)", input, err)}
				}
				if in.Version != policy.InputVersion {
					return usageError{fmt.Errorf("--input %s: version %q, want %q", input, in.Version, policy.InputVersion)}
				}
			} else {
				cfg, err := r.loadConfig(cmd)
				if err != nil {
					return err
				}
				if in, err = r.imageInput(ctx, cfg, pol, image); err != nil {
					return err
				}
			}
			if printInput {
				b, _ := json.MarshalIndent(in, "", "  ")
				fmt.Fprintln(r.stdout, string(b))
			}
			d := pol.Evaluate(ctx, in)
			printDecision(r.stdout, d)
			if !d.Allow {
				return errDenied
			}
			return nil
		},
	}
	test.Flags().StringVar(&file, "policy", "", "policy file")
	test.Flags().StringVar(&image, "image", "", "image to verify and evaluate (tag or digest)")
	test.Flags().StringVar(&input, "input", "", "input document (JSON) instead of an image")
	test.Flags().BoolVar(&printInput, "print-input", false, "print the input document first")
	cmd.AddCommand(test)
	return cmd
}

// imageInput verifies image like the gate and returns the policy input.
func (r *runner) imageInput(ctx context.Context, cfg *configs.Config, pol *policy.Policy, image string) (policy.Input, error) {
	if !cfg.Signing.Enabled() {
		return policy.Input{}, usageError{errors.New("--image needs the trust root: set signing.trusted_root (or signing.public_good) in the config")}
	}
	log := r.logger(cfg, r.stderr)
	rc, err := registryClient(cfg, log)
	if err != nil {
		return policy.Input{}, err
	}
	res, err := resolveImage(ctx, rc, image)
	if err != nil {
		return policy.Input{}, err
	}
	_, tr, err := signingTrust(cfg)
	if err != nil {
		return policy.Input{}, err
	}
	ver, err := newVerifier(cfg, pol, tr, rc)
	if err != nil {
		return policy.Input{}, err
	}
	t, err := resolver{rc}.Resolve(ctx, res.digest.String())
	if err != nil {
		return policy.Input{}, err
	}
	var tags []string
	if tg, ok := res.parsed.(name.Tag); ok {
		tags = []string{tg.TagStr()}
	}
	ectx, cancel := context.WithTimeout(ctx, time.Duration(cfg.Gate.Timeout))
	defer cancel()
	in, _, err := buildInput(ectx, ver, t, tags, time.Now())
	return in, err
}

func printDecision(w io.Writer, d policy.Decision) {
	verdict := "DENY"
	if d.Allow {
		verdict = "ALLOW"
	}
	fmt.Fprintf(w, "%s (mode %s, policy %s %s)\n", verdict, d.Mode, d.PolicyName, d.PolicyDigest)
	for _, v := range d.Violations {
		fmt.Fprintln(w, "  deny: "+v.String())
	}
	for _, v := range d.Warnings {
		fmt.Fprintln(w, "  warn: "+v.String())
	}
}

func (r *runner) promoteCommand() *cobra.Command {
	var to, override string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "promote DIGEST-REF|REF [--to REPO:TAG] [--dry-run] [--override-reason TEXT]",
		Short: "Promote an evaluated image by digest (still gated; an override is audited)",
		Long: `Copies the image the gate allowed — by digest, with every platform, layer and referrer —
to production, verifies the copy there and writes the tag last. Without --to the
configured promotion rules and the tags recorded at evaluation decide the destination.
An image the gate did not allow is refused unless --override-reason is given; the
override, its reason and who ran it are written to the audit log.`,
		Example: `  attestd promote registry.example.com/staging/app@sha256:… --dry-run
  attestd promote registry.example.com/staging/app@sha256:… --to registry.example.com/prod/app:v1.2.3`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			if !cfg.Gate.Enabled() {
				return usageError{errors.New("gate.policy is not configured: nothing may be promoted")}
			}
			ctx := cmd.Context()
			log := r.logger(cfg, r.stderr)
			rc, err := registryClient(cfg, log)
			if err != nil {
				return err
			}
			res, err := resolveImage(ctx, rc, args[0])
			if err != nil {
				return err
			}
			db, err := store.Open(dbPath(cfg), store.WithLockTimeout(500*time.Millisecond))
			if errors.Is(err, store.ErrLocked) {
				return fmt.Errorf("%w: stop the daemon for a manual promotion (it promotes allowed images by itself)", err)
			}
			if err != nil {
				return err
			}
			defer db.Close()
			rec, err := db.Image(ctx, res.digest.String())
			if err != nil {
				return fmt.Errorf("%s: %w (attestd has not processed this digest)", res.digest, err)
			}
			allowed := rec.Decision != nil && rec.Decision.Allow
			if !allowed && override == "" {
				why := "it has not been evaluated"
				if rec.Decision != nil {
					why = "the gate denied it: " + strings.Join(rec.Decision.Reasons, "; ")
				}
				return fmt.Errorf("refusing to promote %s: %s (--override-reason TEXT promotes anyway, audited)", rec.Ref, why)
			}
			var edges []promote.Edge
			if to != "" {
				if _, err := name.NewTag(to, name.StrictValidation); err != nil {
					return usageError{fmt.Errorf("--to %q: want REPO:TAG: %w", to, err)}
				}
				edges = []promote.Edge{{Src: rec.Registry + "/" + rec.Repository + "@" + rec.Digest, Dst: to}}
			} else {
				var tags []string
				if rec.Decision != nil {
					tags = rec.Decision.Tags
				}
				if tg, ok := res.parsed.(name.Tag); ok && len(tags) == 0 {
					tags = []string{tg.TagStr()}
				}
				rules := make([]promote.Rule, 0, len(cfg.Gate.Promotion))
				for _, pr := range cfg.Gate.Promotion {
					rules = append(rules, promote.Rule{From: pr.From, To: pr.To, Tags: pr.Tags, Match: pr.Match, Replace: pr.Replace})
				}
				if err := promote.Validate(rules); err != nil {
					return err
				}
				var why string
				if edges, why = promote.Plan(rules, rec.Registry+"/"+rec.Repository, rec.Digest, tags); len(edges) == 0 {
					return fmt.Errorf("nothing to promote: %s (give --to REPO:TAG)", why)
				}
			}
			for _, e := range edges {
				fmt.Fprintln(r.stdout, "plan: "+e.String())
			}
			if dryRun {
				return nil
			}
			k, err := newSigner(cfg, rc, log)
			if err != nil {
				return err
			}
			_, p, err := newGate(cfg, db, rc, k, log)
			if err != nil {
				return err
			}
			reason := ""
			if !allowed {
				reason = override
			}
			actor := "cli:" + os.Getenv("USER")
			if err := p.run(withPromoteActor(ctx, actor), rec, edges, reason); err != nil {
				return err
			}
			if allowed && rec.State == store.StateEvaluated {
				if _, err := db.Transition(store.WithActor(ctx, actor), rec.Ref, store.StateEvaluated, store.StatePromoted, func(r *store.Record) error {
					if r.Stages == nil {
						r.Stages = map[string]store.StageResult{}
					}
					r.Stages[pipeline.StagePromote] = store.StageResult{Status: store.StagePassed, Detail: "promoted by " + actor, At: time.Now().UTC()}
					return nil
				}); err != nil {
					return err
				}
			}
			for _, e := range edges {
				fmt.Fprintln(r.stdout, "promoted: "+e.String())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "destination REPO:TAG instead of the promotion rules")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan only")
	cmd.Flags().StringVar(&override, "override-reason", "", "promote although the gate did not allow it (audited with this reason)")
	return cmd
}
