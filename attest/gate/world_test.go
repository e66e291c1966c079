package gate

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/policy/promote"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// The identities of the attack suite.
const (
	issuer  = "https://issuer.example.test"
	attestd = "attestd@example.test" // attestd itself: may sign everything
	ci      = "ci@example.test"      // the CI: signature and provenance only
	scanner = "scanner@example.test" // another scanner: vulnerability reports only
	mallory = "mallory@example.test" // anyone with write access to staging
)

// testPolicy is the policy of the suite: attestd signs everything, the CI
// only the image signature and provenance, a second scanner only
// vulnerability reports.
const testPolicy = `version: 1
name: attack-suite
signers:
  - issuer: ` + issuer + `
    subject: ` + attestd + `
  - issuer: ` + issuer + `
    subject: ` + ci + `
    types: [signature, provenance]
  - issuer: ` + issuer + `
    subject: ` + scanner + `
    types: [vuln]
require: [signature, spdx, hardening, vuln]
vulnerabilities:
  max_severity: medium
hardening:
  required: [nonroot-user]
vsa:
  verified_levels: [SLSA_BUILD_LEVEL_1]
`

// world is staging and prod on one in-process registry, a virtual
// Sigstore, a real verifier on its trust material, and a gate.
type world struct {
	t     *testing.T
	ctx   context.Context
	vs    *ca.VirtualSigstore
	rc    *registry.Client
	host  string
	stage name.Repository
	prod  name.Repository
	store *memStore
	gate  *Gate
	pol   *policy.Policy
	now   time.Time
	vsas  [][]byte // the summaries signed, in order
	// vsaBundles are their bundles' manifest digests.
	vsaBundles []string
	// blobGets counts the registry's blob reads.
	blobGets *atomic.Int64
	// intercept, when set, answers the requests it returns true for in
	// the registry's place (what another registry would serve).
	intercept *atomic.Pointer[func(http.ResponseWriter, *http.Request) bool]
}

func newWorld(t *testing.T, policyYAML string, referrersAPI bool) *world {
	t.Helper()
	reg := ggcrregistry.New(ggcrregistry.WithReferrersSupport(referrersAPI), ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	blobGets := &atomic.Int64{}
	intercept := &atomic.Pointer[func(http.ResponseWriter, *http.Request) bool]{}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
		}
		if f := intercept.Load(); f != nil && (*f)(rw, r) {
			return
		}
		reg.ServeHTTP(rw, r)
	}))
	t.Cleanup(srv.Close)
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := registry.New(registry.WithRateLimit(10000, 1000))
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, ctx: context.Background(), vs: vs, rc: rc, host: strings.TrimPrefix(srv.URL, "http://"), store: newMemStore(), now: time.Now().UTC(), blobGets: blobGets, intercept: intercept}
	w.stage, _ = name.NewRepository(w.host + "/staging/app")
	w.prod, _ = name.NewRepository(w.host + "/prod/app")
	w.setPolicy(policyYAML)
	return w
}

// setPolicy (re)builds the gate on a policy, as a restart with a changed
// policy file would.
func (w *world) setPolicy(policyYAML string) {
	w.t.Helper()
	pol, err := policy.Load(w.ctx, []byte(policyYAML), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	var ids []verify.Identity
	for _, s := range pol.Identities() {
		ids = append(ids, verify.Identity{Issuer: s.Issuer, Subject: s.Subject, Types: s.Types})
	}
	ver, err := verify.New(w.vs, ids, w.rc, verify.Options{SignedTimestamps: 1})
	if err != nil {
		w.t.Fatal(err)
	}
	w.pol = pol
	w.gate, err = New(Options{
		Policy: pol, Verifier: ver, Store: w.store, Registry: w.rc, Attester: vsaSigner{w},
		Rules:   []promote.Rule{{From: w.stage.String(), To: w.prod.String()}},
		Timeout: time.Minute, Version: "test",
		Own: func(iss, sub string) bool { return iss == issuer && sub == attestd },
		Now: func() time.Time { return w.now },
	})
	if err != nil {
		w.t.Fatal(err)
	}
}

// image pushes a random runnable image to staging, tagged.
func (w *world) image(tag string) name.Digest {
	w.t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		w.t.Fatal(err)
	}
	d, _ := img.Digest()
	ref := w.stage.Digest(d.String())
	if err := remote.Write(ref, img); err != nil {
		w.t.Fatal(err)
	}
	if tag != "" {
		if err := remote.Tag(w.stage.Tag(tag), img); err != nil {
			w.t.Fatal(err)
		}
		w.store.tag(w.stage.String(), d.String(), tag)
	}
	return ref
}

