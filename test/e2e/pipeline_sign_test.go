package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"

	"github.com/attestd/attestd/cmd/attestd/app"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// signingConfig writes an attestd config that signs keylessly against the
// local stack as identity.
func signingConfig(t *testing.T, identity string) string {
	t.Helper()
	return signingConfigWith(t, identity, stk.SigningConfig, "")
}

// signingConfigWith is signingConfig with another signing config file and
// extra signing.* lines.
func signingConfigWith(t *testing.T, identity, signingConfigPath, extra string) string {
	t.Helper()
	tok, err := stk.Issuer.Token(identity, 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return writeConfigExtra(t, 1, fmt.Sprintf("signing:\n  signing_config: %s\n  trusted_root: %s\n  token_file: %s\n%s",
		signingConfigPath, stk.TrustedRoot, tokenFile, extra))
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
	all := []string{"spdxjson", "cyclonedx", "slsaprovenance1", "https://attestd.dev/attestation/hardening/v1", "vuln"}

	t.Run("image", func(t *testing.T) {
		ref := pushFixture(t, fx["static-go"], "signed/static-go:v1")
		start := time.Now()
		rec, _ := processed(t, cfg, dataDir, ref.String())
		t.Logf("analyse + sign (1 signature + 5 attestations): %s", time.Since(start).Round(time.Millisecond))
		if rec.State != store.StateAttested || rec.Stages["sign"].Status != store.StagePassed {
			t.Fatalf("state %s, sign %+v", rec.State, rec.Stages["sign"])
		}
		verifyAll(t, ref.String(), all...)
		// Every step is in the audit log, and the log verifies.
		var out, errOut bytes.Buffer
		if code := app.Run(ctx, []string{"audit", "export", "-c", cfg, "--data-dir", dataDir, "--digest", ref.DigestStr()}, &out, &errOut); code != 0 {
			t.Fatalf("audit export: %s", errOut.String())
		}
		for _, want := range []string{`"action":"event.accepted"`, `"stage":"analyse","status":"passed"`, `"stage":"sign","status":"passed"`,
			`"action":"attestations.attached"`, `"from":"analysed","to":"attested"`} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("audit log lacks %s:\n%s", want, out.String())
			}
		}
		out.Reset()
		if code := app.Run(ctx, []string{"audit", "verify", "-c", cfg, "--data-dir", dataDir}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "intact") {
			t.Errorf("audit verify: exit %d %s %s", code, out.String(), errOut.String())
		}
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

// TestPipelineSignsTSAOnly: a signing config without Rekor (Fulcio + TSA):
// the stock cosign CLI verifies with the signed timestamp alone, and refuses
// when it is asked for a transparency-log entry (there is none).
func TestPipelineSignsTSAOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const identity = "attestd@example.test"
	cfg := signingConfigWith(t, identity, stk.SigningConfigTSAOnly, "")
	ref := pushFixture(t, allFixtures(t)["old-x-text"], "signed-tsa/app:v1")
	rec, _ := processed(t, cfg, t.TempDir(), ref.String())
	if rec.State != store.StateAttested {
		t.Fatalf("state %s, stages %+v", rec.State, rec.Stages)
	}
	if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgsNoTlog(identity)...), ref.String())...); err != nil {
		t.Errorf("cosign verify (TSA only): %v", err)
	}
	for _, typ := range []string{"spdxjson", "cyclonedx", "slsaprovenance1", "https://attestd.dev/attestation/hardening/v1"} {
		if _, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", typ}, stk.VerifyArgsNoTlog(identity)...), ref.String())...); err != nil {
			t.Errorf("cosign verify-attestation --type %s (TSA only): %v", typ, err)
		}
	}
	if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgs(identity)...), ref.String())...); err == nil {
		t.Error("cosign found a transparency-log entry although the signing config names no Rekor")
	}
}

