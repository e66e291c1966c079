package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
	"gopkg.in/yaml.v3"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/sign"
	"github.com/attestd/attestd/attest/slsa"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/sbom/harden"
	"github.com/attestd/attestd/sbom/vuln"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// loadPolicy reads the policy file and every Rego module it names
// (relative to the policy file).
func loadPolicy(ctx context.Context, file string) (*policy.Policy, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("gate.policy: %w", err)
	}
	var refs struct {
		Rego []struct {
			File string `yaml:"file"`
		} `yaml:"rego"`
	}
	_ = yaml.Unmarshal(b, &refs) // Load reports syntax errors
	files := map[string][]byte{}
	for _, m := range refs.Rego {
		if m.File == "" {
			continue
		}
		p := m.File
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(file), p)
		}
		if files[m.File], err = os.ReadFile(p); err != nil {
			return nil, fmt.Errorf("gate.policy %s: rego module: %w", file, err)
		}
	}
	pol, err := policy.Load(ctx, b, files)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return pol, nil
}

// newVerifier verifies against the signing trust root, accepting every
// signer the policy names (per-type restrictions are the policy's).
func newVerifier(cfg *configs.Config, pol *policy.Policy, tr root.TrustedMaterial, rc *registry.Client) (*verify.Verifier, error) {
	var ids []verify.Identity
	for _, s := range pol.Identities() {
		ids = append(ids, verify.Identity{Issuer: s.Issuer, IssuerRegex: s.IssuerRegex, Subject: s.Subject, SubjectRegex: s.SubjectRegex})
	}
	o := verify.Options{TransparencyLog: 1, SignedTimestamps: cfg.Gate.SignedTimestamps}
	if cfg.Gate.TransparencyLog != nil {
		o.TransparencyLog = *cfg.Gate.TransparencyLog
	}
	return verify.New(tr, ids, rc, o)
}

// gateStage is the evaluate stage: verify every signature and attestation
// of the digest (and each platform) against the policy's signers, build
// the policy input from what verified — and nothing else — decide, and
// sign the decision as a SLSA verification summary attached to the digest.
type gateStage struct {
	pol     *policy.Policy
	ver     *verify.Verifier
	k       *sign.Keyless
	db      *store.DB
	timeout time.Duration
	log     *slog.Logger
	now     func() time.Time
}

func (g gateStage) Evaluate(ctx context.Context, t *pipeline.Target) (pipeline.Decision, error) {
	host, repo, digest, err := store.SplitRef(t.Ref)
	if err != nil {
		return pipeline.Decision{}, pipeline.Permanent(err)
	}
	tags, err := g.db.TagsOf(ctx, host+"/"+repo, digest)
	if err != nil {
		return pipeline.Decision{}, err
	}
	ectx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	in, inputs, err := buildInput(ectx, g.ver, t, tags, g.now())
	if err != nil && ectx.Err() == nil {
		return pipeline.Decision{}, err // a registry error: retried, never a pass
	}
	d := g.pol.Evaluate(ectx, in) // a timeout is a deny
	if ctx.Err() != nil {
		return pipeline.Decision{}, ctx.Err() // shutting down: evaluate again later
	}
	vsaDigest, err := g.signVSA(ctx, t, d, inputs)
	if err != nil {
		return pipeline.Decision{}, fmt.Errorf("verification summary: %w", err)
	}
	out := pipeline.Decision{Allow: d.Allow, Mode: d.Mode, PolicyDigest: d.PolicyDigest, Time: d.Time, Tags: tags, VSA: vsaDigest}
	for _, v := range d.Violations {
		out.Reasons = append(out.Reasons, v.String())
	}
	for _, v := range d.Warnings {
		out.Warnings = append(out.Warnings, v.String())
	}
	if d.Mode == policy.ModeDryRun {
		out.Reasons = append(out.Reasons, "dry-run: the policy is evaluated and recorded, nothing is promoted")
	}
	g.log.InfoContext(ctx, "evaluated", "digest", t.Ref, "allow", out.Allow, "mode", d.Mode, "policy", d.PolicyDigest, "reasons", len(out.Reasons))
	return out, nil
}

