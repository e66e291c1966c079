package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/cmd/attestd/app"
	"github.com/attestd/attestd/store"
)

// gatePolicy writes a policy accepting only signer, with a custom Rego rule.
func gatePolicy(t *testing.T, signer string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "custom.rego"), []byte(`package attestd

deny contains {"rule": "sbom-size", "msg": sprintf("%d packages, more than 500", [s.sbom.packages])} if {
	some s in input.subjects
	s.sbom.packages > 500
}
`), 0o644)
	p := filepath.Join(dir, "policy.yaml")
	os.WriteFile(p, []byte(fmt.Sprintf(`version: 1
name: e2e-prod
mode: enforce
signers:
  - issuer: %s
    subject: %s
require: [signature, spdx, cyclonedx, provenance, hardening, vuln]
provenance:
  builder_ids: [https://attestd.dev/builder/observer-only]
vulnerabilities:
  max_severity: medium
hardening:
  required: [nonroot-user, no-secrets-in-config, no-secret-files]
tags:
  allow: ['v\d+\.\d+\.\d+']
rego:
  - file: custom.rego
vsa:
  verifier_id: https://attestd.example/gate
  validity: 24h
`, stk.IssuerURL, signer)), 0o644)
	return p
}

// TestGatePromotesCompliantDeniesTheRest: on the real stack, a compliant
// image pushed to staging reaches prod with its tag and the stock cosign
// CLI verifies its signature, attestations and VSA on the prod reference;
// images with a blocked vulnerability, failed hardening, or a signer the
// policy does not accept never get a prod tag, and the reasons are stored.
func TestGatePromotesCompliantDeniesTheRest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const identity = "attestd@example.test"
	fx := allFixtures(t)
	gate := func(signer string) string {
		return fmt.Sprintf("gate:\n  policy: %s\n  signed_timestamps: 1\n  promotion:\n    - from: %s/staging/*\n      to: %s/prod/{name}\n      tags: semver\n",
			gatePolicy(t, signer), stk.RegistryHost, stk.RegistryHost)
	}
	// An exception, expired already: audited as added and as expired; it
	// suppresses nothing.
	cfg := signingConfigWith(t, identity, stk.SigningConfig, gate(identity)+
		"analysis:\n  vulnerabilities:\n    exceptions:\n      - {vulnerability: GO-2022-1059, owner: sec@example.test, reason: expired on purpose, ticket: SEC-7, expires: 2026-01-01}\n")
	dataDir := t.TempDir()
	prodTag := func(repoTag string) name.Tag {
		tg, _ := name.NewTag(stk.RegistryHost + "/prod/" + repoTag)
		return tg
	}
	decisionOf := func(rec *store.Record) string {
		if rec.Decision == nil {
			return "<no decision>"
		}
		return fmt.Sprintf("allow=%t policy=%s vsa=%s reasons:\n  %s", rec.Decision.Allow, rec.Decision.PolicyDigest, rec.Decision.VSA, strings.Join(rec.Decision.Reasons, "\n  "))
	}

	t.Run("compliant", func(t *testing.T) {
		ref := pushFixture(t, fx["static-go"], "staging/app:v1.0.0")
		start := time.Now()
		rec, _ := processed(t, cfg, dataDir, ref.Context().Tag("v1.0.0").String())
		t.Logf("resolve → analyse → sign → evaluate → promote: %s", time.Since(start).Round(time.Millisecond))
		if rec.State != store.StatePromoted || !rec.Decision.Allow || rec.Decision.VSA == "" || !strings.HasPrefix(rec.Decision.PolicyDigest, "sha256:") {
			t.Fatalf("state %s, stages %+v\n%s", rec.State, rec.Stages, decisionOf(rec))
		}
		desc, err := remote.Head(prodTag("app:v1.0.0"))
		if err != nil || desc.Digest.String() != ref.DigestStr() {
			t.Fatalf("prod tag: %v, digest %v (want %s)", err, desc, ref.DigestStr())
		}
		prod := prodTag("app:v1.0.0").Context().Digest(ref.DigestStr()).String()
		if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgs(identity)...), prodTag("app:v1.0.0").String())...); err != nil {
			t.Errorf("cosign verify (prod tag): %v", err)
		}
		for _, typ := range []string{"spdxjson", "cyclonedx", "slsaprovenance1", "vuln", "https://attestd.dev/attestation/hardening/v1", "https://slsa.dev/verification_summary/v1"} {
			out, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", typ}, stk.VerifyArgs(identity)...), prod)...)
			if err != nil {
				t.Errorf("cosign verify-attestation --type %s (prod): %v", typ, err)
			}
			if typ == "https://slsa.dev/verification_summary/v1" && !strings.Contains(string(out), `"payloadType":"application/vnd.in-toto+json"`) {
				t.Errorf("no VSA envelope: %s", out)
			}
		}
		var out, errOut bytes.Buffer
		if code := app.Run(ctx, []string{"audit", "export", "-c", cfg, "--data-dir", dataDir, "--digest", ref.DigestStr()}, &out, &errOut); code != 0 {
			t.Fatal(errOut.String())
		}
		for _, w := range []string{`"action":"decision"`, `"policy":"` + rec.Decision.PolicyDigest + `"`, `"action":"promotion"`, `"to":"` + prodTag("app:v1.0.0").String() + `"`, `"to":"promoted"`,
			`"action":"signature.written"`, `"predicateType":"https://slsa.dev/verification_summary/v1"`, `"log.0":"`, `"timestamps":"1"`} {
			if !strings.Contains(out.String(), w) {
				t.Errorf("audit lacks %s", w)
			}
		}
		out.Reset()
		if code := app.Run(ctx, []string{"audit", "export", "-c", cfg, "--data-dir", dataDir, "--action", "exception."}, &out, &out); code != 0 {
			t.Fatal(out.String())
		}
		for _, w := range []string{`"action":"exception.added"`, `"action":"exception.expired"`, `"ticket":"SEC-7"`} {
			if !strings.Contains(out.String(), w) {
				t.Errorf("audit lacks %s", w)
			}
		}
		// A signed export: the stock cosign CLI verifies it, and refuses
		// it once a byte of the file changed.
		exp := filepath.Join(t.TempDir(), "audit.jsonl")
		out.Reset()
		if code := app.Run(ctx, []string{"audit", "export", "-c", cfg, "--data-dir", dataDir, "-o", exp, "--sign"}, &out, &out); code != 0 {
			t.Fatalf("signed export: %s", out.String())
		}
		verifyBlob := func() error {
			_, err := stk.Cosign(ctx, append(append([]string{"verify-blob-attestation", "--bundle", exp + ".sigstore.json",
				"--type", "https://attestd.dev/audit-export/v1"}, stk.VerifyArgs(identity)...), exp)...)
			return err
		}
		if err := verifyBlob(); err != nil {
			t.Errorf("cosign verify-blob-attestation of the signed export: %v", err)
		}
		b, _ := os.ReadFile(exp)
		os.WriteFile(exp, bytes.Replace(b, []byte(`"allow":"true"`), []byte(`"allow":"fals"`), 1), 0o644)
		if err := verifyBlob(); err == nil {
			t.Error("cosign verified a modified export")
		}
	})

	for _, tc := range []struct {
		name, fixture, repoTag, cfgSigner, want string
	}{
		{"blocked vulnerability", "old-x-text", "staging/xtext:v1.0.0", identity, "vulnerabilities.max_severity"},
		{"failed hardening", "bad", "staging/bad:v1.0.0", identity, "hardening.required"},
		{"wrong signer", "static-go", "staging/other:v1.0.0", "someone-else@example.test", "require:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			if tc.cfgSigner != identity {
				c = signingConfigWith(t, identity, stk.SigningConfig, gate(tc.cfgSigner))
			}
			ref := pushFixture(t, fx[tc.fixture], tc.repoTag)
			_, tag, _ := strings.Cut(tc.repoTag, ":")
			rec, _ := processed(t, c, t.TempDir(), ref.Context().Tag(tag).String())
			if rec.State != store.StateDenied || rec.Decision == nil || rec.Decision.Allow || !strings.Contains(strings.Join(rec.Decision.Reasons, "\n"), tc.want) {
				t.Fatalf("state %s, want denied with %q\n%s", rec.State, tc.want, decisionOf(rec))
			}
			t.Logf("denied:\n%s", decisionOf(rec))
			name := strings.TrimPrefix(tc.repoTag, "staging/")
			if _, err := remote.Head(prodTag(name)); err == nil {
				t.Fatalf("a denied image got the prod tag %s", prodTag(name))
			}
		})
	}

	// The manual path is gated too: refused without an override; with one
	// it promotes and the audit log names the reason and who.
	t.Run("manual promote", func(t *testing.T) {
		ref := pushFixture(t, fx["old-x-text"], "staging/manual:v3.0.0")
		dir := t.TempDir()
		t.Run("process", func(t *testing.T) { // closes the store when done
			if rec, _ := processed(t, cfg, dir, ref.Context().Tag("v3.0.0").String()); rec.State != store.StateDenied {
				t.Fatalf("state %s", rec.State)
			}
		})
		run := func(args ...string) (int, string) {
			var out bytes.Buffer
			code := app.Run(ctx, append(args, "-c", cfg, "--data-dir", dir), &out, &out)
			return code, out.String()
		}
		if code, out := run("promote", ref.String(), "--dry-run"); code == 0 || !strings.Contains(out, "refusing to promote") || !strings.Contains(out, "vulnerabilities.max_severity") {
			t.Fatalf("promote of a denied digest: exit %d\n%s", code, out)
		}
		if code, out := run("promote", ref.String(), "--override-reason", "SEC-42: x/text only parses constant input"); code == 0 || !strings.Contains(out, "--actor") {
			t.Fatalf("an override without --actor: exit %d\n%s", code, out)
		}
		code, out := run("promote", ref.String(), "--override-reason", "SEC-42: x/text only parses constant input", "--actor", "jane@example.test")
		if code != 0 || !strings.Contains(out, "promoted: ") || !strings.Contains(out, prodTag("manual:v3.0.0").String()) {
			t.Fatalf("override: exit %d\n%s", code, out)
		}
		if desc, err := remote.Head(prodTag("manual:v3.0.0")); err != nil || desc.Digest.String() != ref.DigestStr() {
			t.Fatalf("prod tag after override: %v %v", desc, err)
		}
		// The intent is audited before anything is copied, the outcome after
		// the tag.
		_, exp := run("audit", "export", "--action", "override")
		intent, done := strings.Index(exp, `"phase":"intent"`), strings.Index(exp, `"phase":"done"`)
		if !strings.Contains(exp, `"reason":"SEC-42: x/text only parses constant input"`) || !strings.Contains(exp, `"actor":"cli:jane@example.test"`) || intent < 0 || done < intent {
			t.Fatalf("override audit:\n%s", exp)
		}
	})

	// policy test --image verifies like the gate: the promoted image passes.
	t.Run("policy test", func(t *testing.T) {
		var out bytes.Buffer
		code := app.Run(ctx, []string{"policy", "test", "-c", cfg, "--policy", gatePolicy(t, identity), "--image", prodTag("app:v1.0.0").String()}, &out, &out)
		if code != 0 || !strings.HasPrefix(out.String(), "ALLOW") {
			t.Fatalf("exit %d\n%s", code, out.String())
		}
		out.Reset()
		code = app.Run(ctx, []string{"policy", "test", "-c", cfg, "--policy", gatePolicy(t, "mallory@example.test"), "--image", prodTag("app:v1.0.0").String()}, &out, &out)
		if code != 1 || !strings.Contains(out.String(), "DENY") {
			t.Fatalf("wrong signer: exit %d\n%s", code, out.String())
		}
	})
}