// TestPipelineSignsOnReferrersRegistry: on a registry with the OCI 1.1
// referrers API (ggcr's, in process) the attestations are real referrers —
// no sha256-<hex> fallback tag — and the stock cosign CLI verifies them.
func TestPipelineSignsOnReferrersRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const identity = "attestd@example.test"
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.WithReferrersSupport(true), ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	tok, _ := stk.Issuer.Token(identity, 30*time.Minute)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(tok), 0o600)
	cfg := filepath.Join(t.TempDir(), "attestd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("registries:\n  - host: %s\nintake:\n  poll_interval: 0s\nsigning:\n  signing_config: %s\n  trusted_root: %s\n  token_file: %s\n",
		host, stk.SigningConfig, stk.TrustedRoot, tokenFile)), 0o644)

	f := allFixtures(t)["static-go"]
	tag, _ := name.NewTag(host + "/team/app:v1")
	if err := remote.Write(tag, f.Image); err != nil {
		t.Fatal(err)
	}
	d, _ := f.Image.Digest()
	ref := tag.Context().Digest(d.String())
	rec, _ := processed(t, cfg, t.TempDir(), ref.String())
	if rec.State != store.StateAttested {
		t.Fatalf("state %s, stages %+v", rec.State, rec.Stages)
	}
	idx, err := remote.Referrers(ref)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 6 {
		t.Errorf("referrers API lists %d manifests, want 6 (signature + 5 attestations)", len(im.Manifests))
	}
	tags, err := remote.List(tag.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range tags {
		if strings.HasPrefix(tg, "sha256-") {
			t.Errorf("fallback tag %s written although the registry has the referrers API", tg)
		}
	}
	if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, stk.VerifyArgs(identity)...), ref.String())...); err != nil {
		t.Errorf("cosign verify: %v", err)
	}
	for _, typ := range []string{"spdxjson", "cyclonedx", "slsaprovenance1", "https://attestd.dev/attestation/hardening/v1"} {
		if _, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", typ}, stk.VerifyArgs(identity)...), ref.String())...); err != nil {
			t.Errorf("cosign verify-attestation --type %s: %v", typ, err)
		}
	}
}

// TestTamperedAttestationRejectedByCosign: the stored SPDX attestation is
// replaced (in the referrers fallback index) by a copy whose payload was
// edited: the stock cosign CLI refuses it.
func TestTamperedAttestationRejectedByCosign(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const identity = "attestd@example.test"
	cfg := signingConfig(t, identity)
	ref := pushFixture(t, allFixtures(t)["static-go"], "signed-tamper/app:v1")
	if rec, _ := processed(t, cfg, t.TempDir(), ref.String()); rec.State != store.StateAttested {
		t.Fatalf("state %s", rec.State)
	}
	verify := func() error {
		_, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", "spdxjson"}, stk.VerifyArgs(identity)...), ref.String())...)
		return err
	}
	if err := verify(); err != nil {
		t.Fatalf("before tampering: %v", err)
	}
	rc, _ := registry.New()
	replaceAttestation(t, ctx, rc, ref, "https://spdx.dev/Document", func(payload []byte) []byte {
		return bytes.Replace(payload, []byte(`"spdxVersion":"SPDX-2.3"`), []byte(`"spdxVersion":"SPDX-2.3","comment":"tampered"`), 1)
	})
	if err := verify(); err == nil {
		t.Fatal("cosign verified an attestation whose payload was edited after signing")
	}
}

// replaceAttestation swaps the bundle of predicateType attached to ref for a
// copy with its DSSE payload edited (signature kept): the forged copy is
// attached and the genuine one dropped from the referrers fallback index.
func replaceAttestation(t *testing.T, ctx context.Context, rc *registry.Client, ref name.Digest, predicateType string, edit func([]byte) []byte) {
	t.Helper()
	genuine := attachForged(t, ctx, rc, ref, predicateType, edit)
	fallback := ref.Context().Tag(strings.Replace(ref.DigestStr(), ":", "-", 1))
	idx, err := remote.Index(fallback, rc.RemoteOptions(ctx)...)
	if err != nil {
		t.Fatalf("referrers fallback index %s: %v", fallback, err)
	}
	idx = mutate.RemoveManifests(idx, func(d v1.Descriptor) bool { return d.Digest == genuine })
	if err := remote.WriteIndex(fallback, idx, rc.RemoteOptions(ctx)...); err != nil {
		t.Fatal(err)
	}
}

