package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"
)

// InputVersion names the input document's schema (docs/policy-input.schema.json).
const InputVersion = "https://attestd.dev/policy-input/v2"

// Input is everything a policy sees about one image. The gate fills it
// only from attestations that verified; nothing unverified is in it.
type Input struct {
	Version  string    `json:"version"`
	Time     time.Time `json:"time"`
	Image    Image     `json:"image"`
	Subjects []Subject `json:"subjects"`
}

// Image is the digest under evaluation.
type Image struct {
	Ref        string   `json:"ref"`
	Registry   string   `json:"registry"`
	Repository string   `json:"repository"`
	Digest     string   `json:"digest"`
	MediaType  string   `json:"mediaType,omitempty"`
	Tags       []string `json:"tags"`
}

// Subject kinds.
const (
	KindImage    = "image"    // a single-platform image
	KindIndex    = "index"    // an image index
	KindPlatform = "platform" // one platform manifest of an index
)

// Subject is the image itself, or the index and each of its platforms.
type Subject struct {
	Digest   string `json:"digest"`
	Kind     string `json:"kind"`
	Platform string `json:"platform,omitempty"`
	// Attestations that verified, by predicate type (the image signature
	// is https://sigstore.dev/cosign/sign/v1), with who signed them.
	Attestations map[string]Signed `json:"attestations"`
	// Rejected bundles: attached, but did not verify, and why.
	Rejected        []Rejected       `json:"rejected,omitempty"`
	SBOM            *SBOMFacts       `json:"sbom,omitempty"`
	Hardening       *HardeningFacts  `json:"hardening,omitempty"`
	Vulnerabilities *VulnFacts       `json:"vulnerabilities,omitempty"`
	Provenance      *ProvenanceFacts `json:"provenance,omitempty"`
	// Claims are what attestd was told and nobody verified: OCI labels the
	// image author set, the builder the configuration maps a repository to.
	// A rule never takes them as proof unless the policy says so
	// (accept_claims).
	Claims *Claims `json:"claims,omitempty"`
}

// Claims are told, not verified.
type Claims struct {
	SourceRepositories []string `json:"sourceRepositories,omitempty"` // label org.opencontainers.image.source
	BaseImage          string   `json:"baseImage,omitempty"`          // label org.opencontainers.image.base.name
	BuilderID          string   `json:"builderId,omitempty"`          // analysis.builders' mapping by repository or pusher
}

// Signed is who signed a verified attestation.
type Signed struct {
	Issuer  string `json:"issuer"`
	Subject string `json:"subject"`
}

// Rejected is a bundle that did not verify.
type Rejected struct {
	Bundle string `json:"bundle"`
	Reason string `json:"reason"`
}

// SBOMFacts come from the verified SPDX/CycloneDX attestation.
type SBOMFacts struct {
	Packages int `json:"packages"`
}

// HardeningFacts come from the verified hardening attestation.
type HardeningFacts struct {
	Passed []string `json:"passed"`
	Failed []string `json:"failed"`
}

// VulnFacts come from the verified vulnerability attestation. Unknown
// findings also count as UnknownAs.
type VulnFacts struct {
	Critical   int       `json:"critical"`
	High       int       `json:"high"`
	Medium     int       `json:"medium"`
	Low        int       `json:"low"`
	Negligible int       `json:"negligible"`
	Unknown    int       `json:"unknown"`
	UnknownAs  string    `json:"unknownAs"`
	Findings   []string  `json:"findings"`
	DB         string    `json:"db,omitempty"`
	ScannedAt  time.Time `json:"scannedAt"`
}

// gate is the count at a severity with Unknown folded in.
func (v VulnFacts) gate(sev string) int {
	n := map[string]int{"critical": v.Critical, "high": v.High, "medium": v.Medium, "low": v.Low, "negligible": v.Negligible}[sev]
	if strings.EqualFold(v.UnknownAs, sev) {
		n += v.Unknown
	}
	return n
}

