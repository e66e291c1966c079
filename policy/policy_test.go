package policy

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

const base = `version: 1
name: prod
signers:
  - issuer: https://issuer.example
    subject: attestd@example.com
require: [signature, spdx, cyclonedx, provenance, hardening, vuln]
provenance:
  builder_ids: [https://attestd.dev/builder/observer-only]
vulnerabilities:
  max_severity: medium
hardening:
  required: [nonroot-user, no-secrets-in-config]
base_images: ["gcr.io/distroless/*", scratch]
tags:
  allow: ['v\d+\.\d+\.\d+']
`

func load(t *testing.T, src string, files map[string][]byte) *Policy {
	t.Helper()
	p, err := Load(context.Background(), []byte(src), files)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var signer = Signed{Issuer: "https://issuer.example", Subject: "attestd@example.com"}

// good is a compliant single-platform image.
func good() Input {
	atts := map[string]Signed{}
	for _, a := range []string{"signature", "spdx", "cyclonedx", "provenance", "hardening", "vuln"} {
		atts[Aliases[a]] = signer
	}
	return Input{
		Version: InputVersion, Time: time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC),
		Image: Image{Ref: "r.example/app@sha256:aa", Digest: "sha256:aa", Tags: []string{"v1.2.3"}},
		Subjects: []Subject{{
			Digest: "sha256:aa", Kind: KindImage, Attestations: atts,
			Hardening:       &HardeningFacts{Passed: []string{"nonroot-user", "no-secrets-in-config"}},
			Vulnerabilities: &VulnFacts{Medium: 2, UnknownAs: "high"},
			Provenance:      &ProvenanceFacts{BuilderID: "https://attestd.dev/builder/observer-only", BaseImages: []string{"gcr.io/distroless/static:nonroot"}},
		}},
	}
}

func reasons(d Decision) string {
	var s []string
	for _, v := range append(d.Violations, d.Warnings...) {
		s = append(s, v.String())
	}
	return strings.Join(s, "\n")
}

func TestCompliantImageAllowed(t *testing.T) {
	p := load(t, base, nil)
	d := p.Evaluate(context.Background(), good())
	if !d.Allow || len(d.Violations) != 0 || d.PolicyDigest != p.Digest() || !strings.HasPrefix(d.PolicyDigest, "sha256:") {
		t.Fatalf("decision %+v\n%s", d, reasons(d))
	}
}

func TestEachRuleDenies(t *testing.T) {
	p := load(t, base, nil)
	for _, tc := range []struct {
		name   string
		mutate func(*Input)
		want   string
	}{
		{"missing attestation", func(in *Input) {
			delete(in.Subjects[0].Attestations, Aliases["vuln"])
			in.Subjects[0].Rejected = []Rejected{{Bundle: "sha256:bb", Reason: "certificate identity mismatch"}}
		}, "require: sha256:aa: no verified vuln attestation (1 bundles rejected: certificate identity mismatch)"},
		{"wrong signer", func(in *Input) {
			in.Subjects[0].Attestations[Aliases["hardening"]] = Signed{Issuer: "https://issuer.example", Subject: "mallory@example.com"}
		}, "signers: sha256:aa: hardening is signed by mallory@example.com"},
		{"high vulnerability", func(in *Input) {
			in.Subjects[0].Vulnerabilities = &VulnFacts{High: 1, Unknown: 2, UnknownAs: "high", Findings: []string{"GO-2022-1059 golang.org/x/text@v0.3.5"}}
		}, "vulnerabilities.max_severity: sha256:aa: findings above medium: high 3 (unknown severity counts as high): GO-2022-1059 golang.org/x/text@v0.3.5"},
		{"no vulnerability report", func(in *Input) { in.Subjects[0].Vulnerabilities = nil }, "vulnerabilities: sha256:aa: no verified vulnerability report"},
		{"hardening failed", func(in *Input) {
			in.Subjects[0].Hardening = &HardeningFacts{Passed: []string{"no-secrets-in-config"}, Failed: []string{"nonroot-user"}}
		}, "hardening.required: sha256:aa: check nonroot-user failed"},
		{"builder", func(in *Input) { in.Subjects[0].Provenance.BuilderID = "https://ci.evil" }, `provenance.builder_ids: sha256:aa: built by "https://ci.evil"`},
		{"base image", func(in *Input) { in.Subjects[0].Provenance.BaseImages = nil }, "base_images: sha256:aa: base image none is not one of"},
		{"base image only claimed", func(in *Input) {
			in.Subjects[0].Provenance.BaseImages = nil
			in.Subjects[0].Claims = &Claims{BaseImage: "gcr.io/distroless/static:nonroot"}
		}, "a label claims gcr.io/distroless/static:nonroot, but labels are not proof"},
		{"tag", func(in *Input) { in.Image.Tags = []string{"latest"} }, "tags.allow: sha256:aa: no tag matches v\\d+\\.\\d+\\.\\d+ (tags: latest)"},
		{"no subjects", func(in *Input) { in.Subjects = nil }, "input: no subjects"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := good()
			tc.mutate(&in)
			d := p.Evaluate(context.Background(), in)
			if d.Allow || !strings.Contains(reasons(d), tc.want) {
				t.Fatalf("allow=%t, want a deny with %q, got:\n%s", d.Allow, tc.want, reasons(d))
			}
		})
	}
}

