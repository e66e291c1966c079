// Package sign is attestd's signer and attacher: keyless Sigstore signing
// (an OIDC token exchanged at Fulcio for a short-lived certificate, the
// signature logged in Rekor and/or timestamped by a TSA, as the signing
// config says) through the cosign v2 library, attached so that the stock
// cosign CLI verifies them: in the new Sigstore bundle format as OCI
// referrers (tag fallback where the registry lacks the API), or — by
// config, never both on one image — in cosign's classic .sig/.att layout
// (classic.go). It is one of the two packages allowed to import cosign.
package sign

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	intotov1 "github.com/in-toto/attestation/go/v1"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgsign "github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/tuf"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/store/registry"
)

// SignTimeout bounds one signature: Fulcio, TSA and Rekor v2 (whose entries
// wait ~1 s for a checkpoint) plus the registry write.
const SignTimeout = 2 * time.Minute

// PredicateSignature is the predicate type of an image signature in the
// bundle format (what `cosign sign --new-bundle-format` writes).
const PredicateSignature = ctypes.CosignSignPredicateType

// TokenSource yields an OIDC ID token for Fulcio (audience "sigstore").
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// FileToken reads the token from a file on every call, so a rotated token
// (a Kubernetes projected service-account token) is always current.
type FileToken struct{ Path string }

// Token implements TokenSource.
func (f FileToken) Token(context.Context) (string, error) {
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return "", fmt.Errorf("oidc token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("oidc token file %s is empty", f.Path)
	}
	return t, nil
}

// EnvToken reads the token from an environment variable.
type EnvToken struct{ Name string }

// Token implements TokenSource.
func (e EnvToken) Token(context.Context) (string, error) {
	t := strings.TrimSpace(os.Getenv(e.Name))
	if t == "" {
		return "", fmt.Errorf("oidc token: $%s is empty", e.Name)
	}
	return t, nil
}

// GitHubActionsToken requests the workflow's ambient OIDC token (audience
// sigstore) from the Actions runtime: ACTIONS_ID_TOKEN_REQUEST_URL and
// ACTIONS_ID_TOKEN_REQUEST_TOKEN, set when the job has `id-token: write`.
type GitHubActionsToken struct {
	Client *http.Client // nil: a client with a 30 s timeout
}

