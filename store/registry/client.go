// Package registry is attestd's single OCI registry client, built on
// go-containerregistry. Every call shares one transport (rate limit,
// Retry-After, backoff on 429/5xx), one keychain, and a per-call deadline.
// It knows nothing of cosign: attest/sign hands RemoteOptions to cosign's
// ociremote so signatures travel over the same transport.
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/time/rate"
)

// DefaultRateLimit is the requests per second per registry host a Client
// sends unless told otherwise: well above what a burst of jobs needs now that
// each repository is handshaken once, and below what public registries
// tolerate before answering 429 (which the transport then honours).
const DefaultRateLimit = 200

// DefaultMaxReferrers is how many referrers of one subject a Client
// considers unless told otherwise (WithMaxReferrers): anyone who can push
// to a repository can attach thousands, and each may cost a manifest
// read. A subject with more is refused whole (ErrTooManyReferrers), never
// read in part: which part would be the attacker's choice.
const DefaultMaxReferrers = 1024

// maxReferrersIndex bounds the referrers listing of one subject parsed
// (about 4 KiB per referrer at the cap); a larger one is refused like
// one with too many referrers. go-containerregistry has read it, under
// its own 100 MiB manifest limit, by then.
const maxReferrersIndex = 4 << 20

// Per-call deadlines. A call whose ctx has an earlier deadline keeps it.
const (
	ResolveTimeout = 30 * time.Second
	ListTimeout    = 2 * time.Minute
	FetchTimeout   = 2 * time.Minute
	CopyTimeout    = 30 * time.Minute
)

// Client talks to OCI registries. Construct it with New; it is safe for
// concurrent use and meant to be shared by the whole process.
type Client struct {
	*core
	// pusher, when set (see Writes), carries one authenticated writer per
	// repository across calls: no ping and no token exchange per write.
	pusher *remote.Pusher
}

// reuseFor is how long one Puller (its pings, token exchanges and
// per-repository fetchers) serves reads before a fresh one replaces it:
// long enough that a burst of jobs pays one handshake per repository,
// short enough that the set of repositories it holds stays bounded and a
// rotated credential is picked up.
const reuseFor = 10 * time.Minute

type core struct {
	transport *Transport
	keychain  authn.Keychain
	insecure  map[string]bool
	userAgent string
	logger    *slog.Logger
	// referrersAPI caches, per registry host, whether it serves the OCI 1.1
	// referrers API (probed once): without it, referrers are read from
	// the fallback tag directly instead of after a 404 every time.
	referrersAPI sync.Map // host → bool

	pullMu   sync.Mutex
	puller   *remote.Puller
	pullerAt time.Time
	now      func() time.Time

	// writers are authenticated raw writers by repository, replaced like
	// the Puller every reuseFor (they hold no content, only a transport).
	writeMu   sync.Mutex
	writers   map[string]*rawWriter
	writersAt time.Time
	locks     keyedMutex // see rawWriter.locks

	maxReferrers int // see WithMaxReferrers
}

type options struct {
	keychain   authn.Keychain
	base       http.RoundTripper
	rps        float64
	burst      int
	maxRetries int
	insecure   []string
	hostRPS    map[string]float64
	userAgent  string
	logger     *slog.Logger
	maxRefs    int
}

// Option configures New.
type Option func(*options) error

// WithKeychain sets where credentials come from (default: the docker config
// and its credential helpers, authn.DefaultKeychain).
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) error {
		if k == nil {
			return errors.New("nil keychain")
		}
		o.keychain = k
		return nil
	}
}

// WithRateLimit caps requests per second per registry host (0: unlimited).
func WithRateLimit(rps float64, burst int) Option {
	return func(o *options) error {
		if rps < 0 || burst < 0 {
			return fmt.Errorf("rate limit must not be negative (rps %v, burst %d)", rps, burst)
		}
		o.rps, o.burst = rps, burst
		return nil
	}
}

// WithHostRateLimit caps requests per second to one host, overriding WithRateLimit.
func WithHostRateLimit(host string, rps float64) Option {
	return func(o *options) error {
		if rps <= 0 {
			return fmt.Errorf("rate limit for %s must be positive, got %v", host, rps)
		}
		if o.hostRPS == nil {
			o.hostRPS = map[string]float64{}
		}
		o.hostRPS[host] = rps
		return nil
	}
}

// WithMaxRetries sets how often one request is retried on 429/5xx/network errors.
func WithMaxRetries(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("max retries must not be negative, got %d", n)
		}
		o.maxRetries = n
		return nil
	}
}

