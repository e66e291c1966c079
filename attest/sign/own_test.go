package sign

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/attestd/attestd/attest/sign/signtest"
	"github.com/attestd/attestd/store/registry"
)

// The issue "Signing can be suppressed": whoever can write to the staging
// registry could pre-attach a bundle with attestd's (deterministic) payload
// and predicate type but a signature that is not attestd's, and attestd took
// it for its own — signed nothing, and counted the type as attached. These
// tests run the real signing path offline on signtest: an in-process
// Fulcio and TSA (certificates and timestamps from sigstore-go's testing
// CA), trust material naming them, and ggcr's in-process registry.

const (
	testIssuer   = signtest.Issuer
	testIdentity = "attestd@example.test"
	testPredType = "https://slsa.dev/provenance/v1"
)

// signer is a signer under test and what verifies its signatures.
type signer struct {
	k *Keyless
	// policy is the identity a bundle must verify for; tm the trust material.
	policy sgverify.PolicyOption
	tm     root.TrustedMaterial
}

// keylessSigner signs as subject through the test Fulcio.
func keylessSigner(t *testing.T, ts *signtest.Sigstore, rc *registry.Client, subject string, log *slog.Logger) signer {
	t.Helper()
	k, err := NewKeylessFromTrust(ts.SigningConfig, ts.TrustedRoot, signtest.TokenFor(subject), rc, log)
	if err != nil {
		t.Fatal(err)
	}
	return signer{k: k, policy: signtest.Policy(t, subject), tm: ts.TrustedRoot}
}

// keyedSigner signs with a freshly generated cosign key file.
func keyedSigner(t *testing.T, ts *signtest.Sigstore, rc *registry.Client, log *slog.Logger) signer {
	t.Helper()
	pass := func(bool) ([]byte, error) { return []byte("test"), nil }
	kb, err := cosign.GenerateKeyPair(pass)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "cosign.key")
	if err := os.WriteFile(p, kb.PrivateBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := NewKeyed(context.Background(), p, pass, ts.SigningConfig, ts.TrustedRoot, rc, log)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(kb.PublicBytes)
	if err != nil {
		t.Fatal(err)
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	key := root.NewExpiringKey(v, time.Time{}, time.Time{})
	tm := root.TrustedMaterialCollection{ts.TrustedRoot, root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })}
	return signer{k: k, policy: sgverify.WithKey(), tm: tm}
}

// logBuffer collects log output from concurrent writers.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// bundlesOf counts the Sigstore bundles attached to d of predicateType, and
// those among them that verify for s — checked with sigstore-go directly,
// not with the code under test (signtest.Bundles).
func bundlesOf(t *testing.T, rc *registry.Client, s signer, d name.Digest, predicateType string) (all, verified int) {
	t.Helper()
	all, ok := signtest.Bundles(t, rc, s.tm, s.policy, d, predicateType)
	return all, len(ok)
}

// forgeBundle attaches, as attestd would, a bundle of payload whose DSSE
// signature is garbage: signed by s (its certificate or key hint), then the
// signature replaced and timestamped anew.
func forgeBundle(t *testing.T, s signer, d name.Digest, predicateType string, payload []byte) {
	t.Helper()
	ctx := context.Background()
	sess, err := s.k.Session()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sess.SignStatement(ctx, payload)
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	bogus := []byte("not a signature by attestd")
	sigs := b["dsseEnvelope"].(map[string]any)["signatures"].([]any)
	sigs[0].(map[string]any)["sig"] = base64.StdEncoding.EncodeToString(bogus)
	// A real timestamp over the bogus signature (a public TSA stamps
	// anything), so that the signature check itself must refuse it.
	tsr, err := s.k.opts.TimestampAuthorities[0].GetTimestamp(ctx, bogus)
	if err != nil {
		t.Fatal(err)
	}
	tvd := b["verificationMaterial"].(map[string]any)["timestampVerificationData"].(map[string]any)
	tvd["rfc3161Timestamps"] = []any{map[string]any{"signedTimestamp": base64.StdEncoding.EncodeToString(tsr)}}
	forged, _ := json.Marshal(b)
	if err := ociremote.WriteAttestationNewBundleFormat(d, forged, predicateType,
		ociremote.WithRemoteOptions(s.k.reg.RemoteOptions(ctx)...)); err != nil {
		t.Fatal(err)
	}
}

