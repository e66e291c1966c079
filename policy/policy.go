// Package policy is attestd's pure evaluation: facts in (Input), decision
// out (Decision), from a versioned YAML policy and optional Rego modules. It
// does no I/O — the caller reads files and verifies attestations — so
// `attestd policy test` and golden tests run offline, and every fact a rule
// sees arrived through cryptographic verification (attest/verify).
//
// It fails closed: an attestation the policy requires but that did not
// verify, a fact a YAML rule needs that is missing, or a Rego error denies.
// Rego rules are the author's: one that reads a missing fact does not fire
// (see RegoModule).
package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"gopkg.in/yaml.v3"
)

// Version is the policy file format this package reads.
const Version = 1

// Modes.
const (
	ModeEnforce = "enforce" // violations deny
	ModeWarn    = "warn"    // violations are recorded as warnings; allow
	ModeDryRun  = "dry-run" // evaluate and record; never promote
)

// Attestation aliases a policy may use for predicate types (cosign's --type
// names where they exist).
var Aliases = map[string]string{
	"signature":       "https://sigstore.dev/cosign/sign/v1",
	"spdx":            "https://spdx.dev/Document",
	"spdxjson":        "https://spdx.dev/Document",
	"cyclonedx":       "https://cyclonedx.org/bom",
	"provenance":      "https://slsa.dev/provenance/v1",
	"slsaprovenance1": "https://slsa.dev/provenance/v1",
	"hardening":       "https://attestd.dev/attestation/hardening/v1",
	"vuln":            "https://cosign.sigstore.dev/attestation/vuln/v1",
	"vsa":             "https://slsa.dev/verification_summary/v1",
}

// Resolve maps an alias to its predicate type; other values pass through.
func Resolve(t string) string {
	if p, ok := Aliases[t]; ok {
		return p
	}
	return t
}

// Policy is a loaded, validated policy.
type Policy struct {
	Version         int             `yaml:"version" json:"version"`
	Name            string          `yaml:"name" json:"name"`
	Mode            string          `yaml:"mode" json:"mode"`
	Signers         []Signer        `yaml:"signers" json:"signers"`
	Require         []string        `yaml:"require" json:"require"`
	Provenance      Provenance      `yaml:"provenance" json:"provenance"`
	Vulnerabilities Vulnerabilities `yaml:"vulnerabilities" json:"vulnerabilities"`
	Hardening       Hardening       `yaml:"hardening" json:"hardening"`
	BaseImages      []string        `yaml:"base_images" json:"baseImages"`
	// AcceptClaims lists rules that may also be met by what was only told
	// (labels): source_repositories, base_images. Default none.
	AcceptClaims []string     `yaml:"accept_claims" json:"acceptClaims,omitempty"`
	Tags         Tags         `yaml:"tags" json:"tags"`
	Rego         []RegoModule `yaml:"rego" json:"rego"`
	VSA          VSA          `yaml:"vsa" json:"vsa"`

	digest   string
	tagRes   []*regexp.Regexp
	prepared *rego.PreparedEvalQuery
}

// Signer is an identity allowed to sign: the OIDC issuer and the
// certificate subject, each exact or a regular expression, optionally
// limited to some attestation types (aliases or predicate types).
type Signer struct {
	Issuer       string   `yaml:"issuer" json:"issuer,omitempty"`
	IssuerRegex  string   `yaml:"issuer_regex" json:"issuerRegex,omitempty"`
	Subject      string   `yaml:"subject" json:"subject,omitempty"`
	SubjectRegex string   `yaml:"subject_regex" json:"subjectRegex,omitempty"`
	Types        []string `yaml:"types" json:"types,omitempty"`

	issuerRe, subjectRe *regexp.Regexp
}

// Provenance constrains the verified SLSA provenance.
type Provenance struct {
	BuilderIDs         []string `yaml:"builder_ids" json:"builderIds,omitempty"`                 // exact
	SourceRepositories []string `yaml:"source_repositories" json:"sourceRepositories,omitempty"` // globs
}

// Claims a policy may accept as meeting a rule (AcceptClaims).
const (
	ClaimSourceRepositories = "source_repositories"
	ClaimBaseImages         = "base_images"
)

