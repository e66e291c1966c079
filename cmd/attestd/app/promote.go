package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"

	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/sign"
	"github.com/attestd/attestd/attest/slsa"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/policy/promote"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// newGate builds the evaluate and promote stages from the configured
// policy, the signing trust root and the promotion rules.
func newGate(cfg *configs.Config, db *store.DB, rc *registry.Client, k *sign.Keyless, log *slog.Logger) (*gateStage, *promoterStage, error) {
	pol, err := loadPolicy(context.Background(), cfg.Gate.Policy)
	if err != nil {
		return nil, nil, err
	}
	_, tr, err := signingTrust(cfg)
	if err != nil {
		return nil, nil, err
	}
	ver, err := newVerifier(cfg, pol, tr, rc)
	if err != nil {
		return nil, nil, err
	}
	rules := make([]promote.Rule, 0, len(cfg.Gate.Promotion))
	for _, r := range cfg.Gate.Promotion {
		rules = append(rules, promote.Rule{From: r.From, To: r.To, Tags: r.Tags, Match: r.Match, Replace: r.Replace})
	}
	if err := promote.Validate(rules); err != nil {
		return nil, nil, err
	}
	g := &gateStage{pol: pol, ver: ver, k: k, db: db, timeout: time.Duration(cfg.Gate.Timeout), log: log, now: time.Now}
	p := &promoterStage{rules: rules, rc: rc, ver: ver, pol: pol, db: db, log: log}
	return g, p, nil
}

// promoterStage copies an allowed digest to production: the manifest or
// index with every platform and layer (mounted when both repositories are
// on one registry), every referrer (signatures, attestations, the VSA),
// verifies the copy in the destination, and writes the tag last. Copies
// and tags are idempotent, so a retry after a crash resumes.
type promoterStage struct {
	rules []promote.Rule
	rc    *registry.Client
	ver   *verify.Verifier
	pol   *policy.Policy
	db    *store.DB
	log   *slog.Logger
}

func (p promoterStage) Promote(ctx context.Context, t *pipeline.Target) error {
	rec, err := p.db.Image(ctx, t.Ref)
	if err != nil {
		return err
	}
	if rec.Decision == nil || !rec.Decision.Allow {
		return pipeline.Permanent(errors.New("promotion without an allow decision"))
	}
	edges, why := promote.Plan(p.rules, rec.Registry+"/"+rec.Repository, rec.Digest, rec.Decision.Tags)
	if len(edges) == 0 {
		return pipeline.Permanent(errors.New("nothing to promote: " + why))
	}
	return p.run(ctx, rec, edges, "")
}

// run carries out edges for rec; override is the reason a human gave to
// promote against (or without) the gate's decision.
func (p promoterStage) run(ctx context.Context, rec *store.Record, edges []promote.Edge, override string) error {
	srcRepo, err := p.rc.ParseRepository(rec.Registry + "/" + rec.Repository)
	if err != nil {
		return pipeline.Permanent(err)
	}
	subjects := []string{rec.Digest}
	for _, c := range rec.Children {
		subjects = append(subjects, c.Digest)
	}
	byRepo := map[string][]string{}
	var repos []string
	for _, e := range edges {
		if !strings.HasSuffix(e.Src, "@"+rec.Digest) {
			return pipeline.Permanent(fmt.Errorf("edge %s is not for the evaluated digest %s", e, rec.Digest))
		}
		dst, tag, ok := cutTag(e.Dst)
		if !ok {
			return pipeline.Permanent(fmt.Errorf("edge %s: destination is not repo:tag", e))
		}
		if _, seen := byRepo[dst]; !seen {
			repos = append(repos, dst)
		}
		byRepo[dst] = append(byRepo[dst], tag)
	}
	for _, dstName := range repos {
		dst, err := p.rc.ParseRepository(dstName)
		if err != nil {
			return pipeline.Permanent(err)
		}
		if _, err := p.rc.Copy(ctx, srcRepo.Digest(rec.Digest), dst); err != nil {
			return err
		}
		for _, s := range subjects {
			refs, err := p.rc.Referrers(ctx, srcRepo.Digest(s), "")
			if err != nil && !registry.IsNotFound(err) {
				return err
			}
			for _, r := range refs {
				if _, err := p.rc.Copy(ctx, srcRepo.Digest(r.Digest.String()), dst); err != nil {
					return fmt.Errorf("referrer %s of %s: %w", r.Digest, s, err)
				}
			}
			// cosign's classic layout: signatures, attestations and
			// attached SBOMs under sha256-<hex>.sig/.att/.sbom.
			for _, tagOf := range []func(name.Reference, ...ociremote.Option) (name.Tag, error){
				ociremote.SignatureTag, ociremote.AttestationTag, ociremote.SBOMTag} {
				tag, err := tagOf(srcRepo.Digest(s))
				if err != nil {
					return err
				}
				if _, err := p.rc.CopyTag(ctx, tag, dst); err != nil {
					return fmt.Errorf("%s of %s: %w", tag.TagStr(), s, err)
				}
			}
		}
		if override == "" {
			if err := p.verifyCopy(ctx, dst, rec, subjects); err != nil {
				return err
			}
		}
		// The tag last: only a complete, verified copy is ever visible by tag.
		for _, tag := range byRepo[dstName] {
			if err := p.rc.Tag(ctx, dst.Digest(rec.Digest), dst.Tag(tag)); err != nil {
				return err
			}
			details := map[string]string{"from": rec.Ref, "to": dst.Tag(tag).String(), "digest": rec.Digest}
			action := store.AuditPromotion
			if override != "" {
				action, details["reason"] = store.AuditOverride, override
			}
			if err := p.db.Audit(ctx, store.AuditEntry{Actor: actorOf(ctx), Action: action, Subject: rec.Ref,
				Repo: rec.Registry + "/" + rec.Repository, Digest: rec.Digest, Details: details}); err != nil {
				return err
			}
			p.log.InfoContext(ctx, "promoted", "digest", rec.Ref, "to", dst.Tag(tag).String(), "override", override != "")
		}
	}
	return nil
}

// verifyCopy checks in the destination what the gate checked in staging:
// every required attestation (and the VSA) verifies for every subject.
func (p promoterStage) verifyCopy(ctx context.Context, dst name.Repository, rec *store.Record, subjects []string) error {
	for i, s := range subjects {
		res, err := p.ver.Verify(ctx, dst.Digest(s).String())
		if err != nil {
			return err
		}
		want := slices.Clone(p.pol.Require)
		if i == 0 {
			want = append(want, slsa.VSAPredicateType)
			if len(subjects) > 1 { // an index carries signature and provenance
				want = slices.DeleteFunc(want, func(pt string) bool {
					return pt != policy.Aliases["signature"] && pt != policy.Aliases["provenance"] && pt != slsa.VSAPredicateType
				})
			}
		}
		var missing []string
		for _, pt := range want {
			if _, ok := res.Verified[pt]; !ok {
				missing = append(missing, pt)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("the copy in %s does not verify for %s: missing %s", dst, s, strings.Join(missing, ", "))
		}
	}
	return nil
}

func cutTag(ref string) (repo, tag string, ok bool) {
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}

type actorCtxKey struct{}

func withPromoteActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(store.WithActor(ctx, actor), actorCtxKey{}, actor)
}

func actorOf(ctx context.Context) string {
	if a, ok := ctx.Value(actorCtxKey{}).(string); ok {
		return a
	}
	return "pipeline"
}