// TestKillMidAttachLeavesOneAttestationPerType: the daemon is killed (-9)
// while a job's attestations are being attached; after a restart the job
// completes and exactly one signature and one attestation per predicate type
// are attached — in the bundle format (referrers) and in the classic one
// (.sig/.att images, rewritten read-modify-write).
func TestKillMidAttachLeavesOneAttestationPerType(t *testing.T) {
	rc, _ := registry.New()
	t.Run("bundle", func(t *testing.T) {
		ref := pushFixture(t, allFixtures(t)["node"], "signed-kill/app:v1")
		listed := func(ctx context.Context) map[string]int {
			refs, err := rc.Referrers(ctx, ref, "")
			if err != nil && !registry.IsNotFound(err) {
				t.Fatal(err)
			}
			n := map[string]int{}
			for _, d := range refs {
				n[d.Annotations["dev.sigstore.bundle.predicateType"]]++
			}
			return n
		}
		// A job's bundles are listed in the fallback index together, after
		// all are stored: the kill lands between two bundle manifests (one
		// signature at a time), none of them listed yet.
		puts := func() int {
			log, err := os.ReadFile(stk.LogPath("registry"))
			if err != nil {
				t.Fatal(err)
			}
			return strings.Count(string(log), `"PUT /v2/signed-kill/app/manifests/sha256:`)
		}
		pushed := puts() // the image's own manifests
		stored := func(context.Context) map[string]int {
			return map[string]int{"bundle manifests stored": puts() - pushed}
		}
		cfg := signingConfigWith(t, "attestd@example.test", stk.SigningConfig, "  concurrency: 1\n")
		killMidAttach(t, cfg, ref, stored, listed)
	})
	t.Run("classic", func(t *testing.T) {
		ref := pushFixture(t, allFixtures(t)["node"], "signed-kill/classic:v1")
		// One signature at a time: TSA-only signing is fast, and the kill
		// must land between two of them.
		cfg := signingConfigWith(t, "attestd@example.test", stk.SigningConfigTSAOnly, "  format: classic\n  concurrency: 1\n")
		classic := func(ctx context.Context) map[string]int {
			n := map[string]int{}
			for _, suffix := range []string{".sig", ".att"} {
				sigs, err := ociremote.Signatures(ref.Context().Tag(strings.Replace(ref.DigestStr(), ":", "-", 1)+suffix),
					ociremote.WithRemoteOptions(rc.RemoteOptions(ctx)...))
				if err != nil {
					t.Fatal(err)
				}
				ls, err := sigs.Get()
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range ls {
					pt := "https://sigstore.dev/cosign/sign/v1"
					if ann, _ := l.Annotations(); suffix == ".att" {
						pt = ann["predicateType"]
					}
					n[pt]++
				}
			}
			return n
		}
		killMidAttach(t, cfg, ref, classic, classic)
	})
}

// killMidAttach submits ref to a daemon, kills it (-9) once progress
// counts some but not all of the five signatures, restarts it, waits for
// the job to finish, and checks with attached that each is there exactly
// once.
func killMidAttach(t *testing.T, cfg string, ref name.Digest, progress, attached func(context.Context) map[string]int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dataDir := t.TempDir()
	self, _ := os.Executable()
	addr := freeAddr(t)
	args := []string{"serve", "-c", cfg, "--data-dir", dataDir, "--listen", addr}
	d1 := startProcess(t, self, []string{daemonEnv + "=1"}, addr, args...)
	resp := d1.request(t, http.MethodPost, "/api/v1/submit?image="+url.QueryEscape(ref.String()))
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		t.Fatalf("submit: %v", resp.Status)
	}
	resp.Body.Close()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n := progress(ctx)
		total := 0
		for _, c := range n {
			total += c
		}
		if total >= 1 && total < 5 {
			break // mid-attach
		}
		if total >= 5 || time.Now().After(deadline) {
			t.Fatalf("could not catch the daemon mid-attach (attached: %v)", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d1.signal(syscall.SIGKILL)
	<-d1.done
	d1.done <- nil
	t.Logf("killed with attached: %v", attached(ctx))

	d2 := startProcess(t, self, []string{daemonEnv + "=1"}, addr, args...)
	deadline = time.Now().Add(2 * time.Minute)
	for {
		var rec store.Record
		d2.getJSON(t, "/api/v1/image?ref="+url.QueryEscape(ref.String()), &rec)
		if rec.State == store.StateAttested {
			break
		}
		if rec.State == store.StateFailed || time.Now().After(deadline) {
			t.Fatalf("after restart: state %s, stages %+v", rec.State, rec.Stages)
		}
		time.Sleep(200 * time.Millisecond)
	}
	d2.stop()
	n := attached(ctx)
	for _, pt := range []string{"https://sigstore.dev/cosign/sign/v1", "https://spdx.dev/Document", "https://cyclonedx.org/bom",
		"https://slsa.dev/provenance/v1", "https://attestd.dev/attestation/hardening/v1"} {
		if n[pt] != 1 {
			t.Errorf("%s attached %d times, want exactly 1 (all: %v)", pt, n[pt], n)
		}
	}
}

// TestPipelineSignsWithKeyFile: the air-gapped fallback — a cosign key pair
// instead of Fulcio (Rekor and the TSA still record the signatures); the
// stock cosign CLI verifies with the public key.
func TestPipelineSignsWithKeyFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	t.Setenv("COSIGN_PASSWORD", "e2e-key-password")
	if _, err := stk.Cosign(ctx, "generate-key-pair", "--output-key-prefix", filepath.Join(dir, "cosign")); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfigExtra(t, 1, fmt.Sprintf("signing:\n  signing_config: %s\n  trusted_root: %s\n  key: %s\n  key_password_env: COSIGN_PASSWORD\n",
		stk.SigningConfig, stk.TrustedRoot, filepath.Join(dir, "cosign.key")))
	ref := pushFixture(t, allFixtures(t)["static-go"], "signed-key/app:v1")
	rec, _ := processed(t, cfg, t.TempDir(), ref.String())
	if rec.State != store.StateAttested {
		t.Fatalf("state %s, stages %+v", rec.State, rec.Stages)
	}
	args := []string{"--key", filepath.Join(dir, "cosign.pub"), "--new-bundle-format", "--trusted-root", stk.TrustedRoot, "--use-signed-timestamps"}
	if _, err := stk.Cosign(ctx, append(append([]string{"verify"}, args...), ref.String())...); err != nil {
		t.Errorf("cosign verify --key: %v", err)
	}
	for _, typ := range []string{"spdxjson", "cyclonedx", "slsaprovenance1", "https://attestd.dev/attestation/hardening/v1"} {
		if _, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", typ}, args...), ref.String())...); err != nil {
			t.Errorf("cosign verify-attestation --key --type %s: %v", typ, err)
		}
	}
	// Another key does not verify.
	if _, err := stk.Cosign(ctx, "generate-key-pair", "--output-key-prefix", filepath.Join(dir, "other")); err != nil {
		t.Fatal(err)
	}
	if _, err := stk.Cosign(ctx, "verify", "--key", filepath.Join(dir, "other.pub"), "--new-bundle-format", "--trusted-root", stk.TrustedRoot, "--use-signed-timestamps", ref.String()); err == nil {
		t.Error("cosign verified with a different public key")
	}
	// A wrong password fails the stage, nothing is marked attested.
	t.Setenv("COSIGN_PASSWORD", "wrong")
	var out, errOut bytes.Buffer
	ref2 := pushFixture(t, allFixtures(t)["old-x-text"], "signed-key/app:v2")
	if code := app.Run(ctx, []string{"process", "-c", cfg, "--data-dir", t.TempDir(), ref2.String()}, &out, &errOut); code == 0 {
		t.Errorf("process with a wrong key password succeeded:\n%s", out.String())
	}
}

