package gate

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/slsa"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/sbom/harden"
	"github.com/attestd/attestd/sbom/vuln"
)

// ClockSkew is how far in the future a signed scan time may lie before the
// report is refused: a scan that claims to come from the future would
// otherwise be "the newest" forever.
const ClockSkew = 5 * time.Minute

// input fills the policy input from the verified predicates only, and
// lists every bundle a fact was read from. A bundle that did not verify,
// or verified for a signer not allowed for its type, is listed as rejected
// and contributes nothing.
func (g *Gate) input(ev *Evaluation, tags []string, now time.Time) (policy.Input, []slsa.VSAAttestation) {
	in := policy.Input{Version: policy.InputVersion, Time: now,
		Image: policy.Image{Ref: ev.Ref(), Registry: ev.Registry, Repository: ev.Repository, Digest: ev.Digest, MediaType: ev.MediaType, Tags: slices.Clone(tags)}}
	if in.Image.Tags == nil {
		in.Image.Tags = []string{}
	}
	var inputs []slsa.VSAAttestation
	seen := map[string]bool{}
	for _, s := range ev.Subjects {
		res := s.Result
		ps := policy.Subject{Digest: s.Digest, Kind: s.Kind, Platform: s.Platform, Attestations: map[string]policy.Signed{}}
		for _, r := range res.Rejected {
			ps.Rejected = append(ps.Rejected, policy.Rejected{Bundle: r.Bundle, Reason: r.Reason})
		}
		reject := func(e verify.Evidence, format string, args ...any) {
			ps.Rejected = append(ps.Rejected, policy.Rejected{Bundle: e.Bundle, Reason: fmt.Sprintf(format, args...)})
		}
		for _, pt := range res.PredicateTypes() {
			if pt == slsa.VSAPredicateType {
				continue // an earlier decision is not evidence for this one
			}
			e := res.Verified[pt]
			ps.Attestations[pt] = policy.Signed{Issuer: e.Issuer, Subject: e.Subject}
			for _, e := range res.All[pt] {
				if uri := inputURI(ev.Registry, ev.Repository, e); !seen[uri] && isDigest(e.Bundle) {
					seen[uri] = true
					inputs = append(inputs, slsa.VSAAttestation{URI: uri, Digest: e.Bundle})
				}
			}
			if pt == vuln.PredicateType {
				if v, err := g.vulnFacts(res.All[pt], now, reject); err != nil {
					reject(e, "%s predicate: %v", pt, err)
				} else {
					ps.Vulnerabilities = v
				}
				continue
			}
			// Several verified reports of one type (a digest analysed again):
			// every one is read, and the facts combine to the worst case.
			for _, e := range res.All[pt] {
				if err := g.addFacts(&ps, pt, e); err != nil {
					// Verified but unreadable: no fact of this type stands
					// (not even another report's), so a rule needing it
					// denies; say why.
					reject(e, "%s predicate: %v", pt, err)
					dropFacts(&ps, pt)
					break
				}
			}
		}
		in.Subjects = append(in.Subjects, ps)
	}
	return in, inputs
}

// addFacts reads the facts a policy uses out of one verified predicate.
func (g *Gate) addFacts(s *policy.Subject, predicateType string, e verify.Evidence) error {
	pred, signer := e.Predicate, policy.Signed{Issuer: e.Issuer, Subject: e.Subject}
	switch predicateType {
	case attest.PredicateHardening:
		passed, failed, err := harden.ReadReport(pred)
		if err != nil {
			return err
		}
		h := &policy.HardeningFacts{Passed: passed, Failed: failed}
		if prev := s.Hardening; prev != nil { // worst case: failed anywhere, passed everywhere
			h.Failed = append(h.Failed, prev.Failed...)
			h.Passed = slices.DeleteFunc(h.Passed, func(id string) bool { return !slices.Contains(prev.Passed, id) })
		}
		slices.Sort(h.Failed)
		h.Failed = slices.Compact(h.Failed)
		h.Passed = slices.DeleteFunc(h.Passed, func(id string) bool { return slices.Contains(h.Failed, id) })
		s.Hardening = h
	case slsa.PredicateType:
		r, err := slsa.ReadProvenance(pred)
		if err != nil {
			return err
		}
		pf := &policy.ProvenanceFacts{BuilderID: r.BuilderID, BuildType: r.BuildType, Observed: r.Observed,
			SourceRepositories: r.Sources, BaseImages: r.BaseImages}
		var claims *policy.Claims
		if r.Observed {
			claims = &policy.Claims{SourceRepositories: r.ClaimedSources, BaseImage: r.ClaimedBaseImage, BuilderID: r.ClaimedBuilderID}
		}
		pf.Signer = signer
		if s.Provenance == nil || (s.Provenance.Observed && !pf.Observed) {
			s.Provenance = pf // a builder's own provenance outranks attestd's observation
		}
		if claims != nil {
			s.Claims = mergeClaims(s.Claims, claims)
		}
	case attest.PredicateSPDX:
		n, err := g.spdxPackages(e)
		if err != nil {
			return err
		}
		s.SBOM = &policy.SBOMFacts{Packages: n}
	}
	return nil
}