// Token implements TokenSource.
func (g GitHubActionsToken) Token(ctx context.Context) (string, error) {
	u, bearer := os.Getenv("ACTIONS_ID_TOKEN_REQUEST_URL"), os.Getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
	if u == "" || bearer == "" {
		return "", errors.New("oidc token: not in a GitHub Actions job with `permissions: id-token: write` (ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN unset)")
	}
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+sep+"audience=sigstore", nil)
	if err != nil {
		return "", fmt.Errorf("oidc token: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	c := g.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("oidc token from GitHub Actions: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("oidc token from GitHub Actions: %s", resp.Status)
	}
	var v struct {
		Value string `json:"value"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v); err != nil || v.Value == "" {
		return "", fmt.Errorf("oidc token from GitHub Actions: no token in the response (%v)", err)
	}
	return v.Value, nil
}

// CommandToken runs a command and takes its standard output as the token
// (e.g. a cloud CLI that prints a workload identity token).
type CommandToken struct {
	Argv    []string
	Timeout time.Duration // 0: 30 s
}

// Token implements TokenSource.
func (c CommandToken) Token(ctx context.Context) (string, error) {
	if len(c.Argv) == 0 {
		return "", errors.New("oidc token: empty token command")
	}
	t := c.Timeout
	if t == 0 {
		t = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("oidc token command %s: %w: %s", c.Argv[0], err, strings.TrimSpace(stderr.String()))
	}
	tok := strings.TrimSpace(string(out))
	if tok == "" {
		return "", fmt.Errorf("oidc token command %s printed nothing", c.Argv[0])
	}
	return tok, nil
}

// Keyless signs with an ephemeral key and a Fulcio certificate — or, made
// with NewKeyed, with a key pair (the air-gapped fallback).
type Keyless struct {
	opts    sgsign.BundleOptions // Fulcio, TSAs, Rekor logs, trusted root: chosen once from the signing config
	trusted root.TrustedMaterial
	tokens  TokenSource
	key     sgsign.Keypair               // set: key-pair signing, no Fulcio
	pub     root.TimeConstrainedVerifier // key-pair signing: our public key, verified locally
	classic bool                         // cosign's classic .sig/.att layout instead of bundles (WithFormat)
	reg     *registry.Client
	log     *slog.Logger
	// identity is the issuer and SAN of the last certificate a session got
	// from Fulcio (shared by copies of the signer).
	identity *atomic.Pointer[[2]string]
}

// IsOwn reports whether issuer and subject are this signer's keyless
// identity, as the certificates it got from Fulcio name it. It knows only
// once a session has fetched a certificate (false before, and for a key
// pair): the gate uses it to prefer attestd's own reports, never to trust.
func (k *Keyless) IsOwn(issuer, subject string) bool {
	if k.identity == nil {
		return false
	}
	id := k.identity.Load()
	return id != nil && id[0] == issuer && id[1] == subject
}

// NewKeyless loads the signing config (which Fulcio, Rekor and TSA to use)
// and the trusted root (to check what they return) — the two files
// `cosign signing-config create` and `cosign trusted-root create` write.
func NewKeyless(signingConfigPath, trustedRootPath string, tokens TokenSource, reg *registry.Client, log *slog.Logger) (*Keyless, error) {
	if tokens == nil || reg == nil {
		return nil, errors.New("keyless signer: a token source and a registry client are required")
	}
	sc, tr, err := LoadTrust(signingConfigPath, trustedRootPath)
	if err != nil {
		return nil, err
	}
	return newKeyless(sc, tr, tokens, reg, log)
}

// NewKeylessFromTrust is NewKeyless with trust material already loaded
// (LoadTrust, or PublicGoodTrust).
func NewKeylessFromTrust(sc *root.SigningConfig, tr *root.TrustedRoot, tokens TokenSource, reg *registry.Client, log *slog.Logger) (*Keyless, error) {
	if tokens == nil || reg == nil {
		return nil, errors.New("keyless signer: a token source and a registry client are required")
	}
	return newKeyless(sc, tr, tokens, reg, log)
}

func newKeyless(sc *root.SigningConfig, tr *root.TrustedRoot, tokens TokenSource, reg *registry.Client, log *slog.Logger) (*Keyless, error) {
	opts, err := bundleOptions(sc, tr, time.Now(), true)
	if err != nil {
		return nil, fmt.Errorf("signing config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Keyless{opts: opts, trusted: tr, tokens: tokens, reg: reg, log: log, identity: &atomic.Pointer[[2]string]{}}, nil
}

// LoadTrust reads a private or air-gapped Sigstore's signing_config.json
// and trusted_root.json.
func LoadTrust(signingConfigPath, trustedRootPath string) (*root.SigningConfig, *root.TrustedRoot, error) {
	sc, err := root.NewSigningConfigFromPath(signingConfigPath)
	if err != nil {
		return nil, nil, fmt.Errorf("signing config %s: %w", signingConfigPath, err)
	}
	tr, err := root.NewTrustedRootFromPath(trustedRootPath)
	if err != nil {
		return nil, nil, fmt.Errorf("trusted root %s: %w", trustedRootPath, err)
	}
	return sc, tr, nil
}

// PublicGoodTrust fetches the public-good Sigstore instance's signing
// config and trusted root through TUF (sigstore-go's embedded root of
// trust, tuf-repo-cdn.sigstore.dev), caching the metadata in cacheDir. It
// fails, with the reason, when the repository cannot be reached and no valid
// cache exists: signing never proceeds on unverified trust material.
func PublicGoodTrust(cacheDir string) (*root.SigningConfig, *root.TrustedRoot, error) {
	opts := tuf.DefaultOptions().WithCachePath(cacheDir)
	tr, err := root.FetchTrustedRootWithOptions(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("public-good trusted root via TUF (%s): %w", opts.RepositoryBaseURL, err)
	}
	sc, err := root.FetchSigningConfigWithOptions(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("public-good signing config via TUF (%s): %w", opts.RepositoryBaseURL, err)
	}
	return sc, tr, nil
}

// NewKeyed signs with a key pair instead of a Fulcio certificate: keyRef is
// a cosign key file (encrypted; password from pass) or a sigstore KMS URI
// whose provider is compiled in. The signing config still says which Rekor
// log and timestamp authority record the signatures. Verify with
// `cosign verify --key <public key>`.
func NewKeyed(ctx context.Context, keyRef string, pass func(bool) ([]byte, error), sc *root.SigningConfig, tr *root.TrustedRoot, reg *registry.Client, log *slog.Logger) (*Keyless, error) {
	if reg == nil {
		return nil, errors.New("key-pair signer: a registry client is required")
	}
	sv, err := loadKey(ctx, keyRef, pass)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", keyRef, err)
	}
	kp, err := newKeypair(sv)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", keyRef, err)
	}
	opts, err := bundleOptions(sc, tr, time.Now(), false)
	if err != nil {
		return nil, fmt.Errorf("signing config: %w", err)
	}
	// sigstore-go checks each bundle it makes against the trust material:
	// add the public key to it, as cosign does.
	pub := root.NewExpiringKey(sv, time.Time{}, time.Time{})
	opts.TrustedRoot = keyTrust{TrustedMaterial: tr, hint: string(kp.GetHint()), key: pub}
	opts.CertificateProvider = nil
	// What is already attached is checked against the public key itself,
	// not through the KMS (no network for a check).
	local, err := signature.LoadVerifier(kp.pub, kp.alg.GetHashType())
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", keyRef, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Keyless{opts: opts, trusted: tr, key: kp, pub: root.NewExpiringKey(local, time.Time{}, time.Time{}), reg: reg, log: log}, nil
}

// keyTrust is trust material plus one public key, found by its hint.
type keyTrust struct {
	root.TrustedMaterial
	hint string
	key  root.TimeConstrainedVerifier
}

func (k keyTrust) PublicKeyVerifier(hint string) (root.TimeConstrainedVerifier, error) {
	if hint == k.hint {
		return k.key, nil
	}
	return k.TrustedMaterial.PublicKeyVerifier(hint)
}

// bundleOptions selects the services of the signing config, as cosign's
// bundle.SignData does, but returns errors instead of exiting the process.
func bundleOptions(sc *root.SigningConfig, tr root.TrustedMaterial, now time.Time, keyless bool) (sgsign.BundleOptions, error) {
	opts := sgsign.BundleOptions{TrustedRoot: tr}
	if len(sc.RekorLogURLs()) == 0 && len(sc.TimestampAuthorityURLs()) == 0 {
		return opts, errors.New("names neither a Rekor log nor a timestamp authority: nothing would prove when a signature was made")
	}
	if keyless {
		if len(sc.FulcioCertificateAuthorityURLs()) == 0 {
			return opts, errors.New("names no Fulcio: keyless signing needs one")
		}
		fulcio, err := root.SelectService(sc.FulcioCertificateAuthorityURLs(), sgsign.FulcioAPIVersions, now)
		if err != nil {
			return opts, fmt.Errorf("selecting Fulcio: %w", err)
		}
		opts.CertificateProvider = sgsign.NewFulcio(&sgsign.FulcioOptions{BaseURL: fulcio.URL, Timeout: 30 * time.Second, Retries: 1})
	}
	if len(sc.TimestampAuthorityURLs()) > 0 {
		tsas, err := root.SelectServices(sc.TimestampAuthorityURLs(), sc.TimestampAuthorityURLsConfig(), sgsign.TimestampAuthorityAPIVersions, now)
		if err != nil {
			return opts, fmt.Errorf("timestamp authorities: %w", err)
		}
		for _, t := range tsas {
			opts.TimestampAuthorities = append(opts.TimestampAuthorities, sgsign.NewTimestampAuthority(&sgsign.TimestampAuthorityOptions{URL: t.URL, Timeout: 30 * time.Second, Retries: 1}))
		}
	}
	if len(sc.RekorLogURLs()) > 0 {
		logs, err := root.SelectServices(sc.RekorLogURLs(), sc.RekorLogURLsConfig(), sgsign.RekorAPIVersions, now)
		if err != nil {
			return opts, fmt.Errorf("selecting Rekor logs: %w", err)
		}
		for _, l := range logs {
			opts.TransparencyLogs = append(opts.TransparencyLogs, sgsign.NewRekor(&sgsign.RekorOptions{BaseURL: l.URL, Timeout: 90 * time.Second, Retries: 1, Version: l.MajorAPIVersion}))
		}
	}
	return opts, nil
}

// Session signs all of one job's documents with one ephemeral key and one
// Fulcio certificate, reused while it has more than certMargin left; the
// identity token is read once per certificate. Safe for concurrent use.
type Session struct {
	k       *Keyless
	keypair sgsign.Keypair
	certs   *certCache
	// reg writes for this session only: one handshake per repository for
	// all its attachments (see registry.Client.Writes).
	reg *registry.Client

	mu       sync.Mutex
	subjects map[string]*subjectState // by digest
	written  []Written
	batch    bool
}

// subjectState is what a session learns of a subject before its first
// attachment, once for all of the session's goroutines: whether it carries
// signatures in the other format, and which bundles were attached before
// the session began (what a retried job finds done), and the statements
// the session attached itself since. Missing reads the registry anew.
type subjectState struct {
	ref name.Digest
	// attach serialises attaching to the subject: on a registry without
	// the referrers API its fallback index is read-modify-write.
	attach sync.Mutex

	mu            sync.Mutex // guards the rest
	formatChecked bool
	listed        bool
	bundles       []bundleRef
	desc          *v1.Descriptor  // the subject's manifest descriptor
	mine          []mineRef       // what the session attached to it
	pending       []v1.Descriptor // attached, not yet listed (Batch)
}

// mineRef is a bundle referrer the session attached.
type mineRef struct {
	predicateType string
	payload       string // sha256 hex of the DSSE payload
	manifest      string // digest
}

// subject is the session's state of subject d.
func (s *Session) subject(d name.Digest) *subjectState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subjects == nil {
		s.subjects = map[string]*subjectState{}
	}
	st := s.subjects[d.DigestStr()]
	if st == nil {
		st = &subjectState{ref: d}
		s.subjects[d.DigestStr()] = st
	}
	return st
}

// attachedBefore lists the bundles attached to d when the session first
// asked (an error is not remembered: the next caller asks again).
func (s *Session) attachedBefore(ctx context.Context, d name.Digest) ([]bundleRef, error) {
	st := s.subject(d)
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.listed {
		bs, err := s.k.bundles(ctx, d)
		if err != nil {
			return nil, err
		}
		st.bundles, st.listed = bs, true
	}
	return st.bundles, nil
}

// Written is one signature the session made and attached, with its proofs:
// the transparency-log entries and RFC 3161 timestamps in its bundle.
type Written struct {
	Subject       string // sha256:…
	PredicateType string
	Bundle        string   // sha256 of the bundle JSON (classic: of the signature layer)
	LogEntries    []string // "<log key id hex>/<log index>"
	Timestamps    int      // RFC 3161 timestamps
}

// Written lists what the session signed and attached so far.
func (s *Session) Written() []Written {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.written)
}

// Session starts a signing session (one per job).
func (k *Keyless) Session() (*Session, error) {
	if k.key != nil {
		return &Session{k: k, keypair: k.key, reg: k.reg.Writes()}, nil
	}
	kp, err := sgsign.NewEphemeralKeypair(nil)
	if err != nil {
		return nil, fmt.Errorf("ephemeral key: %w", err)
	}
	return &Session{k: k, keypair: kp, reg: k.reg.Writes(), certs: &certCache{inner: k.opts.CertificateProvider, tokens: k.tokens, identity: k.identity}}, nil
}

// certMargin is how much validity a reused certificate must have left for
// one more signature (Fulcio certificates live 10 minutes).
const certMargin = 2 * time.Minute

// certCache is a CertificateProvider that asks Fulcio once per session and
// hands the same certificate out while it is valid long enough.
type certCache struct {
	inner    sgsign.CertificateProvider
	tokens   TokenSource
	identity *atomic.Pointer[[2]string] // set to each certificate's issuer and SAN

	mu       sync.Mutex
	der      []byte
	notAfter time.Time
	fetched  int
}

func (c *certCache) GetCertificate(ctx context.Context, kp sgsign.Keypair, _ *sgsign.CertificateProviderOptions) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.der != nil && time.Until(c.notAfter) > certMargin {
		return c.der, nil
	}
	token, err := c.tokens.Token(ctx)
	if err != nil {
		// The identity is the daemon's, not the image's: a token file
		// being rotated (or gone) is waited out like a service outage.
		return nil, fmt.Errorf("%w: OIDC token: %w", ErrUnavailable, err)
	}
	der, err := c.inner.GetCertificate(ctx, kp, &sgsign.CertificateProviderOptions{IDToken: token})
	if err != nil {
		return nil, fmt.Errorf("certificate from Fulcio: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate from Fulcio: %w", err)
	}
	c.der, c.notAfter = der, cert.NotAfter
	c.fetched++
	if sum, err := certificate.SummarizeCertificate(cert); err == nil && c.identity != nil {
		c.identity.Store(&[2]string{sum.Issuer, sum.SubjectAlternativeName})
	}
	return der, nil
}

// Certificates reports how many certificates the session got from Fulcio.
func (s *Session) Certificates() int {
	if s.certs == nil {
		return 0
	}
	s.certs.mu.Lock()
	defer s.certs.mu.Unlock()
	return s.certs.fetched
}

// SignImage signs the image digest (a cosign signature in bundle form) and
// attaches it, unless a signature bundle is attached already.
func (k *Keyless) SignImage(ctx context.Context, ref string) error {
	s, err := k.Session()
	if err != nil {
		return err
	}
	return s.SignImage(ctx, ref)
}

// Attest signs an in-toto statement {subject: ref's digest, predicateType,
// predicate} in its own session; see Session.AttestStatement.
func (k *Keyless) Attest(ctx context.Context, ref, predicateType string, predicate map[string]any) error {
	s, err := k.Session()
	if err != nil {
		return err
	}
	d, err := k.digest(ref)
	if err != nil {
		return err
	}
	payload, err := statement(d, predicateType, predicate)
	if err != nil {
		return fmt.Errorf("attest %s: %w", ref, err)
	}
	return s.AttestStatement(ctx, ref, predicateType, payload)
}

// SignImage signs ref's digest (cosign's sign predicate) and attaches it.
func (s *Session) SignImage(ctx context.Context, ref string) error {
	d, err := s.k.digest(ref)
	if err != nil {
		return err
	}
	if s.k.classic {
		ctx, cancel := context.WithTimeout(ctx, SignTimeout)
		defer cancel()
		if err := s.checkFormat(ctx, d); err != nil {
			return err
		}
		return s.signClassic(ctx, d)
	}
	payload, err := statement(d, PredicateSignature, nil)
	if err != nil {
		return fmt.Errorf("sign %s: %w", ref, err)
	}
	return s.AttestStatement(ctx, ref, PredicateSignature, payload)
}

// AttestStatement signs payload, an in-toto statement whose subject must
// include ref's digest, as a DSSE envelope in a Sigstore bundle and
// attaches it as a referrer of ref. It is idempotent: when a bundle of this
// predicate type and payload that verifies for our signer (ownCheck) is
// already attached to ref it does nothing, so a re-run stage never
// duplicates attestations. Any other bundle — whoever can write to the
// registry can attach one with our payload — is ignored.
func (s *Session) AttestStatement(ctx context.Context, ref, predicateType string, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, SignTimeout)
	defer cancel()
	d, err := s.k.digest(ref)
	if err != nil {
		return err
	}
	pt, digests, err := attest.ParseStatement(payload)
	if err != nil {
		return fmt.Errorf("attest %s: %w", ref, err)
	}
	if pt != predicateType || !slices.Contains(digests, d.DigestStr()) {
		return fmt.Errorf("attest %s: the statement is a %s about %v, not a %s about %s", ref, pt, digests, predicateType, d.DigestStr())
	}
	if err := s.checkFormat(ctx, d); err != nil {
		return err
	}
	if s.k.classic {
		return s.attestClassic(ctx, d, predicateType, payload)
	}
	sum := sha256.Sum256(payload)
	if done, err := s.attachedPayload(ctx, d, predicateType, hex.EncodeToString(sum[:])); err != nil {
		return fmt.Errorf("attest %s: %w", ref, err)
	} else if done {
		s.k.log.InfoContext(ctx, "already attached", "digest", ref, "predicate_type", predicateType)
		return nil
	}
	pb, err := s.dsseBundle(ctx, payload)
	if err != nil {
		return fmt.Errorf("attest %s (%s): sign: %w", ref, predicateType, err)
	}
	bundle, err := protojson.Marshal(pb)
	if err != nil {
		return fmt.Errorf("attest %s: %w", ref, err)
	}
	if err := s.attachBundle(ctx, d, predicateType, hex.EncodeToString(sum[:]), bundle); err != nil {
		return fmt.Errorf("attest %s (%s): attach: %w", ref, predicateType, err)
	}
	w := Written{Subject: d.DigestStr(), PredicateType: predicateType}
	bsum := sha256.Sum256(bundle)
	w.Bundle = "sha256:" + hex.EncodeToString(bsum[:])
	if vm := pb.GetVerificationMaterial(); vm != nil {
		for _, e := range vm.GetTlogEntries() {
			w.LogEntries = append(w.LogEntries, fmt.Sprintf("%x/%d", e.GetLogId().GetKeyId(), e.GetLogIndex()))
		}
		w.Timestamps = len(vm.GetTimestampVerificationData().GetRfc3161Timestamps())
	}
	s.record(ctx, w)
	return nil
}

// attachBundle stores bundle as a referrer of d, laid out as cosign does
// (its verify finds it), and lists it in d's fallback index — at once, or
// at Flush in a batch session.
func (s *Session) attachBundle(ctx context.Context, d name.Digest, predicateType, payloadSum string, bundle []byte) error {
	mt, err := sgbundle.MediaTypeString("0.3")
	if err != nil {
		return err
	}
	sub, err := s.subjectDescriptor(ctx, d)
	if err != nil {
		return err
	}
	desc, err := s.reg.PutReferrer(ctx, d.Context(), sub, mt, types.MediaType(mt), bundle, map[string]string{
		"org.opencontainers.image.created":  time.Now().UTC().Format(time.RFC3339),
		"dev.sigstore.bundle.content":       "dsse-envelope",
		"dev.sigstore.bundle.predicateType": predicateType,
	})
	if err != nil {
		return err
	}
	st := s.subject(d)
	st.mu.Lock()
	st.mine = append(st.mine, mineRef{predicateType: predicateType, payload: payloadSum, manifest: desc.Digest.String()})
	batch := s.batch
	if batch {
		st.pending = append(st.pending, desc)
	}
	st.mu.Unlock()
	if batch {
		return nil
	}
	st.attach.Lock()
	defer st.attach.Unlock()
	return s.reg.ListReferrers(ctx, d, []v1.Descriptor{desc})
}

// subjectDescriptor is d's manifest descriptor (a referrer names its
// subject's media type and size), asked once per session.
func (s *Session) subjectDescriptor(ctx context.Context, d name.Digest) (v1.Descriptor, error) {
	st := s.subject(d)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.desc == nil {
		_, desc, err := s.k.reg.Resolve(ctx, d)
		if err != nil {
			return v1.Descriptor{}, err
		}
		st.desc = &desc
	}
	return *st.desc, nil
}

// Batch makes the session list what it attaches in fallback indexes only
// at Flush (or Missing): one index update per subject for a job's
// attestations instead of one per attestation. Call it before attaching.
func (s *Session) Batch() { s.batch = true }

// Flush lists every attachment a batch session has not listed yet.
func (s *Session) Flush(ctx context.Context) error {
	s.mu.Lock()
	var subjects []*subjectState
	for _, st := range s.subjects {
		subjects = append(subjects, st)
	}
	s.mu.Unlock()
	var errs []error
	for _, st := range subjects {
		st.mu.Lock()
		pending, ref := st.pending, st.ref
		st.pending = nil
		st.mu.Unlock()
		if len(pending) == 0 {
			continue
		}
		st.attach.Lock()
		err := s.reg.ListReferrers(ctx, ref, pending)
		st.attach.Unlock()
		if err != nil {
			st.mu.Lock()
			st.pending = append(st.pending, pending...) // a retried Flush lists them
			st.mu.Unlock()
			errs = append(errs, fmt.Errorf("list the attestations of %s: %w", ref, err))
		}
	}
	return errors.Join(errs...)
}

// record notes a signature the session attached, and logs it.
func (s *Session) record(ctx context.Context, w Written) {
	s.mu.Lock()
	s.written = append(s.written, w)
	s.mu.Unlock()
	s.k.log.InfoContext(ctx, "signed and attached", "digest", w.Subject, "predicate_type", w.PredicateType,
		"log_entries", w.LogEntries, "timestamps", w.Timestamps, "classic", s.k.classic)
}

// SignStatement signs an in-toto statement as a DSSE envelope in a
// Sigstore bundle and returns the bundle (JSON), attached nowhere: for
// files such as audit exports, which an auditor checks with
// `cosign verify-blob-attestation --new-bundle-format --bundle B FILE`.
func (s *Session) SignStatement(ctx context.Context, payload []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, SignTimeout)
	defer cancel()
	if _, _, err := attest.ParseStatement(payload); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	pb, err := s.dsseBundle(ctx, payload)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return protojson.Marshal(pb)
}

// dsseBundle signs an in-toto statement into a bundle with the session's
// key and certificate, logged and timestamped as the signing config says.
func (s *Session) dsseBundle(ctx context.Context, payload []byte) (*protobundle.Bundle, error) {
	opts := s.k.opts
	opts.Context = ctx
	if s.certs != nil {
		opts.CertificateProvider = s.certs
		opts.CertificateProviderOptions = &sgsign.CertificateProviderOptions{}
	}
	check := opts
	opts.TrustedRoot = nil // checked below, without parsing the statement again
	b, err := sgsign.Bundle(&sgsign.DSSEData{Data: payload, PayloadType: ctypes.IntotoPayloadType}, s.keypair, opts)
	if err != nil {
		return nil, unavailable(err)
	}
	if err := selfCheck(b, check); err != nil {
		return nil, err
	}
	return b, nil
}

// PushDocument stores data as an OCI artifact referring to ref (see
// registry.PushArtifact), under the same per-subject lock as attaching:
// both update the subject's referrers fallback index.
func (s *Session) PushDocument(ctx context.Context, ref, artifactType, mediaType string, data []byte, annotations map[string]string) (name.Digest, error) {
	d, err := s.k.digest(ref)
	if err != nil {
		return name.Digest{}, err
	}
	st := s.subject(d)
	st.attach.Lock()
	defer st.attach.Unlock()
	return s.reg.PushArtifact(ctx, d, artifactType, mediaType, data, annotations)
}

// Missing returns the predicate types of want that no signature attached to
// ref (in the session's format) that verifies for our signer carries. The
// signer stage checks it after attaching: a stage is done only when every
// attestation is really there — ours, not merely one that says it is.
func (s *Session) Missing(ctx context.Context, ref string, want []string) ([]string, error) {
	d, err := s.k.digest(ref)
	if err != nil {
		return nil, err
	}
	var have map[string]bool
	if s.k.classic {
		have, err = s.classicTypes(ctx, d, want)
	} else if err = s.Flush(ctx); err == nil {
		have, err = s.listedTypes(ctx, d, want)
	}
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", ref, err)
	}
	var missing []string
	for _, pt := range want {
		if !have[pt] {
			missing = append(missing, pt)
		}
	}
	return missing, nil
}

func (k *Keyless) digest(ref string) (name.Digest, error) {
	parsed, err := k.reg.ParseReference(ref)
	if err != nil {
		return name.Digest{}, err
	}
	d, ok := parsed.(name.Digest)
	if !ok {
		return name.Digest{}, fmt.Errorf("sign %s: sign by digest, never by tag", ref)
	}
	return d, nil
}

// bundleRef is a Sigstore bundle attached to a subject.
type bundleRef struct {
	manifest      name.Digest
	predicateType string
}

// bundles lists the Sigstore bundles attached to d (one referrers listing;
// a manifest read only where the listing lacks the annotations).
func (k *Keyless) bundles(ctx context.Context, d name.Digest) ([]bundleRef, error) {
	mt, err := sgbundle.MediaTypeString("0.3")
	if err != nil {
		return nil, err
	}
	refs, err := k.reg.Referrers(ctx, d, mt)
	if registry.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]bundleRef, 0, len(refs))
	for _, r := range refs {
		ref := d.Context().Digest(r.Digest.String())
		ann := r.Annotations
		if ann == nil {
			// Some referrers APIs list descriptors without the manifests'
			// annotations: read the manifest itself.
			m, err := k.manifest(ctx, ref)
			if err != nil {
				return nil, err
			}
			ann = m.Annotations
		}
		out = append(out, bundleRef{manifest: ref, predicateType: ann["dev.sigstore.bundle.predicateType"]})
	}
	return out, nil
}

func (k *Keyless) manifest(ctx context.Context, ref name.Digest) (*v1.Manifest, error) {
	raw, _, err := k.reg.Manifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("referrer %s: %w", ref, err)
	}
	return m, nil
}

// bundleJSON reads the bundle a referrer manifest carries (at most
// maxBundleBytes; a longer one is cut and fails to parse). It returns nil
// for a manifest that is not a one-layer bundle manifest.
func (k *Keyless) bundleJSON(ctx context.Context, d, ref name.Digest) ([]byte, error) {
	m, err := k.manifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	if len(m.Layers) != 1 {
		return nil, nil
	}
	rc, err := k.reg.Blob(ctx, d.Context(), m.Layers[0].Digest.String())
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, maxBundleBytes))
}

// payloadSHA256 is the hex SHA-256 of a bundle's DSSE payload ("" when it
// has none).
func payloadSHA256(raw []byte) string {
	var bundle struct {
		DSSEEnvelope struct {
			Payload string `json:"payload"`
		} `json:"dsseEnvelope"`
	}
	if json.Unmarshal(raw, &bundle) != nil {
		return ""
	}
	p, err := base64.StdEncoding.DecodeString(bundle.DSSEEnvelope.Payload)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(p)
	return hex.EncodeToString(sum[:])
}

// attachedPayload reports whether a bundle with predicateType whose DSSE
// payload hashes to payloadSHA256, and which verifies for our signer, is
// attached to d: a retried job finds its own attestation and adds none,
// while a changed document (a re-analysis) is attached beside the old one.
// A bundle with our payload that does not verify is logged and ignored:
// anyone who can write to the registry can attach one, to suppress signing.
func (s *Session) attachedPayload(ctx context.Context, d name.Digest, predicateType, payloadSum string) (bool, error) {
	st := s.subject(d)
	st.mu.Lock()
	mine := slices.ContainsFunc(st.mine, func(m mineRef) bool { return m.predicateType == predicateType && m.payload == payloadSum })
	st.mu.Unlock()
	if mine {
		return true, nil
	}
	bs, err := s.attachedBefore(ctx, d)
	if err != nil {
		return false, err
	}
	var check *ownCheck
	for _, b := range bs {
		if b.predicateType != predicateType {
			continue
		}
		raw, err := s.k.bundleJSON(ctx, d, b.manifest)
		if err != nil {
			return false, err
		}
		if raw == nil || payloadSHA256(raw) != payloadSum {
			continue
		}
		if check == nil {
			if check, err = s.ownCheck(ctx); err != nil {
				return false, err
			}
		}
		if _, err := check.bundle(raw, d); err != nil {
			s.k.log.InfoContext(ctx, "attached bundle does not verify for our identity, signing anew",
				"digest", d.String(), "referrer", b.manifest.DigestStr(), "predicate_type", predicateType, "reason", err.Error())
			continue
		}
		return true, nil
	}
	return false, nil
}

// bundleTypes lists the predicate types of want that a bundle attached to d
// carries which verifies for our signer, its statement of that type.
// listedTypes is bundleTypes, but a bundle the session attached itself
// counts as soon as d's referrers list it and its manifest is there: the
// session signed it and the registry took its manifest by digest, so there
// is nothing to verify again. Only for types still missing are other bundles read and verified.
func (s *Session) listedTypes(ctx context.Context, d name.Digest, want []string) (map[string]bool, error) {
	st := s.subject(d)
	st.mu.Lock()
	mine := slices.Clone(st.mine)
	st.mu.Unlock()
	have := map[string]bool{}
	if len(mine) > 0 {
		mt, err := sgbundle.MediaTypeString("0.3")
		if err != nil {
			return nil, err
		}
		refs, err := s.k.reg.Referrers(ctx, d, mt)
		if err != nil && !registry.IsNotFound(err) {
			return nil, err
		}
		for _, m := range mine {
			if !slices.Contains(want, m.predicateType) || !slices.ContainsFunc(refs, func(r v1.Descriptor) bool { return r.Digest.String() == m.manifest }) {
				continue
			}
			// A fallback index anyone with write access can rewrite lists
			// it; the manifest itself must still be there.
			if _, _, err := s.k.reg.Resolve(ctx, d.Context().Digest(m.manifest)); err != nil {
				if registry.IsNotFound(err) {
					continue
				}
				return nil, err
			}
			have[m.predicateType] = true
		}
	}
	if len(have) == len(want) {
		return have, nil
	}
	rest, err := s.bundleTypes(ctx, d, want)
	if err != nil {
		return nil, err
	}
	for pt := range rest {
		have[pt] = true
	}
	return have, nil
}

func (s *Session) bundleTypes(ctx context.Context, d name.Digest, want []string) (map[string]bool, error) {
	bs, err := s.k.bundles(ctx, d)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	var check *ownCheck
	for _, b := range bs {
		if !slices.Contains(want, b.predicateType) || have[b.predicateType] {
			continue
		}
		raw, err := s.k.bundleJSON(ctx, d, b.manifest)
		if err != nil {
			return nil, err
		}
		if raw == nil {
			continue
		}
		if check == nil {
			if check, err = s.ownCheck(ctx); err != nil {
				return nil, err
			}
		}
		res, err := check.bundle(raw, d)
		if err == nil && res.Statement.GetPredicateType() != b.predicateType {
			err = fmt.Errorf("the statement is a %s", res.Statement.GetPredicateType())
		}
		if err != nil {
			s.k.log.InfoContext(ctx, "attached bundle does not verify for our identity, not counted",
				"digest", d.String(), "referrer", b.manifest.DigestStr(), "predicate_type", b.predicateType, "reason", err.Error())
			continue
		}
		have[b.predicateType] = true
	}
	return have, nil
}

func statement(d name.Digest, predicateType string, predicate map[string]any) ([]byte, error) {
	alg, hex, ok := strings.Cut(d.DigestStr(), ":")
	if !ok {
		return nil, fmt.Errorf("digest %q", d.DigestStr())
	}
	st := &intotov1.Statement{
		Type:          intotov1.StatementTypeUri,
		Subject:       []*intotov1.ResourceDescriptor{{Name: d.Context().String(), Digest: map[string]string{alg: hex}}},
		PredicateType: predicateType,
	}
	if predicate != nil {
		p, err := structpb.NewStruct(predicate)
		if err != nil {
			return nil, fmt.Errorf("predicate: %w", err)
		}
		st.Predicate = p
	}
	return protojson.Marshal(st)
}
