package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/empty"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/attestd/attestd/attest/sign"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/cmd/attestd/app"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// classicTypes are the cosign --type values of everything attestd attests.
var classicTypes = []string{"spdxjson", "cyclonedx", "slsaprovenance1", "vuln", "https://attestd.dev/attestation/hardening/v1"}

// TestClassicFormat: with signing.format classic (Fulcio + TSA, no Rekor)
// attestd writes cosign's classic .sig/.att layout and no bundle; the stock
// cosign CLI verifies the signature and every attestation in classic mode
// (no --new-bundle-format), and refuses a wrong identity and an edited
// attestation; the gate verifies the classic layout and promotes, and the
// classic tags travel to prod, where cosign verifies again; re-signing adds
// no layer; bundle-format signing refuses the classically signed image.
func TestClassicFormat(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const identity = "attestd@example.test"
	gate := fmt.Sprintf("gate:\n  policy: %s\n  transparency_log: 0\n  signed_timestamps: 1\n  promotion:\n    - from: %s/classic-staging/*\n      to: %s/classic-prod/{name}\n      tags: semver\n",
		gatePolicy(t, identity), stk.RegistryHost, stk.RegistryHost)
	cfg := signingConfigWith(t, identity, stk.SigningConfigTSAOnly, "  format: classic\n"+gate)
	ref := pushFixture(t, allFixtures(t)["static-go"], "classic-staging/app:v1.2.3")
	rc, _ := registry.New()
	tag := func(suffix string) name.Tag {
		return ref.Context().Tag(strings.Replace(ref.DigestStr(), ":", "-", 1) + suffix)
	}
	layers := func(tg name.Tag) []oci.Signature {
		t.Helper()
		sigs, err := ociremote.Signatures(tg, ociremote.WithRemoteOptions(rc.RemoteOptions(ctx)...))
		if err != nil {
			t.Fatal(err)
		}
		l, err := sigs.Get()
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	cosignVerify := func(ref string, id string, types ...string) error {
		if _, err := stk.CosignClassic(ctx, append(append([]string{"verify"}, stk.VerifyArgsClassic(id)...), ref)...); err != nil {
			return err
		}
		for _, typ := range types {
			out, err := stk.CosignClassic(ctx, append(append([]string{"verify-attestation", "--type", typ}, stk.VerifyArgsClassic(id)...), ref)...)
			if err != nil {
				return err
			}
			if !strings.Contains(string(out), `"payloadType":"application/vnd.in-toto+json"`) {
				return fmt.Errorf("verify-attestation --type %s printed no envelope:\n%s", typ, out)
			}
		}
		return nil
	}

	t.Run("refused with Rekor", func(t *testing.T) {
		bad := signingConfigWith(t, identity, stk.SigningConfig, "  format: classic\n")
		var out bytes.Buffer
		if code := app.Run(ctx, []string{"process", "-c", bad, "--data-dir", t.TempDir(), ref.String()}, &out, &out); code == 0 || !strings.Contains(out.String(), "names a Rekor log") {
			t.Fatalf("classic with a Rekor signing config: exit %d\n%s", code, out.String())
		}
	})

	var rec *store.Record
	t.Run("sign, gate, promote", func(t *testing.T) {
		start := time.Now()
		rec, _ = processed(t, cfg, t.TempDir(), ref.Context().Tag("v1.2.3").String())
		t.Logf("resolve → analyse → sign (classic) → evaluate → promote: %s", time.Since(start).Round(time.Millisecond))
		if rec.State != store.StatePromoted {
			t.Fatalf("state %s, stages %+v, decision %+v", rec.State, rec.Stages, rec.Decision)
		}
	})
	if rec == nil || rec.State != store.StatePromoted {
		t.FailNow()
	}
	if n := len(layers(tag(".sig"))); n != 1 {
		t.Errorf(".sig holds %d signatures, want 1", n)
	}
	if n := len(layers(tag(".att"))); n != len(classicTypes)+1 { // + the VSA
		t.Errorf(".att holds %d attestations, want %d", n, len(classicTypes)+1)
	}
	mt, _ := sgbundle.MediaTypeString("0.3")
	if refs, err := rc.Referrers(ctx, ref, mt); err != nil && !registry.IsNotFound(err) || len(refs) != 0 {
		t.Errorf("bundles attached in classic mode: %v %v", refs, err)
	}

	allTypes := append(slices.Clone(classicTypes), "https://slsa.dev/verification_summary/v1")
	if err := cosignVerify(ref.String(), identity, allTypes...); err != nil {
		t.Errorf("stock cosign (classic) on staging: %v", err)
	}
	prod, _ := name.NewTag(stk.RegistryHost + "/classic-prod/app:v1.2.3")
	if desc, err := remote.Head(prod); err != nil || desc.Digest.String() != ref.DigestStr() {
		t.Fatalf("prod tag: %v %v", desc, err)
	}
	if err := cosignVerify(prod.String(), identity); err != nil {
		t.Errorf("stock cosign (classic) verify on the prod tag: %v", err)
	}
	if err := cosignVerify(prod.Context().Digest(ref.DigestStr()).String(), identity, allTypes...); err != nil {
		t.Errorf("stock cosign (classic) on prod: %v", err)
	}
	if err := cosignVerify(ref.String(), "mallory@example.test"); err == nil {
		t.Error("cosign verified attestd's classic signature for the wrong identity")
	}

	// Re-signing the same documents adds nothing (dedupe by predicate type
	// and payload digest, as for bundles).
	tr, err := root.NewTrustedRootFromPath(stk.TrustedRoot)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := root.NewSigningConfigFromPath(stk.SigningConfigTSAOnly)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := stk.Issuer.Token(identity, 30*time.Minute)
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	k, err := sign.NewKeylessFromTrust(sc, tr, sign.FileToken{Path: tokFile}, rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if k, err = k.WithFormat(sign.FormatClassic); err != nil {
		t.Fatal(err)
	}
	sess, _ := k.Session()
	if err := sess.SignImage(ctx, ref.String()); err != nil {
		t.Fatal(err)
	}
	for _, l := range layers(tag(".att")) {
		ann, _ := l.Annotations()
		env, _ := l.Payload()
		var e struct{ Payload string }
		json.Unmarshal(env, &e)
		payload, _ := base64.StdEncoding.DecodeString(e.Payload)
		if err := sess.AttestStatement(ctx, ref.String(), ann["predicateType"], payload); err != nil {
			t.Fatal(err)
		}
	}
	// Re-signing adds nothing; telling its own signatures from anyone
	// else's costs the session one certificate (its identity), no more.
	if n, m := len(layers(tag(".sig"))), len(layers(tag(".att"))); n != 1 || m != len(allTypes) || sess.Certificates() > 1 {
		t.Errorf("after re-signing: %d signatures, %d attestations, %d certificates requested; want 1, %d, at most 1", n, m, sess.Certificates(), len(allTypes))
	}

	// attestd's own verifier reads the classic layout too.
	v, err := verify.New(tr, []verify.Identity{{Issuer: stk.IssuerURL, Subject: identity}}, rc, verify.Options{SignedTimestamps: 1})
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Verify(ctx, ref.String())
	if err != nil || len(res.Verified) != len(allTypes)+1 || len(res.Rejected) != 0 {
		t.Fatalf("attestd verify: verified %v, rejected %+v, %v", res.PredicateTypes(), res.Rejected, err)
	}

	// Bundle-format signing refuses an image that carries classic
	// signatures, and attaches nothing.
	t.Run("no mixing", func(t *testing.T) {
		var out bytes.Buffer
		bundleCfg := signingConfigWith(t, identity, stk.SigningConfigTSAOnly, "")
		code := app.Run(ctx, []string{"process", "-c", bundleCfg, "--data-dir", t.TempDir(), ref.String()}, &out, &out)
		if code == 0 || !strings.Contains(out.String(), "other format") {
			t.Errorf("bundle signing of a classic image: exit %d\n%s", code, out.String())
		}
		if refs, err := rc.Referrers(ctx, ref, mt); err != nil && !registry.IsNotFound(err) || len(refs) != 0 {
			t.Errorf("bundles attached beside classic signatures: %v %v", refs, err)
		}
	})

	// An attestation whose envelope payload was edited (signature and
	// timestamp kept): the stock CLI and attestd's verifier refuse it.
	var edited []oci.Signature
	for _, l := range layers(tag(".att")) {
		ann, _ := l.Annotations()
		env, _ := l.Payload()
		if ann["predicateType"] == "https://spdx.dev/Document" {
			var e map[string]any
			json.Unmarshal(env, &e)
			p, _ := base64.StdEncoding.DecodeString(e["payload"].(string))
			p = bytes.Replace(p, []byte(`"spdxVersion":"SPDX-2.3"`), []byte(`"spdxVersion":"SPDX-2.3","comment":"tampered"`), 1)
			e["payload"] = base64.StdEncoding.EncodeToString(p)
			env, _ = json.Marshal(e)
		}
		mtype, _ := l.MediaType()
		forged, err := static.NewAttestation(env, static.WithAnnotations(ann), static.WithLayerMediaType(mtype))
		if err != nil {
			t.Fatal(err)
		}
		edited = append(edited, forged)
	}
	next, err := mutate.AppendSignatures(empty.Signatures(), false, edited...)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag(".att"), next, rc.RemoteOptions(ctx)...); err != nil {
		t.Fatal(err)
	}
	if err := cosignVerify(ref.String(), identity, "spdxjson"); err == nil {
		t.Error("cosign verified a classic attestation whose payload was edited after signing")
	}
	if err := cosignVerify(ref.String(), identity, "cyclonedx"); err != nil {
		t.Errorf("the untouched attestations no longer verify: %v", err)
	}
	res, err = v.Verify(ctx, ref.String())
	if err != nil || len(res.Rejected) != 1 || res.Verified["https://spdx.dev/Document"].Bundle != "" {
		t.Errorf("attestd verify after tampering: verified %v, rejected %+v, %v", res.PredicateTypes(), res.Rejected, err)
	}
}