func TestIndexNeedsSignatureAndProvenanceOnly(t *testing.T) {
	p := load(t, base, nil)
	in := good()
	in.Subjects[0].Kind = KindPlatform
	in.Subjects = append(in.Subjects, Subject{Digest: "sha256:ii", Kind: KindIndex, Attestations: map[string]Signed{
		Aliases["signature"]: signer, Aliases["provenance"]: signer}, Provenance: &ProvenanceFacts{BuilderID: "https://attestd.dev/builder/observer-only"}})
	if d := p.Evaluate(context.Background(), in); !d.Allow {
		t.Fatal(reasons(d))
	}
}

func TestSignerTypesRestrict(t *testing.T) {
	p := load(t, strings.Replace(base, "    subject: attestd@example.com\n", "    subject: attestd@example.com\n    types: [signature, provenance]\n  - issuer: https://issuer.example\n    subject_regex: '^scanner-.*@example\\.com$'\n    types: [vuln]\n", 1), nil)
	d := p.Evaluate(context.Background(), good())
	// attestd@ may not sign spdx/cyclonedx/hardening/vuln under this policy.
	for _, w := range []string{"spdx is signed by", "vuln is signed by", "hardening is signed by"} {
		if d.Allow || !strings.Contains(reasons(d), w) {
			t.Fatalf("want %q:\n%s", w, reasons(d))
		}
	}
	if !p.Accepts(Aliases["vuln"], "https://issuer.example", "scanner-1@example.com") || p.Accepts(Aliases["vuln"], "https://issuer.example", "xscanner-1@example.com") {
		t.Fatal("subject_regex")
	}
}

func TestRego(t *testing.T) {
	mod := []byte(`package attestd

deny contains msg if {
	some s in input.subjects
	s.sbom.packages > 100
	msg := sprintf("%s has %d packages, more than 100", [s.digest, s.sbom.packages])
}

deny contains {"rule": "no-root-repo", "msg": "images may not live at the registry root"} if {
	not contains(input.image.repository, "/")
}
`)
	p := load(t, base+"rego:\n  - file: custom.rego\n", map[string][]byte{"custom.rego": mod})
	in := good()
	in.Image.Repository = "team/app"
	if d := p.Evaluate(context.Background(), in); !d.Allow {
		t.Fatal(reasons(d))
	}
	in.Subjects[0].SBOM = &SBOMFacts{Packages: 150}
	in.Image.Repository = "app"
	d := p.Evaluate(context.Background(), in)
	r := reasons(d)
	if d.Allow || !strings.Contains(r, "rego: sha256:aa has 150 packages, more than 100") || !strings.Contains(r, "rego.no-root-repo: images may not live at the registry root") {
		t.Fatal(r)
	}
	// The module is part of the policy digest.
	p2 := load(t, base+"rego:\n  - file: custom.rego\n", map[string][]byte{"custom.rego": append(mod, '\n')})
	if p2.Digest() == p.Digest() {
		t.Fatal("digest ignores the Rego module")
	}
}

func TestRegoErrorDeniesEvenInWarnMode(t *testing.T) {
	mod := []byte("package attestd\n\ndeny contains msg if {\n\tmsg := sprintf(\"%d\", [to_number(input.image.ref)])\n}\n")
	p := load(t, strings.Replace(base, "name: prod\n", "name: prod\nmode: warn\n", 1)+"rego:\n  - file: bad.rego\n", map[string][]byte{"bad.rego": mod})
	d := p.Evaluate(context.Background(), good())
	if d.Allow || !strings.Contains(reasons(d), "rego: evaluation failed") {
		t.Fatalf("allow=%t\n%s", d.Allow, reasons(d))
	}
}