// ProvenanceFacts come from a verified SLSA provenance: a builder's own
// (signed by an identity allowed to sign provenance) when there is one,
// else attestd's observed-image provenance.
type ProvenanceFacts struct {
	// BuilderID is the builder's; for attestd's observed-image provenance
	// it is attestd's observer ID (any configured mapping is a claim:
	// claims.builderId).
	BuilderID string `json:"builderId"`
	BuildType string `json:"buildType,omitempty"`
	// Observed is set for attestd's observed-image provenance: attestd saw
	// the image in a registry, it did not build it.
	Observed bool   `json:"observed"`
	Signer   Signed `json:"signer"`
	// SourceRepositories and BaseImages are the resolved dependencies a
	// builder's own provenance lists (git sources; base images as
	// name:tag), never labels.
	SourceRepositories []string `json:"sourceRepositories,omitempty"`
	BaseImages         []string `json:"baseImages,omitempty"`
}

// Violation is one failed rule.
type Violation struct {
	Rule    string `json:"rule"`
	Subject string `json:"subject,omitempty"`
	Message string `json:"message"`
}

func (v Violation) String() string {
	if v.Subject == "" {
		return v.Rule + ": " + v.Message
	}
	return v.Rule + ": " + short(v.Subject) + ": " + v.Message
}

func short(d string) string {
	if len(d) > 19 && strings.HasPrefix(d, "sha256:") {
		return d[:19]
	}
	return d
}

// Decision is the verdict, with every reason.
type Decision struct {
	Allow        bool        `json:"allow"`
	Mode         string      `json:"mode"`
	Violations   []Violation `json:"violations,omitempty"` // deny reasons (enforce), or what would deny (dry-run)
	Warnings     []Violation `json:"warnings,omitempty"`   // violations in warn mode
	PolicyName   string      `json:"policyName,omitempty"`
	PolicyDigest string      `json:"policyDigest"`
	Time         time.Time   `json:"time"`
}

// Evaluate applies every rule to in. It never errs: a rule that cannot be
// evaluated (a Rego error, a cancelled context) is a violation, so the
// decision is a deny — in every mode.
func (p *Policy) Evaluate(ctx context.Context, in Input) Decision {
	var vs []Violation
	add := func(rule, subject, format string, args ...any) {
		vs = append(vs, Violation{Rule: rule, Subject: subject, Message: fmt.Sprintf(format, args...)})
	}
	if len(in.Subjects) == 0 {
		add("input", "", "no subjects: nothing was verified")
	}
	for _, s := range in.Subjects {
		p.subjectRules(s, in.Time, add)
	}
	if len(p.tagRes) > 0 && !slices.ContainsFunc(in.Image.Tags, func(t string) bool {
		return slices.ContainsFunc(p.tagRes, func(re *regexp.Regexp) bool { return re.MatchString(t) })
	}) {
		add("tags.allow", in.Image.Digest, "no tag matches %s (tags: %s)", strings.Join(p.Tags.Allow, " | "), orNone(in.Image.Tags))
	}
	hard := false // violations that deny in every mode
	if p.prepared != nil {
		rvs, err := p.evalRego(ctx, in)
		if err != nil {
			add("rego", "", "evaluation failed: %v", err)
			hard = true
		}
		vs = append(vs, rvs...)
	}
	if err := ctx.Err(); err != nil {
		add("timeout", "", "evaluation did not finish: %v", err)
		hard = true
	}
	d := Decision{Mode: p.Mode, PolicyName: p.Name, PolicyDigest: p.digest, Time: in.Time}
	switch {
	case hard:
		d.Violations = vs
	case p.Mode == ModeWarn:
		d.Allow, d.Warnings = true, vs
	case p.Mode == ModeDryRun:
		d.Violations = vs // never promotes
	default:
		d.Allow, d.Violations = len(vs) == 0, vs
	}
	return d
}

func orNone(xs []string) string {
	if len(xs) == 0 {
		return "none"
	}
	return strings.Join(xs, ", ")
}