type forgery string

const (
	// otherSigner: a valid bundle, but by another identity (a certificate
	// from the same trusted Fulcio for another subject) or another key.
	otherSigner forgery = "other signer"
	// garbage: our certificate or key hint and a real timestamp, but a
	// signature that is not one.
	garbage forgery = "garbage signature"
)

func TestAttestStatementIgnoresForgedBundle(t *testing.T) {
	t.Parallel()
	ts := signtest.New(t)
	for _, keyed := range []bool{false, true} {
		for _, f := range []forgery{otherSigner, garbage} {
			for _, referrers := range []bool{true, false} {
				t.Run(fmt.Sprintf("keyed=%v/%s/referrers=%v", keyed, f, referrers), func(t *testing.T) {
					t.Parallel()
					ctx := context.Background()
					host, rc := signtest.NewRegistry(t, referrers)
					var logs logBuffer
					lg := slog.New(slog.NewTextHandler(&logs, nil))
					var ours, attacker signer
					if keyed {
						ours, attacker = keyedSigner(t, ts, rc, lg), keyedSigner(t, ts, rc, nil)
					} else {
						ours, attacker = keylessSigner(t, ts, rc, testIdentity, lg), keylessSigner(t, ts, rc, "mallory@evil.test", nil)
					}
					d := signtest.PushImage(t, host)
					payload, err := statement(d, testPredType, map[string]any{"builder": map[string]any{"id": "https://attestd.dev/builder"}})
					if err != nil {
						t.Fatal(err)
					}

					switch f {
					case otherSigner:
						as, _ := attacker.k.Session()
						if err := as.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
							t.Fatal(err)
						}
					case garbage:
						forgeBundle(t, ours, d, testPredType, payload)
					}
					if all, verified := bundlesOf(t, rc, ours, d, testPredType); all != 1 || verified != 0 {
						t.Fatalf("setup: %d bundles, %d verify for us; want 1, 0", all, verified)
					}

					sess, err := ours.k.Session()
					if err != nil {
						t.Fatal(err)
					}
					missing, err := sess.Missing(ctx, d.String(), []string{testPredType})
					if err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff([]string{testPredType}, missing); diff != "" {
						t.Errorf("Missing with only the forged bundle attached (-want +got):\n%s", diff)
					}

					if err := sess.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
						t.Fatal(err)
					}
					if all, verified := bundlesOf(t, rc, ours, d, testPredType); all != 2 || verified != 1 {
						t.Errorf("after AttestStatement: %d bundles, %d verify for us; want 2, 1 (the forged one must not suppress signing)", all, verified)
					}
					if n := len(sess.Written()); n != 1 {
						t.Errorf("the session recorded %d signatures, want 1", n)
					}
					if missing, err := sess.Missing(ctx, d.String(), []string{testPredType}); err != nil || len(missing) != 0 {
						t.Errorf("Missing after signing: %v, %v; want none", missing, err)
					}
					if !strings.Contains(logs.String(), "attached bundle does not verify for our identity, signing anew") {
						t.Errorf("the ignored bundle was not logged:\n%s", logs.String())
					}

					// Our bundle is now there: a re-run adds nothing.
					again, _ := ours.k.Session()
					if err := again.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
						t.Fatal(err)
					}
					if all, _ := bundlesOf(t, rc, ours, d, testPredType); all != 2 {
						t.Errorf("a re-run attached again: %d bundles, want 2", all)
					}
				})
			}
		}
	}
}

