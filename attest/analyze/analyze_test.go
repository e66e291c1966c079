package analyze_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/sbom"
	"github.com/attestd/attestd/sbom/harden"
	"github.com/attestd/attestd/sbom/vuln"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/layers"
	"github.com/attestd/attestd/store/registry"
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

// An index whose platform image carries BuildKit provenance (an attestation
// manifest): every platform is analysed, the attestation manifest is not a
// platform, and the platform's provenance references it by digest.
func TestAnalyzeIndexImportsBuildKitProvenance(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	img, err := mutate.AppendLayers(empty.Image, tarLayer(t, tfile{"app/hello.txt", 0o644, "hi"}))
	if err != nil {
		t.Fatal(err)
	}
	img, _ = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64", Config: v1.Config{User: "65532"},
		RootFS: v1.RootFS{Type: "layers", DiffIDs: mustDiffIDs(t, img)}})
	imgDigest, _ := img.Digest()

	stmt := `{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2","subject":[],"predicate":{"builder":{"id":"https://github.com/docker/buildx"}}}`
	att, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:       static(t, stmt),
		Annotations: map[string]string{"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	attDigest, _ := att.Digest()
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": imgDigest.String()}}},
	)
	tag, _ := name.NewTag(host + "/team/multi:v1")
	if err := remote.WriteIndex(tag, idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()

	reg, _ := registry.New()
	cache, _ := layers.Open(filepath.Join(t.TempDir(), "layers"), 1<<30)
	blobs := &memBlobs{}
	a, err := analyze.New(reg, cache, blobs, analyze.Options{SBOM: sbom.Options{WorkDir: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Analyze(ctx, analyze.Request{Ref: tag.Context().Digest(idxDigest.String()).String()})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Facts) != 1 || res.Facts[0].Subject != imgDigest.String() || res.Facts[0].Platform != "linux/amd64" {
		t.Fatalf("facts %+v: want exactly the amd64 image", res.Facts)
	}
	var prov, idxProv []byte
	for _, art := range res.Artifacts {
		if art.Kind == analyze.KindProvenance && art.Subject == imgDigest.String() {
			prov = blobs.m[art.Digest]
		}
		if art.Kind == analyze.KindProvenance && art.Subject == idxDigest.String() {
			idxProv = blobs.m[art.Digest]
		}
	}
	if !strings.Contains(string(prov), attDigest.Hex) || !strings.Contains(string(prov), "buildkit-provenance") {
		t.Errorf("platform provenance does not reference the BuildKit attestation %s:\n%s", attDigest, prov)
	}
	if !strings.Contains(string(idxProv), idxDigest.Hex) || !strings.Contains(string(idxProv), imgDigest.Hex) {
		t.Errorf("index provenance does not cover the index and its platform:\n%s", idxProv)
	}
}

func mustDiffIDs(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf.RootFS.DiffIDs
}

func static(t *testing.T, s string) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(s)), nil },
		tarball.WithMediaType("application/vnd.in-toto+json"))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (c *blobCounter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

// openScanner is a VulnScanner that can be opened ahead of its first scan.
type openScanner struct {
	opened int
	err    error
}

func (s *openScanner) Open() error { s.opened++; return s.err }
func (s *openScanner) Scan(context.Context, vuln.Input) (*vuln.Report, error) {
	return nil, errors.New("not in this test")
}

// Warm builds the license scanner and opens the vulnerability database
// before the first analysis; a database that cannot be opened is reported,
// not fatal.
func TestWarm(t *testing.T) {
	reg, _ := registry.New()
	cache, _ := layers.Open(filepath.Join(t.TempDir(), "layers"), 1<<30)
	vs := &openScanner{}
	a, err := analyze.New(reg, cache, &memBlobs{}, analyze.Options{SBOM: sbom.Options{WorkDir: t.TempDir(), Licenses: sbom.NewLicenseScanner()}, Vulns: vs})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Warm(); err != nil || vs.opened != 1 {
		t.Fatalf("Warm: %v, database opened %d times", err, vs.opened)
	}
	vs.err = vuln.ErrNoDatabase
	if err := a.Warm(); !errors.Is(err, vuln.ErrNoDatabase) {
		t.Fatalf("Warm without a database: %v", err)
	}
}
