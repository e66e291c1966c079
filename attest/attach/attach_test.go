package attach

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/sign"
	"github.com/attestd/attestd/attest/sign/signtest"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// The sign stage, offline: signtest's in-process Fulcio and TSA, ggcr's
// in-process registry, and an in-memory Store. What the stage attached is
// checked with sigstore-go directly (signtest.Bundles), not with the code
// under test.

const identity = "attestd@example.test"

const mediaTypeSPDX = "application/spdx+json" // sbom.MediaTypeSPDX (attach does not import sbom)

// memStore is an in-memory Store: blobs by digest, the audit log a slice.
type memStore struct {
	mu    sync.Mutex
	blobs map[string][]byte
	log   []store.AuditEntry
}

func newMemStore() *memStore { return &memStore{blobs: map[string][]byte{}} }

// put stores data and returns its digest, as store.DB.PutBlob does.
func (m *memStore) put(data []byte) string {
	sum := sha256.Sum256(data)
	d := "sha256:" + hex.EncodeToString(sum[:])
	m.mu.Lock()
	defer m.mu.Unlock()
	m.blobs[d] = bytes.Clone(data)
	return d
}

func (m *memStore) Blob(_ context.Context, digest string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", digest, store.ErrNotFound)
	}
	return bytes.Clone(b), nil
}

func (m *memStore) Audit(_ context.Context, e store.AuditEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.log = append(m.log, e)
	return nil
}

// entries returns the audit entries of action.
func (m *memStore) entries(action string) []store.AuditEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.AuditEntry
	for _, e := range m.log {
		if e.Action == action {
			out = append(out, e)
		}
	}
	return out
}

var _ Store = (*memStore)(nil)

// fixture is a registry, a keyless signer for identity and a store.
type fixture struct {
	ts   *signtest.Sigstore
	host string
	rc   *registry.Client
	k    *sign.Keyless
	db   *memStore
}

func newFixture(t *testing.T, ts *signtest.Sigstore, referrers bool) *fixture {
	t.Helper()
	host, rc := signtest.NewRegistry(t, referrers, registry.WithRateLimit(10000, 1000))
	k, err := sign.NewKeylessFromTrust(ts.SigningConfig, ts.TrustedRoot, signtest.TokenFor(identity), rc, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{ts: ts, host: host, rc: rc, k: k, db: newMemStore()}
}

func (f *fixture) repo() string { return f.host + "/app" }

// docs stores the three documents analysis records for subject (an SPDX
// SBOM, a hardening report, a provenance statement), each padded with pad
// bytes, and returns their artifacts.
func (f *fixture) docs(t *testing.T, subject string, pad int) []store.Artifact {
	t.Helper()
	filler := strings.Repeat("x", pad)
	spdx, _ := json.Marshal(map[string]any{"spdxVersion": "SPDX-2.3", "name": "app", "comment": filler})
	hardening, _ := json.Marshal(map[string]any{"checks": []map[string]any{{"id": "non-root", "pass": true}}})
	prov, err := attest.Statement(f.repo(), subject, attest.PredicateSLSA1,
		[]byte(fmt.Sprintf(`{"buildDefinition":{"buildType":"https://attestd.dev/analyze","externalParameters":{"pad":%q}}}`, filler)))
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Artifact
	for _, d := range []struct {
		kind, mt, pt string
		body         []byte
	}{
		{analyze.KindSPDX, mediaTypeSPDX, attest.PredicateSPDX, spdx},
		{analyze.KindHardening, analyze.MediaTypeHardening, attest.PredicateHardening, hardening},
		{analyze.KindProvenance, analyze.MediaTypeInToto, attest.PredicateSLSA1, prov},
	} {
		out = append(out, store.Artifact{Subject: subject, Kind: d.kind, MediaType: d.mt, PredicateType: d.pt,
			Digest: f.db.put(d.body), Size: int64(len(d.body))})
	}
	return out
}

// bundles counts the bundles of predicateType attached to d, and those that
// verify for identity.
func (f *fixture) bundles(t *testing.T, d name.Digest, predicateType string) (all int, verified []map[string]any) {
	t.Helper()
	all, res := signtest.Bundles(t, f.rc, f.ts.TrustedRoot, signtest.Policy(t, identity), d, predicateType)
	for _, r := range res {
		raw, err := protojson.Marshal(r.Statement.GetPredicate())
		if err != nil {
			t.Fatal(err)
		}
		var p map[string]any
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatal(err)
		}
		verified = append(verified, p)
	}
	return all, verified
}

