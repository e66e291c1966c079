package sign

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	prototrustroot "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/attestd/attestd/store/registry"
)

// The issue "Signing can be suppressed": whoever can write to the staging
// registry could pre-attach a bundle with attestd's (deterministic) payload
// and predicate type but a signature that is not attestd's, and attestd took
// it for its own — signed nothing, and counted the type as attached. These
// tests run the real signing path offline: an in-process Fulcio and TSA
// (certificates and timestamps from sigstore-go's testing CA), trust
// material naming them, and ggcr's in-process registry.

const (
	testIssuer   = "https://issuer.attestd.test"
	testIdentity = "attestd@example.test"
	testPredType = "https://slsa.dev/provenance/v1"
)

// testSigstore is the in-process Fulcio and TSA with their trust material.
type testSigstore struct {
	sc *root.SigningConfig
	tr *root.TrustedRoot
}

// pubOnly lets sigstore-go's testing CA certify a public key whose private
// key it does not hold (it needs a crypto.Signer only for Public).
type pubOnly struct{ pub crypto.PublicKey }

func (p pubOnly) Public() crypto.PublicKey { return p.pub }
func (pubOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("public key only")
}

func newTestSigstore(t *testing.T) *testSigstore {
	t.Helper()
	rootCert, rootKey, err := ca.GenerateRootCa()
	if err != nil {
		t.Fatal(err)
	}
	inter, interKey, err := ca.GenerateFulcioIntermediate(rootCert, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	tsaInter, tsaInterKey, err := ca.GenerateTSAIntermediate(rootCert, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	tsaKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tsaLeaf, err := ca.GenerateTSALeafCert(time.Now().Add(-5*time.Minute), tsaKey, tsaInter, tsaInterKey)
	if err != nil {
		t.Fatal(err)
	}

	// Fulcio: a certificate for the request's key, naming the token's
	// subject and issuer (the token is not verified: this is a test CA).
	fulcio := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var claims struct{ Sub, Iss string }
		parts := strings.Split(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), ".")
		if len(parts) != 3 {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var req struct {
			PublicKeyRequest struct {
				PublicKey struct{ Content string } `json:"publicKey"`
			} `json:"publicKeyRequest"`
		}
		if json.Unmarshal(raw, &claims) != nil || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		pub, err := cryptoutils.UnmarshalPEMToPublicKey([]byte(req.PublicKeyRequest.PublicKey.Content))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		leaf, err := ca.GenerateLeafCert(claims.Sub, claims.Iss, time.Now().Add(-time.Minute), pubOnly{pub}, inter, interKey)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var chain []string
		for _, c := range []*x509.Certificate{leaf, inter, rootCert} {
			chain = append(chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
		}
		json.NewEncoder(w).Encode(map[string]any{"signedCertificateEmbeddedSct": map[string]any{"chain": map[string]any{"certificates": chain}}})
	}))
	t.Cleanup(fulcio.Close)

	// TSA: an RFC 3161 response over the request's hash.
	tsa := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		req, err := timestamp.ParseRequest(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ts := timestamp.Timestamp{HashAlgorithm: req.HashAlgorithm, HashedMessage: req.HashedMessage, Time: time.Now(),
			Nonce: req.Nonce, Policy: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 2}}
		resp, err := ts.CreateResponseWithOpts(tsaLeaf, tsaKey, crypto.SHA256)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/timestamp-reply")
		w.Write(resp)
	}))
	t.Cleanup(tsa.Close)

	now := time.Now()
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01,
		[]root.CertificateAuthority{&root.FulcioCertificateAuthority{Root: rootCert, Intermediates: []*x509.Certificate{inter},
			ValidityPeriodStart: now.Add(-time.Hour), ValidityPeriodEnd: now.Add(time.Hour), URI: fulcio.URL}},
		nil,
		[]root.TimestampingAuthority{&root.SigstoreTimestampingAuthority{Root: rootCert, Intermediates: []*x509.Certificate{tsaInter},
			Leaf: tsaLeaf, ValidityPeriodStart: now.Add(-time.Hour), ValidityPeriodEnd: now.Add(time.Hour), URI: tsa.URL}},
		nil)
	if err != nil {
		t.Fatal(err)
	}
	all := root.ServiceConfiguration{Selector: prototrustroot.ServiceSelector_ALL}
	sc, err := root.NewSigningConfig(root.SigningConfigMediaType02,
		[]root.Service{{URL: fulcio.URL, MajorAPIVersion: 1, ValidityPeriodStart: now.Add(-time.Hour)}},
		nil, nil, all,
		[]root.Service{{URL: tsa.URL, MajorAPIVersion: 1, ValidityPeriodStart: now.Add(-time.Hour)}}, all)
	if err != nil {
		t.Fatal(err)
	}
	return &testSigstore{sc: sc, tr: tr}
}

type staticToken string

func (s staticToken) Token(context.Context) (string, error) { return string(s), nil }