func TestModes(t *testing.T) {
	in := good()
	in.Image.Tags = []string{"latest"}
	warn := load(t, strings.Replace(base, "name: prod\n", "name: prod\nmode: warn\n", 1), nil).Evaluate(context.Background(), in)
	if !warn.Allow || len(warn.Warnings) != 1 || len(warn.Violations) != 0 {
		t.Fatalf("warn: %+v", warn)
	}
	dry := load(t, strings.Replace(base, "name: prod\n", "name: prod\nmode: dry-run\n", 1), nil).Evaluate(context.Background(), good())
	if dry.Allow || dry.Mode != ModeDryRun {
		t.Fatalf("dry-run must never allow a promotion: %+v", dry)
	}
}

func TestCancelledContextDenies(t *testing.T) {
	p := load(t, strings.Replace(base, "name: prod\n", "name: prod\nmode: warn\n", 1), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if d := p.Evaluate(ctx, good()); d.Allow {
		t.Fatal("a cancelled evaluation allowed")
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"version: 2\nsigners: [{issuer: a, subject: b}]\n", "version: 2 is not supported"},
		{"version: 1\n", "signers: at least one expected signer identity"},
		{"version: 1\nsigners: [{issuer: a, issuer_regex: b, subject: c}]\n", "signers[0]: set exactly one of issuer and issuer_regex"},
		{"version: 1\nsigners: [{issuer: a, subject_regex: '('}]\n", "signers[0].subject_regex"},
		{"version: 1\nmode: yolo\nsigners: [{issuer: a, subject: b}]\n", `mode: "yolo"`},
		{"version: 1\nsigners: [{issuer: a, subject: b}]\nrequire: [sbomz]\n", `require[0]: "sbomz" is neither an alias`},
		{"version: 1\nsigners: [{issuer: a, subject: b}]\nvulnerabilities: {max_severity: urgent}\n", "vulnerabilities.max_severity"},
		{"version: 1\nsigners: [{issuer: a, subject: b}]\nrequires: [spdx]\n", "line 3: field requires not found"},
		{"version: 1\nsigners: [{issuer: a, subject: b}]\nrego: [{file: x.rego}]\n", "rego[0].file: x.rego was not read"},
		{"version: 1\nsigners: [{issuer: a, subject: b}]\nrego: [{source: 'package attestd\ndeny contains x if { x := }'}]\n", "policy: rego:"},
		{"version: 1\nsigners: [{issuer: a, subject: b}]\nrego: [{source: \"package attest\\ndeny contains 1 if { false }\"}]\n", "data.attestd.deny is not defined"},
		{"version: 1\nsigners: [{issuer: a, subject: b}]\nrego: [{source: \"package attestd\\nallow := true\"}]\n", "data.attestd.deny is not defined"},
	} {
		if _, err := Load(context.Background(), []byte(tc.src), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.src, err, tc.want)
		}
	}
}

// TestExamplePolicyLoads keeps configs/policy.yaml (and its Rego) valid.
func TestExamplePolicyLoads(t *testing.T) {
	b, err := os.ReadFile("../configs/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rego, err := os.ReadFile("../configs/policies/no-huge-sboms.rego")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Load(context.Background(), b, map[string][]byte{"policies/no-huge-sboms.rego": rego})
	if err != nil {
		t.Fatal(err)
	}
	in := good()
	in.Subjects[0].SBOM = &SBOMFacts{Packages: 2500}
	d := p.Evaluate(context.Background(), in)
	if d.Allow || !strings.Contains(reasons(d), "rego.sbom-size: sha256:aa: 2500 packages") {
		t.Fatal(reasons(d))
	}
}

// TestInputSchemaCoversInput: every field the input document can carry is
// described in docs/policy-input.schema.json.
func TestInputSchemaCoversInput(t *testing.T) {
	schema, err := os.ReadFile("../docs/policy-input.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	in := good()
	in.Image.MediaType = "x"
	s := &in.Subjects[0]
	s.Platform, s.Rejected, s.SBOM = "linux/amd64", []Rejected{{Bundle: "b", Reason: "r"}}, &SBOMFacts{Packages: 1}
	s.Vulnerabilities.Findings, s.Vulnerabilities.DB = []string{"x"}, "db"
	s.Provenance.SourceRepositories = []string{"x"}
	b, _ := json.Marshal(in)
	var doc any
	_ = json.Unmarshal(b, &doc)
	var walk func(v any, inAttestations bool)
	walk = func(v any, inAtt bool) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				if !inAtt && !strings.Contains(string(schema), `"`+k+`"`) {
					t.Errorf("field %q is not in the schema", k)
				}
				walk(c, k == "attestations")
			}
		case []any:
			for _, c := range x {
				walk(c, false)
			}
		}
	}
	walk(doc, false)
}