func countSPDXPackages(pred json.RawMessage) (int, error) {
	var p struct {
		Packages []json.RawMessage `json:"packages"`
	}
	if err := json.Unmarshal(pred, &p); err != nil {
		return 0, err
	}
	return len(p.Packages), nil
}

// maxRememberedCounts bounds the remembered SPDX package counts (a few
// dozen bytes each); when full, they are forgotten and read again.
const maxRememberedCounts = 1 << 14

// spdxPackages counts the packages of e's SPDX predicate, remembered by the
// digest of the signed statement it is part of, which fixes every byte of
// it: evaluation, the re-decision at promotion and the check in prod parse
// a megabyte SBOM once. A predicate that does not parse is not remembered.
func (g *Gate) spdxPackages(e verify.Evidence) (int, error) {
	if e.Statement == "" {
		return countSPDXPackages(e.Predicate)
	}
	g.packagesMu.Lock()
	n, ok := g.packages[e.Statement]
	g.packagesMu.Unlock()
	if ok {
		return n, nil
	}
	n, err := countSPDXPackages(e.Predicate)
	if err != nil {
		return 0, err
	}
	g.packagesMu.Lock()
	if g.packages == nil || len(g.packages) >= maxRememberedCounts {
		g.packages = map[string]int{}
	}
	g.packages[e.Statement] = n
	g.packagesMu.Unlock()
	return n, nil
}

// dropFacts removes what addFacts read for predicateType.
func dropFacts(s *policy.Subject, predicateType string) {
	switch predicateType {
	case attest.PredicateHardening:
		s.Hardening = nil
	case slsa.PredicateType:
		s.Provenance, s.Claims = nil, nil
	case attest.PredicateSPDX:
		s.SBOM = nil
	}
}

// vulnFacts picks the vulnerability report that decides among the verified
// ones: attestd's own newest scan when there is one, else the newest. A
// report whose scan time lies in the future is refused (it would win every
// comparison); one that cannot be read fails the whole type, so a rule
// needing vulnerability facts denies.
func (g *Gate) vulnFacts(evs []verify.Evidence, now time.Time, reject func(verify.Evidence, string, ...any)) (*policy.VulnFacts, error) {
	var best *policy.VulnFacts
	bestOwn := false
	for _, e := range evs {
		v, err := readVulnPredicate(e.Predicate, now)
		if err != nil {
			return nil, fmt.Errorf("bundle %s: %w", e.Bundle, err)
		}
		if v.ScannedAt.After(now.Add(ClockSkew)) {
			reject(e, "%s predicate: scan finished on %s, in the future (now %s): refused", vuln.PredicateType, v.ScannedAt.Format(time.RFC3339), now.Format(time.RFC3339))
			continue
		}
		own := g.o.Own(e.Issuer, e.Subject)
		switch {
		case best == nil, own && !bestOwn, own == bestOwn && v.ScannedAt.After(best.ScannedAt):
			best, bestOwn = v, own
		}
	}
	if best == nil {
		return nil, errors.New("no usable report")
	}
	return best, nil
}

// readVulnPredicate reads the counts and findings of a verified vuln
// predicate. Findings an exception suppressed count again when the
// exception has expired since the scan: an expiry never waits for a
// re-scan.
func readVulnPredicate(pred json.RawMessage, now time.Time) (*policy.VulnFacts, error) {
	r, err := vuln.ReadPredicate(pred)
	if err != nil {
		return nil, err
	}
	c := r.Counts
	v := &policy.VulnFacts{Critical: c.Critical, High: c.High, Medium: c.Medium, Low: c.Low, Negligible: c.Negligible,
		Unknown: c.Unknown, UnknownAs: c.UnknownAs, DB: r.DB, ScannedAt: r.Finished, Findings: r.Findings}
	for _, sp := range r.Suppressed {
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

func mergeClaims(a, b *policy.Claims) *policy.Claims {
	if a == nil {
		return b
	}
	out := *a
	for _, s := range b.SourceRepositories {
		if !slices.Contains(out.SourceRepositories, s) {
			out.SourceRepositories = append(out.SourceRepositories, s)
		}
	}
	if out.BaseImage == "" {
		out.BaseImage = b.BaseImage
	}
	if out.BuilderID == "" {
		out.BuilderID = b.BuilderID
	}
	return &out
}