// movingTag pushes another image to the staging tag right after the gate
// decided: the race between evaluation and promotion.
type movingTag struct {
	pipeline.Evaluator
	t   *testing.T
	tag string
}

func (m movingTag) Evaluate(ctx context.Context, t *pipeline.Target) (pipeline.Decision, error) {
	d, err := m.Evaluator.Evaluate(ctx, t)
	pushRandom(m.t, m.tag)
	return d, err
}

// TestGatePromotesOnlyTheEvaluatedDigest: when the staging tag moves
// between evaluation and promotion, prod gets the evaluated digest, never
// the new one.
func TestGatePromotesOnlyTheEvaluatedDigest(t *testing.T) {
	const identity = "attestd@example.test"
	cfg := signingConfigWith(t, identity, stk.SigningConfig, fmt.Sprintf(
		"gate:\n  policy: %s\n  signed_timestamps: 1\n  promotion:\n    - from: %s/race/*\n      to: %s/race-prod/{name}\n",
		gatePolicy(t, identity), stk.RegistryHost, stk.RegistryHost))
	ref := pushFixture(t, allFixtures(t)["static-go"], "race/app:v2.0.0")
	var out, errOut bytes.Buffer
	code := app.Run(context.Background(), []string{"process", "-c", cfg, "--data-dir", t.TempDir(), ref.Context().Tag("v2.0.0").String()}, &out, &errOut,
		app.WithStages(func(s pipeline.Stages) pipeline.Stages {
			s.Evaluator = movingTag{s.Evaluator, t, "race/app:v2.0.0"}
			return s
		}))
	if code != 0 || !strings.Contains(out.String(), "state:  promoted") {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	moved, err := remote.Head(ref.Context().Tag("v2.0.0"))
	if err != nil || moved.Digest.String() == ref.DigestStr() {
		t.Fatalf("the staging tag did not move: %v", err)
	}
	tg, _ := name.NewTag(stk.RegistryHost + "/race-prod/app:v2.0.0")
	prod, err := remote.Head(tg)
	if err != nil || prod.Digest.String() != ref.DigestStr() {
		t.Fatalf("prod %s is %v (%v), want the evaluated %s, not the moved-to %s", tg, prod, err, ref.DigestStr(), moved.Digest)
	}
}