// wantAttached checks that d carries exactly one bundle of each predicate
// type, verifying for identity.
func (f *fixture) wantAttached(t *testing.T, d name.Digest, predicateTypes ...string) {
	t.Helper()
	for _, pt := range predicateTypes {
		if all, ok := f.bundles(t, d, pt); all != 1 || len(ok) != 1 {
			t.Errorf("%s: %d bundles of %s, %d verify; want 1, 1", d.DigestStr(), all, pt, len(ok))
		}
	}
}

// written lists, sorted, "subject predicateType" of each signature.written
// entry, after checking what every entry says of the job.
func (f *fixture) written(t *testing.T, ref string) []string {
	t.Helper()
	var out []string
	for _, e := range f.db.entries(store.AuditSignature) {
		if e.Subject != ref || e.Repo != f.repo() || e.Actor != "pipeline" || e.Details["bundle"] == "" || e.Details["timestamps"] != "1" {
			t.Errorf("audit entry %+v: want subject %s, repo %s, a bundle digest and one timestamp", e, ref, f.repo())
		}
		out = append(out, e.Details["subject"]+" "+e.Details["predicateType"])
	}
	slices.Sort(out)
	return out
}

// pushImage pushes a random image to host/app and returns its digest.
func pushImage(t *testing.T, host string) name.Digest { return signtest.PushImage(t, host) }

// pushIndex pushes an index of two random images to host/app and returns
// its digest and the platform images' digests.
func pushIndex(t *testing.T, host string) (name.Digest, []string) {
	t.Helper()
	var adds []mutate.IndexAddendum
	var children []string
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		h, _ := img.Digest()
		children = append(children, h.String())
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), types.OCIImageIndex)
	tag, err := name.NewTag(host + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(tag, idx); err != nil {
		t.Fatal(err)
	}
	h, _ := idx.Digest()
	return tag.Context().Digest(h.String()), children
}

// sigAndDocs is the image signature and the three documents' types.
var sigAndDocs = []string{sign.PredicateSignature, attest.PredicateSPDX, attest.PredicateHardening, attest.PredicateSLSA1}

