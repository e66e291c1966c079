package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// cliStepTimeout bounds each command of the CLI pipeline.
const cliStepTimeout = 5 * time.Minute

// The CLI pipeline's steps, in order (report rows).
const (
	stepSyft       = "syft (one scan: SPDX 2.3 + CycloneDX 1.6)"
	stepAttestSPDX = "cosign attest --type spdxjson"
	stepAttestCDX  = "cosign attest --type cyclonedx"
	stepAttestProv = "cosign attest --type slsaprovenance1"
	stepSign       = "cosign sign"
	stepCopyImage  = "crane copy (image → prod tag)"
	stepCopyRefs   = "crane copy (referrers fallback tag sha256-…)"
	stepVerify     = "cosign verify (prod tag)"
)

var cliSteps = []string{stepSyft, stepAttestSPDX, stepAttestCDX, stepAttestProv, stepSign, stepCopyImage, stepCopyRefs, stepVerify}

// cliPipeline is the shell script attestd replaces, one stock command after
// the other, as CI would run it: syft scans the staging image once into
// SPDX 2.3 and CycloneDX 1.6, cosign attests three predicates and signs the
// image (keyless: Fulcio, TSA and Rekor v2 through the stack's signing
// config, new bundle format, so the registry without a referrers API gets
// the sha256-<hex> fallback tag), crane copies the image to its prod tag and
// then that fallback tag (cosign copy does not carry new-format bundles),
// and, when verify is set, cosign verifies on the prod tag.
//
// The third predicate is SLSA provenance v1 (--type slsaprovenance1), a
// small document naming the image: what a CI script attests besides its
// SBOMs, and attestd attests provenance too. A vulnerability predicate
// would need a grype run, which the CLI pipeline does not have.
func (b *bench) cliPipeline(ctx context.Context, src name.Digest, dst name.Tag, verify bool) (map[string]time.Duration, error) {
	work, err := os.MkdirTemp(b.dir, "cli-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	spdx, cdx, prov := filepath.Join(work, "spdx.json"), filepath.Join(work, "cyclonedx.json"), filepath.Join(work, "provenance.json")
	fallback := "sha256-" + strings.TrimPrefix(src.DigestStr(), "sha256:")
	took := map[string]time.Duration{}
	step := func(name string, f func(ctx context.Context) error) error {
		sctx, cancel := context.WithTimeout(ctx, cliStepTimeout)
		defer cancel()
		start := time.Now()
		if err := f(sctx); err != nil {
			if sctx.Err() != nil && ctx.Err() == nil {
				return fmt.Errorf("%s on %s: no result after %s: %w", name, src, cliStepTimeout, err)
			}
			return fmt.Errorf("%s on %s: %w", name, src, err)
		}
		took[name] = time.Since(start)
		return nil
	}
	cosign := func(args ...string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := b.stk.Cosign(ctx, args...)
			return err
		}
	}
	sign := b.stk.SignArgs(b.token)
	attest := func(typ, predicate string) func(context.Context) error {
		return cosign(append(append([]string{"attest", "--type", typ, "--predicate", predicate}, sign...), src.String())...)
	}
	steps := []cliCmd{
		{stepSyft, func(ctx context.Context) error {
			_, err := b.stk.Syft(ctx, "scan", "registry:"+src.String(), "-q",
				"-o", "spdx-json@2.3="+spdx, "-o", "cyclonedx-json@1.6="+cdx)
			return err
		}},
		{stepAttestSPDX, attest("spdxjson", spdx)},
		{stepAttestCDX, attest("cyclonedx", cdx)},
		{stepAttestProv, func(ctx context.Context) error {
			if err := writeProvenance(prov, src); err != nil {
				return err
			}
			return attest("slsaprovenance1", prov)(ctx)
		}},
		{stepSign, cosign(append(append([]string{"sign"}, sign...), src.String())...)},
		{stepCopyImage, func(ctx context.Context) error {
			_, err := b.stk.Crane(ctx, "copy", src.String(), dst.String())
			return err
		}},
		{stepCopyRefs, func(ctx context.Context) error {
			_, err := b.stk.Crane(ctx, "copy", src.Context().Tag(fallback).String(), dst.Context().Tag(fallback).String())
			return err
		}},
	}
	if verify {
		steps = append(steps, cliCmd{stepVerify, cosign(append(append([]string{"verify"}, b.stk.VerifyArgs(identity)...), dst.String())...)})
	}
	for _, s := range steps {
		if err := step(s.name, s.f); err != nil {
			return took, err
		}
	}
	return took, nil
}

// cliCmd is one step of the CLI pipeline.
type cliCmd struct {
	name string
	f    func(context.Context) error
}

// writeProvenance writes a SLSA provenance v1 predicate for src, as a CI
// job would describe its build.
func writeProvenance(path string, src name.Digest) error {
	b, err := json.Marshal(map[string]any{
		"buildDefinition": map[string]any{
			"buildType":          "https://attestd.dev/bench-e2e/cli-pipeline/v1",
			"externalParameters": map[string]string{"image": src.String()},
		},
		"runDetails": map[string]any{
			"builder":  map[string]string{"id": "https://attestd.dev/bench-e2e/ci"},
			"metadata": map[string]string{"startedOn": time.Now().UTC().Format(time.RFC3339)},
		},
	})
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
