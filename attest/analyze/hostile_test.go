package analyze_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/sbom"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/layers"
	"github.com/attestd/attestd/store/registry"
)

// rawLayer is a layer of exactly the tar bytes b (gzipped by ggcr).
func rawLayer(t *testing.T, b []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// tarOf writes hdrs (regular files get body as content) as one tar.
func tarOf(t *testing.T, body string, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zeroFile is a tar of one file of n zero bytes: a few KiB once gzipped.
func zeroFile(t *testing.T, name string, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(n), Typeflag: tar.TypeReg})
	tw.Write(make([]byte, n))
	tw.Close()
	return buf.Bytes()
}

// emptyFiles is a tar of n empty files under dir.
func emptyFiles(t *testing.T, dir string, n int) []byte {
	t.Helper()
	var hdrs []*tar.Header
	for i := range n {
		hdrs = append(hdrs, &tar.Header{Name: fmt.Sprintf("%s/%d", dir, i), Typeflag: tar.TypeReg})
	}
	return tarOf(t, "", hdrs...)
}

func pushImage(t *testing.T, host, repo string, ls ...v1.Layer) (string, v1.Image) {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{User: "65532"})
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(host + "/" + repo + ":v1")
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return tag.Context().Digest(d.String()).String(), img
}

func pushRaw(t *testing.T, reg *registry.Client, host, repo string, raw []byte, mt types.MediaType) string {
	t.Helper()
	s := sha256.Sum256(raw)
	ref, err := name.NewDigest(host + "/" + repo + "@sha256:" + hex.EncodeToString(s[:]))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.PutManifest(context.Background(), ref, raw, mt); err != nil {
		t.Fatal(err)
	}
	return ref.String()
}

// hostile is one analysis set-up: a registry (its handler wrapped), a layer
// cache and the pipeline's resolve and analyse stages on a real store.
type hostile struct {
	host     string
	reg      *registry.Client
	cache    *layers.Cache
	cacheDir string
	work     string
	blobGets *blobCounter
}

func newHostile(t *testing.T, wrap func(http.Handler) http.Handler) *hostile {
	t.Helper()
	counter := &blobCounter{n: map[string]int{}}
	var h http.Handler = ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(counter.wrap(h))
	t.Cleanup(srv.Close)
	reg, err := registry.New()
	if err != nil {
		t.Fatal(err)
	}
	return &hostile{host: strings.TrimPrefix(srv.URL, "http://"), reg: reg, blobGets: counter,
		cacheDir: filepath.Join(t.TempDir(), "layers"), work: t.TempDir()}
}

// limits of one test: small, so that every hostile image is cheap to refuse.
type limits struct {
	cache          int64 // the cache cap
	layer          layers.LayerLimits
	image          layers.ImageLimits
	indexManifests int
}