func TestSignImage(t *testing.T) {
	t.Parallel()
	ts := signtest.New(t)
	for _, referrers := range []bool{true, false} {
		t.Run(fmt.Sprintf("referrers=%v", referrers), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newFixture(t, ts, referrers)
			d := pushImage(t, f.host)
			tgt := &pipeline.Target{Ref: d.String(), Artifacts: f.docs(t, d.DigestStr(), 0)}
			if err := New(f.k, f.db, f.rc, Options{Concurrency: 4}).Sign(ctx, tgt); err != nil {
				t.Fatal(err)
			}
			f.wantAttached(t, d, sigAndDocs...)
			// The documents are signed as they are: the SBOM as the
			// statement's predicate, the provenance statement itself.
			if _, ok := f.bundles(t, d, attest.PredicateSPDX); len(ok) == 1 && ok[0]["spdxVersion"] != "SPDX-2.3" {
				t.Errorf("the SPDX predicate is %v, not the document", ok[0])
			}
			if _, ok := f.bundles(t, d, attest.PredicateSLSA1); len(ok) == 1 && ok[0]["buildDefinition"] == nil {
				t.Errorf("the provenance predicate is %v, not the statement's", ok[0])
			}

			var want []string
			for _, pt := range sigAndDocs {
				want = append(want, d.DigestStr()+" "+pt)
			}
			slices.Sort(want)
			if diff := cmp.Diff(want, f.written(t, d.String())); diff != "" {
				t.Errorf("signature.written entries (-want +got):\n%s", diff)
			}
			done := f.db.entries("attestations.attached")
			wantDone := []store.AuditEntry{{Actor: "pipeline", Action: "attestations.attached", Subject: d.String(), Repo: f.repo(),
				Digest: d.DigestStr(), Details: map[string]string{"subjects": "1", "documents": "3", "certificates": "1"}}}
			if diff := cmp.Diff(wantDone, done); diff != "" {
				t.Errorf("attestations.attached entries (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSignIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, signtest.New(t), true)
	idx, children := pushIndex(t, f.host)
	tgt := &pipeline.Target{Ref: idx.String(), MediaType: string(types.OCIImageIndex)}
	for _, c := range children {
		tgt.Children = append(tgt.Children, store.Child{Digest: c})
		tgt.Artifacts = append(tgt.Artifacts, f.docs(t, c, 0)...)
	}
	if err := New(f.k, f.db, f.rc, Options{Concurrency: 3}).Sign(ctx, tgt); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, c := range children {
		f.wantAttached(t, idx.Context().Digest(c), sigAndDocs...)
		for _, pt := range sigAndDocs {
			want = append(want, c+" "+pt)
		}
	}
	// Only the subjects of the documents are signed.
	if all, _ := f.bundles(t, idx, sign.PredicateSignature); all != 0 {
		t.Errorf("the index carries %d signatures; it is no document's subject", all)
	}
	slices.Sort(want)
	if diff := cmp.Diff(want, f.written(t, idx.String())); diff != "" {
		t.Errorf("signature.written entries (-want +got):\n%s", diff)
	}
	done := f.db.entries("attestations.attached")
	if len(done) != 1 || done[0].Details["subjects"] != "2" || done[0].Details["documents"] != "6" || done[0].Digest != idx.DigestStr() {
		t.Errorf("attestations.attached entries: %+v; want one, for %s: 2 subjects, 6 documents", done, idx.DigestStr())
	}
}

func TestSignDocumentRef(t *testing.T) {
	t.Parallel()
	ts := signtest.New(t)
	for _, referrers := range []bool{true, false} {
		t.Run(fmt.Sprintf("referrers=%v", referrers), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newFixture(t, ts, referrers)
			d := pushImage(t, f.host)
			// The SBOM and the provenance are over the limit, the
			// hardening report under it.
			arts := f.docs(t, d.DigestStr(), 4096)
			const maxPayload = 2048
			spdx := arts[0]
			if spdx.Size <= maxPayload || arts[1].Size > maxPayload || arts[2].Size <= maxPayload {
				t.Fatalf("setup: sizes %d, %d, %d against a limit of %d", spdx.Size, arts[1].Size, arts[2].Size, maxPayload)
			}
			tgt := &pipeline.Target{Ref: d.String(), Artifacts: arts}
			if err := New(f.k, f.db, f.rc, Options{Concurrency: 2, MaxPayload: maxPayload}).Sign(ctx, tgt); err != nil {
				t.Fatal(err)
			}
			refType := attest.DocumentRefType(analyze.KindSPDX)
			// The provenance is a statement already: signed inline whatever
			// its size.
			f.wantAttached(t, d, sign.PredicateSignature, refType, attest.PredicateHardening, attest.PredicateSLSA1)
			if all, _ := f.bundles(t, d, attest.PredicateSPDX); all != 0 {
				t.Errorf("%d inline SPDX bundles; the SBOM is over the limit", all)
			}

			// The document is its own artifact among the subject's referrers,
			// its layer the stored document.
			refs, err := f.rc.Referrers(ctx, d, mediaTypeSPDX)
			if err != nil {
				t.Fatal(err)
			}
			if len(refs) != 1 {
				t.Fatalf("%d referrers of type %s, want 1: %+v", len(refs), mediaTypeSPDX, refs)
			}
			art := d.Context().Digest(refs[0].Digest.String())
			raw, _, err := f.rc.Manifest(ctx, art)
			if err != nil {
				t.Fatal(err)
			}
			m, err := v1.ParseManifest(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Layers) != 1 || m.Layers[0].Digest.String() != spdx.Digest || m.Layers[0].Size != spdx.Size {
				t.Errorf("artifact layers %+v; want one, %s of %d bytes", m.Layers, spdx.Digest, spdx.Size)
			}
			if m.Subject == nil || m.Subject.Digest.String() != d.DigestStr() {
				t.Errorf("artifact subject %+v, want %s", m.Subject, d.DigestStr())
			}
			if got := m.Annotations["dev.attestd.predicateType"]; got != attest.PredicateSPDX {
				t.Errorf("artifact annotation predicateType %q, want %s", got, attest.PredicateSPDX)
			}

			// The signed reference names the artifact and the document.
			_, ok := f.bundles(t, d, refType)
			if len(ok) != 1 {
				t.Fatalf("%d verified document references, want 1", len(ok))
			}
			raw, _ = json.Marshal(ok[0])
			var got attest.DocumentRef
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatal(err)
			}
			want := attest.DocumentRef{PredicateType: attest.PredicateSPDX, MediaType: mediaTypeSPDX, Digest: spdx.Digest, Size: spdx.Size,
				URI: "oci://" + art.String()}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("document reference (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSignRetry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, signtest.New(t), false)
	d := pushImage(t, f.host)
	// One document too large to sign inline: its artifact is pushed again.
	tgt := &pipeline.Target{Ref: d.String(), Artifacts: f.docs(t, d.DigestStr(), 4096)}
	s := New(f.k, f.db, f.rc, Options{Concurrency: 4, MaxPayload: 2048})
	pts := []string{sign.PredicateSignature, attest.DocumentRefType(analyze.KindSPDX), attest.PredicateHardening, attest.PredicateSLSA1}
	count := func() map[string]int {
		t.Helper()
		refs, err := f.rc.Referrers(ctx, d, "")
		if err != nil {
			t.Fatal(err)
		}
		n := map[string]int{"referrers": len(refs)}
		for _, pt := range pts {
			n[pt], _ = f.bundles(t, d, pt)
		}
		return n
	}
	if err := s.Sign(ctx, tgt); err != nil {
		t.Fatal(err)
	}
	before := count()
	if want := 1 + len(pts); before["referrers"] != want {
		t.Fatalf("after signing: %d referrers, want %d (4 bundles and the document artifact)", before["referrers"], want)
	}
	written := len(f.db.entries(store.AuditSignature))
	if err := s.Sign(ctx, tgt); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, count()); diff != "" {
		t.Errorf("the retry attached something (-before +after):\n%s", diff)
	}
	if n := len(f.db.entries(store.AuditSignature)); n != written {
		t.Errorf("the retry audited %d new signatures, want 0", n-written)
	}
	if n := len(f.db.entries("attestations.attached")); n != 2 {
		t.Errorf("%d attestations.attached entries after two runs, want 2", n)
	}
}

func TestSignFails(t *testing.T) {
	t.Parallel()
	ts := signtest.New(t)
	for _, c := range []struct {
		name string
		// arts returns the artifacts of d and the words the error must
		// contain.
		arts func(t *testing.T, f *fixture, d name.Digest) ([]store.Artifact, []string)
	}{
		{"no artifacts", func(*testing.T, *fixture, name.Digest) ([]store.Artifact, []string) {
			return nil, []string{"no analysis documents"}
		}},
		{"blob missing from the store", func(t *testing.T, f *fixture, d name.Digest) ([]store.Artifact, []string) {
			arts := f.docs(t, d.DigestStr(), 0)
			arts[1].Digest = "sha256:" + strings.Repeat("0", 64)
			return arts, []string{analyze.KindHardening, d.DigestStr(), store.ErrNotFound.Error()}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			f := newFixture(t, ts, true)
			d := pushImage(t, f.host)
			arts, words := c.arts(t, f, d)
			err := New(f.k, f.db, f.rc, Options{Concurrency: 1}).Sign(ctx, &pipeline.Target{Ref: d.String(), Artifacts: arts})
			if err == nil {
				t.Fatal("Sign succeeded")
			}
			for _, w := range words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			if pipeline.IsPermanent(err) {
				t.Errorf("error %q is permanent; the analysis can be redone", err)
			}
			if n := len(f.db.entries("attestations.attached")); n != 0 {
				t.Errorf("%d attestations.attached entries after a failed run, want 0", n)
			}
			if len(arts) == 0 {
				refs, err := f.rc.Referrers(ctx, d, "")
				if err != nil {
					t.Fatal(err)
				}
				if len(refs) != 0 || len(f.db.log) != 0 {
					t.Errorf("nothing to sign, yet %d referrers and %d audit entries", len(refs), len(f.db.log))
				}
			}
		})
	}
}

func TestAttesterAttestStatement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, signtest.New(t), true)
	d := pushImage(t, f.host)
	const vsa = "https://slsa.dev/verification_summary/v1"
	st, err := attest.Statement(f.repo(), d.DigestStr(), vsa, []byte(`{"verificationResult":"PASSED"}`))
	if err != nil {
		t.Fatal(err)
	}
	a := Attester{Signer: f.k, Audit: f.db}
	if err := a.AttestStatement(ctx, d.String(), vsa, st); err != nil {
		t.Fatal(err)
	}
	f.wantAttached(t, d, vsa)
	if _, ok := f.bundles(t, d, vsa); len(ok) == 1 && ok[0]["verificationResult"] != "PASSED" {
		t.Errorf("the verified predicate is %v, not the statement's", ok[0])
	}
	if diff := cmp.Diff([]string{d.DigestStr() + " " + vsa}, f.written(t, d.String())); diff != "" {
		t.Errorf("signature.written entries (-want +got):\n%s", diff)
	}
	if e := f.db.entries(store.AuditSignature); len(e) == 1 && e[0].Digest != d.DigestStr() {
		t.Errorf("audit digest %q, want %s", e[0].Digest, d.DigestStr())
	}
	// Again: attached already, nothing signed, nothing audited.
	if err := a.AttestStatement(ctx, d.String(), vsa, st); err != nil {
		t.Fatal(err)
	}
	f.wantAttached(t, d, vsa)
	if n := len(f.db.log); n != 1 {
		t.Errorf("%d audit entries after a repeat, want 1", n)
	}
	// A statement about another digest is refused, and not audited.
	other, _ := attest.Statement(f.repo(), "sha256:"+strings.Repeat("1", 64), vsa, []byte(`{}`))
	if err := a.AttestStatement(ctx, d.String(), vsa, other); err == nil {
		t.Error("a statement about another digest was signed")
	}
	if n := len(f.db.log); n != 1 {
		t.Errorf("%d audit entries after a refused statement, want 1", n)
	}
}

// TestSignFailedRunAudited: what a failed run attached is attached for
// good (a retry finds it and does not sign it again), so it must be in the
// audit log once the job is done.
func TestSignFailedRunAudited(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, signtest.New(t), true)
	d := pushImage(t, f.host)
	arts := f.docs(t, d.DigestStr(), 0)
	// Concurrency 1: the signature and the SBOM are attached before the
	// hardening report's blob is found missing.
	body, err := f.db.Blob(ctx, arts[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	f.db.mu.Lock()
	delete(f.db.blobs, arts[1].Digest)
	f.db.mu.Unlock()
	s := New(f.k, f.db, f.rc, Options{Concurrency: 1})
	tgt := &pipeline.Target{Ref: d.String(), Artifacts: arts}
	if err := s.Sign(ctx, tgt); err == nil {
		t.Fatal("Sign succeeded without the hardening report")
	}
	f.db.put(body)
	if err := s.Sign(ctx, tgt); err != nil {
		t.Fatal(err)
	}
	f.wantAttached(t, d, sigAndDocs...)
	var want []string
	for _, pt := range sigAndDocs {
		want = append(want, d.DigestStr()+" "+pt)
	}
	slices.Sort(want)
	if diff := cmp.Diff(want, f.written(t, d.String())); diff != "" {
		t.Errorf("signature.written entries after a failed run and its retry (-want +got):\n%s", diff)
	}
}
