package e2e

import (
	"context"
	"testing"
	"time"
)

// TestZZVerifyAfterCertificateExpiry: see a_expiry_test.go. The Fulcio
// certificate lives 10 minutes; after it expired, the signature and the
// attestations still verify with the stock cosign CLI, because the signed
// RFC 3161 timestamp (and the Rekor entry) prove they were made while it
// was valid.
func TestZZVerifyAfterCertificateExpiry(t *testing.T) {
	if expiry.ref == "" {
		t.Skip("TestAASignForExpiryCheck did not run (use -run on both, or the whole suite)")
	}
	if testing.Short() {
		t.Skip("waits for a Fulcio certificate to expire")
	}
	wait := time.Until(expiry.signedAt.Add(10*time.Minute + 15*time.Second))
	if wait > 0 {
		t.Logf("waiting %s for the Fulcio certificate to expire", wait.Round(time.Second))
		time.Sleep(wait)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const id = "attestd@example.test"
	if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgs(id)...), expiry.ref)...); err != nil {
		t.Errorf("after certificate expiry, cosign verify: %v", err)
	}
	for _, typ := range []string{"spdxjson", "cyclonedx", "slsaprovenance1", "https://attestd.dev/attestation/hardening/v1"} {
		if _, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", typ}, stk.VerifyArgs(id)...), expiry.ref)...); err != nil {
			t.Errorf("after certificate expiry, cosign verify-attestation --type %s: %v", typ, err)
		}
	}
	if _, err := stk.CosignClassic(ctx, append(append([]string{"verify"}, stk.VerifyArgsClassic(id)...), expiry.classicRef)...); err != nil {
		t.Errorf("after certificate expiry, cosign verify (classic): %v", err)
	}
	for _, typ := range classicTypes {
		if _, err := stk.CosignClassic(ctx, append(append([]string{"verify-attestation", "--type", typ}, stk.VerifyArgsClassic(id)...), expiry.classicRef)...); err != nil {
			t.Errorf("after certificate expiry, cosign verify-attestation --type %s (classic): %v", typ, err)
		}
	}
}