// TestPipelineLargeDocumentsAsArtifacts: documents above signing.max_payload
// are pushed as their own OCI artifacts referring to the image; the signed
// document-ref statement carries their digest, which matches the artifact.
func TestPipelineLargeDocumentsAsArtifacts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const identity = "attestd@example.test"
	cfg := signingConfigWith(t, identity, stk.SigningConfig, "  max_payload: 1KiB\n")
	ref := pushFixture(t, allFixtures(t)["node"], "signed-large/app:v1")
	rec, load := processed(t, cfg, t.TempDir(), ref.String())
	if rec.State != store.StateAttested {
		t.Fatalf("state %s, stages %+v", rec.State, rec.Stages)
	}
	spdx := artifact(t, rec, rec.Digest, "spdx")
	out, err := stk.Cosign(ctx, append(append([]string{"verify-attestation", "--type", "https://attestd.dev/attestation/document-ref/spdx/v1"}, stk.VerifyArgs(identity)...), ref.String())...)
	if err != nil {
		t.Fatalf("cosign verify-attestation (document-ref): %v", err)
	}
	type documentRef struct {
		Digest, URI, MediaType string
		Size                   int64
	}
	var docRef documentRef
	for _, line := range bytes.Split(out, []byte("\n")) {
		var env struct{ Payload string }
		if json.Unmarshal(line, &env) != nil || env.Payload == "" {
			continue
		}
		p, _ := base64.StdEncoding.DecodeString(env.Payload)
		var st struct {
			Predicate documentRef `json:"predicate"`
		}
		json.Unmarshal(p, &st)
		if st.Predicate.Digest == spdx.Digest { // earlier runs on this image may have attached others
			docRef = st.Predicate
		}
	}
	if docRef.Digest != spdx.Digest || docRef.Size != spdx.Size || !strings.HasPrefix(docRef.URI, "oci://") {
		t.Fatalf("verified document-ref %+v, want digest %s size %d", docRef, spdx.Digest, spdx.Size)
	}
	art, err := name.NewDigest(strings.TrimPrefix(docRef.URI, "oci://"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(art)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	d, _ := ls[0].Digest()
	if len(ls) != 1 || d.String() != spdx.Digest {
		t.Fatalf("artifact %s holds %d layers, first %s; want the SPDX document %s", art, len(ls), d, spdx.Digest)
	}
	rc, _ := ls[0].Compressed()
	body, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(body, load(spdx)) {
		t.Fatal("the artifact's bytes differ from the stored SPDX document")
	}
	// The artifact is a referrer of the image.
	refs, err := remote.Referrers(ref)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := refs.IndexManifest()
	found := false
	for _, m := range im.Manifests {
		found = found || m.Digest.String() == art.DigestStr()
	}
	if !found {
		t.Errorf("the SBOM artifact %s is not listed among the image's referrers", art.DigestStr())
	}
}