func tokenFor(subject string) staticToken {
	claims, _ := json.Marshal(map[string]string{"sub": subject, "iss": testIssuer, "aud": "sigstore"})
	return staticToken("eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString(claims) + ".sig")
}

// signer is a signer under test and what verifies its signatures.
type signer struct {
	k *Keyless
	// policy is the identity a bundle must verify for; tm the trust material.
	policy sgverify.PolicyOption
	tm     root.TrustedMaterial
}

// keyless signs as subject through the test Fulcio.
func (ts *testSigstore) keyless(t *testing.T, rc *registry.Client, subject string, log *slog.Logger) signer {
	t.Helper()
	k, err := NewKeylessFromTrust(ts.sc, ts.tr, tokenFor(subject), rc, log)
	if err != nil {
		t.Fatal(err)
	}
	id, err := sgverify.NewShortCertificateIdentity(testIssuer, "", subject, "")
	if err != nil {
		t.Fatal(err)
	}
	return signer{k: k, policy: sgverify.WithCertificateIdentity(id), tm: ts.tr}
}

// keyed signs with a freshly generated cosign key file.
func (ts *testSigstore) keyed(t *testing.T, rc *registry.Client, log *slog.Logger) signer {
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
	k, err := NewKeyed(context.Background(), p, pass, ts.sc, ts.tr, rc, log)
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
	tm := root.TrustedMaterialCollection{ts.tr, root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })}
	return signer{k: k, policy: sgverify.WithKey(), tm: tm}
}

// newTestRegistry serves ggcr's registry (with or without the referrers API)
// and returns its host and a client for it.
func newTestRegistry(t *testing.T, referrers bool) (string, *registry.Client) {
	t.Helper()
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.WithReferrersSupport(referrers), ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	rc, err := registry.New(registry.WithRateLimit(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(srv.URL, "http://"), rc
}

// pushImage pushes a random image and returns its digest reference.
func pushImage(t *testing.T, host string) name.Digest {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(host + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	h, _ := img.Digest()
	return tag.Context().Digest(h.String())
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
// those among them that verify for s — checked here with sigstore-go
// directly, not with the code under test.
func bundlesOf(t *testing.T, rc *registry.Client, s signer, d name.Digest, predicateType string) (all, verified int) {
	t.Helper()
	ctx := context.Background()
	mt, _ := sgbundle.MediaTypeString("0.3")
	refs, err := rc.Referrers(ctx, d, mt)
	if err != nil {
		t.Fatal(err)
	}
	v, err := sgverify.NewVerifier(s.tm, sgverify.WithSignedTimestamps(1))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := v1.NewHash(d.DigestStr())
	digest, _ := hex.DecodeString(h.Hex)
	for _, r := range refs {
		mref := d.Context().Digest(r.Digest.String())
		raw, _, err := rc.Manifest(ctx, mref)
		if err != nil {
			t.Fatal(err)
		}
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil || m.Annotations["dev.sigstore.bundle.predicateType"] != predicateType || len(m.Layers) != 1 {
			continue
		}
		all++
		rc2, err := rc.Blob(ctx, d.Context(), m.Layers[0].Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc2)
		rc2.Close()
		var b sgbundle.Bundle
		if b.UnmarshalJSON(data) != nil {
			continue
		}
		res, err := v.Verify(&b, sgverify.NewPolicy(sgverify.WithArtifactDigest("sha256", digest), s.policy))
		if err == nil && res.Statement.GetPredicateType() == predicateType {
			verified++
		}
	}
	return all, verified
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
	ts := newTestSigstore(t)
	for _, keyed := range []bool{false, true} {
		for _, f := range []forgery{otherSigner, garbage} {
			for _, referrers := range []bool{true, false} {
				t.Run(fmt.Sprintf("keyed=%v/%s/referrers=%v", keyed, f, referrers), func(t *testing.T) {
					t.Parallel()
					ctx := context.Background()
					host, rc := newTestRegistry(t, referrers)
					var logs logBuffer
					lg := slog.New(slog.NewTextHandler(&logs, nil))
					var ours, attacker signer
					if keyed {
						ours, attacker = ts.keyed(t, rc, lg), ts.keyed(t, rc, nil)
					} else {
						ours, attacker = ts.keyless(t, rc, testIdentity, lg), ts.keyless(t, rc, "mallory@evil.test", nil)
					}
					d := pushImage(t, host)
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
	ts := newTestSigstore(t)
	for _, keyed := range []bool{false, true} {
		for _, referrers := range []bool{true, false} {
			t.Run(fmt.Sprintf("keyed=%v/referrers=%v", keyed, referrers), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				host, rc := newTestRegistry(t, referrers)
				var ours signer
				if keyed {
					ours = ts.keyed(t, rc, nil)
				} else {
					ours = ts.keyless(t, rc, testIdentity, nil)
				}
				d := pushImage(t, host)
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
	ts := newTestSigstore(t)
	for _, keyed := range []bool{false, true} {
		for _, f := range []forgery{otherSigner, garbage} {
			t.Run(fmt.Sprintf("keyed=%v/%s", keyed, f), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				host, rc := newTestRegistry(t, true)
				var logs logBuffer
				lg := slog.New(slog.NewTextHandler(&logs, nil))
				var ours, attacker signer
				if keyed {
					ours, attacker = ts.keyed(t, rc, lg), ts.keyed(t, rc, nil)
				} else {
					ours, attacker = ts.keyless(t, rc, testIdentity, lg), ts.keyless(t, rc, "mallory@evil.test", nil)
				}
				var err error
				for _, s := range []*signer{&ours, &attacker} {
					if s.k, err = s.k.WithFormat(FormatClassic); err != nil {
						t.Fatal(err)
					}
				}
				d := pushImage(t, host)
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
