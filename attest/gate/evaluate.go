package gate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/slsa"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/store"
)

// Evaluation is one verification of a digest (and each platform of an
// index), the policy input built from what verified, and the decision.
type Evaluation struct {
	Registry, Repository, Digest string
	MediaType                    string
	Subjects                     []Verified
	Input                        policy.Input
	Decision                     policy.Decision
	// Inputs are the bundles the facts were read from: the verification
	// summary's inputAttestations.
	Inputs []slsa.VSAAttestation
	// VSA is the verification summary in force (the sha256 of its
	// statement): of the summaries attached, a promotion copies this one.
	VSA string

	manifest []byte // as resolved, when the target carried it
}

// Ref is host/repo@digest.
func (e *Evaluation) Ref() string { return e.Registry + "/" + e.Repository + "@" + e.Digest }

// Verified is what verified for one subject.
type Verified struct {
	Digest   string
	Kind     string // policy.KindImage, KindIndex or KindPlatform
	Platform string
	Result   verify.Result
}

// Evaluate is the pipeline's evaluate stage: verify, decide, and sign the
// decision as a SLSA verification summary attached to the digest.
func (g *Gate) Evaluate(ctx context.Context, t *pipeline.Target) (pipeline.Decision, error) {
	tags := t.Tags // as resolved when the job started
	ev, err := g.Check(ctx, t, tags)
	if err != nil {
		return pipeline.Decision{}, err
	}
	vsa, err := g.signVSA(ctx, ev)
	if err != nil {
		return pipeline.Decision{}, fmt.Errorf("verification summary: %w", err)
	}
	out := decisionOf(ev.Decision, tags, vsa)
	for _, in := range ev.Inputs {
		out.Inputs = append(out.Inputs, in.Digest)
	}
	g.o.Logger.InfoContext(ctx, "evaluated", "digest", t.Ref, "allow", out.Allow, "mode", ev.Decision.Mode, "policy", ev.Decision.PolicyDigest, "reasons", len(out.Reasons))
	return out, nil
}

func decisionOf(d policy.Decision, tags []string, vsa string) pipeline.Decision {
	out := pipeline.Decision{Allow: d.Allow, Mode: d.Mode, PolicyDigest: d.PolicyDigest, Time: d.Time, Tags: tags, VSA: vsa}
	for _, v := range d.Violations {
		out.Reasons = append(out.Reasons, v.String())
	}
	for _, v := range d.Warnings {
		out.Warnings = append(out.Warnings, v.String())
	}
	if d.Mode == policy.ModeDryRun {
		out.Reasons = append(out.Reasons, "dry-run: the policy is evaluated and recorded, nothing is promoted")
	}
	return out
}

// Check verifies t (the digest and, for an index, every platform) and
// applies the policy, signing nothing: `attestd policy test --image` and
// a promotion that must re-decide use it. A registry error is returned
// (retry, never a pass); running out of time is a deny.
func (g *Gate) Check(ctx context.Context, t *pipeline.Target, tags []string) (*Evaluation, error) {
	host, repo, digest, err := store.SplitRef(t.Ref)
	if err != nil {
		return nil, pipeline.Permanent(err)
	}
	ectx, cancel := context.WithTimeout(ctx, g.o.Timeout)
	defer cancel()
	ev := &Evaluation{Registry: host, Repository: repo, Digest: digest, MediaType: t.MediaType, manifest: t.Manifest}
	now := g.o.Now().UTC()
	subjects := []Verified{{Digest: digest, Kind: policy.KindImage}}
	if len(t.Children) > 0 {
		subjects[0].Kind = policy.KindIndex
		for _, c := range t.Children {
			subjects = append(subjects, Verified{Digest: c.Digest, Kind: policy.KindPlatform, Platform: c.Platform})
		}
	}
	for _, s := range subjects {
		res, err := g.o.Verifier.Verify(ectx, host+"/"+repo+"@"+s.Digest)
		if err != nil {
			if ectx.Err() != nil && ctx.Err() == nil {
				break // out of time: decide on what verified so far (a deny)
			}
			return nil, err
		}
		s.Result = res
		ev.Subjects = append(ev.Subjects, s)
	}
	ev.Input, ev.Inputs = g.input(ev, tags, now)
	ev.Decision = g.o.Policy.Evaluate(ectx, ev.Input) // a timeout is a deny
	if ctx.Err() != nil {
		return nil, ctx.Err() // shutting down: evaluate again later
	}
	incomplete(ev)
	return ev, nil
}

// incomplete denies, in every policy mode, a digest some subject of which
// had attachments the verifier did not consider (more than it reads):
// what was left unread could be anything, so nothing is decided on part.
func incomplete(ev *Evaluation) {
	for _, s := range ev.Subjects {
		if s.Result.Incomplete == "" {
			continue
		}
		ev.Decision.Allow = false
		ev.Decision.Violations = append(ev.Decision.Violations, policy.Violation{Rule: "verify.referrers", Subject: s.Digest, Message: s.Result.Incomplete})
	}
}

// signVSA signs the decision and attaches it to the digest. Its content
// differs per evaluation (the time), so a re-evaluation attaches another.
// It states the true result: PASSED only when no rule was violated (a
// warn-mode policy that lets violations through still says FAILED), and
// verifiedLevels only with PASSED.
func (g *Gate) signVSA(ctx context.Context, ev *Evaluation) (string, error) {
	if g.o.Attester == nil {
		return "", fmt.Errorf("no signer for the verification summary")
	}
	st, err := g.vsaStatement(ev)
	if err != nil {
		return "", err
	}
	if err := g.o.Attester.AttestStatement(ctx, ev.Ref(), slsa.VSAPredicateType, st); err != nil {
		return "", err
	}
	sum := sha256.Sum256(st)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

func (g *Gate) vsaStatement(ev *Evaluation) ([]byte, error) {
	d, pol := ev.Decision, g.o.Policy
	passed := passed(d)
	var levels []string
	if passed {
		levels = pol.VSA.Levels
	}
	pred, err := slsa.VSAPredicate(slsa.VSAInput{
		VerifierID: pol.VSA.VerifierID, VerifierVersion: g.o.Version, TimeVerified: d.Time,
		ResourceURI: "oci://" + ev.Ref(), PolicyURI: pol.VSA.PolicyURI, PolicyDigest: d.PolicyDigest,
		Inputs: ev.Inputs, Passed: passed, VerifiedLevels: levels, ValidUntil: d.Time.Add(time.Duration(pol.VSA.Validity)),
	})
	if err != nil {
		return nil, err
	}
	return attest.Statement(ev.Registry+"/"+ev.Repository, ev.Digest, slsa.VSAPredicateType, pred)
}

// passed is the verification result a summary states: every rule held.
func passed(d policy.Decision) bool {
	return len(d.Violations) == 0 && len(d.Warnings) == 0
}

// inputURI names a bundle the facts came from.
func inputURI(host, repo string, e verify.Evidence) string {
	if e.Classic != "" {
		return "oci://" + host + "/" + repo + ":" + e.Classic + "#" + e.Bundle
	}
	return "oci://" + host + "/" + repo + "@" + e.Bundle
}

func isDigest(s string) bool { return strings.HasPrefix(s, "sha256:") && len(s) == 71 }
