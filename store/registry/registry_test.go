package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// countingHandler records requests by method and path, and can answer the
// first n of them with a status.
type countingHandler struct {
	next    http.Handler
	mu      sync.Mutex
	seen    []string
	failN   atomic.Int32
	status  int
	retryAf string
}

func (h *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.seen = append(h.seen, r.Method+" "+r.URL.Path)
	h.mu.Unlock()
	if h.failN.Add(-1) >= 0 {
		if h.retryAf != "" {
			w.Header().Set("Retry-After", h.retryAf)
		}
		w.WriteHeader(h.status)
		return
	}
	h.next.ServeHTTP(w, r)
}

func (h *countingHandler) requests() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.seen...)
}

func newRegistry(t *testing.T, referrers bool) (*countingHandler, string) {
	t.Helper()
	var opts []ggcrregistry.Option
	if referrers {
		opts = append(opts, ggcrregistry.WithReferrersSupport(true))
	}
	h := &countingHandler{next: ggcrregistry.New(append(opts, ggcrregistry.Logger(log.New(io.Discard, "", 0)))...)}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, strings.TrimPrefix(srv.URL, "http://")
}

func newClient(t *testing.T) *Client {
	t.Helper()
	c, err := New(WithRateLimit(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	c.transport.base = time.Millisecond
	return c
}

func push(t *testing.T, c *Client, ref string, img v1.Image) name.Digest {
	t.Helper()
	r, err := c.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, c.RemoteOptions(context.Background())...); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return r.Context().Digest(d.String())
}

func TestResolveUsesHEAD(t *testing.T) {
	t.Parallel()
	h, host := newRegistry(t, false)
	c := newClient(t)
	img, _ := random.Image(256, 2)
	want := push(t, c, host+"/app:v1", img)

	before := len(h.requests())
	tag, _ := c.ParseReference(host + "/app:v1")
	got, desc, err := c.Resolve(context.Background(), tag)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || desc.Digest.String() != want.DigestStr() {
		t.Fatalf("Resolve = %s, want %s", got, want)
	}
	for _, r := range h.requests()[before:] {
		if strings.HasPrefix(r, "GET /v2/app/manifests") {
			t.Errorf("resolve fetched the manifest body (%s); HEAD should suffice", r)
		}
	}
	missing, _ := c.ParseReference(host + "/app:nope")
	if _, _, err := c.Resolve(context.Background(), missing); !IsNotFound(err) {
		t.Fatalf("missing tag: %v, want not found", err)
	}
}

func TestRetryAfter429(t *testing.T) {
	t.Parallel()
	h, host := newRegistry(t, false)
	c := newClient(t)
	img, _ := random.Image(64, 1)
	want := push(t, c, host+"/app:v1", img)

	h.status, h.retryAf = http.StatusTooManyRequests, "0"
	h.failN.Store(3)
	tag, _ := c.ParseReference(host + "/app:v1")
	got, _, err := c.Resolve(context.Background(), tag)
	if err != nil || got != want {
		t.Fatalf("Resolve after 3×429 = %v, %v", got, err)
	}
}

func TestRetryGivesUp(t *testing.T) {
	t.Parallel()
	h, host := newRegistry(t, false)
	c, err := New(WithRateLimit(0, 0), WithMaxRetries(2))
	if err != nil {
		t.Fatal(err)
	}
	c.transport.base = time.Millisecond
	h.status = http.StatusServiceUnavailable
	h.failN.Store(1000)
	tag, _ := c.ParseReference(host + "/app:v1")
	if _, _, err := c.Resolve(context.Background(), tag); err == nil {
		t.Fatal("resolve against a registry that always answers 503 succeeded")
	}
	// HEAD (1 + 2 retries) then GET (1 + 2 retries), plus /v2/ pings.
	if n := len(h.requests()); n > 12 {
		t.Fatalf("%d requests: retries are multiplied somewhere", n)
	}
}

func TestRetryStopsOnContext(t *testing.T) {
	t.Parallel()
	h, host := newRegistry(t, false)
	c := newClient(t)
	h.status, h.retryAf = http.StatusTooManyRequests, "30"
	h.failN.Store(1000)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	tag, _ := c.ParseReference(host + "/app:v1")
	start := time.Now()
	_, _, err := c.Resolve(ctx, tag)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "context deadline exceeded") {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("retry slept past the context deadline")
	}
}

