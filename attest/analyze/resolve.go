package analyze

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/layers"
	"github.com/attestd/attestd/store/registry"
)

// TagSource is intake's tag history (*store.DB).
type TagSource interface {
	TagsOf(ctx context.Context, repo, digest string) ([]string, error)
}

// Resolver is the pipeline's resolve stage on the registry client: the
// digest must still exist; its manifest, an index's platform children and
// the staging tags intake recorded for it are carried to every later
// stage on the Target, so no stage fetches them again.
type Resolver struct {
	c            *registry.Client
	tags         TagSource
	maxManifests int
}

var _ pipeline.Resolver = (*Resolver)(nil)

// ResolverOption configures NewResolver.
type ResolverOption func(*Resolver)

// WithMaxIndexManifests bounds the entries of an index (default
// DefaultMaxIndexManifests); a larger index fails resolve for good.
func WithMaxIndexManifests(n int) ResolverOption {
	return func(r *Resolver) {
		if n > 0 {
			r.maxManifests = n
		}
	}
}

// NewResolver resolves on c; tags (nil: none) supplies the staging tags.
func NewResolver(c *registry.Client, tags TagSource, opts ...ResolverOption) *Resolver {
	r := &Resolver{c: c, tags: tags, maxManifests: DefaultMaxIndexManifests}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Resolve describes ref (host/repo@sha256:…).
func (r *Resolver) Resolve(ctx context.Context, ref string) (*pipeline.Target, error) {
	parsed, err := r.c.ParseReference(ref)
	if err != nil {
		return nil, pipeline.Permanent(err)
	}
	d, ok := parsed.(name.Digest)
	if !ok {
		return nil, pipeline.Permanent(fmt.Errorf("resolve %s: jobs address images by digest", ref))
	}
	// One GET: the manifest (digest-checked by ggcr) gives the media type,
	// the platform children and whether it is an image at all.
	raw, mt, err := r.c.Manifest(ctx, d)
	if registry.IsNotFound(err) {
		return nil, pipeline.Permanent(fmt.Errorf("%s is gone from the registry: %w", ref, err))
	}
	if errors.Is(err, registry.ErrManifestTooLarge) {
		return nil, pipeline.Permanent(err)
	}
	if err != nil {
		return nil, err
	}
	t := &pipeline.Target{Ref: ref, MediaType: string(mt), Manifest: raw}
	if r.tags != nil {
		if t.Tags, err = r.tags.TagsOf(ctx, d.Context().String(), d.DigestStr()); err != nil {
			return nil, err
		}
	}
	switch {
	case mt.IsImage():
		t.NotImage = notImage(raw)
	case mt.IsIndex():
		// Counted before anything is recorded: an index of thousands of
		// children must not become a record of thousands of children.
		var im struct {
			Manifests []json.RawMessage `json:"manifests"`
		}
		if err := json.Unmarshal(raw, &im); err != nil {
			return nil, pipeline.Permanent(fmt.Errorf("index %s: %w", ref, err))
		}
		if err := checkIndexSize(ref, len(im.Manifests), r.maxManifests); err != nil {
			return nil, pipeline.Permanent(err)
		}
		kids, err := registry.ChildrenOf(raw, mt)
		if err != nil {
			return nil, pipeline.Permanent(fmt.Errorf("index %s: %w", ref, err))
		}
		for _, k := range kids {
			t.Children = append(t.Children, store.Child{Digest: k.Digest.String(), Platform: k.Platform})
		}
	default:
		t.NotImage = "media type " + string(mt)
	}
	return t, nil
}

// imageConfigTypes are the config media types of runnable images.
var imageConfigTypes = map[string]bool{
	"application/vnd.oci.image.config.v1+json":       true,
	"application/vnd.docker.container.image.v1+json": true,
}

// notImage says why a manifest is a referrer artifact rather than an image
// ("" for an image): it names a subject, declares an artifactType, or its
// config is not an image config (cosign bundles use the empty config).
func notImage(raw []byte) string {
	var m struct {
		ArtifactType string `json:"artifactType"`
		Subject      *struct {
			Digest string `json:"digest"`
		} `json:"subject"`
		Config struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return "unreadable manifest: " + err.Error()
	}
	switch {
	case m.Subject != nil:
		return "it refers to " + m.Subject.Digest + " (a signature, attestation or SBOM)"
	case m.ArtifactType != "":
		return "artifact type " + m.ArtifactType
	case !imageConfigTypes[m.Config.MediaType]:
		return "config media type " + m.Config.MediaType
	}
	return ""
}

// Stage adapts an Analyzer to the pipeline's analyse stage.
type Stage struct{ Analyzer *Analyzer }

// Analyze analyses the resolved target.
func (s Stage) Analyze(ctx context.Context, t *pipeline.Target) (*pipeline.Analysis, error) {
	res, err := s.Analyzer.Analyze(ctx, Request{
		Ref: t.Ref, MediaType: t.MediaType, Manifest: t.Manifest, Children: t.Children, Tags: t.Tags, Source: t.Source, Pusher: t.Pusher,
	})
	if registry.IsNotFound(err) || overLimit(err) {
		return nil, pipeline.Permanent(err)
	}
	if err != nil {
		return nil, err
	}
	return &pipeline.Analysis{Artifacts: res.Artifacts, Facts: res.Facts}, nil
}

// overLimit reports an image over a limit (a hostile or oversized image):
// it is addressed by digest, so no retry can change the answer, and the
// error says which setting to raise if the image is legitimate.
func overLimit(err error) bool {
	return errors.Is(err, layers.ErrTooLarge) || errors.Is(err, registry.ErrManifestTooLarge) || errors.Is(err, ErrLimit)
}
