package verify

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"golang.org/x/sync/semaphore"

	"github.com/attestd/attestd/store/registry"
)

// blobLog records the blob paths a registry served with GET.
type blobLog struct {
	mu    sync.Mutex
	blobs []string
}

func (b *blobLog) got(digest string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.blobs {
		if strings.HasSuffix(p, digest) {
			return true
		}
	}
	return false
}

// limitsWorld is a registry (with or without the referrers API), a
// client with at most maxRefs referrers per subject, a subject image, and
// a verifier on a virtual Sigstore.
func limitsWorld(t *testing.T, api bool, maxRefs int) (*registry.Client, *Verifier, v1.Descriptor, string, *blobLog) {
	t.Helper()
	reg := ggcrregistry.New(ggcrregistry.WithReferrersSupport(api), ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	bl := &blobLog{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			bl.mu.Lock()
			bl.blobs = append(bl.blobs, r.URL.Path)
			bl.mu.Unlock()
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	rc, err := registry.New(registry.WithRateLimit(0, 0), registry.WithMaxReferrers(maxRefs))
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, err := rc.ParseReference(host + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	img, _ := random.Image(64, 1)
	if err := remote.Write(ref, img, rc.RemoteOptions(context.Background())...); err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref, rc.RemoteOptions(context.Background())...)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(vs, []Identity{{Issuer: issuer, Subject: signer}}, rc, Options{SignedTimestamps: 1})
	if err != nil {
		t.Fatal(err)
	}
	return rc, v, *desc, ref.Context().Digest(desc.Digest.String()).String(), bl
}

// attachJunk attaches n bundle-shaped referrers of size bytes each (not
// bundles: nobody signed them) to subject, as cosign lays one out.
func attachJunk(t *testing.T, rc *registry.Client, ref string, subject v1.Descriptor, n, size int) []string {
	t.Helper()
	mt, _ := sgbundle.MediaTypeString("0.3")
	r, err := rc.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var descs []v1.Descriptor
	for i := range n {
		layer := []byte(fmt.Sprintf("%d-%d%s", size, i, strings.Repeat("j", size)))[:size]
		d, err := rc.PutReferrer(context.Background(), r.Context(), subject, mt, types.MediaType(mt), layer, nil)
		if err != nil {
			t.Fatal(err)
		}
		descs = append(descs, d)
		h, _, _ := v1.SHA256(strings.NewReader(string(layer)))
		out = append(out, h.String())
	}
	// Listed in the fallback index where the registry has no API.
	if err := rc.ListReferrers(context.Background(), r.Context().Digest(subject.Digest.String()), descs); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTooManyReferrersIsIncomplete: one referrer past the cap, and the
// digest's attachments are refused whole, none read: nothing verifies
// and the result says why. At the cap they are read (and rejected:
// nobody signed them).
func TestTooManyReferrersIsIncomplete(t *testing.T) {
	t.Parallel()
	for _, api := range []bool{true, false} {
		t.Run(map[bool]string{true: "api", false: "tag-fallback"}[api], func(t *testing.T) {
			t.Parallel()
			const max = 3
			rc, v, subject, ref, bl := limitsWorld(t, api, max)
			attachJunk(t, rc, ref, subject, max, 100)
			res, err := v.Verify(context.Background(), ref)
			if err != nil {
				t.Fatal(err)
			}
			if res.Incomplete != "" || len(res.Rejected) != max {
				t.Fatalf("at the cap: incomplete %q, %d rejected; want every bundle read and rejected", res.Incomplete, len(res.Rejected))
			}
			more := attachJunk(t, rc, ref, subject, 1, 101)
			res, err = v.Verify(context.Background(), ref)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(res.Incomplete, "at most 3") || len(res.Verified) != 0 || len(res.Rejected) != 1 {
				t.Fatalf("past the cap: incomplete %q, verified %v, rejected %+v; want incomplete naming the cap", res.Incomplete, res.Verified, res.Rejected)
			}
			if bl.got(more[0]) {
				t.Error("a bundle past the cap was read")
			}
		})
	}
}

// TestOversizedBundleNotRead: a bundle whose manifest declares more than
// the per-bundle cap is rejected with the reason and never fetched; one
// within it is read (and rejected: nobody signed it); a lie about the
// size reads no more than the size declared, plus one byte.
func TestOversizedBundleNotRead(t *testing.T) {
	t.Parallel()
	rc, v, subject, ref, bl := limitsWorld(t, false, 16)
	v.maxBundle = 1024
	big := attachJunk(t, rc, ref, subject, 1, 4096)
	small := attachJunk(t, rc, ref, subject, 1, 512)
	res, err := v.Verify(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if res.Incomplete != "" || len(res.Rejected) != 2 {
		t.Fatalf("incomplete %q, rejected %+v; want both rejected", res.Incomplete, res.Rejected)
	}
	var why []string
	for _, r := range res.Rejected {
		why = append(why, r.Reason)
	}
	if !strings.Contains(strings.Join(why, "\n"), "bundle of 4096 bytes: over the 1024 bytes read per bundle") {
		t.Errorf("reasons %q do not name the cap", why)
	}
	if bl.got(big[0]) {
		t.Error("the oversized bundle was fetched")
	}
	if !bl.got(small[0]) {
		t.Error("the bundle within the cap was not read")
	}
}

// TestBundlesHeldOneAtATime: with room for one bundle's bytes in flight
// (process-wide), a digest with five bundles is still verified: each is
// read, verified and dropped before the next is read, instead of all
// being read first.
func TestBundlesHeldOneAtATime(t *testing.T) {
	t.Parallel()
	rc, v, subject, ref, bl := limitsWorld(t, true, 16)
	v.inFlight = semaphore.NewWeighted(600)
	blobs := attachJunk(t, rc, ref, subject, 5, 512)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := v.Verify(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rejected) != 5 {
		t.Fatalf("rejected %+v, want all five read and rejected", res.Rejected)
	}
	for _, b := range blobs {
		if !bl.got(b) {
			t.Errorf("bundle %s not read", b)
		}
	}
	for _, r := range res.Rejected {
		if strings.Contains(r.Reason, "context") {
			t.Errorf("bundle %s waited for memory: %s", r.Bundle, r.Reason)
		}
	}
}

// pushClassicSig writes a cosign classic signature tag for subject with
// one layer per size: junk payloads a staging writer could push.
func pushClassicSig(t *testing.T, rc *registry.Client, ref string, subject v1.Descriptor, sizes ...int) []string {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	var digests []string
	for i, n := range sizes {
		payload := bytes.Repeat([]byte{byte('a' + i%26)}, n)
		l := static.NewLayer(payload, "application/vnd.dev.cosign.simplesigning.v1+json")
		d, _ := l.Digest()
		digests = append(digests, d.String())
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: l, Annotations: map[string]string{"dev.cosignproject.cosign/signature": "MEUCIQ=="}})
		if err != nil {
			t.Fatal(err)
		}
	}
	r, err := rc.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	tag := r.Context().Tag(strings.Replace(subject.Digest.String(), ":", "-", 1) + ".sig")
	if err := remote.Write(tag, img, rc.RemoteOptions(context.Background())...); err != nil {
		t.Fatal(err)
	}
	return digests
}

// Cosign's classic tags are bounded like bundles: more layers than the
// cap deny without reading any, and a layer over the per-signature size
// is rejected unread.
func TestClassicTagsBounded(t *testing.T) {
	t.Parallel()
	t.Run("count", func(t *testing.T) {
		t.Parallel()
		rc, v, subject, ref, bl := limitsWorld(t, false, 16)
		v.maxBundles = 3
		ds := pushClassicSig(t, rc, ref, subject, 10, 10, 10, 10)
		res, err := v.Verify(context.Background(), ref)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(res.Incomplete, "at most 3") || len(res.Verified) != 0 {
			t.Fatalf("incomplete %q, verified %v", res.Incomplete, res.Verified)
		}
		for _, d := range ds {
			if bl.got(d) {
				t.Errorf("layer %s of a flooded tag was read", d)
			}
		}
	})
	t.Run("size", func(t *testing.T) {
		t.Parallel()
		rc, v, subject, ref, bl := limitsWorld(t, false, 16)
		v.maxBundle = 1024
		ds := pushClassicSig(t, rc, ref, subject, 4096, 100)
		res, err := v.Verify(context.Background(), ref)
		if err != nil {
			t.Fatal(err)
		}
		var why []string
		for _, r := range res.Rejected {
			why = append(why, r.Reason)
		}
		if res.Incomplete != "" || !strings.Contains(strings.Join(why, "\n"), "layer of 4096 bytes: over the 1024 bytes read per signature") {
			t.Fatalf("incomplete %q, rejected %q", res.Incomplete, why)
		}
		if bl.got(ds[0]) {
			t.Error("the oversized layer was read")
		}
	})
}