// TestSignatureAlwaysRequired: a policy that lists no requirement still
// denies an image without a verified signature.
func TestSignatureAlwaysRequired(t *testing.T) {
	p := load(t, "version: 1\nsigners: [{issuer: https://issuer.example, subject: attestd@example.com}]\n", nil)
	in := good()
	if d := p.Evaluate(context.Background(), in); !d.Allow {
		t.Fatal(reasons(d))
	}
	delete(in.Subjects[0].Attestations, Aliases["signature"])
	if d := p.Evaluate(context.Background(), in); d.Allow || !strings.Contains(reasons(d), "no verified signature attestation") {
		t.Fatalf("unsigned image allowed: %s", reasons(d))
	}
}

// minimal is a policy with no YAML rules beyond the always-required
// signature, so only its Rego decides.
const minimal = "version: 1\nsigners: [{issuer: https://issuer.example, subject: attestd@example.com}]\n"

// TestRegoRefusesImpureBuiltins: a module calling a builtin that reaches
// the network, the process or the clock, or is random, is refused at load
// time with the builtin's name, not compiled and left to fail (or succeed)
// at evaluation.
func TestRegoRefusesImpureBuiltins(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ builtin, body string }{
		{"http.send", `resp := http.send({"method": "GET", "url": "https://example.com/allow"}); resp.status_code == 200`},
		{"net.lookup_ip_addr", `addrs := net.lookup_ip_addr("example.com"); count(addrs) > 0`},
		{"opa.runtime", `opa.runtime().env.HOME != ""`},
		{"time.now_ns", `time.now_ns() > 0`},
		{"rand.intn", `rand.intn("x", 10) == 0`},
		{"uuid.rfc4122", `uuid.rfc4122("x") != ""`},
		{"io.jwt.decode_verify", `[ok, _, _] := io.jwt.decode_verify("a.b.c", {"secret": "s"}); ok`},
		{"json.match_schema", `[ok, _] := json.match_schema({}, {"$ref": "file:///etc/passwd"}); ok`},
	} {
		t.Run(tc.builtin, func(t *testing.T) {
			t.Parallel()
			mod := "package attestd\n\ndeny contains \"x\" if {\n\t" + tc.body + "\n}\n"
			_, err := Load(context.Background(), []byte(minimal+"rego: [{file: impure.rego}]\n"), map[string][]byte{"impure.rego": []byte(mod)})
			want := "policy: rego: impure.rego:4: " + tc.builtin + " is not available to attestd policies: policies are pure, every fact arrives in input"
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("err = %v, want %q", err, want)
			}
		})
	}
}

// TestRegoPureBuiltins: the restriction leaves pure builtins (strings,
// aggregates, time parsing, CIDR arithmetic) usable.
func TestRegoPureBuiltins(t *testing.T) {
	t.Parallel()
	mod := []byte(`package attestd

deny contains "images may not come from Docker Hub" if startswith(input.image.ref, "docker.io/")

deny contains "at most 3 tags" if count(input.image.tags) > 3

deny contains msg if {
	some s in input.subjects
	age := time.parse_rfc3339_ns(input.time) - time.parse_rfc3339_ns(s.vulnerabilities.scannedAt)
	age > 7 * 24 * 3600 * 1000000000
	msg := sprintf("%s: vulnerability scan older than 7 days", [s.digest])
}

deny contains "registry in a private range" if net.cidr_contains("10.0.0.0/8", input.image.registry)
`)
	p := load(t, minimal+"rego: [{file: pure.rego}]\n", map[string][]byte{"pure.rego": mod})
	in := good()
	in.Image.Registry = "192.0.2.1"
	in.Subjects[0].Vulnerabilities.ScannedAt = in.Time.Add(-time.Hour)
	if d := p.Evaluate(context.Background(), in); !d.Allow {
		t.Fatal(reasons(d))
	}
	in.Image.Ref = "docker.io/library/app@sha256:aa"
	in.Image.Tags = []string{"a", "b", "c", "d"}
	in.Image.Registry = "10.1.2.3"
	in.Subjects[0].Vulnerabilities.ScannedAt = in.Time.Add(-30 * 24 * time.Hour)
	d := p.Evaluate(context.Background(), in)
	for _, w := range []string{"images may not come from Docker Hub", "at most 3 tags", "sha256:aa: vulnerability scan older than 7 days", "registry in a private range"} {
		if d.Allow || !strings.Contains(reasons(d), w) {
			t.Errorf("allow=%t, want %q in:\n%s", d.Allow, w, reasons(d))
		}
	}
}

