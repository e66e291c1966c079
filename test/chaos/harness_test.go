package chaos

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The hostile images the campaign builds are what they claim to be: an
// index with n children, and a fallback tag listing n referrers.
func TestHostileBuilders(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	base, err := baseImage("amd64")
	if err != nil {
		t.Fatal(err)
	}
	c := &Campaign{bases: map[string]v1.Image{"amd64": base}}
	ctx := context.Background()

	d, err := c.fanoutIndex(ctx, host+"/staging/fanout:v1.0.0", 40)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.NewDigest(host + "/staging/fanout@" + d)
	idx, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := idx.IndexManifest(); err != nil || len(m.Manifests) != 40 {
		t.Fatalf("index: %v, %v", m, err)
	}

	img, _ := appImage(base, "65532")
	if err := c.junkReferrers(ctx, host+"/staging/refs:v1.0.0", img, 30); err != nil {
		t.Fatal(err)
	}
	sd, _ := img.Digest()
	fb, _ := name.NewTag(host + "/staging/refs:" + strings.Replace(sd.String(), ":", "-", 1))
	fidx, err := remote.Index(fb)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := fidx.IndexManifest(); err != nil || len(m.Manifests) != 30 {
		t.Fatalf("fallback index: %d entries, %v", len(m.Manifests), err)
	}
}