func TestAttestStatementFindsOwnBundle(t *testing.T) {
	t.Parallel()
	ts := signtest.New(t)
	for _, keyed := range []bool{false, true} {
		for _, referrers := range []bool{true, false} {
			t.Run(fmt.Sprintf("keyed=%v/referrers=%v", keyed, referrers), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				host, rc := signtest.NewRegistry(t, referrers)
				var ours signer
				if keyed {
					ours = keyedSigner(t, ts, rc, nil)
				} else {
					ours = keylessSigner(t, ts, rc, testIdentity, nil)
				}
				d := signtest.PushImage(t, host)
				payload, err := statement(d, testPredType, map[string]any{"n": 1.0})
				if err != nil {
					t.Fatal(err)
				}
				first, _ := ours.k.Session()
				if err := first.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
					t.Fatal(err)
				}
				if err := first.SignImage(ctx, d.String()); err != nil {
					t.Fatal(err)
				}
				if all, verified := bundlesOf(t, rc, ours, d, testPredType); all != 1 || verified != 1 {
					t.Fatalf("after signing: %d bundles, %d verify; want 1, 1", all, verified)
				}
				// The gate prefers reports of the signer's own identity.
				if own := ours.k.IsOwn(testIssuer, testIdentity); own == keyed || ours.k.IsOwn(testIssuer, "mallory@evil.test") {
					t.Errorf("IsOwn(our identity) = %v, want %v; another identity must never be ours", own, !keyed)
				}
				// The same session, and a new one (a retried job, with a new
				// ephemeral key and certificate for the same identity).
				second, _ := ours.k.Session()
				for i, s := range []*Session{first, second} {
					if err := s.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
						t.Fatal(err)
					}
					if err := s.SignImage(ctx, d.String()); err != nil {
						t.Fatal(err)
					}
					missing, err := s.Missing(ctx, d.String(), []string{PredicateSignature, testPredType})
					if err != nil || len(missing) != 0 {
						t.Errorf("session %d: Missing %v, %v; want none", i, missing, err)
					}
				}
				if n := len(second.Written()); n != 0 {
					t.Errorf("the re-run signed %d times, want 0", n)
				}
				if all, _ := bundlesOf(t, rc, ours, d, testPredType); all != 1 {
					t.Errorf("%d provenance bundles after re-runs, want 1", all)
				}
				if all, _ := bundlesOf(t, rc, ours, d, PredicateSignature); all != 1 {
					t.Errorf("%d signature bundles after re-runs, want 1", all)
				}
				// A changed document is attached beside the old one.
				changed, _ := statement(d, testPredType, map[string]any{"n": 2.0})
				if err := second.AttestStatement(ctx, d.String(), testPredType, changed); err != nil {
					t.Fatal(err)
				}
				if all, verified := bundlesOf(t, rc, ours, d, testPredType); all != 2 || verified != 2 {
					t.Errorf("after a changed document: %d bundles, %d verify; want 2, 2", all, verified)
				}
			})
		}
	}
}

// forgeClassic appends to d's .sig and .att images a signature of d and an
// attestation of payload whose signatures are garbage, under s's
// certificate (keyless) and a real timestamp.
func forgeClassic(t *testing.T, s signer, d name.Digest, predicateType string, payload []byte) {
	t.Helper()
	ctx := context.Background()
	sess, err := s.k.Session()
	if err != nil {
		t.Fatal(err)
	}
	sigTag, attTag, err := classicTags(d)
	if err != nil {
		t.Fatal(err)
	}
	rawSig := []byte("not a signature by attestd")
	bogus := base64.StdEncoding.EncodeToString(rawSig)
	simple, err := sigpayload.Cosign{Image: d}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	env, _ := json.Marshal(dsse.Envelope{PayloadType: ctypes.IntotoPayloadType,
		Payload: base64.StdEncoding.EncodeToString(payload), Signatures: []dsse.Signature{{Sig: bogus}}})
	for _, c := range []struct {
		tag  name.Tag
		make func() (oci.Signature, error)
	}{
		{sigTag, func() (oci.Signature, error) {
			opts, err := sess.classicMaterial(ctx, rawSig) // as cosign: over the raw signature
			if err != nil {
				return nil, err
			}
			return static.NewSignature(simple, bogus, opts...)
		}},
		{attTag, func() (oci.Signature, error) {
			opts, err := sess.classicMaterial(ctx, env)
			if err != nil {
				return nil, err
			}
			opts = append(opts, static.WithLayerMediaType(ctypes.DssePayloadType),
				static.WithAnnotations(map[string]string{"predicateType": predicateType}))
			return static.NewAttestation(env, opts...)
		}},
	} {
		l, err := c.make()
		if err != nil {
			t.Fatal(err)
		}
		base, _, err := s.k.classicLayers(ctx, c.tag)
		if err != nil {
			t.Fatal(err)
		}
		next, err := mutate.AppendSignatures(base, false, l)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(c.tag, next, s.k.reg.RemoteOptions(ctx)...); err != nil {
			t.Fatal(err)
		}
	}
}