// signVSA signs the decision and attaches it to the digest. Its content
// differs per evaluation (the time), so a re-evaluation attaches another.
func (g gateStage) signVSA(ctx context.Context, t *pipeline.Target, d policy.Decision, inputs []slsa.VSAAttestation) (string, error) {
	now := d.Time
	host, repo, digest, _ := store.SplitRef(t.Ref)
	pred, err := slsa.VSAPredicate(slsa.VSAInput{
		VerifierID: g.pol.VSA.VerifierID, VerifierVersion: version, TimeVerified: now,
		ResourceURI: "oci://" + t.Ref, PolicyURI: g.pol.VSA.PolicyURI, PolicyDigest: d.PolicyDigest,
		Inputs: inputs, Passed: d.Allow, VerifiedLevels: g.pol.VSA.Levels, ValidUntil: now.Add(time.Duration(g.pol.VSA.Validity)),
	})
	if err != nil {
		return "", err
	}
	st, err := attest.Statement(host+"/"+repo, digest, slsa.VSAPredicateType, pred)
	if err != nil {
		return "", err
	}
	sess, err := g.k.Session()
	if err != nil {
		return "", err
	}
	if err := sess.AttestStatement(ctx, t.Ref, slsa.VSAPredicateType, st); err != nil {
		return "", err
	}
	if err := auditWritten(ctx, g.db, t.Ref, host+"/"+repo, sess.Written()); err != nil {
		return "", err
	}
	sum := sha256.Sum256(st)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// buildInput verifies the digest and, for an index, every platform, and
// fills the policy input from the verified predicates only. A subject that
// cannot be read from the registry is an error; a bundle that does not
// verify is listed as rejected and contributes nothing.
func buildInput(ctx context.Context, ver *verify.Verifier, t *pipeline.Target, tags []string, now time.Time) (policy.Input, []slsa.VSAAttestation, error) {
	host, repo, digest, err := store.SplitRef(t.Ref)
	if err != nil {
		return policy.Input{}, nil, err
	}
	in := policy.Input{Version: policy.InputVersion, Time: now.UTC(),
		Image: policy.Image{Ref: t.Ref, Registry: host, Repository: repo, Digest: digest, MediaType: t.MediaType, Tags: tags}}
	if in.Image.Tags == nil {
		in.Image.Tags = []string{}
	}
	type subj struct{ digest, kind, platform string }
	subjects := []subj{{digest, policy.KindImage, ""}}
	if len(t.Children) > 0 {
		subjects[0].kind = policy.KindIndex
		for _, c := range t.Children {
			subjects = append(subjects, subj{c.Digest, policy.KindPlatform, c.Platform})
		}
	}
	var inputs []slsa.VSAAttestation
	for _, s := range subjects {
		ref := host + "/" + repo + "@" + s.digest
		res, err := ver.Verify(ctx, ref)
		if err != nil {
			return in, inputs, err
		}
		ps := policy.Subject{Digest: s.digest, Kind: s.kind, Platform: s.platform, Attestations: map[string]policy.Signed{}}
		for _, r := range res.Rejected {
			ps.Rejected = append(ps.Rejected, policy.Rejected{Bundle: r.Bundle, Reason: r.Reason})
		}
		for _, pt := range res.PredicateTypes() {
			ev := res.Verified[pt]
			if pt == slsa.VSAPredicateType {
				continue // an earlier decision is not evidence for this one
			}
			ps.Attestations[pt] = policy.Signed{Issuer: ev.Issuer, Subject: ev.Subject}
			if strings.HasPrefix(ev.Bundle, "sha256:") {
				inputs = append(inputs, slsa.VSAAttestation{URI: "oci://" + host + "/" + repo + "@" + ev.Bundle, Digest: ev.Bundle})
			}
			// Several verified reports of one type (a digest analysed again):
			// every one is read, and the facts combine to the worst case.
			for _, e := range res.All[pt] {
				if err := addFacts(&ps, pt, e.Predicate, now); err != nil {
					// Verified but unreadable: no fact of this type stands
					// (not even another report's), so a rule needing it
					// denies; say why.
					ps.Rejected = append(ps.Rejected, policy.Rejected{Bundle: e.Bundle, Reason: fmt.Sprintf("%s predicate: %v", pt, err)})
					dropFacts(&ps, pt)
					break
				}
			}
		}
		in.Subjects = append(in.Subjects, ps)
	}
	return in, inputs, nil
}

// addFacts reads the facts a policy uses out of one verified predicate.
func addFacts(s *policy.Subject, predicateType string, pred json.RawMessage, now time.Time) error {
	switch predicateType {
	case attest.PredicateHardening:
		var r harden.Report
		if err := json.Unmarshal(pred, &r); err != nil {
			return err
		}
		h := &policy.HardeningFacts{Passed: []string{}, Failed: []string{}}
		for _, c := range r.Checks {
			switch c.Status {
			case harden.Pass:
				h.Passed = append(h.Passed, c.ID)
			case harden.Fail:
				h.Failed = append(h.Failed, c.ID)
			}
		}
		if prev := s.Hardening; prev != nil { // worst case: failed anywhere, passed everywhere
			h.Failed = append(h.Failed, prev.Failed...)
			h.Passed = slices.DeleteFunc(h.Passed, func(id string) bool { return !slices.Contains(prev.Passed, id) })
		}
		slices.Sort(h.Failed)
		h.Failed = slices.Compact(h.Failed)
		h.Passed = slices.DeleteFunc(h.Passed, func(id string) bool { return slices.Contains(h.Failed, id) })
		s.Hardening = h
	case vuln.PredicateType:
		v, err := vulnFacts(pred, now)
		if err != nil {
			return err
		}
		if prev := s.Vulnerabilities; prev == nil || v.ScannedAt.After(prev.ScannedAt) {
			s.Vulnerabilities = v // the newest scan (the newest database) decides
		}
	case slsa.PredicateType:
		var p struct {
			BuildDefinition struct {
				ExternalParameters struct {
					Labels map[string]string `json:"labels"`
				} `json:"externalParameters"`
				ResolvedDependencies []struct {
					URI string `json:"uri"`
				} `json:"resolvedDependencies"`
			} `json:"buildDefinition"`
			RunDetails struct {
				Builder struct {
					ID string `json:"id"`
				} `json:"builder"`
			} `json:"runDetails"`
		}
		if err := json.Unmarshal(pred, &p); err != nil {
			return err
		}
		pf := &policy.ProvenanceFacts{BuilderID: p.RunDetails.Builder.ID}
		for _, d := range p.BuildDefinition.ResolvedDependencies {
			if u, ok := strings.CutPrefix(d.URI, "git+"); ok {
				u, _, _ = strings.Cut(u, "@")
				pf.SourceRepositories = append(pf.SourceRepositories, u)
			}
		}
		if src := p.BuildDefinition.ExternalParameters.Labels["org.opencontainers.image.source"]; src != "" && !slices.Contains(pf.SourceRepositories, src) {
			pf.SourceRepositories = append(pf.SourceRepositories, src)
		}
		s.Provenance = pf
		if s.BaseImage == "" {
			s.BaseImage = p.BuildDefinition.ExternalParameters.Labels[harden.LabelBaseName]
		}
	case attest.PredicateSPDX:
		var p struct {
			Packages []json.RawMessage `json:"packages"`
		}
		if err := json.Unmarshal(pred, &p); err != nil {
			return err
		}
		s.SBOM = &policy.SBOMFacts{Packages: len(p.Packages)}
	}
	return nil
}

// dropFacts removes what addFacts read for predicateType.
func dropFacts(s *policy.Subject, predicateType string) {
	switch predicateType {
	case attest.PredicateHardening:
		s.Hardening = nil
	case vuln.PredicateType:
		s.Vulnerabilities = nil
	case slsa.PredicateType:
		s.Provenance, s.BaseImage = nil, ""
	case attest.PredicateSPDX:
		s.SBOM = nil
	}
}

// vulnFacts reads the counts and findings of a verified vuln predicate.
// Findings an exception suppressed count again when the exception has
// expired since the scan: an expiry never waits for a re-scan.
func vulnFacts(pred json.RawMessage, now time.Time) (*policy.VulnFacts, error) {
	var p struct {
		Invocation struct {
			Parameters struct {
				Counts     vuln.Counts        `json:"counts"`
				Suppressed []vuln.Suppression `json:"suppressed"`
			} `json:"parameters"`
		} `json:"invocation"`
		Scanner struct {
			DB struct {
				URI string `json:"uri"`
			} `json:"db"`
			Result struct {
				Matches []struct {
					Vulnerability struct {
						ID string `json:"id"`
					} `json:"vulnerability"`
					Artifact struct {
						Name    string `json:"name"`
						Version string `json:"version"`
					} `json:"artifact"`
				} `json:"matches"`
			} `json:"result"`
		} `json:"scanner"`
		Metadata struct {
			ScanFinishedOn time.Time `json:"scanFinishedOn"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(pred, &p); err != nil {
		return nil, err
	}
	c := p.Invocation.Parameters.Counts
	if c.UnknownAs == "" {
		return nil, errors.New("no counts in invocation.parameters (not written by attestd?)")
	}
	v := &policy.VulnFacts{Critical: c.Critical, High: c.High, Medium: c.Medium, Low: c.Low, Negligible: c.Negligible,
		Unknown: c.Unknown, UnknownAs: c.UnknownAs, DB: p.Scanner.DB.URI, ScannedAt: p.Metadata.ScanFinishedOn, Findings: []string{}}
	for _, m := range p.Scanner.Result.Matches {
		v.Findings = append(v.Findings, m.Vulnerability.ID+" "+m.Artifact.Name+"@"+m.Artifact.Version)
	}
	for _, sp := range p.Invocation.Parameters.Suppressed {
		exp, err := time.Parse(time.RFC3339, sp.Expires)
		if sp.By != "exception" || err != nil || now.Before(exp) {
			continue
		}
		switch sp.Severity {
		case "critical":
			v.Critical++
		case "high":
			v.High++
		case "medium":
			v.Medium++
		case "low":
			v.Low++
		case "negligible":
			v.Negligible++
		default:
			v.Unknown++
		}
		v.Findings = append(v.Findings, sp.Vulnerability+" "+sp.Package+"@"+sp.Version+" (exception expired "+sp.Expires+")")
	}
	slices.Sort(v.Findings)
	return v, nil
}
