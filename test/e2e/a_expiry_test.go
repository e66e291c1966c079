package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/attestd/attestd/store"
)

// Certificate expiry is tested honestly, without touching any clock: an image
// is signed here, in the first e2e test that runs (files run in name order),
// and TestZZVerifyAfterCertificateExpiry (zz_expiry_test.go, the last)
// verifies it with the stock cosign CLI once the 10-minute Fulcio
// certificate has expired — sleeping only for whatever part of the ten
// minutes the rest of the suite did not take.
var expiry struct {
	ref, classicRef string
	signedAt        time.Time
}

func TestAASignForExpiryCheck(t *testing.T) {
	cfg := signingConfig(t, "attestd@example.test")
	ref := pushFixture(t, allFixtures(t)["static-go"], "signed-expiry/app:v1")
	rec, _ := processed(t, cfg, t.TempDir(), ref.String())
	if rec.State != store.StateAttested {
		t.Fatalf("state %s, stages %+v", rec.State, rec.Stages)
	}
	// The classic format (TSA only) too.
	classic := pushFixture(t, allFixtures(t)["old-x-text"], "signed-expiry/classic:v1")
	rec, _ = processed(t, signingConfigWith(t, "attestd@example.test", stk.SigningConfigTSAOnly, "  format: classic\n"), t.TempDir(), classic.String())
	if rec.State != store.StateAttested {
		t.Fatalf("classic: state %s, stages %+v", rec.State, rec.Stages)
	}
	expiry.ref, expiry.classicRef, expiry.signedAt = ref.String(), classic.String(), time.Now()
	// Fresh, it verifies.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", "slsaprovenance1"}, stk.VerifyArgs("attestd@example.test")...), expiry.ref)...); err != nil {
		t.Fatal(err)
	}
}
