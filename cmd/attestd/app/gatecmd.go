package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/attest/gate"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/sign"
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
					return usageError{fmt.Errorf("--input %s: version %q, want %q (from v1: subjects[].baseImage is claims.baseImage now, label sources moved from provenance.sourceRepositories to claims.sourceRepositories; docs/policy.md, \"Policy input v2\")", input, in.Version, policy.InputVersion)}
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
	g, err := newGateWith(cfg, pol, nil, rc, nil, log)
	if err != nil {
		return policy.Input{}, err
	}
	t, err := analyze.NewResolver(rc, nil, analyze.WithMaxIndexManifests(cfg.Analysis.MaxIndexManifests)).Resolve(ctx, res.digest.String())
	if err != nil {
		return policy.Input{}, err
	}
	var tags []string
	if tg, ok := res.parsed.(name.Tag); ok {
		tags = []string{tg.TagStr()}
	}
	ev, err := g.Check(ctx, t, tags)
	if err != nil {
		return policy.Input{}, err
	}
	return ev.Input, nil
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
	var to, override, actor string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "promote DIGEST-REF|REF [--to REPO:TAG] [--dry-run] [--override-reason TEXT --actor WHO]",
		Short: "Promote an evaluated image by digest (still gated; an override is audited)",
		Long: `Promotes the image the gate allowed, by digest. The decision must still hold: the
image is verified and decided again now, with the policy in force (a deleted or
replaced attestation, new findings or a changed policy count); a decision made under
another policy, or whose verification summary expired, is signed anew. Exactly the
verified closure is copied — the digest, the platforms that were evaluated (and
BuildKit attestation manifests, checked to hold only in-toto statements), the
signatures and attestations that verified for an allowed signer — then checked in the
destination, and the tag is written last. --dry-run prints that plan.

Without --to the configured promotion rules and the tags recorded at evaluation decide
the destination. An image the gate did not allow, or a --to the promotion rules do not
give, needs --override-reason and --actor (who is promoting: a name your organisation
can trace); the intent is written to the audit log before anything is copied, the
outcome after the tag.`,
		Example: `  attestd promote registry.example.com/staging/app@sha256:… --dry-run
  attestd promote registry.example.com/staging/app@sha256:…
  attestd promote registry.example.com/staging/app@sha256:… --to registry.example.com/prod/app:hotfix \
      --override-reason "INC-1234: hotfix approved by the CAB" --actor jane@example.com`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			if !cfg.Gate.Enabled() {
				return usageError{errors.New("gate.policy is not configured: nothing may be promoted")}
			}
			if override != "" && strings.TrimSpace(actor) == "" {
				return usageError{errors.New("--override-reason needs --actor WHO: an override is audited with who ran it (never just $USER)")}
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
			var tags []string
			if rec.Decision != nil {
				tags = rec.Decision.Tags
			}
			if tg, ok := res.parsed.(name.Tag); ok && len(tags) == 0 {
				tags = []string{tg.TagStr()}
			}
			rules := promotionRules(cfg)
			ruled, why := promote.Plan(rules, rec.Registry+"/"+rec.Repository, rec.Digest, tags)
			edges := ruled
			outside := ""
			if to != "" {
				if _, err := name.NewTag(to, name.StrictValidation); err != nil {
					return usageError{fmt.Errorf("--to %q: want REPO:TAG: %w", to, err)}
				}
				e := promote.Edge{Src: rec.Registry + "/" + rec.Repository + "@" + rec.Digest, Dst: to}
				edges = []promote.Edge{e}
				if !slices.Contains(ruled, e) {
					outside = "--to " + to + " is not a destination the promotion rules give"
				}
			} else if len(edges) == 0 {
				return fmt.Errorf("nothing to promote: %s (give --to REPO:TAG)", why)
			}
			switch {
			case !allowed && override == "":
				why := "it has not been evaluated"
				if rec.Decision != nil {
					why = "the gate denied it: " + strings.Join(rec.Decision.Reasons, "; ")
				}
				return fmt.Errorf("refusing to promote %s: %s (--override-reason TEXT --actor WHO promotes anyway, audited)", rec.Ref, why)
			case outside != "" && override == "":
				return fmt.Errorf("refusing to promote %s: %s (--override-reason TEXT --actor WHO promotes anyway, audited)", rec.Ref, outside)
			}
			var k *sign.Keyless
			if allowed && !dryRun {
				if k, err = newSigner(cfg, rc, log); err != nil {
					return err
				}
			}
			g, err := newGate(cfg, db, rc, k, log)
			if err != nil {
				return err
			}
			t, err := analyze.NewResolver(rc, nil, analyze.WithMaxIndexManifests(cfg.Analysis.MaxIndexManifests)).Resolve(ctx, rec.Ref)
			if err != nil {
				return err
			}
			var ev *gate.Evaluation
			switch {
			case allowed && !dryRun:
				ev, err = g.Recheck(ctx, t, rec)
			default:
				ev, err = g.Check(ctx, t, tags)
				if err == nil && rec.Decision != nil {
					ev.VSA = rec.Decision.VSA // the summary of the stored decision travels with it
				}
				if err == nil && allowed && !ev.Decision.Allow {
					printDecision(r.stdout, ev.Decision)
					return errors.New("the decision no longer holds: promoting would refuse")
				}
			}
			if err != nil {
				return err
			}
			plan, err := g.Plan(ctx, ev, edges)
			if err != nil {
				return err
			}
			fmt.Fprint(r.stdout, plan.String())
			if dryRun {
				return nil
			}
			var ov *gate.Override
			if !allowed || outside != "" {
				reason := override
				if outside != "" {
					reason += " (" + outside + ")"
				}
				ov = &gate.Override{Reason: reason, Actor: "cli:" + actor}
			}
			who := "cli"
			if actor != "" {
				who = "cli:" + actor
			}
			if err := g.Run(store.WithActor(ctx, who), plan, ov); err != nil {
				return err
			}
			if allowed && rec.State == store.StateEvaluated {
				if _, err := db.Transition(store.WithActor(ctx, who), rec.Ref, store.StateEvaluated, store.StatePromoted, func(r *store.Record) error {
					if r.Stages == nil {
						r.Stages = map[string]store.StageResult{}
					}
					r.Stages[pipeline.StagePromote] = store.StageResult{Status: store.StagePassed, Detail: "promoted by " + who, At: time.Now().UTC()}
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
	cmd.Flags().StringVar(&to, "to", "", "destination REPO:TAG instead of the promotion rules (outside them: an override)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan only: what would be copied, and what is left behind and why")
	cmd.Flags().StringVar(&override, "override-reason", "", "promote although the gate did not allow it, or outside the promotion rules (audited with this reason)")
	cmd.Flags().StringVar(&actor, "actor", "", "who is promoting (audited; required with --override-reason)")
	return cmd
}