func (p *Policy) acceptsClaim(rule string) bool { return slices.Contains(p.AcceptClaims, rule) }

// Vulnerabilities are thresholds over the verified vulnerability report.
// Findings of Unknown severity count as the severity the scan gated them
// as (unknownAs).
type Vulnerabilities struct {
	MaxSeverity string         `yaml:"max_severity" json:"maxSeverity,omitempty"` // highest allowed: none, negligible, low, medium, high, critical
	MaxCounts   map[string]int `yaml:"max_counts" json:"maxCounts,omitempty"`
	// MaxAge is how old the deciding scan may be (e.g. 24h): an older one
	// denies until a rescan. Zero: any age.
	MaxAge Duration `yaml:"max_age" json:"maxAge,omitempty"`
}

// Hardening lists checks that must pass.
type Hardening struct {
	Required []string `yaml:"required" json:"required,omitempty"`
}

// Tags: an image must carry at least one tag matching one of Allow.
type Tags struct {
	Allow []string `yaml:"allow" json:"allow,omitempty"` // regular expressions, anchored
}

// RegoModule is a Rego module: Source inline, or File (read by the caller
// and passed to Load). It must be `package attestd` and define
// `deny contains msg if …` (msg a string, or {"rule": …, "msg": …}).
//
// A module is a pure function of the input document: builtins that reach
// the network, the file system, the process or the clock, or are random
// (http.send, net.lookup_ip_addr, opa.runtime, time.now_ns, rand.intn, …;
// docs/policy.md lists them) are refused when the policy loads.
//
// A rule body that reads a field the input does not carry is undefined,
// not an error, so a deny rule that reads a missing fact does not fire:
// in Rego, missing data allows unless the rule denies on absence. Write
// `some s in input.subjects; not s.vulnerabilities` (a rule of its own that
// denies), or `object.get(s, ["vulnerabilities", "critical"], 1) > 0` (a
// default that denies); docs/policy.md shows both.
type RegoModule struct {
	File   string `yaml:"file" json:"file,omitempty"`
	Source string `yaml:"source" json:"-"`
}

// VSA configures the signed verification summary.
type VSA struct {
	VerifierID string   `yaml:"verifier_id" json:"verifierId,omitempty"`
	Validity   Duration `yaml:"validity" json:"validity,omitempty"`
	PolicyURI  string   `yaml:"policy_uri" json:"policyUri,omitempty"`
	// Levels are the verifiedLevels a passing decision states (e.g.
	// SLSA_BUILD_LEVEL_2 when the policy requires a trusted builder's
	// provenance). Default none: attestd's own provenance only observes.
	Levels []string `yaml:"verified_levels" json:"verifiedLevels,omitempty"`
}

// Duration is written "168h".
type Duration time.Duration

// UnmarshalYAML parses a Go duration.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (e.g. 168h)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

var severities = []string{"none", "negligible", "low", "medium", "high", "critical"}

func severityRank(s string) int { return slices.Index(severities, strings.ToLower(s)) }