// TestRegoMissingFieldAllows documents a Rego property policy authors must
// know: a rule body that references an absent field is undefined, so a
// deny rule that reads a missing fact does not fire — missing data allows.
// The safe patterns deny on absence explicitly.
func TestRegoMissingFieldAllows(t *testing.T) {
	t.Parallel()
	naive := []byte(`package attestd

deny contains msg if {
	some s in input.subjects
	s.vulnerabilities.critical > 0
	msg := sprintf("%s: critical vulnerabilities", [s.digest])
}
`)
	safe := []byte(`package attestd

deny contains msg if {
	some s in input.subjects
	s.kind != "index"
	not s.vulnerabilities
	msg := sprintf("%s: no verified vulnerability report", [s.digest])
}

deny contains msg if {
	some s in input.subjects
	s.kind != "index"
	object.get(s, ["vulnerabilities", "critical"], 1) > 0
	msg := sprintf("%s: critical vulnerabilities (or no count)", [s.digest])
}
`)
	in := good()
	in.Subjects[0].Vulnerabilities = nil // the fact is missing

	p := load(t, minimal+"rego: [{file: naive.rego}]\n", map[string][]byte{"naive.rego": naive})
	if d := p.Evaluate(context.Background(), in); !d.Allow || len(d.Violations) != 0 {
		t.Fatalf("the naive rule fired on a missing field (Rego changed?): allow=%t\n%s", d.Allow, reasons(d))
	}
	p = load(t, minimal+"rego: [{file: safe.rego}]\n", map[string][]byte{"safe.rego": safe})
	d := p.Evaluate(context.Background(), in)
	for _, w := range []string{"rego: sha256:aa: no verified vulnerability report", "rego: sha256:aa: critical vulnerabilities (or no count)"} {
		if d.Allow || !strings.Contains(reasons(d), w) {
			t.Errorf("allow=%t, want %q in:\n%s", d.Allow, w, reasons(d))
		}
	}
	// With the fact present and clean, the safe rules allow.
	if d := p.Evaluate(context.Background(), good()); !d.Allow {
		t.Fatal(reasons(d))
	}
}

// vulnerabilities.max_age: a scan older than the limit denies until a
// rescan; accept_claims names only the rules that can take a claim.
func TestMaxAgeAndAcceptClaims(t *testing.T) {
	p := load(t, strings.Replace(base, "  max_severity: medium\n", "  max_severity: medium\n  max_age: 24h\n", 1), nil)
	in := good()
	in.Subjects[0].Vulnerabilities.ScannedAt = in.Time.Add(-23 * time.Hour)
	if d := p.Evaluate(context.Background(), in); !d.Allow {
		t.Fatalf("a 23 h old scan denied:\n%s", reasons(d))
	}
	in.Subjects[0].Vulnerabilities.ScannedAt = in.Time.Add(-25 * time.Hour)
	if d := p.Evaluate(context.Background(), in); d.Allow || !strings.Contains(reasons(d), "vulnerabilities.max_age: sha256:aa: the scan finished 25h0m0s ago") {
		t.Fatalf("a 25 h old scan:\n%s", reasons(d))
	}
	if _, err := Load(context.Background(), []byte(base+"accept_claims: [builder_ids]\n"), nil); err == nil || !strings.Contains(err.Error(), "accept_claims[0]") {
		t.Fatalf("accept_claims: [builder_ids] loaded: %v", err)
	}
}