// bundle signs statement as identity: a Sigstore v0.3 bundle (DSSE, a
// Fulcio-like certificate, an RFC 3161 timestamp), as JSON.
func (w *world) bundle(identity string, statement []byte) []byte {
	w.t.Helper()
	cert, key, err := w.vs.GenerateLeafCert(identity, issuer)
	if err != nil {
		w.t.Fatal(err)
	}
	pae := "DSSEv1 " + itoa(len("application/vnd.in-toto+json")) + " application/vnd.in-toto+json " + itoa(len(statement)) + " " + string(statement)
	sum := sha256.Sum256([]byte(pae))
	sig, err := key.(*ecdsa.PrivateKey).Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		w.t.Fatal(err)
	}
	ts, err := w.vs.TimestampResponse(sig)
	if err != nil {
		w.t.Fatal(err)
	}
	mt, _ := sgbundle.MediaTypeString("0.3")
	pb := &protobundle.Bundle{MediaType: mt,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content: &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: cert.Raw}},
			TimestampVerificationData: &protobundle.TimestampVerificationData{
				Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: ts}}},
		},
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload: statement, PayloadType: "application/vnd.in-toto+json", Signatures: []*protodsse.Signature{{Sig: sig}}}},
	}
	b, err := protojson.Marshal(pb)
	if err != nil {
		w.t.Fatal(err)
	}
	return b
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + jsonNumber(n)) }

func jsonNumber(n int) string { b, _ := json.Marshal(n); return string(b) }

// statement is an in-toto statement about digest.
func (w *world) statement(digest, predicateType string, predicate any) []byte {
	w.t.Helper()
	var p []byte
	if predicate != nil {
		var err error
		if p, err = json.Marshal(predicate); err != nil {
			w.t.Fatal(err)
		}
	}
	st, err := attest.Statement(w.stage.String(), digest, predicateType, p)
	if err != nil {
		w.t.Fatal(err)
	}
	return st
}

// attach pushes a bundle as a referrer of subject, the way cosign does:
// the empty config, one bundle layer, the predicate type annotation.
func (w *world) attach(subject name.Digest, predicateType string, bundle []byte) name.Digest {
	w.t.Helper()
	mt, _ := sgbundle.MediaTypeString("0.3")
	cfg := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	layer := static.NewLayer(bundle, types.MediaType(mt))
	for _, l := range []v1.Layer{cfg, layer} {
		if err := remote.WriteLayer(subject.Context(), l); err != nil {
			w.t.Fatal(err)
		}
	}
	desc, err := remote.Head(subject)
	if err != nil {
		w.t.Fatal(err)
	}
	cd, _ := cfg.Digest()
	ld, _ := layer.Digest()
	raw, _ := json.Marshal(v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config:      v1.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: cd, Size: 2},
		Layers:      []v1.Descriptor{{MediaType: types.MediaType(mt), Digest: ld, Size: int64(len(bundle))}},
		Subject:     &v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size},
		Annotations: map[string]string{"dev.sigstore.bundle.predicateType": predicateType},
	})
	// cosign's manifest carries artifactType too.
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	m["artifactType"] = mt
	raw, _ = json.Marshal(m)
	h, _, _ := v1.SHA256(bytes.NewReader(raw))
	ref := subject.Context().Digest(h.String())
	if err := w.rc.PutManifest(w.ctx, ref, raw, types.OCIManifestSchema1); err != nil {
		w.t.Fatal(err)
	}
	return ref
}

// sign has identity sign predicate about subject and attaches it.
func (w *world) sign(identity string, subject name.Digest, predicateType string, predicate any) name.Digest {
	w.t.Helper()
	return w.attach(subject, predicateType, w.bundle(identity, w.statement(subject.DigestStr(), predicateType, predicate)))
}

// Predicates as attestd writes them.
func vulnReport(critical int, finished time.Time) map[string]any {
	return map[string]any{
		"invocation": map[string]any{"parameters": map[string]any{"counts": map[string]any{"critical": critical, "unknownAs": "high"}}},
		"metadata":   map[string]any{"scanFinishedOn": finished.UTC().Format(time.RFC3339)},
	}
}

func hardening(nonroot string) map[string]any {
	return map[string]any{"checks": []map[string]any{{"id": "nonroot-user", "status": nonroot}}}
}

var sbom = map[string]any{"spdxVersion": "SPDX-2.3", "packages": []map[string]any{{"name": "musl"}}}

// signAll has attestd sign and attest subject as its pipeline would:
// signature, SBOM, hardening (nonroot pass) and a clean vulnerability scan.
func (w *world) signAll(subject name.Digest) {
	w.t.Helper()
	w.signWith(subject, vulnReport(0, w.now.Add(-time.Minute)))
}

// signWith is signAll with the given vulnerability report.
func (w *world) signWith(subject name.Digest, vulns map[string]any) {
	w.t.Helper()
	w.sign(attestd, subject, attest.PredicateSignature, nil)
	w.sign(attestd, subject, attest.PredicateSPDX, sbom)
	w.sign(attestd, subject, attest.PredicateHardening, hardening("pass"))
	w.sign(attestd, subject, attest.PredicateVulnCosign, vulns)
}

