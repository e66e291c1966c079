package app

import (
	"strings"
	"testing"
)

const testPolicy = `version: 1
name: t
signers: [{issuer: https://issuer.example, subject: attestd@example.com}]
require: [signature, vuln]
vulnerabilities: {max_severity: medium}
`

const testInput = `{"version": "https://attestd.dev/policy-input/v2", "time": "2026-11-24T00:00:00Z",
 "image": {"ref": "r.example/app@sha256:aa", "registry": "r.example", "repository": "app", "digest": "sha256:aa", "tags": ["v1"]},
 "subjects": [{"digest": "sha256:aa", "kind": "image",
   "attestations": {"https://sigstore.dev/cosign/sign/v1": {"issuer": "https://issuer.example", "subject": "attestd@example.com"},
                    "https://cosign.sigstore.dev/attestation/vuln/v1": {"issuer": "https://issuer.example", "subject": "attestd@example.com"}},
   "vulnerabilities": {"critical": 0, "high": HIGH, "medium": 0, "low": 0, "negligible": 0, "unknown": 0, "unknownAs": "high", "findings": [], "scannedAt": "2026-11-24T00:00:00Z"}}]}`

func TestPolicyTestCommand(t *testing.T) {
	t.Parallel()
	pol := writeFile(t, testPolicy)
	code, out, stderr := run(t, "policy", "test", "--policy", pol, "--input", writeFile(t, strings.Replace(testInput, "HIGH", "0", 1)))
	if code != 0 || !strings.HasPrefix(out, "ALLOW (mode enforce, policy t sha256:") {
		t.Fatalf("allow: exit %d\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, "policy", "test", "--policy", pol, "--input", writeFile(t, strings.Replace(testInput, "HIGH", "2", 1)), "--print-input")
	if code != ExitError || !strings.Contains(out, "DENY") || !strings.Contains(out, "deny: vulnerabilities.max_severity: sha256:aa: findings above medium: high 2") || !strings.Contains(out, `"subjects": [`) {
		t.Fatalf("deny: exit %d\n%s", code, out)
	}
	// Bad input: a clear usage error.
	code, _, stderr = run(t, "policy", "test", "--policy", pol, "--input", writeFile(t, `{"version": "https://attestd.dev/policy-input/v2", "imagez": {}}`))
	if code != ExitUsage || !strings.Contains(stderr, `unknown field "imagez"`) {
		t.Fatalf("bad input: exit %d: %s", code, stderr)
	}
	code, _, stderr = run(t, "policy", "test", "--policy", writeFile(t, "version: 1\n"), "--input", writeFile(t, testInput))
	if code == 0 || !strings.Contains(stderr, "signers: at least one expected signer") {
		t.Fatalf("bad policy: exit %d: %s", code, stderr)
	}
	code, _, stderr = run(t, "policy", "test", "--policy", pol)
	if code != ExitUsage {
		t.Fatalf("no input: exit %d: %s", code, stderr)
	}
}

func TestPromoteNeedsAGate(t *testing.T) {
	t.Parallel()
	code, _, stderr := run(t, "promote", "--data-dir", t.TempDir(), "127.0.0.1:1/app@sha256:"+strings.Repeat("a", 64))
	if code != ExitUsage || !strings.Contains(stderr, "gate.policy is not configured") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}
