package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/attestd/attestd/attest/sign"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/store/registry"
)

// TestKeylessSignVerifiedByCosign: attestd's signer (cosign library, new
// bundle format, Fulcio + TSA + Rekor v2 from the signing config) signs and
// attests; the stock cosign CLI verifies both; signing again attaches
// nothing new; a token Fulcio refuses attaches nothing.
func TestKeylessSignVerifiedByCosign(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ref := pushRandom(t, "sign/app:v1")
	tokenFile := filepath.Join(t.TempDir(), "token")
	tok, _ := stk.Issuer.Token("attestd@example.test", 10*time.Minute)
	os.WriteFile(tokenFile, []byte(tok), 0o600)
	rc, err := registry.New()
	if err != nil {
		t.Fatal(err)
	}
	k, err := sign.NewKeyless(stk.SigningConfig, stk.TrustedRoot, sign.FileToken{Path: tokenFile}, rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := k.SignImage(ctx, ref.String()); err != nil {
		t.Fatal(err)
	}
	t.Logf("sign + attach: %s (Fulcio, TSA, Rekor v2, registry)", time.Since(start).Round(time.Millisecond))
	if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgs("attestd@example.test")...), ref.String())...); err != nil {
		t.Fatalf("stock cosign does not verify attestd's signature: %v", err)
	}
	prov := map[string]any{
		"buildDefinition": map[string]any{"buildType": "https://attestd.dev/test/v1", "externalParameters": map[string]any{"repo": "example"}},
		"runDetails":      map[string]any{"builder": map[string]any{"id": "https://attestd.dev/builder"}},
	}
	start = time.Now()
	if err := k.Attest(ctx, ref.String(), "https://slsa.dev/provenance/v1", prov); err != nil {
		t.Fatal(err)
	}
	t.Logf("attest + attach: %s", time.Since(start).Round(time.Millisecond))
	out, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", "slsaprovenance1"}, stk.VerifyArgs("attestd@example.test")...), ref.String())...)
	if err != nil {
		t.Fatalf("stock cosign does not verify attestd's attestation: %v", err)
	}
	if !verifiedPredicate(out, "https://attestd.dev/builder") {
		t.Fatalf("cosign verify-attestation printed no verified statement naming our builder:\n%s", out)
	}
	// attestd's own verifier agrees, and only for the expected identity.
	tr, err := root.NewTrustedRootFromPath(stk.TrustedRoot)
	if err != nil {
		t.Fatal(err)
	}
	v, err := verify.New(tr, []verify.Identity{{Issuer: stk.IssuerURL, Subject: "attestd@example.test"}}, rc, verify.Options{TransparencyLog: 1, SignedTimestamps: 1})
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Verify(ctx, ref.String())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.PredicateTypes(), " "); got != "https://sigstore.dev/cosign/sign/v1 https://slsa.dev/provenance/v1" || len(res.Rejected) != 0 {
		t.Fatalf("verified %q, rejected %+v", got, res.Rejected)
	}
	wrong, _ := verify.New(tr, []verify.Identity{{Issuer: stk.IssuerURL, Subject: "someone@example.test"}}, rc, verify.Options{TransparencyLog: 1, SignedTimestamps: 1})
	if res, err := wrong.Verify(ctx, ref.String()); err != nil || len(res.Verified) != 0 || len(res.Rejected) != 2 {
		t.Fatalf("wrong identity: verified %v rejected %d, %v", res.PredicateTypes(), len(res.Rejected), err)
	}

	// A tampered copy of the provenance bundle (payload edited, signature
	// kept) attached beside it: rejected, while the genuine ones still verify.
	tamperedWith(t, ctx, rc, ref)
	res, err = v.Verify(ctx, ref.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rejected) != 1 || len(res.Verified) != 2 {
		t.Fatalf("after tampering: verified %v, rejected %+v", res.PredicateTypes(), res.Rejected)
	}

	before, err := rc.Referrers(ctx, ref, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := k.SignImage(ctx, ref.String()); err != nil {
		t.Fatal(err)
	}
	if err := k.Attest(ctx, ref.String(), "https://slsa.dev/provenance/v1", prov); err != nil {
		t.Fatal(err)
	}
	after, _ := rc.Referrers(ctx, ref, "")
	if len(after) != len(before) || len(before) != 3 {
		t.Fatalf("referrers %d before, %d after re-signing; want 3 and 3", len(before), len(after))
	}

	// One session (one job): one Fulcio certificate for all its signatures.
	sess, err := k.Session()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := sess.SignImage(ctx, pushRandom(t, fmt.Sprintf("sign/session:v%d", i)).String()); err != nil {
			t.Fatal(err)
		}
	}
	if n := sess.Certificates(); n != 1 {
		t.Errorf("a session of 3 signatures asked Fulcio for %d certificates, want 1", n)
	}

	other := pushRandom(t, "sign/app:v2")
	bad, _ := stk.Issuer.TokenWithAudience("attestd@example.test", "not-sigstore", time.Minute)
	os.WriteFile(tokenFile, []byte(bad), 0o600)
	if err := k.SignImage(ctx, other.String()); err == nil {
		t.Fatal("signed with a token Fulcio must refuse")
	}
	if refs, _ := rc.Referrers(ctx, other, ""); len(refs) != 0 {
		t.Fatalf("a failed signing attached %d referrers", len(refs))
	}
	if err := k.SignImage(ctx, stk.RegistryHost+"/sign/app:v2"); err == nil {
		t.Fatal("signed by tag")
	}
}