// WithInsecureRegistriesUnsafe allows plain HTTP to these hosts
// ("name[:port]", exactly as in references). Loopback hosts (127.0.0.0/8,
// ::1, localhost) may always use plain HTTP; every other host gets HTTPS
// unless listed here (see Transport.scheme). Even here, credentials are
// never sent in plain HTTP: such a request fails with ErrPlainHTTP.
func WithInsecureRegistriesUnsafe(hosts ...string) Option {
	return func(o *options) error { o.insecure = append(o.insecure, hosts...); return nil }
}

// WithMaxReferrers sets how many referrers of one subject Referrers
// considers (default DefaultMaxReferrers); past it, it refuses them all
// with ErrTooManyReferrers.
func WithMaxReferrers(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("max referrers must be at least 1, got %d", n)
		}
		o.maxRefs = n
		return nil
	}
}

// WithBaseTransport replaces the network transport under the retry layer.
func WithBaseTransport(rt http.RoundTripper) Option {
	return func(o *options) error { o.base = rt; return nil }
}

// WithUserAgent sets the User-Agent prefix.
func WithUserAgent(ua string) Option {
	return func(o *options) error { o.userAgent = ua; return nil }
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error { o.logger = l; return nil }
}

// New builds a Client.
func New(opts ...Option) (*Client, error) {
	o := options{
		keychain: authn.DefaultKeychain, base: remote.DefaultTransport, rps: DefaultRateLimit, burst: 2 * DefaultRateLimit,
		maxRetries: defaultMaxRetries, userAgent: "attestd", logger: slog.New(slog.DiscardHandler), maxRefs: DefaultMaxReferrers,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("registry client: %w", err)
		}
	}
	c := &Client{core: &core{
		transport: newTransport(capManifests{o.base}, o.rps, o.burst, o.maxRetries, o.logger),
		keychain:  o.keychain, insecure: map[string]bool{}, userAgent: o.userAgent, logger: o.logger, now: time.Now,
		maxReferrers: o.maxRefs,
	}}
	for h, rps := range o.hostRPS {
		c.transport.hostRPS[h] = rate.Limit(rps)
	}
	for _, h := range o.insecure {
		c.insecure[h] = true
		c.transport.insecure[h] = true
	}
	return c, nil
}

// RemoteOptions are the ggcr options for one call under ctx: the shared
// transport and keychain, ggcr's own retries switched off (the shared
// transport retries, and two retry layers would multiply), and the shared
// Puller, so reads pay the registry's ping and token exchange once per
// repository instead of once per call. Writes reuse a Pusher only in a
// client from Writes.
func (c *Client) RemoteOptions(ctx context.Context) []remote.Option {
	opts := append(c.baseOptions(), remote.WithContext(ctx))
	if p := c.sharedPuller(); p != nil {
		opts = append(opts, remote.Reuse(p))
	}
	if c.pusher != nil {
		opts = append(opts, remote.Reuse(c.pusher))
	}
	return opts
}

func (c *core) baseOptions() []remote.Option {
	return []remote.Option{
		remote.WithTransport(c.transport),
		remote.WithAuthFromKeychain(c.keychain),
		remote.WithUserAgent(c.userAgent),
		remote.WithRetryPredicate(func(error) bool { return false }),
		remote.WithRetryStatusCodes(),
	}
}

// sharedPuller returns the process's Puller, replaced every reuseFor. A
// Puller caches only authenticated transports, never content: what it
// reads is always read anew.
func (c *core) sharedPuller() *remote.Puller {
	c.pullMu.Lock()
	defer c.pullMu.Unlock()
	if c.puller == nil || c.now().Sub(c.pullerAt) > reuseFor {
		p, err := remote.NewPuller(c.baseOptions()...)
		if err != nil {
			return nil // the options are static: cannot happen; calls then handshake themselves
		}
		c.puller, c.pullerAt = p, c.now()
	}
	return c.puller
}

// Writes returns a client for one unit of work (a job's signing, one
// promotion) whose writes share a Pusher: one handshake per repository for
// all of them. A Pusher remembers what it has written and does not write
// the same blob or digest manifest twice, so it must not outlive the
// work: something deleted from the registry meanwhile would not be written
// again. Everything else is shared with c.
func (c *Client) Writes() *Client {
	if c == nil {
		return nil
	}
	p, err := remote.NewPusher(c.baseOptions()...)
	if err != nil {
		return c
	}
	return &Client{core: c.core, pusher: p}
}

