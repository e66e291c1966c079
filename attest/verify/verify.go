// Package verify checks the signatures and attestations attached to a
// digest against trust material and expected signer identities with the
// sigstore-go verifier, and reports which predicate types verified. The
// decision (Entities) is offline; only Verify fetches the bundles from the
// registry. It is one of the two packages allowed to import Sigstore
// libraries for signing and verification.
package verify

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/attestd/attestd/store/registry"
)

// Bounds on what the registry (anyone who can push) makes the verifier read
// for one digest. More referrers than the cap fail the whole digest
// (Result.Incomplete, a deny): junk can be skipped, but which bundles
// would be read of too many is the pusher's choice. A bundle over a byte
// bound is rejected unread, the others still count.
const (
	// MaxBundles is how many bundle referrers one digest may have; the
	// registry client refuses more referrers of any type first
	// (registry.WithMaxReferrers, by default as many).
	MaxBundles = registry.DefaultMaxReferrers
	// maxBundleBytes bounds one bundle, maxBundlesBytes all of them (per
	// digest, in listing order, and held in memory across the process).
	maxBundleBytes  = 64 << 20
	maxBundlesBytes = 256 << 20
	// maxBundleManifest bounds a bundle's manifest.
	maxBundleManifest = 64 << 10
)

// The empty config every bundle artifact carries (cosign writes it): a
// wrapper with any other config carries content nobody signed.
const (
	emptyConfigType   = "application/vnd.oci.empty.v1+json"
	emptyConfigDigest = registry.EmptyConfigDigest
)

// Identity is an expected signer: the OIDC issuer and the certificate's
// subject (SAN), each exact or as a regular expression, and the predicate
// types it may sign (none: every type).
type Identity struct {
	Issuer, IssuerRegex   string
	Subject, SubjectRegex string
	// Types limits the signer to these predicate types (the image
	// signature is https://sigstore.dev/cosign/sign/v1). A bundle of
	// another type by this signer is rejected, never counted.
	Types []string
}

// Options choose what proof of time and logging is required.
type Options struct {
	// TransparencyLog is how many verified log entries each bundle needs.
	TransparencyLog int
	// SignedTimestamps is how many verified RFC 3161 timestamps each needs
	// (Rekor v2 entries carry no integrated time: use ≥ 1 with Rekor v2).
	SignedTimestamps int
}

// Verifier verifies bundles for a set of acceptable identities.
type Verifier struct {
	v     *sgverify.Verifier
	ids   []allowed
	reg   *registry.Client
	cache *verdicts
	// layers remembers what a referrer manifest (by digest, for a subject)
	// was found to be: its bundle layer, or why it is none. Manifests are
	// content-addressed, so this is as good as reading it again.
	layers *layerCache
	// inFlight bounds the bundle bytes all Verify calls hold at once.
	inFlight *semaphore.Weighted
	// The bounds above, as fields so tests can lower them.
	maxBundles, maxBundle, maxBundlesTotal int64
}

// allowed is an expected identity and the predicate types it may sign.
type allowed struct {
	id    sgverify.CertificateIdentity
	types []string // empty: any
}

func (a allowed) maySign(predicateType string) bool {
	return len(a.types) == 0 || slices.Contains(a.types, predicateType)
}

