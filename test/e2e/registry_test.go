package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/store/registry"
)

// recorder is a base transport that logs method and URL of every request.
type recorder struct {
	mu   sync.Mutex
	reqs []string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Method+" "+req.URL.Path+"?"+req.URL.RawQuery)
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// TestCopyMountsAcrossRepos: on the real Debian registry (repository-scoped
// blobs, unlike ggcr's in-process one) a copy by digest mounts every layer
// from the source repository instead of uploading it, writes no tag, and the
// destination tag is written only by Tag.
func TestCopyMountsAcrossRepos(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	idx, err := random.Index(512, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	// A fresh repository pair per run: the stack outlives -count iterations.
	suffix := fmt.Sprintf("%d", time.Now().UnixNano())
	src, _ := name.NewTag(stk.RegistryHost + "/staging/copyme" + suffix + ":v1")
	if err := remote.WriteIndex(src, idx, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	c, err := registry.New(registry.WithBaseTransport(rec))
	if err != nil {
		t.Fatal(err)
	}
	srcDigest, _, err := c.Resolve(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := c.ParseRepository(stk.RegistryHost + "/prod/copyme" + suffix)
	rec.mu.Lock()
	rec.reqs = nil
	rec.mu.Unlock()
	got, err := c.Copy(ctx, srcDigest, dst)
	if err != nil {
		t.Fatal(err)
	}
	mounts := 0
	for _, r := range rec.reqs {
		switch {
		case strings.HasPrefix(r, "PATCH"):
			t.Errorf("layer uploaded instead of mounted: %s", r)
		case strings.HasPrefix(r, "POST") && strings.Contains(r, "mount=") && strings.Contains(r, "from=staging"):
			mounts++
		case strings.HasPrefix(r, "PUT /v2/prod/copyme"+suffix+"/manifests/") && !strings.Contains(r, "sha256:"):
			t.Errorf("copy wrote a tag: %s", r)
		}
	}
	// 2 images × (2 layers + 1 config).
	if mounts != 6 {
		t.Errorf("%d cross-repo mounts, want 6; requests:\n%s", mounts, strings.Join(rec.reqs, "\n"))
	}
	prodTag, _ := name.NewTag(stk.RegistryHost + "/prod/copyme" + suffix + ":v1")
	if _, _, err := c.Resolve(ctx, prodTag); !registry.IsNotFound(err) {
		t.Fatalf("prod tag exists before Tag: %v", err)
	}
	if err := c.Tag(ctx, got, prodTag); err != nil {
		t.Fatal(err)
	}
	if d, _, err := c.Resolve(ctx, prodTag); err != nil || d.DigestStr() != srcDigest.DigestStr() {
		t.Fatalf("prod tag = %v, %v", d, err)
	}
}