// Load parses and validates a policy. files holds the content of every
// Rego module referenced by file (by the name used in the policy). The
// policy digest covers the YAML and every module.
func Load(ctx context.Context, data []byte, files map[string][]byte) (*Policy, error) {
	var p Policy
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if p.Mode == "" {
		p.Mode = ModeEnforce
	}
	if p.VSA.Validity == 0 {
		p.VSA.Validity = Duration(7 * 24 * time.Hour)
	}
	if p.VSA.VerifierID == "" {
		p.VSA.VerifierID = "https://attestd.dev/verifier"
	}
	h := sha256.New()
	h.Write(data)
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("policy: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if p.Version != Version {
		bad("version", "%d is not supported: write version: %d", p.Version, Version)
	}
	if !slices.Contains([]string{ModeEnforce, ModeWarn, ModeDryRun}, p.Mode) {
		bad("mode", "%q: use enforce, warn or dry-run", p.Mode)
	}
	if len(p.Signers) == 0 {
		bad("signers", "at least one expected signer identity is required (a signature from anyone proves nothing)")
	}
	for i := range p.Signers {
		s := &p.Signers[i]
		f := fmt.Sprintf("signers[%d]", i)
		if (s.Issuer == "") == (s.IssuerRegex == "") {
			bad(f, "set exactly one of issuer and issuer_regex")
		}
		if (s.Subject == "") == (s.SubjectRegex == "") {
			bad(f, "set exactly one of subject and subject_regex")
		}
		var err error
		if s.IssuerRegex != "" {
			if s.issuerRe, err = regexp.Compile(s.IssuerRegex); err != nil {
				bad(f+".issuer_regex", "%v", err)
			}
		}
		if s.SubjectRegex != "" {
			if s.subjectRe, err = regexp.Compile(s.SubjectRegex); err != nil {
				bad(f+".subject_regex", "%v", err)
			}
		}
		for j, t := range s.Types {
			s.Types[j] = Resolve(t)
		}
	}
	for i, r := range p.Require {
		p.Require[i] = Resolve(r)
		if !strings.Contains(p.Require[i], "://") {
			bad(fmt.Sprintf("require[%d]", i), "%q is neither an alias (%s) nor a predicate type URI", r, strings.Join(sortedAliases(), ", "))
		}
	}
	// The image signature is always required: a policy that requires
	// nothing would pass an image nobody signed.
	if !slices.Contains(p.Require, Aliases["signature"]) {
		p.Require = append(p.Require, Aliases["signature"])
	}
	for i, g := range p.Provenance.SourceRepositories {
		if _, err := path.Match(g, ""); err != nil {
			bad(fmt.Sprintf("provenance.source_repositories[%d]", i), "%q is not a valid glob", g)
		}
	}
	if v := p.Vulnerabilities.MaxSeverity; v != "" && severityRank(v) < 0 {
		bad("vulnerabilities.max_severity", "%q: use none, negligible, low, medium, high or critical", v)
	}
	for k, n := range p.Vulnerabilities.MaxCounts {
		if severityRank(k) < 1 && k != "unknown" && k != "total" {
			bad("vulnerabilities.max_counts", "%q: keys are critical, high, medium, low, negligible, unknown, total", k)
		}
		if n < 0 {
			bad("vulnerabilities.max_counts."+k, "must be ≥ 0")
		}
	}
	for i, c := range p.AcceptClaims {
		if c != ClaimSourceRepositories && c != ClaimBaseImages {
			bad(fmt.Sprintf("accept_claims[%d]", i), "%q: use %s or %s", c, ClaimSourceRepositories, ClaimBaseImages)
		}
	}
	if p.Vulnerabilities.MaxAge < 0 {
		bad("vulnerabilities.max_age", "must be positive")
	}
	for i, g := range p.BaseImages {
		if _, err := path.Match(g, ""); err != nil {
			bad(fmt.Sprintf("base_images[%d]", i), "%q is not a valid glob", g)
		}
	}
	for i, t := range p.Tags.Allow {
		re, err := regexp.Compile("^(?:" + t + ")$")
		if err != nil {
			bad(fmt.Sprintf("tags.allow[%d]", i), "%v", err)
			continue
		}
		p.tagRes = append(p.tagRes, re)
	}
	if p.VSA.Validity <= 0 {
		bad("vsa.validity", "must be positive")
	}
	var mods []func(*rego.Rego)
	for i, m := range p.Rego {
		f := fmt.Sprintf("rego[%d]", i)
		src := m.Source
		name := fmt.Sprintf("inline-%d.rego", i)
		if m.File != "" {
			if src != "" {
				bad(f, "set file or source, not both")
			}
			b, ok := files[m.File]
			if !ok {
				bad(f+".file", "%s was not read (the caller passes every referenced module)", m.File)
				continue
			}
			src, name = string(b), m.File
		}
		if strings.TrimSpace(src) == "" {
			bad(f, "empty module")
			continue
		}
		fmt.Fprintf(h, "\x00%s\x00%s", name, src)
		mods = append(mods, rego.Module(name, src))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(mods) > 0 {
		pq, err := rego.New(append(mods, rego.Query("data.attestd.deny"), rego.StrictBuiltinErrors(true), rego.Capabilities(capabilities()))...).PrepareForEval(ctx)
		if err != nil {
			return nil, regoCompileError(err)
		}
		// A module in another package, or without deny, would make
		// data.attestd.deny undefined — no violations, an allow. Refuse it.
		rs, err := pq.Eval(ctx, rego.EvalInput(map[string]any{}))
		if err != nil {
			return nil, fmt.Errorf("policy: rego: %w", err)
		}
		if len(rs) == 0 {
			return nil, errors.New("policy: rego: data.attestd.deny is not defined: write `package attestd` and `deny contains msg if { … }`")
		}
		p.prepared = &pq
	}
	p.digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return &p, nil
}

// refused lists the OPA builtins attestd policies may not call, and why;
// every builtin OPA marks nondeterministic is refused as well. A policy is
// a pure function of its input: every fact it may use arrived through
// verification and is in the input document, a decision must not depend on
// what the network or the host says at evaluation time, and `attestd
// policy test` must replay a decision offline. Pure builtins, net.cidr_*
// included, stay available.
var refused = map[string]string{
	"http.send":              "it makes HTTP requests",
	"net.lookup_ip_addr":     "it resolves DNS names",
	"opa.runtime":            "it reads attestd's environment and configuration",
	"json.match_schema":      "a schema's $ref reads local files and fetches URLs",
	"json.verify_schema":     "a schema's $ref reads local files and fetches URLs",
	"time.now_ns":            "it reads the clock; use input.time",
	"io.jwt.decode_verify":   "it reads the clock unless the constraints carry a time",
	"io.jwt.encode_sign":     "its signatures are randomised",
	"io.jwt.encode_sign_raw": "its signatures are randomised",
	"rand.intn":              "it is random",
	"uuid.rfc4122":           "it is random",
}

// refusedWhy says why b is refused, or "" when a policy may call it.
func refusedWhy(b *ast.Builtin) string {
	if why, ok := refused[b.Name]; ok {
		return why
	}
	if b.Nondeterministic {
		return "OPA marks it nondeterministic"
	}
	return ""
}

// capabilities are OPA's for this version without the refused builtins, so
// a module calling one fails to compile ("undefined function"), and with
// no network access for the compiler either.
func capabilities() *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	c.Builtins = slices.DeleteFunc(c.Builtins, func(b *ast.Builtin) bool { return refusedWhy(b) != "" })
	c.AllowNet = []string{}
	return c
}