// Responses counts the registry's responses by status code (see
// Transport.Responses).
func (c *Client) Responses() map[string]int64 { return c.transport.Responses() }

// NameOptions are the options to parse references with (plain HTTP for hosts
// configured insecure).
func (c *Client) NameOptions(host string) []name.Option {
	if c.insecure[host] {
		return []name.Option{name.Insecure}
	}
	return nil
}

// ParseReference parses an image reference (tag or digest), applying the
// insecure setting of its host. Short names (no registry host) are refused:
// attestd never guesses Docker Hub.
func (c *Client) ParseReference(s string) (name.Reference, error) {
	host, _, ok := strings.Cut(s, "/")
	if !ok || !(strings.ContainsAny(host, ".:") || host == "localhost") {
		return nil, fmt.Errorf("image reference %q: needs a registry host (e.g. registry.example.com/team/app:tag)", s)
	}
	ref, err := name.ParseReference(s, append(c.NameOptions(host), name.StrictValidation)...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", s, err)
	}
	return ref, nil
}

// ParseRepository parses "host/repo".
func (c *Client) ParseRepository(s string) (name.Repository, error) {
	host, _, _ := strings.Cut(s, "/")
	repo, err := name.NewRepository(s, append(c.NameOptions(host), name.StrictValidation)...)
	if err != nil {
		return name.Repository{}, fmt.Errorf("repository %q: %w", s, err)
	}
	return repo, nil
}

// IsLoopback reports whether host (with optional port) is a loopback address,
// the only place plain HTTP is allowed without an explicit setting.
func IsLoopback(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// IsNotFound reports whether err is a registry 404 (unknown manifest, blob or repo).
func IsNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}

// Resolve turns a tag or digest reference into the manifest's descriptor and
// the canonical digest reference. It asks with HEAD first (no body, and not
// counted against Docker Hub-style pull limits) and falls back to GET for
// registries that answer HEAD badly.
func (c *Client) Resolve(ctx context.Context, ref name.Reference) (name.Digest, v1.Descriptor, error) {
	ctx, cancel := withTimeout(ctx, ResolveTimeout)
	defer cancel()
	desc, err := remote.Head(ref, c.RemoteOptions(ctx)...)
	if IsNotFound(err) {
		return name.Digest{}, v1.Descriptor{}, fmt.Errorf("resolve %s: manifest not found in the registry (check the repository and tag): %w", ref, err)
	}
	if err != nil || desc.Digest.Hex == "" {
		// Fall back to GET only when the registry answered HEAD badly (e.g.
		// 405, or no digest header); a network error would fail GET too.
		var te *transport.Error
		if ctx.Err() != nil || err != nil && !errors.As(err, &te) {
			return name.Digest{}, v1.Descriptor{}, fmt.Errorf("resolve %s: %w", ref, err)
		}
		c.logger.DebugContext(ctx, "HEAD failed, trying GET", "ref", ref.String(), "err", err)
		d, gerr := remote.Get(ref, c.RemoteOptions(ctx)...)
		if gerr != nil {
			return name.Digest{}, v1.Descriptor{}, fmt.Errorf("resolve %s: %w", ref, gerr)
		}
		desc = &d.Descriptor
	}
	if d, ok := ref.(name.Digest); ok && d.DigestStr() != desc.Digest.String() {
		return name.Digest{}, v1.Descriptor{}, fmt.Errorf("resolve %s: registry answered digest %s", ref, desc.Digest)
	}
	return ref.Context().Digest(desc.Digest.String()), *desc, nil
}

// Manifest fetches the raw manifest of a digest reference and checks it
// against the digest.
func (c *Client) Manifest(ctx context.Context, ref name.Digest) ([]byte, types.MediaType, error) {
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	d, err := remote.Get(ref, c.RemoteOptions(ctx)...)
	if err != nil {
		return nil, "", fmt.Errorf("manifest %s: %w", ref, err)
	}
	return d.Manifest, d.MediaType, nil
}

// ManifestAtMost is Manifest for a manifest anyone may have pushed: one
// the registry says (HEAD) is larger than max bytes is refused unread.
func (c *Client) ManifestAtMost(ctx context.Context, ref name.Digest, max int64) ([]byte, types.MediaType, error) {
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	desc, err := remote.Head(ref, c.RemoteOptions(ctx)...)
	if err != nil {
		return nil, "", fmt.Errorf("manifest %s: %w", ref, err)
	}
	if desc.Size > max {
		return nil, "", fmt.Errorf("manifest %s: %w: %d bytes, over the %d read", ref, ErrManifestTooLarge, desc.Size, max)
	}
	raw, mt, err := c.Manifest(ctx, ref)
	if err == nil && int64(len(raw)) > max {
		return nil, "", fmt.Errorf("manifest %s: %w: %d bytes, over the %d read", ref, ErrManifestTooLarge, len(raw), max)
	}
	return raw, mt, err
}