// New builds a Verifier. At least one identity is required: a signature
// from "anyone" proves nothing.
func New(trusted root.TrustedMaterial, ids []Identity, reg *registry.Client, o Options) (*Verifier, error) {
	if len(ids) == 0 {
		return nil, errors.New("verify: at least one expected identity is required")
	}
	if o.TransparencyLog == 0 && o.SignedTimestamps == 0 {
		return nil, errors.New("verify: require a transparency log entry or a signed timestamp: certificates live 10 minutes")
	}
	var vopts []sgverify.VerifierOption
	if o.TransparencyLog > 0 {
		vopts = append(vopts, sgverify.WithTransparencyLog(o.TransparencyLog))
	}
	if o.SignedTimestamps > 0 {
		vopts = append(vopts, sgverify.WithSignedTimestamps(o.SignedTimestamps))
	} else {
		// A log's integrated time or a TSA's timestamp: either proves the
		// signature was made while the certificate was valid.
		vopts = append(vopts, sgverify.WithObserverTimestamps(1))
	}
	sv, err := sgverify.NewVerifier(trusted, vopts...)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	v := &Verifier{v: sv, reg: reg, cache: &verdicts{max: maxVerdictBytes}, layers: &layerCache{}, inFlight: semaphore.NewWeighted(maxBundlesBytes),
		maxBundles: MaxBundles, maxBundle: maxBundleBytes, maxBundlesTotal: maxBundlesBytes}
	for i, id := range ids {
		ci, err := sgverify.NewShortCertificateIdentity(id.Issuer, id.IssuerRegex, id.Subject, id.SubjectRegex)
		if err != nil {
			return nil, fmt.Errorf("verify: identity %d: %w", i, err)
		}
		v.ids = append(v.ids, allowed{id: ci, types: slices.Clone(id.Types)})
	}
	return v, nil
}

// Evidence is what verified for one predicate type.
type Evidence struct {
	PredicateType string
	Subject       string // certificate SAN of the signer
	Issuer        string
	// Bundle is the referrer (manifest digest) or entity label it came from.
	Bundle string
	// Predicate is the verified statement's predicate (JSON): the content a
	// policy may read, and only after it verified. Read only: the bytes are
	// shared with the remembered verdict.
	Predicate json.RawMessage
	// Classic names the classic tag image (sha256-<hex>.sig/.att) the
	// evidence is a layer of; empty for a bundle referrer, whose manifest
	// digest is Bundle.
	Classic string
	// Statement is the sha256 of the signed in-toto statement (the DSSE
	// payload), "" for a classic image signature.
	Statement string
}

// Rejection is a bundle that did not verify, and why.
type Rejection struct {
	Bundle string // referrer digest, or the index of an entity
	Reason string
}

// Result lists the predicate types that verified for a digest and the
// bundles that did not. A predicate type is verified only by a bundle whose
// signature, certificate chain, time proof and in-toto subject check out
// against this exact digest AND whose signer is an expected identity
// allowed to sign that predicate type: a signer allowed for one type never
// supplies another type's facts.
type Result struct {
	Verified map[string]Evidence
	// All lists every verified bundle per predicate type (a digest analysed
	// twice carries two reports); Verified holds one of them.
	All      map[string][]Evidence
	Rejected []Rejection
	// Classic lists the classic tag images read, with all their layers.
	Classic []ClassicTag
	// Incomplete says why the digest's attachments were not all
	// considered (more referrers than the verifier reads): nothing is
	// Verified then, and the gate denies whatever the policy says.
	Incomplete string
}