// tamperedWith attaches a copy of ref's SLSA bundle whose DSSE payload was
// edited after signing.
func tamperedWith(t *testing.T, ctx context.Context, rc *registry.Client, ref name.Digest) {
	t.Helper()
	attachForged(t, ctx, rc, ref, "https://slsa.dev/provenance/v1", func(p []byte) []byte {
		return bytes.Replace(p, []byte("https://attestd.dev/builder"), []byte("https://evil.example/builder"), 1)
	})
}

// attachForged attaches, beside ref's bundle of predicateType, a copy whose
// DSSE payload was edited (signature kept), and returns the genuine
// bundle's manifest digest.
func attachForged(t *testing.T, ctx context.Context, rc *registry.Client, ref name.Digest, predicateType string, edit func([]byte) []byte) v1.Hash {
	t.Helper()
	refs, err := rc.Referrers(ctx, ref, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range refs {
		if d.Annotations["dev.sigstore.bundle.predicateType"] != predicateType {
			continue
		}
		raw, _, err := rc.Manifest(ctx, ref.Context().Digest(d.Digest.String()))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := v1.ParseManifest(bytes.NewReader(raw))
		blob, err := rc.Blob(ctx, ref.Context(), m.Layers[0].Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(blob)
		blob.Close()
		var bundle map[string]any
		json.Unmarshal(b, &bundle)
		env := bundle["dsseEnvelope"].(map[string]any)
		payload, _ := base64.StdEncoding.DecodeString(env["payload"].(string))
		edited := edit(payload)
		if bytes.Equal(edited, payload) {
			t.Fatal("the edit changed nothing")
		}
		env["payload"] = base64.StdEncoding.EncodeToString(edited)
		forged, _ := json.Marshal(bundle)
		if err := ociremote.WriteAttestationNewBundleFormat(ref, forged, predicateType, ociremote.WithRemoteOptions(rc.RemoteOptions(ctx)...)); err != nil {
			t.Fatal(err)
		}
		return d.Digest
	}
	t.Fatalf("no %s bundle to tamper with", predicateType)
	return v1.Hash{}
}

// verifiedPredicate reports whether cosign verify-attestation's output holds
// a DSSE envelope whose decoded in-toto statement contains want.
func verifiedPredicate(out []byte, want string) bool {
	for _, line := range bytes.Split(out, []byte("\n")) {
		var env struct {
			Payload string `json:"payload"`
		}
		if json.Unmarshal(bytes.TrimSpace(line), &env) != nil || env.Payload == "" {
			continue
		}
		stmt, err := base64.StdEncoding.DecodeString(env.Payload)
		if err == nil && bytes.Contains(stmt, []byte(want)) {
			return true
		}
	}
	return false
}
