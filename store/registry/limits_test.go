package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestReferrersCountCap: a subject with more referrers than the cap is
// refused whole, before any of them is read: 10,000 written into the
// fallback index (which anyone with push access can rewrite), with no
// artifactType (so the filter would have to read each manifest), cost
// the listing and nothing more.
func TestReferrersCountCap(t *testing.T) {
	t.Parallel()
	h, host := newRegistry(t, false)
	c := newClient(t)
	ctx := context.Background()
	img, _ := random.Image(64, 1)
	subject := push(t, c, host+"/app:v1", img)

	// ggcr's registry checks an index's children exist; a registry need
	// not (the fallback tag is an index like any other), so the listing
	// is served as such a registry would.
	im := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	for i := range 10_000 {
		im.Manifests = append(im.Manifests, v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: 500,
			Digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i)}})
	}
	raw, _ := json.Marshal(im)
	fallback := "/v2/app/manifests/" + strings.Replace(subject.DigestStr(), ":", "-", 1)
	next := h.next
	h.next = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != fallback {
			next.ServeHTTP(w, r)
			return
		}
		dg, _, _ := v1.SHA256(bytes.NewReader(raw))
		w.Header().Set("Content-Type", string(types.OCIImageIndex))
		w.Header().Set("Docker-Content-Digest", dg.String())
		w.Header().Set("Content-Length", fmt.Sprint(len(raw)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(raw)
		}
	})
	before := len(h.requests())
	start := time.Now()
	_, err := c.Referrers(ctx, subject, "application/vnd.dev.sigstore.bundle.v0.3+json")
	if !errors.Is(err, ErrTooManyReferrers) || !strings.Contains(err.Error(), "10000") || !strings.Contains(err.Error(), "1024") {
		t.Fatalf("Referrers = %v, want ErrTooManyReferrers naming the count and the cap", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusing took %s", d)
	}
	for _, r := range h.requests()[before:] {
		if strings.Contains(r, "/manifests/sha256:") {
			t.Errorf("a listed referrer was read: %s", r)
		}
	}
}

// TestReferrersCapExact: with the referrers API and a cap of 3, three
// referrers are listed, a fourth refuses them all.
func TestReferrersCapExact(t *testing.T) {
	t.Parallel()
	_, host := newRegistry(t, true)
	c, err := New(WithRateLimit(0, 0), WithMaxReferrers(3))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	img, _ := random.Image(64, 1)
	subject := push(t, c, host+"/app:v1", img)
	for i := range 4 {
		if _, err := c.PushArtifact(ctx, subject, "application/vnd.test", "application/octet-stream", []byte(fmt.Sprint(i)), nil); err != nil {
			t.Fatal(err)
		}
		refs, err := c.Referrers(ctx, subject, "application/vnd.test")
		switch {
		case i < 3 && (err != nil || len(refs) != i+1):
			t.Fatalf("%d referrers: %d listed, %v", i+1, len(refs), err)
		case i == 3 && !errors.Is(err, ErrTooManyReferrers):
			t.Fatalf("4 referrers, cap 3: %v, want ErrTooManyReferrers", err)
		}
	}
	if _, err := New(WithMaxReferrers(0)); err == nil {
		t.Error("a cap of 0 accepted")
	}
}

// TestManifestAtMost: a manifest larger than asked for is refused after
// a HEAD, its body never requested.
func TestManifestAtMost(t *testing.T) {
	t.Parallel()
	h, host := newRegistry(t, false)
	c := newClient(t)
	ctx := context.Background()
	big := map[string]any{"schemaVersion": 2, "mediaType": types.OCIManifestSchema1, "annotations": map[string]string{"pad": strings.Repeat("x", 8192)}}
	raw, _ := json.Marshal(big)
	h0, _, _ := v1.SHA256(bytes.NewReader(raw))
	repo, _ := c.ParseRepository(host + "/app")
	ref := repo.Digest(h0.String())
	if err := c.PutManifest(ctx, ref, raw, types.OCIManifestSchema1); err != nil {
		t.Fatal(err)
	}
	before := len(h.requests())
	if _, _, err := c.ManifestAtMost(ctx, ref, 4096); !errors.Is(err, ErrManifestTooLarge) {
		t.Fatalf("ManifestAtMost(4096) = %v, want ErrManifestTooLarge", err)
	}
	for _, r := range h.requests()[before:] {
		if strings.HasPrefix(r, "GET ") && strings.Contains(r, h0.Hex) {
			t.Errorf("the oversized manifest was fetched: %s", r)
		}
	}
	if got, _, err := c.ManifestAtMost(ctx, ref, int64(len(raw))); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("ManifestAtMost(its size) = %d bytes, %v", len(got), err)
	}
}

// The referrers API's listing is capped as it streams like any manifest:
// a staging writer who makes it huge (a registry copies each referrer's
// annotations into it) gets a refusal, not 100 MiB buffered per read.
func TestReferrersListingCapped(t *testing.T) {
	h, host := newRegistry(t, true)
	c := newClient(t)
	img, _ := random.Image(64, 1)
	subject := push(t, c, host+"/app:v1", img)
	const size = 64 << 20 // under ggcr's own 100 MiB cap
	var served atomic.Int64
	next := h.next
	h.next = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/referrers/") || r.Method != http.MethodGet {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", string(types.OCIImageIndex))
		n, _ := w.Write([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"x":"`))
		served.Add(int64(n))
		chunk := []byte(strings.Repeat("a", 1<<20))
		for served.Load() < size {
			m, err := w.Write(chunk)
			served.Add(int64(m))
			if err != nil {
				return
			}
		}
		_, _ = w.Write([]byte(`"}}`))
	})
	_, err := c.Referrers(context.Background(), subject, "")
	if !errors.Is(err, ErrTooManyReferrers) {
		t.Fatalf("err = %v, want ErrTooManyReferrers", err)
	}
	// What the server got out includes the loopback socket buffers; the
	// client stopped long before the end.
	if served.Load() >= size-8<<20 {
		t.Errorf("the server got to send %d MiB of a listing capped at 4 MiB", served.Load()>>20)
	}
}