// run drives ref through resolve and analyse as the daemon does (a job on
// a real store, five attempts allowed) and returns the job and the record.
func (h *hostile) run(t *testing.T, ctx context.Context, ref string, lim limits) (*store.Job, *store.Record, error) {
	t.Helper()
	if lim.cache == 0 {
		lim.cache = 64 << 20
	}
	var err error
	h.cache, err = layers.Open(h.cacheDir, lim.cache, layers.WithCapSetting("analysis.layer_cache"), layers.WithLayerLimits(lim.layer))
	if err != nil {
		t.Fatal(err)
	}
	a, err := analyze.New(h.reg, h.cache, &memBlobs{}, analyze.Options{
		SBOM: sbom.Options{WorkDir: h.work}, Image: lim.image, MaxIndexManifests: lim.indexManifests,
	})
	if err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(filepath.Join(t.TempDir(), "attestd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	p, err := pipeline.New(db, pipeline.Stages{
		Resolver: analyze.NewResolver(h.reg, nil, analyze.WithMaxIndexManifests(lim.indexManifests)),
		Analyzer: analyze.Stage{Analyzer: a},
	}, pipeline.Options{MaxAttempts: 5})
	if err != nil {
		t.Fatal(err)
	}
	res, err := db.Enqueue(ctx, store.EnqueueRequest{Ref: ref, Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	perr := p.Process(ctx, res.JobID)
	j, err := db.Job(context.Background(), res.JobID)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := db.Image(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return j, rec, perr
}

// clean asserts the analysis left nothing behind: no partial download in
// the cache and no scan in the work dir.
func (h *hostile) clean(t *testing.T) {
	t.Helper()
	des, _ := os.ReadDir(h.cacheDir)
	for _, de := range des {
		if strings.HasPrefix(de.Name(), "partial-") {
			t.Errorf("partial download left in the cache: %s", de.Name())
		}
	}
	if left, _ := os.ReadDir(h.work); len(left) != 0 {
		t.Errorf("work dir not cleaned: %v", left)
	}
}

// Hostile images end at once, for good, with the reason on the record: the
// image is addressed by digest, so retrying cannot change the answer, and
// the reason names the setting to raise if the image is legitimate. No
// download wrote more than its limit, and nothing partial is left.
func TestHostileImagesFailForGoodWithTheReason(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	for _, tc := range []struct {
		name  string
		push  func(t *testing.T, h *hostile) string
		lim   limits
		stage string
		want  string
		// maxWritten bounds the uncompressed bytes downloads wrote.
		maxWritten int64
		// noLayerGets: refused before any layer was fetched.
		noLayerGets bool
	}{{
		name: "gzip bomb past max_layer_bytes",
		push: func(t *testing.T, h *hostile) string {
			ref, _ := pushImage(t, h.host, "bomb/layer", rawLayer(t, zeroFile(t, "zeros", 16*mib)))
			return ref
		},
		lim:   limits{layer: layers.LayerLimits{Bytes: layers.Limit{N: mib, Setting: "analysis.max_layer_bytes"}}},
		stage: pipeline.StageAnalyse, want: "expands past analysis.max_layer_bytes (1MiB = 1048576 bytes): raise it if this image is legitimate",
		maxWritten: mib,
	}, {
		name: "layer larger than the whole cache",
		push: func(t *testing.T, h *hostile) string {
			ref, _ := pushImage(t, h.host, "bomb/cache", rawLayer(t, zeroFile(t, "zeros", 16*mib)))
			return ref
		},
		lim:   limits{cache: 2 * mib, layer: layers.LayerLimits{Bytes: layers.Limit{N: 8 * mib, Setting: "analysis.max_layer_bytes"}}},
		stage: pipeline.StageAnalyse, want: "expands past analysis.layer_cache (2MiB",
		maxWritten: 2 * mib,
	}, {
		name: "layers together past max_image_bytes",
		push: func(t *testing.T, h *hostile) string {
			var ls []v1.Layer
			for i := range 4 {
				ls = append(ls, rawLayer(t, zeroFile(t, fmt.Sprintf("z%d", i), 600<<10)))
			}
			ref, _ := pushImage(t, h.host, "bomb/image", ls...)
			return ref
		},
		lim: limits{
			layer: layers.LayerLimits{Bytes: layers.Limit{N: mib, Setting: "analysis.max_layer_bytes"}},
			image: layers.ImageLimits{Bytes: layers.Limit{N: 2 * mib, Setting: "analysis.max_image_bytes"}},
		},
		stage: pipeline.StageAnalyse, want: "the image's layers expand past analysis.max_image_bytes (2MiB = 2097152 bytes)",
		maxWritten: 2 * mib,
	}, {
		name: "declared sizes past max_compressed_image_bytes",
		push: func(t *testing.T, h *hostile) string {
			ref, _ := pushImage(t, h.host, "big/compressed", rawLayer(t, tarOf(t, "a", &tar.Header{Name: "a", Typeflag: tar.TypeReg})),
				rawLayer(t, tarOf(t, "b", &tar.Header{Name: "b", Typeflag: tar.TypeReg})))
			return ref
		},
		lim:   limits{image: layers.ImageLimits{CompressedBytes: layers.Limit{N: 100, Setting: "analysis.max_compressed_image_bytes"}}},
		stage: pipeline.StageAnalyse, want: "larger than analysis.max_compressed_image_bytes (100 bytes) as downloaded",
		noLayerGets: true,
	}, {
		name: "a layer of many tiny files past max_files",
		push: func(t *testing.T, h *hostile) string {
			ref, _ := pushImage(t, h.host, "many/files", rawLayer(t, emptyFiles(t, "f", 3000)))
			return ref
		},
		lim:   limits{layer: layers.LayerLimits{Entries: layers.Limit{N: 1000, Setting: "analysis.max_files"}}},
		stage: pipeline.StageAnalyse, want: "holds more than analysis.max_files (1000) files, directories and links: raise it",
	}, {
		name: "layers of many tiny files together past max_files",
		push: func(t *testing.T, h *hostile) string {
			ref, _ := pushImage(t, h.host, "many/layers", rawLayer(t, emptyFiles(t, "a", 600)), rawLayer(t, emptyFiles(t, "b", 600)))
			return ref
		},
		lim: limits{
			layer: layers.LayerLimits{Entries: layers.Limit{N: 1000, Setting: "analysis.max_files"}},
			image: layers.ImageLimits{Entries: layers.Limit{N: 1000, Setting: "analysis.max_files"}},
		},
		stage: pipeline.StageAnalyse, want: "the image's layers hold more than analysis.max_files (1000)",
	}, {
		name: "a layer stream that never ends",
		push: func(t *testing.T, h *hostile) string {
			ref, _ := pushImage(t, h.host, "endless/layer", endlessLayer)
			return ref
		},
		stage: pipeline.StageAnalyse, want: "bytes its manifest declares: the manifest is wrong",
	}, {
		name: "an index of 10,000 children",
		push: func(t *testing.T, h *hostile) string {
			_, img := pushImage(t, h.host, "wide/index", rawLayer(t, emptyFiles(t, "f", 1)))
			d, _ := img.Digest()
			sz, _ := img.Size()
			var b strings.Builder
			b.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
			for i := range 10000 {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"platform":{"os":"linux","architecture":"arch%d"}}`, d, sz, i)
			}
			b.WriteString("]}")
			return pushRaw(t, h.reg, h.host, "wide/index", []byte(b.String()), types.OCIImageIndex)
		},
		lim:   limits{indexManifests: 64},
		stage: pipeline.StageResolve, want: "it lists 10000 manifests, more than analysis.max_index_manifests (64): raise it",
	}, {
		name: "an image of 20,000 layers",
		push: func(t *testing.T, h *hostile) string {
			var b strings.Builder
			b.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("0", 64) + `","size":2},"layers":[`)
			for i := range 20000 {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%064x","size":32}`, i)
			}
			b.WriteString("]}")
			return pushRaw(t, h.reg, h.host, "deep/image", []byte(b.String()), types.OCIManifestSchema1)
		},
		// The default (256): refused before the config or any layer is fetched.
		noLayerGets: true,
		stage:       pipeline.StageAnalyse, want: "it has 20000 layers, more than analysis.max_layers (256): raise it",
	}, {
		name: "a 32 MiB manifest",
		push: func(t *testing.T, h *hostile) string {
			raw := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"pad":"` + strings.Repeat("x", 32*mib) + `"}}`
			return pushRaw(t, h.reg, h.host, "huge/manifest", []byte(raw), types.OCIImageIndex)
		},
		stage: pipeline.StageResolve, want: "larger than 4194304 bytes",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var wrap func(http.Handler) http.Handler
			var served atomic.Int64
			if tc.name == "a layer stream that never ends" {
				wrap = serveEndless(&served)
			}
			h := newHostile(t, wrap)
			ref := tc.push(t, h)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			j, rec, err := h.run(t, ctx, ref, tc.lim)
			if !pipeline.IsPermanent(err) {
				t.Fatalf("err = %v, want a permanent error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v\nwant it to say %q", err, tc.want)
			}
			if j.Status != store.JobDead || j.Attempts != 1 {
				t.Errorf("job %+v: want dead after one attempt (not retried)", j)
			}
			if rec.State != store.StateFailed || !strings.Contains(rec.LastError, tc.want) {
				t.Errorf("record is %s with last error %q: want failed, saying %q", rec.State, rec.LastError, tc.want)
			}
			if st := rec.Stages[tc.stage]; st.Status != store.StageFailed || !strings.Contains(st.Detail, tc.want) {
				t.Errorf("stage %s: %+v, want failed with the reason", tc.stage, st)
			}
			if h.cache != nil {
				if st := h.cache.Stats(); tc.maxWritten > 0 && st.Written > tc.maxWritten {
					t.Errorf("downloads wrote %d bytes, limit %d", st.Written, tc.maxWritten)
				}
			}
			if tc.noLayerGets {
				if n := h.blobGets.total(); n > 1 { // the config only
					t.Errorf("%d blob GETs: the declared sizes alone refuse the image", n)
				}
			}
			// The client reads the declared size and one byte more
			// (store/layers tests prove that exactly); the server gets
			// ahead of it by what the sockets buffer, then sees it hang up.
			if n := served.Load(); n > 16<<20 {
				t.Errorf("served %d bytes of an endless layer", n)
			}
			if d := time.Since(start); d > 30*time.Second {
				t.Errorf("took %s", d)
			}
			h.clean(t)
		})
	}
}

// endlessLayer is declared as a small gzip layer; serveEndless serves its
// blob as an endless stream (a gzip header, then empty deflate blocks: it
// decompresses to nothing, for ever).
var endlessLayer = func() v1.Layer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "endless", Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		panic(err)
	}
	return l
}()

func serveEndless(served *atomic.Int64) func(http.Handler) http.Handler {
	d, _ := endlessLayer.Digest()
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			chunk := bytes.Repeat([]byte{0, 0, 0, 0xff, 0xff}, 4096)
			if _, err := w.Write([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}); err != nil {
				return
			}
			for r.Context().Err() == nil {
				n, err := w.Write(chunk)
				served.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
	}
}

// A layer stream that stalls (headers, then nothing) is bounded by the
// job's context: the attempt ends when it does, leaves nothing behind, and
// is retried like any network failure.
func TestStalledLayerEndsWithTheJob(t *testing.T) {
	t.Parallel()
	d, _ := endlessLayer.Digest()
	h := newHostile(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	ref, _ := pushImage(t, h.host, "stalled/layer", endlessLayer)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	j, _, err := h.run(t, ctx, ref, limits{})
	if err == nil || pipeline.IsPermanent(err) {
		t.Fatalf("err = %v, want a transient failure", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("a stalled layer held the job %s past its deadline", time.Since(start))
	}
	if j.Status == store.JobDead {
		t.Errorf("job %+v: a stall is not the image's fault, it may be retried", j)
	}
	h.clean(t)
}

// A tar is data, never instructions: entries named ../…, absolute paths,
// symlinks and hard links pointing outside the rootfs, and symlink loops are
// indexed (stereoscope keeps the tree in memory, reading file contents out
// of the cached tar) and never written or followed on the host. The
// analysis finishes, bounded, and sees nothing of the host.
func TestTarEntriesStayInsideTheImage(t *testing.T) {
	t.Parallel()
	outside := t.TempDir()
	sentinel := `{"name":"escaped-sentinel","version":"6.6.6"}`
	if err := os.WriteFile(filepath.Join(outside, "package.json"), []byte(sentinel), 0o644); err != nil {
		t.Fatal(err)
	}
	up := strings.Repeat("../", 32)
	rel := up + strings.TrimPrefix(outside, "/")
	layer := tarOf(t, `{"name":"inside","version":"1.0.0"}`,
		&tar.Header{Name: up + strings.TrimPrefix(outside, "/") + "/written-dotdot", Typeflag: tar.TypeReg},
		&tar.Header{Name: outside + "/written-absolute", Typeflag: tar.TypeReg},
		&tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "app/package.json", Typeflag: tar.TypeReg},
		&tar.Header{Name: "app/sym-abs/package.json", Typeflag: tar.TypeSymlink, Linkname: outside + "/package.json"},
		&tar.Header{Name: "app/sym-rel/package.json", Typeflag: tar.TypeSymlink, Linkname: rel + "/package.json"},
		&tar.Header{Name: "app/hard-abs/package.json", Typeflag: tar.TypeLink, Linkname: outside + "/package.json"},
		&tar.Header{Name: "app/hard-rel/package.json", Typeflag: tar.TypeLink, Linkname: rel + "/package.json"},
		&tar.Header{Name: "app/sym-dir", Typeflag: tar.TypeSymlink, Linkname: outside},
		&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeSymlink, Linkname: up + "etc/passwd"},
		&tar.Header{Name: "loop/a", Typeflag: tar.TypeSymlink, Linkname: "b"},
		&tar.Header{Name: "loop/b", Typeflag: tar.TypeSymlink, Linkname: "a"},
		&tar.Header{Name: "loop/self", Typeflag: tar.TypeSymlink, Linkname: "self"},
		&tar.Header{Name: "loop/dot", Typeflag: tar.TypeSymlink, Linkname: "."},
		&tar.Header{Name: "loop/parent", Typeflag: tar.TypeSymlink, Linkname: ".."},
		&tar.Header{Name: "loop/deeper", Typeflag: tar.TypeSymlink, Linkname: "deeper/x"},
		&tar.Header{Name: "app/loop/package.json", Typeflag: tar.TypeSymlink, Linkname: "../../loop/a"},
		&tar.Header{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "/bin/sh"},
	)
	h := newHostile(t, nil)
	ref, _ := pushImage(t, h.host, "escape/tar", rawLayer(t, layer))
	before, _ := os.ReadDir(outside)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	h.cache, err = layers.Open(h.cacheDir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	blobs := &memBlobs{}
	a, err := analyze.New(h.reg, h.cache, blobs, analyze.Options{SBOM: sbom.Options{WorkDir: h.work}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Analyze(ctx, analyze.Request{Ref: ref})
	if err != nil {
		t.Fatalf("Analyze: %v", err)
	}
	var docs []byte
	for _, art := range res.Artifacts {
		docs = append(docs, blobs.m[art.Digest]...)
	}
	if !strings.Contains(string(docs), `inside`) {
		t.Errorf("the image's own package.json is not in its SBOM")
	}
	if strings.Contains(string(docs), "escaped-sentinel") {
		t.Errorf("a package outside the image was catalogued: a link was followed onto the host")
	}
	after, _ := os.ReadDir(outside)
	if len(after) != len(before) {
		t.Errorf("the analysis wrote outside its own files: %v", after)
	}
	for _, p := range []string{"written-dotdot", "written-absolute"} {
		if _, err := os.Stat(filepath.Join(outside, p)); err == nil {
			t.Errorf("%s written on the host", p)
		}
	}
	h.clean(t)
}