// PredicateTypes lists the verified predicate types, sorted.
func (r Result) PredicateTypes() []string {
	out := make([]string, 0, len(r.Verified))
	for p := range r.Verified {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Entities verifies already-fetched bundles for digest ("sha256:<hex>"):
// no network.
func (v *Verifier) Entities(digest string, ents []sgverify.SignedEntity, labels []string) (Result, error) {
	es := make([]entity, len(ents))
	for i, e := range ents {
		es[i] = entity{SignedEntity: e, label: fmt.Sprint(i)}
		if i < len(labels) {
			es[i].label = labels[i]
		}
	}
	return v.entities(digest, es)
}

// entity is a signed entity to verify and where it came from.
type entity struct {
	sgverify.SignedEntity
	label string
	// simpleSigning is set for a classic image signature: the signed
	// payload, whose hash the signature covers and which must name the
	// digest. It verifies as the signature predicate type.
	simpleSigning []byte
	// classic is the classic tag image the entity was read from (nil: a
	// bundle, labelled by its referrer manifest's digest).
	classic *ClassicTag
	// key remembers the verdict (see verdicts); verdict is one remembered,
	// and then there is no SignedEntity to verify.
	key     string
	verdict *verdict
}

func (v *Verifier) entities(digest string, ents []entity) (Result, error) {
	alg, hx, ok := strings.Cut(digest, ":")
	raw, err := hex.DecodeString(hx)
	if !ok || alg != "sha256" || err != nil || len(raw) != 32 {
		return Result{}, fmt.Errorf("verify: digest %q is not sha256:<64 hex>", digest)
	}
	res := Result{Verified: map[string]Evidence{}, All: map[string][]Evidence{}}
	for _, e := range ents {
		label := e.label
		vd := e.verdict
		if vd == nil {
			vd = v.judge(digest, raw, e)
			if e.key != "" {
				v.cache.put(e.key, vd)
			}
		}
		if vd.reason != "" {
			res.Rejected = append(res.Rejected, Rejection{Bundle: label, Reason: vd.reason})
			continue
		}
		ev := Evidence{Bundle: label, Subject: vd.cert.SubjectAlternativeName, Issuer: vd.cert.Issuer,
			PredicateType: vd.predicateType, Statement: vd.statement, Predicate: vd.predicate}
		if e.classic != nil {
			ev.Classic = e.classic.Tag
		}
		if reason := v.allows(vd.cert, vd.predicateType); reason != "" {
			res.Rejected = append(res.Rejected, Rejection{Bundle: label, Reason: reason})
			continue
		}
		res.All[vd.predicateType] = append(res.All[vd.predicateType], ev)
		if prev, ok := res.Verified[vd.predicateType]; ok && prev.Bundle < ev.Bundle {
			continue // several verified bundles of one type: keep one, deterministically
		}
		res.Verified[vd.predicateType] = ev
	}
	return res, nil
}

// judge verifies one entity cryptographically for digest (raw: its bytes):
// signature, certificate chain, time proof, transparency log, and that the
// statement is about digest. Who signed is not judged here (allows is,
// every time): the verdict depends only on the entity's bytes, the digest
// and the Verifier's trust material, so it can be remembered.
func (v *Verifier) judge(digest string, raw []byte, e entity) *verdict {
	artifact := raw
	if e.simpleSigning != nil {
		sum := sha256.Sum256(e.simpleSigning)
		artifact = sum[:]
	}
	out, err := v.v.Verify(&statementOnce{SignedEntity: e.SignedEntity}, sgverify.NewPolicy(sgverify.WithArtifactDigest("sha256", artifact), sgverify.WithoutIdentitiesUnsafe()))
	if err != nil {
		return &verdict{reason: err.Error()}
	}
	if out.Signature == nil || out.Signature.Certificate == nil {
		return &verdict{reason: "no certificate: attestd verifies keyless identities"}
	}
	vd := &verdict{cert: *out.Signature.Certificate}
	switch {
	case e.simpleSigning != nil:
		if err := namesDigest(e.simpleSigning, digest); err != nil {
			return &verdict{reason: err.Error()}
		}
		vd.predicateType = signaturePredicate
	case out.Statement == nil:
		return &verdict{reason: "not an in-toto statement (message signature)"}
	default:
		vd.statement = statementDigest(e.SignedEntity)
		vd.predicateType = out.Statement.PredicateType
		if out.Statement.GetPredicate() != nil {
			if vd.predicate, err = rawPredicate(e.SignedEntity); err != nil {
				return &verdict{reason: "predicate: " + err.Error()}
			}
		}
	}
	return vd
}

// rawPredicate is the predicate of an envelope's statement as the signer
// wrote it (the verified payload's bytes), instead of the statement's
// parsed Struct written out again: an SBOM's runs to megabytes, and
// re-encoding it cost more than verifying it. The payload parsed as a
// statement with exactly one "predicate" field (sigstore-go refuses
// duplicate and unknown fields), so this reads the same one.
func rawPredicate(e sgverify.SignedEntity) (json.RawMessage, error) {
	sc, err := e.SignatureContent()
	if err != nil || sc.EnvelopeContent() == nil || sc.EnvelopeContent().RawEnvelope() == nil {
		return nil, errors.New("no envelope")
	}
	payload, err := base64.StdEncoding.DecodeString(sc.EnvelopeContent().RawEnvelope().Payload)
	if err != nil {
		return nil, err
	}
	var st struct {
		Predicate json.RawMessage `json:"predicate"`
	}
	if err := json.Unmarshal(payload, &st); err != nil {
		return nil, err
	}
	return st.Predicate, nil
}

// statementDigest is the sha256 of an envelope's payload ("" if none).
func statementDigest(e sgverify.SignedEntity) string {
	sc, err := e.SignatureContent()
	if err != nil || sc.EnvelopeContent() == nil || sc.EnvelopeContent().RawEnvelope() == nil {
		return ""
	}
	payload, err := base64.StdEncoding.DecodeString(sc.EnvelopeContent().RawEnvelope().Payload)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(payload)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// allows says why cert may not sign predicateType ("" when an expected
// identity allowed for that type matches it).
func (v *Verifier) allows(cert certificate.Summary, predicateType string) string {
	known := false
	for _, a := range v.ids {
		if a.id.Verify(cert) != nil {
			continue
		}
		if a.maySign(predicateType) {
			return ""
		}
		known = true
	}
	if known {
		return fmt.Sprintf("signer %s (issuer %s) may not sign %s", cert.SubjectAlternativeName, cert.Issuer, predicateType)
	}
	return fmt.Sprintf("signer %s (issuer %s) is not an expected identity", cert.SubjectAlternativeName, cert.Issuer)
}

// Verify fetches every Sigstore bundle attached to ref (a digest reference),
// and every signature and attestation in cosign's classic layout, and
// verifies them. Registry errors are returned; a bundle that cannot be
// read or parsed is a rejection, never a pass.
func (v *Verifier) Verify(ctx context.Context, ref string) (Result, error) {
	return v.verify(ctx, ref, true)
}

// VerifyFresh is Verify without remembered referrer manifests: each is
// read (in ref's repository) and checked again. Bundle verdicts are still
// remembered, by the blob digest and size the manifest names.
func (v *Verifier) VerifyFresh(ctx context.Context, ref string) (Result, error) {
	return v.verify(ctx, ref, false)
}

func (v *Verifier) verify(ctx context.Context, ref string, remembered bool) (Result, error) {
	if v.reg == nil {
		return Result{}, errors.New("verify: no registry client")
	}
	parsed, err := v.reg.ParseReference(ref)
	if err != nil {
		return Result{}, err
	}
	d, ok := parsed.(name.Digest)
	if !ok {
		return Result{}, fmt.Errorf("verify %s: verify by digest, never by tag", ref)
	}
	mt, err := sgbundle.MediaTypeString("0.3")
	if err != nil {
		return Result{}, err
	}
	refs, err := v.reg.Referrers(ctx, d, mt)
	if errors.Is(err, registry.ErrTooManyReferrers) {
		return incomplete(err.Error()), nil
	}
	if err != nil && !registry.IsNotFound(err) {
		return Result{}, fmt.Errorf("verify %s: %w", ref, err)
	}
	if int64(len(refs)) > v.maxBundles {
		return incomplete(fmt.Sprintf("referrers of %s: %d bundles are attached, attestd verifies at most %d per subject and reads none of them: delete the stray referrers from the registry", d, len(refs), v.maxBundles)), nil
	}
	ents, bad, err := v.bundles(ctx, d, refs, remembered)
	if err != nil {
		return Result{}, fmt.Errorf("verify %s: %w", ref, err)
	}
	// cosign's classic layout (signing.format classic, or another signer).
	classic, cbad, ctags, err := v.classic(ctx, d)
	if errors.Is(err, errClassicFlooded) {
		return incomplete(err.Error()), nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("verify %s: %w", ref, err)
	}
	ents, bad = append(ents, classic...), append(bad, cbad...)
	res, err := v.entities(d.DigestStr(), ents)
	if err != nil {
		return Result{}, err
	}
	res.Rejected = append(res.Rejected, bad...)
	res.Classic = ctags
	return res, nil
}

// incomplete is the result for a digest whose attachments were not read.
func incomplete(reason string) Result {
	return Result{Verified: map[string]Evidence{}, All: map[string][]Evidence{}, Incomplete: reason,
		Rejected: []Rejection{{Bundle: "referrers", Reason: reason}}}
}

// errBadManifest marks a referrer manifest that is not a bundle manifest
// of the subject: a verdict on its bytes, remembered like one.
var errBadManifest = errors.New("not a bundle manifest of this digest")

// fetchConcurrency bounds the reads of one Verify in flight at once.
const fetchConcurrency = 8

// bundles reads and verifies the bundles of subject's referrers refs
// (bundle manifests), at most maxBundles of them (Verify refuses more).
// First every manifest is read and checked, keeping only its bundle
// layer's descriptor; then, in listing order by the sizes the manifests
// declare (a longer blob fails to parse), a bundle over maxBundle or
// past maxBundlesTotal for the digest is rejected unread. Each other
// bundle whose verdict is not remembered is read, verified and dropped
// one by one: a Verify holds at most fetchConcurrency bundles, and all
// Verify calls of the process together at most maxBundlesBytes, never a
// digest's bundles all at once. The outcome is in listing order; every
// entity returned carries its verdict.
func (v *Verifier) bundles(ctx context.Context, subject name.Digest, refs []v1.Descriptor, remembered bool) ([]entity, []Rejection, error) {
	type slot struct {
		layer  v1.Descriptor
		reason string
		ent    entity
	}
	if int64(len(refs)) > v.maxBundles {
		return nil, nil, fmt.Errorf("%d bundles attached, over %d", len(refs), v.maxBundles)
	}
	slots := make([]slot, len(refs))
	g := errgroup.Group{}
	g.SetLimit(fetchConcurrency)
	for i, desc := range refs {
		if desc.Size > maxBundleManifest {
			slots[i].reason = fmt.Sprintf("manifest of %d bytes: a bundle's is under %d", desc.Size, maxBundleManifest)
			continue
		}
		key := desc.Digest.String() + " " + subject.DigestStr()
		if l, reason, ok := v.layers.get(key); ok && remembered {
			slots[i].layer, slots[i].reason = l, reason
			continue
		}
		g.Go(func() error {
			l, err := v.bundleLayer(ctx, subject, desc)
			var reason string
			if err != nil {
				reason = err.Error()
			}
			slots[i].layer, slots[i].reason = l, reason
			if err == nil || errors.Is(err, errBadManifest) {
				v.layers.put(key, l, reason)
			}
			return nil
		})
	}
	_ = g.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	alg, hx, _ := strings.Cut(subject.DigestStr(), ":")
	raw, err := hex.DecodeString(hx)
	if alg != "sha256" || err != nil || len(raw) != 32 {
		return nil, nil, fmt.Errorf("digest %q is not sha256:<64 hex>", subject.DigestStr())
	}
	var total int64
	for i, desc := range refs {
		sl := &slots[i]
		if sl.reason != "" {
			continue
		}
		size := sl.layer.Size
		if size > min(v.maxBundle, v.maxBundlesTotal-total) {
			sl.reason = fmt.Sprintf("bundle of %d bytes: over the %d bytes read per bundle, or the %d per digest; not read", size, v.maxBundle, v.maxBundlesTotal)
			continue
		}
		total += size
		key := verdictKey(sl.layer, subject.DigestStr())
		sl.ent = entity{label: desc.Digest.String(), key: key, verdict: v.cache.get(key)}
		if sl.ent.verdict != nil {
			continue
		}
		g.Go(func() error {
			// The bundle's bytes are held from here until judged.
			if err := v.inFlight.Acquire(ctx, size); err != nil {
				sl.reason = err.Error()
				return nil
			}
			defer v.inFlight.Release(size)
			b, err := v.readBundle(ctx, subject.Context(), sl.layer)
			if err != nil {
				sl.reason = err.Error()
				return nil
			}
			sl.ent.SignedEntity = b
			vd := v.judge(subject.DigestStr(), raw, sl.ent)
			v.cache.put(key, vd)
			sl.ent.SignedEntity, sl.ent.verdict = nil, vd
			return nil
		})
	}
	_ = g.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	var ents []entity
	var bad []Rejection
	for i, desc := range refs {
		if slots[i].reason != "" {
			bad = append(bad, Rejection{Bundle: desc.Digest.String(), Reason: slots[i].reason})
			continue
		}
		ents = append(ents, slots[i].ent)
	}
	return ents, bad, nil
}

// bundleLayer reads the referrer manifest desc of subject and returns its
// bundle layer. The manifest must name subject as its own subject: a
// listing (or a fallback tag anyone with write access can rewrite) that
// places another digest's referrer here is refused, so nothing copied
// with subject can refer to something else.
func (v *Verifier) bundleLayer(ctx context.Context, subject name.Digest, desc v1.Descriptor) (v1.Descriptor, error) {
	repo := subject.Context()
	raw, _, err := v.reg.ManifestAtMost(ctx, repo.Digest(desc.Digest.String()), maxBundleManifest)
	if errors.Is(err, registry.ErrManifestTooLarge) {
		return v1.Descriptor{}, fmt.Errorf("%w: %w", errBadManifest, err)
	}
	if err != nil {
		return v1.Descriptor{}, err
	}
	if len(raw) > maxBundleManifest {
		return v1.Descriptor{}, fmt.Errorf("%w: manifest of %d bytes: a bundle's is under %d", errBadManifest, len(raw), maxBundleManifest)
	}
	m, err := v1.ParseManifest(strings.NewReader(string(raw)))
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%w: %w", errBadManifest, err)
	}
	if m.Subject == nil || m.Subject.Digest.String() != subject.DigestStr() {
		got := "none"
		if m.Subject != nil {
			got = m.Subject.Digest.String()
		}
		return v1.Descriptor{}, fmt.Errorf("%w: bundle manifest's subject is %s, not %s", errBadManifest, got, subject.DigestStr())
	}
	if len(m.Layers) != 1 {
		return v1.Descriptor{}, fmt.Errorf("%w: bundle manifest has %d layers, want 1", errBadManifest, len(m.Layers))
	}
	if m.Config.MediaType != emptyConfigType || m.Config.Digest.String() != emptyConfigDigest {
		return v1.Descriptor{}, fmt.Errorf("%w: bundle manifest's config is %s %s, not the empty config %s a bundle artifact carries", errBadManifest, m.Config.MediaType, m.Config.Digest, emptyConfigType)
	}
	if want, _ := sgbundle.MediaTypeString("0.3"); string(m.Layers[0].MediaType) != want {
		return v1.Descriptor{}, fmt.Errorf("%w: bundle layer media type is %s, want %s", errBadManifest, m.Layers[0].MediaType, want)
	}
	if m.Layers[0].Size < 0 {
		return v1.Descriptor{}, fmt.Errorf("%w: bundle layer of %d bytes", errBadManifest, m.Layers[0].Size)
	}
	if len(m.Layers[0].URLs) > 0 || m.Layers[0].Data != nil {
		return v1.Descriptor{}, fmt.Errorf("%w: the bundle layer's descriptor carries urls or data: a bundle is a blob in the repository", errBadManifest)
	}
	return m.Layers[0], nil
}

// readBundle reads and parses the bundle blob l, which must be exactly
// its declared size: read to the end, so the client has checked every
// byte against the digest (a verdict is remembered by it).
func (v *Verifier) readBundle(ctx context.Context, repo name.Repository, l v1.Descriptor) (*sgbundle.Bundle, error) {
	rc, err := v.reg.Blob(ctx, repo, l.Digest.String())
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, l.Size+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != l.Size {
		return nil, fmt.Errorf("bundle blob is not the %d bytes its manifest declares", l.Size)
	}
	var b sgbundle.Bundle
	if err := b.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	return &b, nil
}