func TestClassicIgnoresForgedLayers(t *testing.T) {
	t.Parallel()
	ts := signtest.New(t)
	for _, keyed := range []bool{false, true} {
		for _, f := range []forgery{otherSigner, garbage} {
			t.Run(fmt.Sprintf("keyed=%v/%s", keyed, f), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				host, rc := signtest.NewRegistry(t, true)
				var logs logBuffer
				lg := slog.New(slog.NewTextHandler(&logs, nil))
				var ours, attacker signer
				if keyed {
					ours, attacker = keyedSigner(t, ts, rc, lg), keyedSigner(t, ts, rc, nil)
				} else {
					ours, attacker = keylessSigner(t, ts, rc, testIdentity, lg), keylessSigner(t, ts, rc, "mallory@evil.test", nil)
				}
				var err error
				for _, s := range []*signer{&ours, &attacker} {
					if s.k, err = s.k.WithFormat(FormatClassic); err != nil {
						t.Fatal(err)
					}
				}
				d := signtest.PushImage(t, host)
				payload, err := statement(d, testPredType, map[string]any{"n": 1.0})
				if err != nil {
					t.Fatal(err)
				}
				switch f {
				case otherSigner:
					as, _ := attacker.k.Session()
					if err := as.SignImage(ctx, d.String()); err != nil {
						t.Fatal(err)
					}
					if err := as.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
						t.Fatal(err)
					}
				case garbage:
					forgeClassic(t, ours, d, testPredType, payload)
				}
				sigTag, attTag, _ := classicTags(d)
				layers := func() (sigs, atts []oci.Signature) {
					t.Helper()
					_, sigs, err := ours.k.classicLayers(ctx, sigTag)
					if err != nil {
						t.Fatal(err)
					}
					_, atts, err = ours.k.classicLayers(ctx, attTag)
					if err != nil {
						t.Fatal(err)
					}
					return sigs, atts
				}
				if sigs, atts := layers(); len(sigs) != 1 || len(atts) != 1 {
					t.Fatalf("setup: %d signatures, %d attestations; want 1, 1", len(sigs), len(atts))
				}

				sess, err := ours.k.Session()
				if err != nil {
					t.Fatal(err)
				}
				want := []string{PredicateSignature, testPredType}
				missing, err := sess.Missing(ctx, d.String(), want)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, missing); diff != "" {
					t.Errorf("Missing with only forged layers attached (-want +got):\n%s", diff)
				}
				if err := sess.SignImage(ctx, d.String()); err != nil {
					t.Fatal(err)
				}
				if err := sess.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
					t.Fatal(err)
				}
				sigs, atts := layers()
				if len(sigs) != 2 || len(atts) != 2 {
					t.Errorf("after signing: %d signatures, %d attestations; want 2, 2 (forged layers must not suppress signing)", len(sigs), len(atts))
				}
				if n := len(sess.Written()); n != 2 {
					t.Errorf("the session recorded %d signatures, want 2", n)
				}
				if !keyed && len(sigs) == 2 && len(atts) == 2 {
					for _, l := range []oci.Signature{sigs[1], atts[1]} {
						if c, err := l.Cert(); err != nil || c == nil || !slices.Contains(c.EmailAddresses, testIdentity) {
							t.Errorf("the new layer's certificate is not ours: %v", err)
						}
					}
				}
				if missing, err := sess.Missing(ctx, d.String(), want); err != nil || len(missing) != 0 {
					t.Errorf("Missing after signing: %v, %v; want none", missing, err)
				}
				if !strings.Contains(logs.String(), "does not verify for our identity, signing anew") {
					t.Errorf("the ignored layers were not logged:\n%s", logs.String())
				}
				// Our layers are there now: a re-run adds nothing.
				again, _ := ours.k.Session()
				if err := again.SignImage(ctx, d.String()); err != nil {
					t.Fatal(err)
				}
				if err := again.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
					t.Fatal(err)
				}
				if sigs, atts := layers(); len(sigs) != 2 || len(atts) != 2 {
					t.Errorf("a re-run attached again: %d signatures, %d attestations; want 2, 2", len(sigs), len(atts))
				}
			})
		}
	}
}