// regoCompileError translates the compiler's "undefined function
// http.send" for a refused builtin into why it is unavailable; other
// errors pass through.
func regoCompileError(err error) error {
	var aerrs ast.Errors
	if !errors.As(err, &aerrs) {
		return fmt.Errorf("policy: rego: %w", err)
	}
	errs := make([]error, 0, len(aerrs))
	for _, e := range aerrs {
		name, ok := strings.CutPrefix(e.Message, "undefined function ")
		b := ast.BuiltinMap[name]
		if e.Code != ast.TypeErr || !ok || b == nil || refusedWhy(b) == "" {
			errs = append(errs, fmt.Errorf("policy: rego: %w", e))
			continue
		}
		loc := ""
		if e.Location != nil {
			loc = e.Location.String() + ": "
		}
		errs = append(errs, fmt.Errorf("policy: rego: %s%s is not available to attestd policies: policies are pure, every fact arrives in input (%s)", loc, name, refusedWhy(b)))
	}
	return errors.Join(errs...)
}

// Digest identifies the policy: sha256 over the YAML and every Rego module.
func (p *Policy) Digest() string { return p.digest }

// Identities returns the signer identities for verification.
func (p *Policy) Identities() []Signer { return p.Signers }

// Accepts reports whether signer (issuer, subject) may sign predicateType.
func (p *Policy) Accepts(predicateType, issuer, subject string) bool {
	for _, s := range p.Signers {
		if len(s.Types) > 0 && !slices.Contains(s.Types, predicateType) {
			continue
		}
		if s.match(issuer, subject) {
			return true
		}
	}
	return false
}

func (s Signer) match(issuer, subject string) bool {
	okI := (s.Issuer != "" && s.Issuer == issuer) || (s.issuerRe != nil && s.issuerRe.MatchString(issuer))
	okS := (s.Subject != "" && s.Subject == subject) || (s.subjectRe != nil && s.subjectRe.MatchString(subject))
	return okI && okS
}

func sortedAliases() []string {
	out := make([]string, 0, len(Aliases))
	for k := range Aliases {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