func TestRetryAfterParse(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false}, {"3", 3 * time.Second, true}, {"-1", 0, false}, {"soon", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
	} {
		got, ok := retryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCopyIndexMountsAndTagsLast(t *testing.T) {
	t.Parallel()
	h, host := newRegistry(t, false)
	c := newClient(t)
	ctx := context.Background()
	idx, err := random.Index(128, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := c.ParseReference(host + "/staging/app:v1")
	if err := remote.WriteIndex(src, idx, c.RemoteOptions(ctx)...); err != nil {
		t.Fatal(err)
	}
	srcDigest, _, err := c.Resolve(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := c.ParseRepository(host + "/prod/app")
	before := len(h.requests())
	got, err := c.Copy(ctx, srcDigest, dst)
	if err != nil {
		t.Fatal(err)
	}
	if got.DigestStr() != srcDigest.DigestStr() {
		t.Fatalf("copied digest %s != %s", got.DigestStr(), srcDigest.DigestStr())
	}
	// ggcr's in-process registry keeps blobs registry-wide, so the existence
	// check short-circuits before a mount; what must never happen is an upload.
	for _, r := range h.requests()[before:] {
		if strings.HasPrefix(r, "PATCH") {
			t.Errorf("blob uploaded instead of mounted: %s", r)
		}
		if strings.HasPrefix(r, "PUT /v2/prod/app/manifests/") && !strings.Contains(r, "sha256:") {
			t.Errorf("copy wrote a tag: %s", r)
		}
	}
	kids, err := c.Children(ctx, got)
	if err != nil || len(kids) != 2 {
		t.Fatalf("children in destination = %v, %v", kids, err)
	}
	tag, _ := name.NewTag(host+"/prod/app:v1", name.StrictValidation)
	if err := c.Tag(ctx, got, tag); err != nil {
		t.Fatal(err)
	}
	if d, _, err := c.Resolve(ctx, tag); err != nil || d.DigestStr() != srcDigest.DigestStr() {
		t.Fatalf("prod tag resolves to %v, %v", d, err)
	}
	other, _ := name.NewTag(host+"/other/app:v1", name.StrictValidation)
	if err := c.Tag(ctx, got, other); err == nil {
		t.Fatal("tagging across repositories succeeded")
	}
}

func TestReferrersAPIAndFallback(t *testing.T) {
	t.Parallel()
	for _, api := range []bool{true, false} {
		t.Run(map[bool]string{true: "api", false: "tag-fallback"}[api], func(t *testing.T) {
			t.Parallel()
			_, host := newRegistry(t, api)
			c := newClient(t)
			ctx := context.Background()
			img, _ := random.Image(64, 1)
			subject := push(t, c, host+"/app:v1", img)
			desc, _ := remote.Head(subject, c.RemoteOptions(ctx)...)

			art := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
			art = mutate.ConfigMediaType(art, "application/vnd.dev.attestd.test+json")
			art = mutate.Subject(art, *desc).(v1.Image)
			ad, _ := art.Digest()
			if err := remote.Write(subject.Context().Digest(ad.String()), art, c.RemoteOptions(ctx)...); err != nil {
				t.Fatal(err)
			}
			refs, err := c.Referrers(ctx, subject, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(refs) != 1 || refs[0].Digest != ad {
				t.Fatalf("referrers = %+v, want %s", refs, ad)
			}
			if refs, _ := c.Referrers(ctx, subject, "application/other"); len(refs) != 0 {
				t.Fatalf("filter ignored: %+v", refs)
			}
		})
	}
}

func TestParseReference(t *testing.T) {
	t.Parallel()
	c := newClient(t)
	for _, tc := range []struct {
		in  string
		err string
	}{
		{in: "127.0.0.1:5000/app:v1"},
		{in: "registry.example.com/team/app@sha256:" + strings.Repeat("a", 64)},
		{in: "app:v1", err: "needs a registry host"},
		{in: "library/app", err: "needs a registry host"},
		{in: "registry.example.com/App:v1", err: "could not parse"},
	} {
		_, err := c.ParseReference(tc.in)
		if (tc.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseReference(%q) = %v, want %q", tc.in, err, tc.err)
		}
	}
	if !IsLoopback("127.0.0.1:5000") || !IsLoopback("localhost") || !IsLoopback("[::1]:80") || IsLoopback("10.0.0.1:5000") {
		t.Error("IsLoopback wrong")
	}
}

func TestListTagsAndCatalog(t *testing.T) {
	t.Parallel()
	_, host := newRegistry(t, false)
	c := newClient(t)
	ctx := context.Background()
	for _, r := range []string{"/a/app:v1", "/a/app:v2", "/b/tool:latest"} {
		img, _ := random.Image(32, 1)
		push(t, c, host+r, img)
	}
	repo, _ := c.ParseRepository(host + "/a/app")
	tags, err := c.ListTags(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"v1", "v2"}, tags); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
	reg, _ := name.NewRegistry(host)
	repos, err := c.Catalog(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(repos) // the spec asks for lexical order; ggcr's in-process registry does not keep it
	if diff := cmp.Diff([]string{"a/app", "b/tool"}, repos); diff != "" {
		t.Errorf("catalog (-want +got):\n%s", diff)
	}
	missing, _ := c.ParseRepository(host + "/nope/x")
	if _, err := c.ListTags(ctx, missing); !IsNotFound(err) {
		t.Errorf("tags of a missing repo: %v, want not found", err)
	}
}

// TestReferrersProbeOnce: the referrers API is probed once per registry;
// without it, later listings read the fallback tag directly.
func TestReferrersProbeOnce(t *testing.T) {
	t.Parallel()
	for _, api := range []bool{true, false} {
		t.Run(map[bool]string{true: "api", false: "tag-fallback"}[api], func(t *testing.T) {
			t.Parallel()
			h, host := newRegistry(t, api)
			c := newClient(t)
			ctx := context.Background()
			img, _ := random.Image(64, 1)
			subject := push(t, c, host+"/app:v1", img)
			for range 3 {
				if _, err := c.Referrers(ctx, subject, ""); err != nil {
					t.Fatal(err)
				}
			}
			n := 0
			for _, r := range h.requests() {
				if strings.Contains(r, "/referrers/") {
					n++
				}
			}
			want := 1 // the probe only
			if api {
				want = 4 // the probe, then the API for each listing
			}
			if n != want {
				t.Fatalf("%d requests to /referrers/, want %d: %v", n, want, h.requests())
			}
		})
	}
}

// pings counts the registry's "GET /v2/" handshakes among reqs.
func pings(reqs []string) int {
	n := 0
	for _, r := range reqs {
		if r == "GET /v2/" {
			n++
		}
	}
	return n
}

// TestHandshakeOncePerRepository: reads share one Puller and a Writes
// client one Pusher, so a burst of calls pays the registry's ping once,
// not once per call (it was ~37 % of all requests of a fleet run).
func TestHandshakeOncePerRepository(t *testing.T) {
	ctx := context.Background()
	h, host := newRegistry(t, false)
	c := newClient(t)
	repo, err := c.ParseRepository(host + "/app")
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(64, 2)
	if err != nil {
		t.Fatal(err)
	}
	dg, _ := img.Digest()
	if err := remote.Write(repo.Digest(dg.String()), img); err != nil {
		t.Fatal(err)
	}
	d := repo.Digest(dg.String())
	before := len(h.requests())
	for range 5 {
		if _, _, err := c.Manifest(ctx, d); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Referrers(ctx, d, ""); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Resolve(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if n := pings(h.requests()[before:]); n > 2 { // the puller's, and the referrers-API probe's
		t.Errorf("15 reads pinged the registry %d times, want at most 2", n)
	}

	w := c.Writes()
	before = len(h.requests())
	for i := range 5 {
		if _, err := w.PushArtifact(ctx, d, "application/vnd.test", "text/plain", []byte{byte(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := pings(h.requests()[before:]); n > 1 {
		t.Errorf("5 writes of one Writes client pinged the registry %d times, want at most 1", n)
	}
	// A new unit of work gets its own Pusher: what the last one wrote is
	// not assumed to be there still.
	before = len(h.requests())
	if _, err := c.Writes().PushArtifact(ctx, d, "application/vnd.test", "text/plain", []byte{0}, nil); err != nil {
		t.Fatal(err)
	}
	if n := pings(h.requests()[before:]); n != 1 {
		t.Errorf("a new Writes client pinged %d times, want 1", n)
	}
}

// TestPullerRotates: the shared Puller is replaced after reuseFor, so the
// repositories it holds stay bounded and a rotated credential is used.
func TestPullerRotates(t *testing.T) {
	c := newClient(t)
	now := time.Unix(1e9, 0)
	c.now = func() time.Time { return now }
	p := c.sharedPuller()
	if c.sharedPuller() != p {
		t.Fatal("a second call replaced the Puller")
	}
	now = now.Add(reuseFor + time.Second)
	if c.sharedPuller() == p {
		t.Error("the Puller outlived reuseFor")
	}
}

// TestCopyReferrers: the referrers land in dst byte for byte, the fallback
// index (where there is no referrers API) is written once and lists them
// beside what it listed before, and a manifest about another subject is
// refused.
func TestCopyReferrers(t *testing.T) {
	for _, api := range []bool{true, false} {
		ctx := context.Background()
		h, host := newRegistry(t, api)
		c := newClient(t)
		src, _ := c.ParseRepository(host + "/staging/app")
		dst, _ := c.ParseRepository(host + "/prod/app")
		img, _ := random.Image(64, 1)
		dg, _ := img.Digest()
		for _, repo := range []name.Repository{src, dst} {
			if err := remote.Write(repo.Digest(dg.String()), img); err != nil {
				t.Fatal(err)
			}
		}
		sub := src.Digest(dg.String())
		earlier, err := c.PushArtifact(ctx, dst.Digest(dg.String()), "application/vnd.earlier", "text/plain", []byte("earlier"), nil)
		if err != nil {
			t.Fatal(err)
		}
		var digests []string
		for i := range 3 {
			a, err := c.PushArtifact(ctx, sub, "application/vnd.test", "text/plain", []byte{byte(i)}, map[string]string{"n": fmt.Sprint(i)})
			if err != nil {
				t.Fatal(err)
			}
			digests = append(digests, a.DigestStr())
		}
		before := len(h.requests())
		if err := c.Writes().CopyReferrers(ctx, src, dst, dg.String(), digests); err != nil {
			t.Fatalf("api %v: %v", api, err)
		}
		fallbackPuts := 0
		for _, r := range h.requests()[before:] {
			if strings.HasPrefix(r, "PUT ") && strings.Contains(r, "/manifests/sha256-") {
				fallbackPuts++
			}
		}
		if want := map[bool]int{true: 0, false: 1}[api]; fallbackPuts != want {
			t.Errorf("api %v: %d fallback index writes, want %d", api, fallbackPuts, want)
		}
		refs, err := c.Referrers(ctx, dst.Digest(dg.String()), "")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range refs {
			got = append(got, r.Digest.String())
		}
		want := append([]string{earlier.DigestStr()}, digests...)
		sort.Strings(got)
		sort.Strings(want)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("api %v: referrers in dst (-want +got):\n%s", api, diff)
		}
		for _, r := range refs {
			if r.Digest.String() == digests[1] && (r.ArtifactType != "application/vnd.test" || r.Annotations["n"] != "1") {
				t.Errorf("api %v: descriptor %+v lacks the artifact type or annotations", api, r)
			}
		}
		// A manifest whose subject is another digest.
		other, _ := random.Image(64, 1)
		od, _ := other.Digest()
		if err := remote.Write(src.Digest(od.String()), other); err != nil {
			t.Fatal(err)
		}
		stray, err := c.PushArtifact(ctx, src.Digest(od.String()), "application/vnd.test", "text/plain", []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.CopyReferrers(ctx, src, dst, dg.String(), []string{stray.DigestStr()}); err == nil || !strings.Contains(err.Error(), "subject") {
			t.Errorf("api %v: a referrer of another subject was copied (err %v)", api, err)
		}
	}
}

// TestCopyReferrersAcrossRegistries: without a mount, the blobs are
// uploaded from the source registry.
func TestCopyReferrersAcrossRegistries(t *testing.T) {
	ctx := context.Background()
	_, a := newRegistry(t, false)
	_, b := newRegistry(t, true)
	c := newClient(t)
	src, _ := c.ParseRepository(a + "/staging/app")
	dst, _ := c.ParseRepository(b + "/prod/app")
	img, _ := random.Image(64, 1)
	dg, _ := img.Digest()
	for _, repo := range []name.Repository{src, dst} {
		if err := remote.Write(repo.Digest(dg.String()), img); err != nil {
			t.Fatal(err)
		}
	}
	art, err := c.PushArtifact(ctx, src.Digest(dg.String()), "application/vnd.test", "text/plain", []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CopyReferrers(ctx, src, dst, dg.String(), []string{art.DigestStr()}); err != nil {
		t.Fatal(err)
	}
	refs, err := c.Referrers(ctx, dst.Digest(dg.String()), "application/vnd.test")
	if err != nil || len(refs) != 1 || refs[0].Digest.String() != art.DigestStr() {
		t.Fatalf("referrers in dst: %v, %v", refs, err)
	}
	img2, err := c.Image(ctx, dst.Digest(art.DigestStr()))
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := img2.Layers()
	rc, err := ls[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, _ := io.ReadAll(rc); string(got) != "hello" {
		t.Errorf("copied layer = %q", got)
	}
}

// TestOwnIsWhatThisProcessWrote: intake ignores the registry's events for
// attestd's own writes by what the client PUT — an image written with
// remote.Write, a raw referrer manifest — and nothing else: another client's
// push of an identical-looking repository is not "own", whatever its
// User-Agent.
func TestOwnIsWhatThisProcessWrote(t *testing.T) {
	t.Parallel()
	_, host := newRegistry(t, false)
	c := newClient(t)
	img, _ := random.Image(128, 1)
	d := push(t, c, host+"/app:v1", img)
	if !c.Own(host, "app", d.DigestStr()) {
		t.Fatal("an image this client wrote is not recorded as its own")
	}
	if c.Own(host, "other", d.DigestStr()) || c.Own("elsewhere:5000", "app", d.DigestStr()) {
		t.Fatal("own is not per registry and repository")
	}
	other, err := New(WithRateLimit(0, 0), WithUserAgent("attestd/v9 (spoofed)"))
	if err != nil {
		t.Fatal(err)
	}
	img2, _ := random.Image(128, 1)
	d2 := push(t, other, host+"/app:v2", img2)
	if c.Own(host, "app", d2.DigestStr()) {
		t.Fatal("another client's push counted as this client's")
	}
}
