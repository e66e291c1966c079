package registry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// countingWriter counts the bytes a handler wrote.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n.Add(int64(n))
	return n, err
}

// paddedIndex is a valid, empty OCI index of about size bytes.
func paddedIndex(size int) []byte {
	return []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"pad":"` +
		strings.Repeat("x", size) + `"}}`)
}

// A staging writer may push a manifest of any size (ggcr's registry, like
// many, takes it). attestd reads none over MaxManifestBytes: a declared
// Content-Length over it is refused before the body is read, an undeclared
// one stops on the byte past it, and the error is ErrManifestTooLarge.
func TestManifestCap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, host := newRegistry(t, false)
	c := newClient(t)

	for _, tc := range []struct {
		name string
		size int
		ok   bool
	}{
		{"at the cap", MaxManifestBytes - 200, true},
		{"32 MiB (under ggcr's own 100 MiB cap)", 32 << 20, false},
	} {
		raw := paddedIndex(tc.size)
		d, _, _ := v1.SHA256(strings.NewReader(string(raw)))
		ref, _ := c.ParseReference(host + "/big/manifest@" + d.String())
		if err := remote.Put(ref, rawManifest{raw, types.OCIImageIndex}, c.RemoteOptions(ctx)...); err != nil {
			t.Fatalf("%s: push: %v", tc.name, err)
		}
		got, _, err := c.Manifest(ctx, ref.(name.Digest))
		if tc.ok {
			if err != nil || len(got) != len(raw) {
				t.Errorf("%s: %d bytes, %v", tc.name, len(got), err)
			}
			continue
		}
		if !errors.Is(err, ErrManifestTooLarge) || !strings.Contains(err.Error(), "push a smaller manifest") {
			t.Errorf("%s: err = %v, want ErrManifestTooLarge", tc.name, err)
		}
	}

	// Streamed without a Content-Length: read up to the byte past the cap.
	var served atomic.Int64
	endless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			w.WriteHeader(http.StatusOK) // the /v2/ ping
			return
		}
		w.Header().Set("Content-Type", string(types.OCIImageIndex))
		cw := countingWriter{w, &served}
		chunk := []byte(strings.Repeat("x", 64<<10))
		for range 1600 { // 100 MiB, if anyone read it all
			if _, err := cw.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer endless.Close()
	ref, _ := c.ParseReference(strings.TrimPrefix(endless.URL, "http://") + "/big/stream@sha256:" + strings.Repeat("0", 64))
	_, _, err := c.Manifest(ctx, ref.(name.Digest))
	if !errors.Is(err, ErrManifestTooLarge) {
		t.Errorf("streamed: err = %v, want ErrManifestTooLarge", err)
	}
	// What the server managed to write before the client hung up: the cap
	// plus the kernel's socket buffers, far from 100 MiB.
	if n := served.Load(); n > 32<<20 {
		t.Errorf("server wrote %d bytes of an oversized manifest", n)
	}
}
