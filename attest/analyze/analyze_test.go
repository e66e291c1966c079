package analyze_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/sbom"
	"github.com/attestd/attestd/sbom/harden"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/layers"
	"github.com/attestd/attestd/store/registry"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// memBlobs is a content-addressed map standing in for the store's blobs bucket.
type memBlobs struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (b *memBlobs) PutBlob(_ context.Context, data []byte) (string, error) {
	h, _, _ := v1.SHA256(bytes.NewReader(data))
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string][]byte{}
	}
	b.m[h.String()] = data
	return h.String(), nil
}

// blobCounter counts GETs of each blob the registry serves.
type blobCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *blobCounter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			c.mu.Lock()
			c.n[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]++
			c.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

func (c *blobCounter) get(d string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[d]
}

type tfile struct {
	name string
	mode int64
	body string
}

func tarLayer(t *testing.T, files ...tfile) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}
		if strings.HasSuffix(f.name, "/") {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

const dpkgStatus = `Package: base-files
Status: install ok installed
Priority: required
Section: admin
Installed-Size: 340
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: amd64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12986
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u7
Description: GNU C Library: Shared libraries
`

func TestAnalyzeSharesBaseLayer(t *testing.T) {
	ctx := context.Background()
	counter := &blobCounter{n: map[string]int{}}
	srv := httptest.NewServer(counter.wrap(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	base := tarLayer(t,
		tfile{"etc/", 0o755, ""},
		tfile{"etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n"},
		tfile{"var/lib/dpkg/status", 0o644, dpkgStatus},
		tfile{"bin/sh", 0o755, "#!fake shell\n"},
	)
	app1 := tarLayer(t, tfile{"app/package.json", 0o644, `{"name":"one","version":"1.0.0"}`})
	app2 := tarLayer(t, tfile{"app/node_modules/left-pad/package.json", 0o644, `{"name":"left-pad","version":"1.3.0","license":"WTFPL"}`})
	baseDigest, _ := base.Digest()

	var refs []string
	for i, top := range []v1.Layer{app1, app2} {
		img, err := mutate.AppendLayers(empty.Image, base, top)
		if err != nil {
			t.Fatal(err)
		}
		img, err = mutate.Config(img, v1.Config{User: "nonroot", Labels: map[string]string{"org.opencontainers.image.base.name": "debian:bookworm"}})
		if err != nil {
			t.Fatal(err)
		}
		tag, _ := name.NewTag(host + "/team/app" + string(rune('a'+i)) + ":v1")
		if err := remote.Write(tag, img); err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		refs = append(refs, tag.Context().Digest(d.String()).String())
	}

	reg, err := registry.New()
	if err != nil {
		t.Fatal(err)
	}
	cache, err := layers.Open(filepath.Join(t.TempDir(), "layers"), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	blobs := &memBlobs{}
	a, err := analyze.New(reg, cache, blobs, analyze.Options{SBOM: sbom.Options{WorkDir: work}, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), "attestd-sbom-*"))
	for _, ref := range refs {
		res, err := a.Analyze(ctx, analyze.Request{Ref: ref, Tags: []string{"v1"}, Source: "test"})
		if err != nil {
			t.Fatalf("Analyze %s: %v", ref, err)
		}
		kinds := map[string]store.Artifact{}
		for _, art := range res.Artifacts {
			kinds[art.Kind] = art
		}
		for _, k := range []string{analyze.KindSPDX, analyze.KindCycloneDX, analyze.KindHardening, analyze.KindProvenance} {
			if _, ok := kinds[k]; !ok {
				t.Errorf("%s: no %s artifact (got %v)", ref, k, res.Artifacts)
			}
		}
		if len(res.Facts) != 1 || res.Facts[0].Packages < 3 {
			t.Errorf("%s: facts %+v, want ≥ 3 packages (2 dpkg + npm)", ref, res.Facts)
		}
		var rep harden.Report
		if err := json.Unmarshal(blobs.m[kinds[analyze.KindHardening].Digest], &rep); err != nil {
			t.Fatal(err)
		}
		failed := strings.Join(rep.Failed, ",")
		for _, want := range []string{"no-shell", "healthcheck", "minimal-base"} {
			if !strings.Contains(failed, want) {
				t.Errorf("%s: hardening failed %q, want it to include %s", ref, failed, want)
			}
		}
		if strings.Contains(failed, "nonroot-user") {
			t.Errorf("%s: nonroot-user failed for User nonroot (UID 65532 in /etc/passwd): %+v", ref, rep.Checks[0])
		}
	}
	if n := counter.get(baseDigest.String()); n != 1 {
		t.Errorf("shared base layer fetched %d times, want 1", n)
	}
	if st := cache.Stats(); st.Fetches != 3 || st.Hits != 1 {
		t.Errorf("cache stats %+v, want 3 fetches and 1 hit", st)
	}
	if left, _ := os.ReadDir(work); len(left) != 0 {
		t.Errorf("work dir not cleaned: %v", left)
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), "attestd-sbom-*"))
	if len(after) > len(before) {
		t.Errorf("stereoscope temp dirs left behind: %v", after)
	}
}