// Child is one platform manifest of an index.
type Child struct {
	Digest   v1.Hash
	Platform string // "linux/amd64", "" when the index does not say
}

// Children lists the platform manifests of an index (nil for an image).
// Attestation entries that buildkit puts in indexes ("unknown/unknown") are
// not platforms and are left out.
func (c *Client) Children(ctx context.Context, ref name.Digest) ([]Child, error) {
	raw, mt, err := c.Manifest(ctx, ref)
	if err != nil {
		return nil, err
	}
	kids, err := ChildrenOf(raw, mt)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", ref, err)
	}
	return kids, nil
}

// ChildrenOf parses the platform manifests out of a raw manifest already in
// hand (nil for an image), so a caller that fetched it pays no second trip.
func ChildrenOf(raw []byte, mt types.MediaType) ([]Child, error) {
	if !mt.IsIndex() {
		return nil, nil
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	var out []Child
	for _, m := range im.Manifests {
		if !m.MediaType.IsImage() && !m.MediaType.IsIndex() {
			continue
		}
		p := ""
		if m.Platform != nil {
			if m.Platform.OS == "unknown" && m.Platform.Architecture == "unknown" {
				continue
			}
			p = m.Platform.String()
		}
		out = append(out, Child{Digest: m.Digest, Platform: p})
	}
	return out, nil
}

// Image returns a lazy image: layers are fetched only when read, through the
// shared transport, bounded by FetchTimeout per call made under ctx.
func (c *Client) Image(ctx context.Context, ref name.Digest) (v1.Image, error) {
	img, err := remote.Image(ref, c.RemoteOptions(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return img, nil
}

// Config fetches the image config of a digest reference.
func (c *Client) Config(ctx context.Context, ref name.Digest) (*v1.ConfigFile, error) {
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	img, err := c.Image(ctx, ref)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", ref, err)
	}
	return cf, nil
}

// ListTags lists a repository's tags (all pages).
func (c *Client) ListTags(ctx context.Context, repo name.Repository) ([]string, error) {
	ctx, cancel := withTimeout(ctx, ListTimeout)
	defer cancel()
	tags, err := remote.List(repo, c.RemoteOptions(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("list tags %s: %w", repo, err)
	}
	return tags, nil
}

// Catalog lists a registry's repositories (all pages). Many registries
// restrict /v2/_catalog; callers fall back to configured repositories.
func (c *Client) Catalog(ctx context.Context, reg name.Registry) ([]string, error) {
	ctx, cancel := withTimeout(ctx, ListTimeout)
	defer cancel()
	repos, err := remote.Catalog(ctx, reg, c.RemoteOptions(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("catalog %s: %w", reg, err)
	}
	return repos, nil
}

// Referrers lists the manifests whose subject is ref: the OCI 1.1 referrers
// API where the registry has it, else the "sha256-<hex>" fallback tag index.
// artifactType filters when non-empty. A subject listing more than the
// client's maximum (WithMaxReferrers) is refused with ErrTooManyReferrers
// before any of them is read: the cap bounds the work, whatever was pushed.
func (c *Client) Referrers(ctx context.Context, ref name.Digest, artifactType string) ([]v1.Descriptor, error) {
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	// No server-side filter: ggcr would also filter client-side on the
	// descriptors' artifactType, which some registries report wrongly
	// (see below). We filter here instead.
	im, err := c.referrersIndex(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", ref, err)
	}
	if max := c.maxReferrers; max > 0 && len(im.Manifests) > max {
		return nil, fmt.Errorf("referrers of %s: %w: %d are attached, attestd considers at most %d per subject and reads none of them: delete the stray referrers from the registry", ref, ErrTooManyReferrers, len(im.Manifests), max)
	}
	out := im.Manifests
	if artifactType != "" {
		out = out[:0]
		for _, d := range im.Manifests {
			at := d.ArtifactType
			if at == "" || at == string(types.OCIConfigJSON) || at == "application/vnd.oci.empty.v1+json" {
				// Some registries (ggcr's own) report the config media type
				// instead of the manifest's artifactType: read the manifest.
				if at, err = c.artifactType(ctx, ref.Context().Digest(d.Digest.String())); err != nil {
					return nil, fmt.Errorf("referrers of %s: %w", ref, err)
				}
				d.ArtifactType = at
			}
			if at == artifactType {
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// referrersIndex reads ref's referrers: through the API where the registry
// has it, else from the "sha256-<hex>" fallback tag (empty when absent).
func (c *Client) referrersIndex(ctx context.Context, ref name.Digest) (*v1.IndexManifest, error) {
	api, err := c.hasReferrersAPI(ctx, ref)
	if err != nil {
		return nil, err
	}
	var idx v1.ImageIndex
	if api {
		idx, err = remote.Referrers(ref, c.RemoteOptions(ctx)...)
	} else {
		tag := ref.Context().Tag(strings.Replace(ref.DigestStr(), ":", "-", 1))
		idx, err = remote.Index(tag, c.RemoteOptions(ctx)...)
		if IsNotFound(err) {
			return &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}, nil
		}
	}
	if err != nil {
		return nil, err
	}
	raw, err := idx.RawManifest()
	if err != nil {
		return nil, err
	}
	if len(raw) > maxReferrersIndex {
		return nil, fmt.Errorf("%w: the listing is %d bytes, over the %d attestd parses per subject: delete the stray referrers from the registry", ErrTooManyReferrers, len(raw), maxReferrersIndex)
	}
	return idx.IndexManifest()
}

// hasReferrersAPI probes ref's registry once: GET …/referrers/<digest>
// answers 200 where the API exists and 404 where it does not (OCI
// distribution spec 1.1).
func (c *Client) hasReferrersAPI(ctx context.Context, ref name.Digest) (bool, error) {
	host := ref.Context().RegistryStr()
	if v, ok := c.referrersAPI.Load(host); ok {
		return v.(bool), nil
	}
	auth, err := c.keychain.Resolve(ref.Context())
	if err != nil {
		return false, err
	}
	rt, err := transport.NewWithContext(ctx, ref.Context().Registry, auth, transport.NewUserAgent(c.transport, c.userAgent), []string{ref.Context().Scope(transport.PullScope)})
	if err != nil {
		return false, err
	}
	u := fmt.Sprintf("%s://%s/v2/%s/referrers/%s", ref.Context().Scheme(), host, ref.Context().RepositoryStr(), ref.DigestStr())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", string(types.OCIImageIndex))
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return false, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		c.referrersAPI.Store(host, true)
		return true, nil
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusBadRequest:
		c.referrersAPI.Store(host, false)
		return false, nil
	default:
		return false, fmt.Errorf("probing the referrers API of %s: %s", host, resp.Status)
	}
}

// artifactType reads a manifest's artifactType (or its config media type).
func (c *Client) artifactType(ctx context.Context, ref name.Digest) (string, error) {
	raw, _, err := c.ManifestAtMost(ctx, ref, maxReferrerManifest)
	if err != nil {
		return "", err
	}
	var m struct {
		ArtifactType string `json:"artifactType"`
		Config       struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("manifest %s: %w", ref, err)
	}
	if m.ArtifactType != "" {
		return m.ArtifactType, nil
	}
	return m.Config.MediaType, nil
}

// Copy copies src (by digest) into the repository dst under the same digest:
// every platform child and every layer, mounting blobs across repositories
// when both live on one registry. It writes no tag; see Tag. The gate
// copies with CopyImage and PutManifest instead: exactly what it planned.
func (c *Client) Copy(ctx context.Context, src name.Digest, dst name.Repository) (name.Digest, error) {
	ctx, cancel := withTimeout(ctx, CopyTimeout)
	defer cancel()
	opts := c.RemoteOptions(ctx)
	desc, err := remote.Get(src, opts...)
	if err != nil {
		return name.Digest{}, fmt.Errorf("copy %s: %w", src, err)
	}
	if !desc.MediaType.IsIndex() {
		return writeImage(desc, src, dst, opts)
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return name.Digest{}, fmt.Errorf("copy %s: %w", src, err)
	}
	to := dst.Digest(desc.Digest.String())
	if err := remote.WriteIndex(to, idx, opts...); err != nil {
		return name.Digest{}, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return to, nil
}

// CopyImage copies the image manifest src (by digest) with its config and
// layers into dst, refusing anything the registry serves as another media
// type than want ("" : any image manifest type) — an index above all,
// whose children nobody asked to copy. The check and the copy read one
// response, so the manifest cannot change type between them.
func (c *Client) CopyImage(ctx context.Context, src name.Digest, dst name.Repository, want types.MediaType) (name.Digest, error) {
	ctx, cancel := withTimeout(ctx, CopyTimeout)
	defer cancel()
	opts := c.RemoteOptions(ctx)
	desc, err := remote.Get(src, opts...)
	if err != nil {
		return name.Digest{}, fmt.Errorf("copy %s: %w", src, err)
	}
	if !desc.MediaType.IsImage() || (want != "" && desc.MediaType != want) {
		w := string(want)
		if w == "" {
			w = "an image manifest"
		}
		return name.Digest{}, fmt.Errorf("copy %s: the registry serves it as %s, not %s: refused", src, desc.MediaType, w)
	}
	return writeImage(desc, src, dst, opts)
}

// writeImage writes the image desc describes into dst under its digest.
func writeImage(desc *remote.Descriptor, src name.Digest, dst name.Repository, opts []remote.Option) (name.Digest, error) {
	img, err := desc.Image()
	if err != nil {
		return name.Digest{}, fmt.Errorf("copy %s: %w", src, err)
	}
	to := dst.Digest(desc.Digest.String())
	if err := remote.Write(to, img, opts...); err != nil {
		return name.Digest{}, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return to, nil
}

// Tag points tag at the manifest already present as ref in the same repository.
func (c *Client) Tag(ctx context.Context, ref name.Digest, tag name.Tag) error {
	if ref.Context() != tag.Context() {
		return fmt.Errorf("tag %s: %s is in another repository", tag, ref)
	}
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	opts := c.RemoteOptions(ctx)
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return fmt.Errorf("tag %s: %w", tag, err)
	}
	if err := remote.Tag(tag, desc, opts...); err != nil {
		return fmt.Errorf("tag %s: %w", tag, err)
	}
	return nil
}

// PushArtifact stores data as a one-layer OCI artifact that refers to
// subject (OCI 1.1 subject; the registry's referrers API or ggcr's tag
// fallback index lists it) and returns its digest reference. The config is
// the empty JSON object typed artifactType, the pre-1.1 artifact pattern
// every registry accepts.
func (c *Client) PushArtifact(ctx context.Context, subject name.Digest, artifactType, mediaType string, data []byte, annotations map[string]string) (name.Digest, error) {
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	opts := c.RemoteOptions(ctx)
	sub, err := remote.Head(subject, opts...)
	if err != nil {
		return name.Digest{}, fmt.Errorf("artifact for %s: %w", subject, err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.MediaType(artifactType))
	img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(data, types.MediaType(mediaType))})
	if err != nil {
		return name.Digest{}, err
	}
	if len(annotations) > 0 {
		img = mutate.Annotations(img, annotations).(v1.Image)
	}
	withSubject := mutate.Subject(img, v1.Descriptor{MediaType: sub.MediaType, Digest: sub.Digest, Size: sub.Size}).(v1.Image)
	d, err := withSubject.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	ref := subject.Context().Digest(d.String())
	if err := remote.Write(ref, withSubject, opts...); err != nil {
		return name.Digest{}, fmt.Errorf("push artifact for %s: %w", subject, err)
	}
	return ref, nil
}

// Blob opens a blob of repo by digest (as stored: no decompression). The
// caller closes it; reads are bounded by FetchTimeout under ctx.
func (c *Client) Blob(ctx context.Context, repo name.Repository, digest string) (io.ReadCloser, error) {
	l, err := remote.Layer(repo.Digest(digest), c.RemoteOptions(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("blob %s@%s: %w", repo, digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("blob %s@%s: %w", repo, digest, err)
	}
	return rc, nil
}

// rawManifest is a manifest to put as it is, byte for byte.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// PutManifest writes raw (of media type mt) as ref, byte for byte: nothing
// it refers to is copied (the caller copies exactly the children it
// verified first; a registry refuses an index whose children are absent).
// The digest of raw must be ref's.
func (c *Client) PutManifest(ctx context.Context, ref name.Digest, raw []byte, mt types.MediaType) error {
	got, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	if got.String() != ref.DigestStr() {
		return fmt.Errorf("put %s: the manifest's digest is %s", ref, got)
	}
	ctx, cancel := withTimeout(ctx, FetchTimeout)
	defer cancel()
	if err := remote.Put(ref, rawManifest{raw, mt}, c.RemoteOptions(ctx)...); err != nil {
		return fmt.Errorf("put %s: %w", ref, err)
	}
	return nil
}