// target is what resolve hands the gate for ref.
func (w *world) target(ref name.Digest) *pipeline.Target {
	w.t.Helper()
	_, mt, err := w.rc.Manifest(w.ctx, ref)
	if err != nil {
		w.t.Fatal(err)
	}
	raw, _, _ := w.rc.Manifest(w.ctx, ref)
	tags, _ := w.store.tagsOf(w.stage.String(), ref.DigestStr())
	t := &pipeline.Target{Ref: ref.String(), MediaType: string(mt), Manifest: raw, Tags: tags}
	if mt.IsIndex() {
		raw, _, _ := w.rc.Manifest(w.ctx, ref)
		kids, err := registry.ChildrenOf(raw, mt)
		if err != nil {
			w.t.Fatal(err)
		}
		for _, k := range kids {
			t.Children = append(t.Children, store.Child{Digest: k.Digest.String(), Platform: k.Platform})
		}
	}
	return t
}

// evaluate runs the evaluate stage and records the decision as the
// pipeline would.
func (w *world) evaluate(ref name.Digest) pipeline.Decision {
	w.t.Helper()
	d, err := w.gate.Evaluate(w.ctx, w.target(ref))
	if err != nil {
		w.t.Fatalf("evaluate: %v", err)
	}
	w.store.decide(ref, d)
	return d
}

func (w *world) promote(ref name.Digest) error {
	return w.gate.Promote(w.ctx, w.target(ref))
}

// inProd is what prod:tag points at ("" when absent).
func (w *world) inProd(tag string) string {
	d, err := remote.Head(w.prod.Tag(tag))
	if err != nil {
		return ""
	}
	return d.Digest.String()
}

// prodHas reports whether digest exists in prod.
func (w *world) prodHas(digest string) bool {
	_, err := remote.Head(w.prod.Digest(digest))
	return err == nil
}

// prodReferrers lists what prod holds as referrers of subject.
func (w *world) prodReferrers(subject string) []v1.Descriptor {
	refs, err := w.rc.Referrers(w.ctx, w.prod.Digest(subject), "")
	if err != nil && !registry.IsNotFound(err) {
		w.t.Fatal(err)
	}
	return refs
}

// vsaSigner signs the gate's summaries as attestd.
type vsaSigner struct{ w *world }

func (s vsaSigner) AttestStatement(_ context.Context, ref, predicateType string, st []byte) error {
	d, err := name.NewDigest(ref)
	if err != nil {
		return err
	}
	b := s.w.attach(d, predicateType, s.w.bundle(attestd, st))
	s.w.store.mu.Lock()
	s.w.vsas = append(s.w.vsas, st)
	s.w.vsaBundles = append(s.w.vsaBundles, b.DigestStr())
	s.w.store.mu.Unlock()
	return nil
}

// memStore is the state the gate reads: tags, records with decisions, and
// the audit log in order.
type memStore struct {
	mu    sync.Mutex
	tags  map[string][]string
	recs  map[string]*store.Record
	audit []store.AuditEntry
	once  map[string]bool
}

func newMemStore() *memStore {
	return &memStore{tags: map[string][]string{}, recs: map[string]*store.Record{}, once: map[string]bool{}}
}

func (m *memStore) tag(repo, digest, tag string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tags[repo+"@"+digest] = append(m.tags[repo+"@"+digest], tag)
}

func (m *memStore) decide(ref name.Digest, d pipeline.Decision) {
	m.mu.Lock()
	defer m.mu.Unlock()
	host, repo, digest, _ := store.SplitRef(ref.String())
	m.recs[ref.String()] = &store.Record{Ref: ref.String(), Registry: host, Repository: repo, Digest: digest, State: store.StateEvaluated, Decision: &d}
}

func (m *memStore) Image(_ context.Context, ref string) (*store.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[ref]
	if !ok {
		return nil, store.ErrNotFound
	}
	c := *r
	return &c, nil
}

func (m *memStore) tagsOf(repo, digest string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.tags[repo+"@"+digest]...), nil
}

func (m *memStore) Audit(_ context.Context, e store.AuditEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.audit = append(m.audit, e)
	return nil
}

func (m *memStore) AuditOnce(_ context.Context, key string, e store.AuditEntry) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.once[key] {
		return false, nil
	}
	m.once[key] = true
	m.audit = append(m.audit, e)
	return true, nil
}

func (m *memStore) AuditMarked(_ context.Context, key string, e store.AuditEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.once[key] = true
	m.audit = append(m.audit, e)
	return nil
}

func (m *memStore) actions() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, e := range m.audit {
		out = append(out, e.Action)
	}
	return out
}

type policyRejected = policy.Rejected

// input is the policy input the gate builds for ref now.
func (w *world) input(ref name.Digest) policy.Input {
	w.t.Helper()
	ev, err := w.gate.Check(w.ctx, w.target(ref), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	return ev.Input
}
