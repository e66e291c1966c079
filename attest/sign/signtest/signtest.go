// Package signtest is an offline Sigstore for tests: an in-process Fulcio
// and timestamp authority on sigstore-go's testing CA, the signing config
// and trusted root naming them, and signers built on them. Tests only.
//
// It does not import attest/sign, so that package's own (internal) tests
// can use it: a signer is built from its parts, e.g.
//
//	ts := signtest.New(t)
//	k, err := sign.NewKeylessFromTrust(ts.SigningConfig, ts.TrustedRoot, signtest.TokenFor(subject), rc, log)
//
// and what it signed verifies against ts.TrustedRoot for
// signtest.Policy(t, subject) (or Issuer and subject as an expected
// identity).
package signtest

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
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	prototrustroot "github.com/sigstore/protobuf-specs/gen/pb-go/trustroot/v1"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/attestd/attestd/store/registry"
)

// Issuer is the OIDC issuer of every token TokenFor makes, and so of every
// certificate the test Fulcio issues.
const Issuer = "https://issuer.attestd.test"

// Sigstore is the in-process Fulcio and TSA with their trust material.
type Sigstore struct {
	// SigningConfig names the test Fulcio and TSA (no Rekor: proofs of
	// time are RFC 3161 timestamps, verify with signed timestamps ≥ 1).
	SigningConfig *root.SigningConfig
	// TrustedRoot holds the testing CA's Fulcio and TSA chains.
	TrustedRoot *root.TrustedRoot
}

// pubOnly lets sigstore-go's testing CA certify a public key whose private
// key it does not hold (it needs a crypto.Signer only for Public).
type pubOnly struct{ pub crypto.PublicKey }

func (p pubOnly) Public() crypto.PublicKey { return p.pub }
func (pubOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("public key only")
}

// New starts a Fulcio and a TSA on httptest servers (closed when t ends)
// and returns the trust material naming them.
func New(t testing.TB) *Sigstore {
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
	return &Sigstore{SigningConfig: sc, TrustedRoot: tr}
}

// Token is a fixed OIDC token; it is a sign.TokenSource.
type Token string

// Token returns the token.
func (s Token) Token(context.Context) (string, error) { return string(s), nil }

// TokenFor is an unsigned token for subject from Issuer: the test Fulcio
// certifies a key for subject with it.
func TokenFor(subject string) Token {
	claims, _ := json.Marshal(map[string]string{"sub": subject, "iss": Issuer, "aud": "sigstore"})
	return Token("eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString(claims) + ".sig")
}

// Policy is the sigstore-go policy a bundle signed with TokenFor(subject)
// verifies for.
func Policy(t testing.TB, subject string) sgverify.PolicyOption {
	t.Helper()
	id, err := sgverify.NewShortCertificateIdentity(Issuer, "", subject, "")
	if err != nil {
		t.Fatal(err)
	}
	return sgverify.WithCertificateIdentity(id)
}

// NewRegistry serves ggcr's in-process registry (with or without the
// referrers API; closed when t ends) and returns its host and a client
// built with opts (default: no rate limit).
func NewRegistry(t testing.TB, referrers bool, opts ...registry.Option) (string, *registry.Client) {
	t.Helper()
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.WithReferrersSupport(referrers), ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	if len(opts) == 0 {
		opts = []registry.Option{registry.WithRateLimit(0, 0)}
	}
	rc, err := registry.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(srv.URL, "http://"), rc
}

// PushImage pushes a random image to host/app:v1 and returns its digest
// reference.
func PushImage(t testing.TB, host string) name.Digest {
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

// Bundles lists the Sigstore bundles attached to d (as referrers, or in
// the referrers fallback tag) of predicateType: how many there are, and the
// verification results of those that verify against tm for policy, about
// d, with at least one signed timestamp — checked with sigstore-go
// directly, not with attestd's code.
func Bundles(t testing.TB, rc *registry.Client, tm root.TrustedMaterial, policy sgverify.PolicyOption, d name.Digest, predicateType string) (all int, verified []*sgverify.VerificationResult) {
	t.Helper()
	ctx := context.Background()
	mt, _ := sgbundle.MediaTypeString("0.3")
	refs, err := rc.Referrers(ctx, d, mt)
	if err != nil {
		t.Fatal(err)
	}
	v, err := sgverify.NewVerifier(tm, sgverify.WithSignedTimestamps(1))
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
		body, err := rc.Blob(ctx, d.Context(), m.Layers[0].Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(body)
		body.Close()
		var b sgbundle.Bundle
		if b.UnmarshalJSON(data) != nil {
			continue
		}
		res, err := v.Verify(&b, sgverify.NewPolicy(sgverify.WithArtifactDigest("sha256", digest), policy))
		if err == nil && res.Statement.GetPredicateType() == predicateType {
			verified = append(verified, res)
		}
	}
	return all, verified
}