// subjectRules checks one subject. An index carries the signature and
// provenance; each platform (or a single image) carries everything.
func (p *Policy) subjectRules(s Subject, now time.Time, add func(rule, subject, format string, args ...any)) {
	content := s.Kind != KindIndex
	for _, pt := range p.Require {
		if !content && pt != Aliases["signature"] && pt != Aliases["provenance"] {
			continue
		}
		a, ok := s.Attestations[pt]
		if !ok {
			add("require", s.Digest, "no verified %s attestation%s", alias(pt), rejectedNote(s.Rejected))
			continue
		}
		if !p.Accepts(pt, a.Issuer, a.Subject) {
			add("signers", s.Digest, "%s is signed by %s (issuer %s), who may not sign it", alias(pt), a.Subject, a.Issuer)
		}
	}
	claims := s.Claims
	if claims == nil {
		claims = &Claims{}
	}
	if len(p.Provenance.BuilderIDs) > 0 {
		switch pv := s.Provenance; {
		case pv == nil:
			add("provenance", s.Digest, "no verified provenance to check the builder against")
		case !slices.Contains(p.Provenance.BuilderIDs, pv.BuilderID):
			note := ""
			if pv.Observed && claims.BuilderID != "" {
				note = fmt.Sprintf(" (the configuration maps this repository to %q: a claim, not proof; require provenance your builder signs)", claims.BuilderID)
			}
			add("provenance.builder_ids", s.Digest, "built by %q, not one of %s%s", pv.BuilderID, strings.Join(p.Provenance.BuilderIDs, ", "), note)
		}
	}
	if globs := p.Provenance.SourceRepositories; len(globs) > 0 {
		var observed []string
		if s.Provenance != nil {
			observed = s.Provenance.SourceRepositories
		}
		ok := slices.ContainsFunc(observed, func(r string) bool { return globAny(globs, r) })
		if !ok && p.acceptsClaim(ClaimSourceRepositories) {
			ok = slices.ContainsFunc(claims.SourceRepositories, func(r string) bool { return globAny(globs, r) })
		}
		if !ok {
			add("provenance.source_repositories", s.Digest, "source %s is not one of %s%s", orNone(observed), strings.Join(globs, ", "),
				claimNote(claims.SourceRepositories, p.acceptsClaim(ClaimSourceRepositories), ClaimSourceRepositories))
		}
	}
	if !content {
		return
	}
	if vp := p.Vulnerabilities; vp.MaxSeverity != "" || len(vp.MaxCounts) > 0 || vp.MaxAge > 0 {
		if v := s.Vulnerabilities; v == nil {
			add("vulnerabilities", s.Digest, "no verified vulnerability report")
		} else {
			if age := now.Sub(v.ScannedAt); vp.MaxAge > 0 && age > time.Duration(vp.MaxAge) {
				add("vulnerabilities.max_age", s.Digest, "the scan finished %s ago (%s), more than %s: rescan (attestd vulndb rescan) or raise the limit",
					age.Round(time.Minute), v.ScannedAt.UTC().Format(time.RFC3339), time.Duration(vp.MaxAge))
			}
			if vp.MaxSeverity != "" {
				var over []string
				for _, sev := range severities[severityRank(vp.MaxSeverity)+1:] {
					if n := v.gate(sev); n > 0 {
						over = append(over, fmt.Sprintf("%s %d", sev, n))
					}
				}
				if len(over) > 0 {
					add("vulnerabilities.max_severity", s.Digest, "findings above %s: %s (unknown severity counts as %s)%s",
						vp.MaxSeverity, strings.Join(over, ", "), v.UnknownAs, findingsNote(v.Findings))
				}
			}
			for _, k := range sortedKeys(vp.MaxCounts) {
				n := v.gate(k)
				switch k {
				case "unknown":
					n = v.Unknown
				case "total":
					n = v.Critical + v.High + v.Medium + v.Low + v.Negligible + v.Unknown
				}
				if n > vp.MaxCounts[k] {
					add("vulnerabilities.max_counts", s.Digest, "%d %s findings, at most %d allowed", n, k, vp.MaxCounts[k])
				}
			}
		}
	}
	if len(p.Hardening.Required) > 0 {
		if h := s.Hardening; h == nil {
			add("hardening", s.Digest, "no verified hardening report")
		} else {
			for _, id := range p.Hardening.Required {
				switch {
				case slices.Contains(h.Failed, id):
					add("hardening.required", s.Digest, "check %s failed (docs/hardening.md says how to fix it)", id)
				case !slices.Contains(h.Passed, id):
					add("hardening.required", s.Digest, "check %s did not pass (not applicable or unknown)", id)
				}
			}
		}
	}
	if len(p.BaseImages) > 0 {
		var observed []string
		if s.Provenance != nil {
			observed = s.Provenance.BaseImages
		}
		ok := slices.ContainsFunc(observed, func(b string) bool { return globAny(p.BaseImages, b) })
		if !ok && p.acceptsClaim(ClaimBaseImages) {
			ok = globAny(p.BaseImages, claims.BaseImage)
		}
		if !ok {
			var claimed []string
			if claims.BaseImage != "" {
				claimed = []string{claims.BaseImage}
			}
			add("base_images", s.Digest, "base image %s is not one of %s%s", orNone(observed), strings.Join(p.BaseImages, ", "),
				claimNote(claimed, p.acceptsClaim(ClaimBaseImages), ClaimBaseImages))
		}
	}
}

