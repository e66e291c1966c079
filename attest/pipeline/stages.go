package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/attestd/attestd/store"
)

// Target is the image a job works on, as resolved from the registry.
type Target struct {
	// Job is the job driving Ref through the stages (0 outside a job).
	// A stage redone after a crash sees the same Job.
	Job       uint64
	Ref       string        // host/repo@sha256:…
	MediaType string        // manifest media type
	Children  []store.Child // platform manifests when Ref is an index
	// NotImage, when set, says why Ref is not a runnable image (a
	// signature, attestation, SBOM or other referrer artifact that intake
	// could not tell apart): the job ends after resolve and no later stage
	// runs.
	NotImage string
	// Manifest is Ref's manifest as resolved (digest-checked).
	Manifest []byte
	// Tags pointing at Ref when the job started (from intake's tag history).
	Tags []string
	// Source is the intake source that reported Ref; Pusher who pushed it,
	// when the event said.
	Source, Pusher string
	// Artifacts are the documents analysis recorded (filled in for the
	// stages after analysis).
	Artifacts []store.Artifact
}

// Analysis is what the analysis stage produced, recorded on the digest in
// the same transition that marks it analysed.
type Analysis struct {
	Artifacts []store.Artifact
	Facts     []store.Facts
}

// The stage interfaces. app injects implementations; a nil stage is "not
// built yet" and reported as skipped, never as passed. They grow richer
// results as the analysis, signing and promotion issues land.
type (
	// Resolver checks that Ref still exists and describes it.
	Resolver interface {
		Resolve(ctx context.Context, ref string) (*Target, error)
	}
	// Analyzer produces SBOMs, hardening facts and vulnerabilities.
	Analyzer interface {
		Analyze(ctx context.Context, t *Target) (*Analysis, error)
	}
	// Signer signs the analysis results and attaches them to the registry.
	Signer interface {
		Sign(ctx context.Context, t *Target) error
	}
	// Evaluator verifies signatures and attestations and evaluates the policy.
	Evaluator interface {
		Evaluate(ctx context.Context, t *Target) (Decision, error)
	}
	// Promoter copies an allowed image, with its referrers, to production.
	Promoter interface {
		Promote(ctx context.Context, t *Target) error
	}
)

// Decision is the policy verdict (stored with the record, so a crash between
// evaluation and promotion cannot lose a deny).
type Decision = store.Decision

// Stages are the implementations app wires in.
type Stages struct {
	Resolver  Resolver
	Analyzer  Analyzer
	Signer    Signer
	Evaluator Evaluator
	Promoter  Promoter
}

// Stage names as recorded in store.Record.Stages and printed by attestd.
const (
	StageResolve  = "resolve"
	StageAnalyse  = "analyse"
	StageSign     = "sign"
	StageEvaluate = "evaluate"
	StagePromote  = "promote"
)

// Order is the order stages run and are reported in.
var Order = []string{StageResolve, StageAnalyse, StageSign, StageEvaluate, StagePromote}

// notBuilt is the Detail of a stage with no implementation.
const notBuilt = "not configured"

// permanent marks an error that retrying cannot fix.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent wraps err so the job is buried at once instead of retried (e.g.
// the manifest was deleted, the reference is malformed).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// PermanentIf makes err permanent when it matches target (errors.Is),
// adding hint (what the operator must change): for failures whose cause
// stays in place until someone acts, such as an image flooded with
// referrers.
func PermanentIf(err, target error, hint string) error {
	if err == nil || IsPermanent(err) || !errors.Is(err, target) {
		return err
	}
	return permanent{fmt.Errorf("%w (%s)", err, hint)}
}

// IsPermanent reports whether err was wrapped by Permanent.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}
