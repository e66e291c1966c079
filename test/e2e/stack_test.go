package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/attestd/attestd/test/stack"
)

// TestStackSignVerify proves the harness: the stock cosign CLI signs an image
// keylessly against our Fulcio + TSA + Rekor v2 and verifies it, and refuses
// a wrong identity.
func TestStackSignVerify(t *testing.T) {
	ref := pushRandom(t, "harness/app:v1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tok, err := stk.Issuer.Token("ci@example.test", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stk.Cosign(ctx, append(append([]string{"sign"}, stk.SignArgs(tok)...), ref.String())...); err != nil {
		t.Fatal(err)
	}
	out, err := stk.Cosign(ctx, append(append([]string{"verify", "--output", "json"}, stk.VerifyArgs("ci@example.test")...), ref.String())...)
	if err != nil {
		t.Fatal(err)
	}
	// cosign prints human lines to stderr and JSON on stdout; we captured both.
	if i := strings.Index(string(out), "["); i < 0 || !json.Valid([]byte(strings.TrimSpace(string(out[i:])))) {
		t.Fatalf("verify output has no JSON payload:\n%s", out)
	}
	if !strings.Contains(string(out), ref.DigestStr()) {
		t.Fatalf("verified payload does not name %s:\n%s", ref.DigestStr(), out)
	}
	if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgs("someone-else@example.test")...), ref.String())...); err == nil {
		t.Fatal("cosign verify accepted the wrong identity")
	}
	bad, _ := stk.Issuer.TokenWithAudience("ci@example.test", "not-sigstore", time.Minute)
	other := pushRandom(t, "harness/app:v2")
	if _, err := stk.Cosign(ctx, append(append([]string{"sign"}, stk.SignArgs(bad)...), other.String())...); err == nil {
		t.Fatal("Fulcio issued a certificate for a token with the wrong audience")
	}
}

// TestRegistryNotifications: the Debian registry delivers push events, with
// the configured header, to the URL the harness gave it.
func TestRegistryNotifications(t *testing.T) {
	ref := pushRandom(t, "harness/notify:v1")
	deadline := time.Now().Add(20 * time.Second)
	for {
		ev, hdr, ok := events.find("push", "harness/notify", ref.DigestStr())
		if ok {
			if ev.Target.MediaType == "" || !strings.Contains(hdr, "Bearer e2e-secret") || !strings.Contains(hdr, "application/vnd.docker.distribution.events.v1+json") {
				t.Fatalf("event %+v delivered with headers %q", ev, hdr)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no push event for %s within 20s", ref)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestToolsPinned(t *testing.T) {
	for _, tool := range stack.AllTools() {
		if !strings.HasPrefix(tool.Version, "v") || strings.Contains(tool.Version, "latest") {
			t.Errorf("%s is not pinned: %q", tool.Name, tool.Version)
		}
	}
	out, err := stk.Cosign(context.Background(), "version")
	if err != nil || !strings.Contains(string(out), "v2.6.5") {
		t.Fatalf("cosign version = %s, %v", out, err)
	}
	// The syft CLI the analysis tests compare with is the library version attestd links.
	mod, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/anchore/syft").Output()
	if err != nil {
		t.Fatal(err)
	}
	if v := strings.TrimSpace(string(mod)); v != stack.Syft().Version {
		t.Errorf("go.mod has syft %s, the CLI cross-check installs %s", v, stack.Syft().Version)
	}
	// go install sets no version ldflags (syft version says "[not provided]"):
	// read the module version from the binary's build info instead.
	out, err = exec.Command("go", "version", "-m", stk.SyftBin).Output()
	if err != nil || !regexp.MustCompile(`\bmod\s+github.com/anchore/syft\s+`+regexp.QuoteMeta(stack.Syft().Version)+`\b`).Match(out) {
		t.Fatalf("syft binary build info:\n%s, %v", out, err)
	}
}
