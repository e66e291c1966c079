package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// copyConcurrency bounds the manifests one CopyReferrers copies at once.
const copyConcurrency = 8

// maxReferrerManifest bounds a referrer manifest read to be copied.
const maxReferrerManifest = 4 << 20

// CopyReferrers copies the referrer manifests digests — each an image
// manifest whose subject is subject, as a gate verified them — from src
// into dst, with their config and layers (mounted across repositories on
// one registry), byte for byte under the same digests. Where the registry
// has no referrers API it then updates subject's "sha256-<hex>" fallback
// index in dst once for all of them, instead of once per manifest as a
// plain copy would (a read and a write each, racing one another). Copies
// run concurrently. A manifest served as anything but an image manifest,
// or whose subject is not subject, is refused.
func (c *Client) CopyReferrers(ctx context.Context, src, dst name.Repository, subject string, digests []string) error {
	if len(digests) == 0 {
		return nil
	}
	ctx, cancel := withTimeout(ctx, CopyTimeout)
	defer cancel()
	put, err := c.putter(ctx, dst)
	if err != nil {
		return fmt.Errorf("copy referrers of %s to %s: %w", subject, dst, err)
	}
	// Read and check every manifest, then copy each distinct blob once
	// (a registry's filesystem storage races when one blob is linked into
	// a repository twice at once), then put the manifests.
	got := make([]*referrer, len(digests))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(copyConcurrency)
	for i, dg := range digests {
		g.Go(func() error {
			r, err := c.readReferrer(gctx, src.Digest(dg), subject)
			if err != nil {
				return fmt.Errorf("referrer %s of %s: %w", dg, subject, err)
			}
			got[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	blobs := map[v1.Hash]v1.Descriptor{}
	for _, r := range got {
		for _, b := range append([]v1.Descriptor{r.m.Config}, r.m.Layers...) {
			blobs[b.Digest] = b
		}
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(copyConcurrency)
	for _, b := range blobs {
		g.Go(func() error {
			if err := c.copyBlob(gctx, put, src, b); err != nil {
				return fmt.Errorf("referrers of %s: blob %s: %w", subject, b.Digest, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	descs := make([]v1.Descriptor, len(got))
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(copyConcurrency)
	for i, r := range got {
		g.Go(func() error {
			if err := put.putManifest(gctx, dst.Digest(r.desc.Digest.String()), r.desc.Manifest, r.desc.MediaType); err != nil {
				return fmt.Errorf("referrer %s of %s: %w", r.desc.Digest, subject, err)
			}
			descs[i] = r.listed()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return c.ListReferrers(ctx, dst.Digest(subject), descs)
}

// referrer is a referrer manifest read to be copied.
type referrer struct {
	desc *remote.Descriptor
	m    referrerManifest
}

// listed is r's descriptor as a referrers index lists it.
func (r *referrer) listed() v1.Descriptor {
	at := r.m.ArtifactType
	if at == "" {
		at = string(r.m.Config.MediaType)
	}
	return v1.Descriptor{MediaType: r.desc.MediaType, Digest: r.desc.Digest, Size: r.desc.Size, ArtifactType: at, Annotations: r.m.Annotations}
}

// readReferrer reads the referrer manifest ref and checks it is an image
// manifest whose subject is subject.
func (c *Client) readReferrer(ctx context.Context, ref name.Digest, subject string) (*referrer, error) {
	desc, err := remote.Get(ref, c.RemoteOptions(ctx)...)
	if err != nil {
		return nil, err
	}
	if !desc.MediaType.IsImage() {
		return nil, fmt.Errorf("the registry serves it as %s, not an image manifest: refused", desc.MediaType)
	}
	if len(desc.Manifest) > maxReferrerManifest {
		return nil, fmt.Errorf("manifest of %d bytes: over %d", len(desc.Manifest), maxReferrerManifest)
	}
	r := &referrer{desc: desc}
	if err := json.Unmarshal(desc.Manifest, &r.m); err != nil {
		return nil, err
	}
	if r.m.Subject == nil || r.m.Subject.Digest.String() != subject {
		return nil, fmt.Errorf("its subject is not %s: refused", subject)
	}
	return r, nil
}

// putter returns repo's rawWriter: one handshake per repository, shared
// by the process and replaced every reuseFor like the Puller.
func (c *Client) putter(ctx context.Context, repo name.Repository) (*rawWriter, error) {
	c.writeMu.Lock()
	if c.writers == nil || c.now().Sub(c.writersAt) > reuseFor {
		c.writers, c.writersAt = map[string]*rawWriter{}, c.now()
	}
	w, ok := c.writers[repo.String()]
	c.writeMu.Unlock()
	if ok {
		return w, nil
	}
	w, err := c.newRawWriter(ctx, repo)
	if err != nil {
		return nil, err
	}
	c.writeMu.Lock()
	c.writers[repo.String()] = w
	c.writeMu.Unlock()
	return w, nil
}

// rawWriter writes blobs and manifests into one repository byte for byte
// and nothing else: go-containerregistry's writer would also read and
// rewrite a subject's fallback index for each manifest, and ask whether
// each blob exists before uploading it in three requests.
type rawWriter struct {
	repo   name.Repository
	client *http.Client
	// hasConfig: the empty config blob is known to be in repo.
	hasConfig atomic.Bool
	// locks is the Client's: one writer of a blob (a registry's filesystem
	// storage breaks when one blob is linked into a repository twice at
	// once) and of a fallback index at a time, across every job of the
	// process and every writer of the repository (they are replaced).
	locks *keyedMutex
}

func (c *Client) newRawWriter(ctx context.Context, repo name.Repository) (*rawWriter, error) {
	auth, err := c.keychain.Resolve(repo)
	if err != nil {
		return nil, err
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, transport.NewUserAgent(c.transport, c.userAgent), []string{repo.Scope(transport.PushScope)})
	if err != nil {
		return nil, err
	}
	return &rawWriter{repo: repo, client: &http.Client{Transport: rt}, locks: &c.locks}, nil
}

// lock takes the process-wide lock of what (in w's repository).
func (w *rawWriter) lock(what string) func() { return w.locks.lock(w.repo.String() + " " + what) }

func (w *rawWriter) url(path string) string {
	return fmt.Sprintf("%s://%s/v2/%s/%s", w.repo.Scheme(), w.repo.RegistryStr(), w.repo.RepositoryStr(), path)
}

func (w *rawWriter) do(ctx context.Context, method, u, contentType string, body []byte, ok ...int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, ok...); err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp, nil
}

// copyBlob makes blob b of src present in w's repository: mounted where
// both are on one registry (one request), else uploaded from src unless
// it is there already.
func (c *Client) copyBlob(ctx context.Context, w *rawWriter, src name.Repository, b v1.Descriptor) error {
	defer w.lock("blob " + b.Digest.String())()
	var loc *url.URL
	if src.Registry == w.repo.Registry {
		q := url.Values{"mount": {b.Digest.String()}, "from": {src.RepositoryStr()}}
		resp, err := w.do(ctx, http.MethodPost, w.url("blobs/uploads/?"+q.Encode()), "", nil, http.StatusCreated, http.StatusAccepted)
		if err != nil {
			return err
		}
		if resp.StatusCode == http.StatusCreated {
			return nil
		}
		if loc, err = resp.Location(); err != nil { // not mounted: an upload was started instead
			return err
		}
	} else {
		ok, err := w.hasBlob(ctx, b.Digest)
		if err != nil || ok {
			return err
		}
	}
	rc, err := c.Blob(ctx, src, b.Digest.String())
	if err != nil {
		return err
	}
	defer rc.Close()
	return w.upload(ctx, loc, b, rc)
}

// ensureConfig makes the empty config cd present in w's repository, one
// caller at a time: a registry's filesystem storage races when one blob is
// written into a repository twice at once.
func (w *rawWriter) ensureConfig(ctx context.Context, cd v1.Hash) error {
	if w.hasConfig.Load() {
		return nil
	}
	defer w.lock("blob " + cd.String())()
	if w.hasConfig.Load() {
		return nil
	}
	ok, err := w.hasBlob(ctx, cd)
	if err == nil && !ok {
		_, err = w.putBlob(ctx, []byte(EmptyConfig))
	}
	if err != nil {
		return err
	}
	w.hasConfig.Store(true)
	return nil
}

// hasBlob asks whether d is in w's repository.
func (w *rawWriter) hasBlob(ctx context.Context, d v1.Hash) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, w.url("blobs/"+d.String()), nil)
	if err != nil {
		return false, err
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	default:
		return false, transport.CheckError(resp, http.StatusOK)
	}
}

// upload streams blob b's content from r to the upload session loc (nil:
// start one), in one PUT.
func (w *rawWriter) upload(ctx context.Context, loc *url.URL, b v1.Descriptor, r io.Reader) error {
	if loc == nil {
		resp, err := w.do(ctx, http.MethodPost, w.url("blobs/uploads/"), "", nil, http.StatusAccepted)
		if err != nil {
			return fmt.Errorf("start upload: %w", err)
		}
		if loc, err = resp.Location(); err != nil {
			return fmt.Errorf("start upload: %w", err)
		}
	}
	q := loc.Query()
	q.Set("digest", b.Digest.String())
	loc.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, loc.String(), io.LimitReader(r, b.Size))
	if err != nil {
		return err
	}
	req.ContentLength = b.Size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := w.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return transport.CheckError(resp, http.StatusCreated)
}

// putManifest PUTs raw as ref (in w's repository).
func (w *rawWriter) putManifest(ctx context.Context, ref name.Digest, raw []byte, mt types.MediaType) error {
	resp, err := w.do(ctx, http.MethodPut, w.url("manifests/"+ref.DigestStr()), string(mt), raw, http.StatusOK, http.StatusCreated, http.StatusAccepted)
	if err != nil {
		return err
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != ref.DigestStr() {
		return fmt.Errorf("put %s: the registry stored it as %s", ref, got)
	}
	return nil
}

// putBlob uploads data in one piece (OCI distribution spec: POST to start
// an upload, PUT the whole blob with its digest), without asking first
// whether it exists: for content just made, such as a signature bundle.
func (w *rawWriter) putBlob(ctx context.Context, data []byte) (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(data))
	if err != nil {
		return v1.Hash{}, err
	}
	if err := w.upload(ctx, nil, v1.Descriptor{Digest: h, Size: int64(len(data))}, bytes.NewReader(data)); err != nil {
		return v1.Hash{}, fmt.Errorf("upload %s: %w", h, err)
	}
	return h, nil
}

// keyedMutex hands out one mutex per key, dropped when nobody holds or
// waits for it.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*refMutex{}
	}
	l := k.m[key]
	if l == nil {
		l = &refMutex{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// addToFallback adds descs to sub's "sha256-<hex>" fallback index (created
// when absent), sorted by digest as go-containerregistry keeps it.
func (c *Client) addToFallback(ctx context.Context, sub name.Digest, descs []v1.Descriptor) error {
	// This process's read-modify-writes of one fallback index, one at a
	// time (another writer can still race it: registries offer no
	// conditional write to prevent that).
	w, err := c.putter(ctx, sub.Context())
	if err != nil {
		return err
	}
	defer w.lock("tag " + sub.DigestStr())()
	tag := sub.Context().Tag(strings.Replace(sub.DigestStr(), ":", "-", 1))
	im, err := c.referrersIndex(ctx, sub)
	if err != nil {
		return fmt.Errorf("fallback index %s: %w", tag, err)
	}
	n := len(im.Manifests)
	for _, d := range descs {
		if !slices.ContainsFunc(im.Manifests, func(e v1.Descriptor) bool { return e.Digest == d.Digest }) {
			im.Manifests = append(im.Manifests, d)
		}
	}
	if len(im.Manifests) == n {
		return nil
	}
	slices.SortFunc(im.Manifests, func(a, b v1.Descriptor) int { return strings.Compare(a.Digest.String(), b.Digest.String()) })
	im.SchemaVersion, im.MediaType = 2, types.OCIImageIndex
	raw, err := json.Marshal(im)
	if err != nil {
		return err
	}
	if err := remote.Put(tag, rawManifest{raw, types.OCIImageIndex}, c.RemoteOptions(ctx)...); err != nil {
		return fmt.Errorf("fallback index %s: %w", tag, err)
	}
	return nil
}

// referrerManifest is an OCI 1.1 image manifest with an artifactType, laid
// out as cosign writes its bundle referrers (cosign's verify finds ours).
type referrerManifest struct {
	v1.Manifest
	ArtifactType string `json:"artifactType,omitempty"`
}

// EmptyConfig is the config blob of an artifact manifest, "{}", as cosign
// writes it for a bundle, and its digest.
const (
	EmptyConfig       = "{}"
	EmptyConfigDigest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
)

// PutReferrer stores an artifact referring to subject in repo: one layer
// (layer, of media type layerType, uploaded without asking whether it
// exists: it is new content), the empty config, and a manifest of
// artifactType carrying annotations, as cosign lays out a bundle referrer.
// It does not list it in the subject's fallback index: see ListReferrers,
// which takes all of a subject's new referrers at once.
func (c *Client) PutReferrer(ctx context.Context, repo name.Repository, subject v1.Descriptor, artifactType string, layerType types.MediaType, layer []byte, annotations map[string]string) (v1.Descriptor, error) {
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	w, err := c.putter(ctx, repo)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("referrer of %s: %w", subject.Digest, err)
	}
	cd, err := v1.NewHash(EmptyConfigDigest)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := w.ensureConfig(ctx, cd); err != nil {
		return v1.Descriptor{}, fmt.Errorf("referrer of %s: config: %w", subject.Digest, err)
	}
	ld, err := w.putBlob(ctx, layer)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("referrer of %s: %w", subject.Digest, err)
	}
	m := referrerManifest{Manifest: v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config:      v1.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", ArtifactType: artifactType, Digest: cd, Size: 2},
		Layers:      []v1.Descriptor{{MediaType: layerType, Digest: ld, Size: int64(len(layer))}},
		Subject:     &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		Annotations: annotations},
		ArtifactType: artifactType}
	raw, err := json.Marshal(m)
	if err != nil {
		return v1.Descriptor{}, err
	}
	h, size, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := w.putManifest(ctx, repo.Digest(h.String()), raw, types.OCIManifestSchema1); err != nil {
		w.hasConfig.Store(false) // deleted since? asked again next time
		return v1.Descriptor{}, fmt.Errorf("referrer of %s: %w", subject.Digest, err)
	}
	return v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: h, Size: size, ArtifactType: artifactType, Annotations: annotations}, nil
}

// ListReferrers makes descs (manifests already in subject's repository,
// from PutReferrer) findable as subject's referrers: where the registry
// has no referrers API, one update of the "sha256-<hex>" fallback index;
// with the API, nothing (the registry lists them itself).
func (c *Client) ListReferrers(ctx context.Context, subject name.Digest, descs []v1.Descriptor) error {
	if len(descs) == 0 {
		return nil
	}
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	api, err := c.hasReferrersAPI(ctx, subject)
	if err != nil || api {
		return err
	}
	return c.addToFallback(ctx, subject, descs)
}
