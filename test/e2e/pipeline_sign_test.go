package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attestd/attestd/store"
)

// signingConfig writes an attestd config that signs keylessly against the
// local stack as identity.
func signingConfig(t *testing.T, identity string) string {
	t.Helper()
	tok, err := stk.Issuer.Token(identity, 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return writeConfigExtra(t, 1, fmt.Sprintf("signing:\n  signing_config: %s\n  trusted_root: %s\n  token_file: %s\n",
		stk.SigningConfig, stk.TrustedRoot, tokenFile))
}

// TestPipelineSignsEverything: `attestd process` analyses and signs an image
// and a multi-platform index; the stock cosign CLI verifies the image
// signature and every analysis attestation, for the index and each platform.
func TestPipelineSignsEverything(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const identity = "attestd@example.test"
	fx := allFixtures(t)
	cfg := signingConfig(t, identity)
	dataDir := t.TempDir()

	verifyAll := func(t *testing.T, ref string, types ...string) {
		t.Helper()
		if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgs(identity)...), ref)...); err != nil {
			t.Errorf("cosign verify %s: %v", ref, err)
		}
		for _, typ := range types {
			out, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", typ}, stk.VerifyArgs(identity)...), ref)...)
			if err != nil {
				t.Errorf("cosign verify-attestation --type %s %s: %v", typ, ref, err)
				continue
			}
			if !strings.Contains(string(out), `"payloadType":"application/vnd.in-toto+json"`) {
				t.Errorf("cosign verify-attestation --type %s printed no verified envelope:\n%s", typ, out)
			}
		}
	}
	all := []string{"spdxjson", "cyclonedx", "slsaprovenance1", "https://attestd.dev/attestation/hardening/v1"}

	t.Run("image", func(t *testing.T) {
		ref := pushFixture(t, fx["static-go"], "signed/static-go:v1")
		start := time.Now()
		rec, _ := processed(t, cfg, dataDir, ref.String())
		t.Logf("analyse + sign (1 signature + 4 attestations): %s", time.Since(start).Round(time.Millisecond))
		if rec.State != store.StateAttested || rec.Stages["sign"].Status != store.StagePassed {
			t.Fatalf("state %s, sign %+v", rec.State, rec.Stages["sign"])
		}
		verifyAll(t, ref.String(), all...)
		// Another identity is refused by the stock CLI.
		if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgs("mallory@example.test")...), ref.String())...); err == nil {
			t.Error("cosign verified attestd's signature for the wrong identity")
		}
	})

	t.Run("index", func(t *testing.T) {
		ref := pushFixture(t, fx["multi-platform"], "signed/multi:v1")
		start := time.Now()
		rec, _ := processed(t, cfg, dataDir, ref.String())
		t.Logf("analyse + sign an index of %d platforms: %s", len(rec.Children), time.Since(start).Round(time.Millisecond))
		if rec.State != store.StateAttested {
			t.Fatalf("state %s, stages %+v", rec.State, rec.Stages)
		}
		verifyAll(t, ref.String(), "slsaprovenance1")
		for _, c := range rec.Children {
			verifyAll(t, ref.Context().Digest(c.Digest).String(), all...)
		}
	})
}