// claimNote says what was only claimed, and whether the policy took it.
func claimNote(claimed []string, accepted bool, rule string) string {
	switch {
	case len(claimed) == 0:
		return " (no signed provenance of a builder lists one, and no label claims one)"
	case accepted:
		return fmt.Sprintf(" (claimed by label: %s, which does not match either)", strings.Join(claimed, ", "))
	}
	return fmt.Sprintf(" (a label claims %s, but labels are not proof: sign provenance with your builder, or accept the claim with accept_claims: [%s])", strings.Join(claimed, ", "), rule)
}

func globAny(globs []string, s string) bool {
	if s == "" {
		return false
	}
	for _, g := range globs {
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}

func alias(pt string) string {
	for _, k := range sortedAliases() {
		if Aliases[k] == pt && k != "spdxjson" && k != "slsaprovenance1" {
			return k
		}
	}
	return pt
}

func rejectedNote(rs []Rejected) string {
	var uniq []string
	for _, r := range rs {
		if !slices.Contains(uniq, r.Reason) {
			uniq = append(uniq, r.Reason)
		}
	}
	switch {
	case len(uniq) == 0:
		return ""
	case len(uniq) > 3:
		return fmt.Sprintf(" (%d bundles rejected: %s; and %d more reasons)", len(rs), strings.Join(uniq[:3], "; "), len(uniq)-3)
	}
	return fmt.Sprintf(" (%d bundles rejected: %s)", len(rs), strings.Join(uniq, "; "))
}

func findingsNote(fs []string) string {
	if len(fs) == 0 {
		return ""
	}
	if len(fs) > 5 {
		return ": " + strings.Join(fs[:5], ", ") + fmt.Sprintf(" and %d more", len(fs)-5)
	}
	return ": " + strings.Join(fs, ", ")
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// evalRego runs data.attestd.deny over the input document (as JSON).
func (p *Policy) evalRego(ctx context.Context, in Input) ([]Violation, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	rs, err := p.prepared.Eval(ctx, rego.EvalInput(doc))
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, errors.New("data.attestd.deny is undefined")
	}
	var out []Violation
	for _, r := range rs {
		for _, e := range r.Expressions {
			items, ok := e.Value.([]any)
			if !ok {
				return nil, fmt.Errorf("data.attestd.deny is %T, want a set of messages", e.Value)
			}
			for _, it := range items {
				switch v := it.(type) {
				case string:
					out = append(out, Violation{Rule: "rego", Message: v})
				case map[string]any:
					rule, _ := v["rule"].(string)
					msg, _ := v["msg"].(string)
					if rule == "" {
						rule = "rego"
					} else {
						rule = "rego." + rule
					}
					if msg == "" {
						mb, _ := json.Marshal(v)
						msg = string(mb)
					}
					subj, _ := v["subject"].(string)
					out = append(out, Violation{Rule: rule, Subject: subj, Message: msg})
				default:
					return nil, fmt.Errorf("data.attestd.deny holds %T, want strings or {rule, msg}", it)
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}
