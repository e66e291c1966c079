package verify

import (
	"strconv"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
)

// verdict is what verifying one bundle cryptographically found: who signed
// (the certificate), what (the statement), or why it failed (reason).
type verdict struct {
	reason        string // non-empty: rejected
	cert          certificate.Summary
	predicateType string
	statement     string
	predicate     []byte
}

func (vd *verdict) size() int64 {
	return int64(len(vd.predicate)+len(vd.reason)+len(vd.statement)) + 512
}

// maxVerdictBytes bounds what the verdict cache holds (mostly predicates:
// an SBOM can be megabytes).
const maxVerdictBytes = 128 << 20

// verdicts remembers verdicts by bundle content and subject. A gate
// verifies the same bundles several times per image — evaluating,
// re-deciding at promotion, and in the destination after the copy — and a
// verdict depends only on the bundle's bytes, the subject's digest and the
// Verifier's trust material: keyed by the bundle blob's digest (which the
// client checks every byte it reads against) and the subject, it is
// verified once. Who signed is judged every time (Verifier.allows), so a
// changed policy is never answered from here. Oldest entries go first.
type verdicts struct {
	mu    sync.Mutex
	m     map[string]*verdict
	order []string
	bytes int64
	max   int64
}

func (c *verdicts) get(key string) *verdict {
	if c == nil || key == "" {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *verdicts) put(key string, vd *verdict) {
	if c == nil || key == "" || vd.size() > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*verdict{}
	}
	if _, ok := c.m[key]; ok {
		return
	}
	c.m[key] = vd
	c.order = append(c.order, key)
	c.bytes += vd.size()
	for c.bytes > c.max && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		c.bytes -= c.m[old].size()
		delete(c.m, old)
	}
}

// verdictKey names a bundle (its blob's digest and the size its manifest
// declares: a manifest that lies about the size must fail as it would
// uncached) verified for subject.
func verdictKey(blob v1.Descriptor, subject string) string {
	return blob.Digest.String() + " " + strconv.FormatInt(blob.Size, 10) + " " + subject
}

// maxLayerEntries bounds the layer cache; an entry holds a digest, a size,
// a media type and at most maxReason bytes of reason.
const (
	maxLayerEntries = 1 << 16
	maxReason       = 512
)

// layerCache remembers, by referrer manifest digest and subject, the
// bundle layer the manifest names or why it names none (see
// Verifier.bundleLayer). Oldest entries go first.
type layerCache struct {
	mu    sync.Mutex
	m     map[string]layerEntry
	order []string
}

type layerEntry struct {
	layer  v1.Descriptor
	reason string
}

func (c *layerCache) get(key string) (v1.Descriptor, string, bool) {
	if c == nil {
		return v1.Descriptor{}, "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	return e.layer, e.reason, ok
}

func (c *layerCache) put(key string, l v1.Descriptor, reason string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]layerEntry{}
	}
	if _, ok := c.m[key]; ok {
		return
	}
	if len(reason) > maxReason {
		reason = reason[:maxReason] + "…"
	}
	// Only what a bundle layer needs: the rest of a descriptor
	// (annotations, data, URLs) is the writer's, and unbounded.
	c.m[key] = layerEntry{v1.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size}, reason}
	c.order = append(c.order, key)
	if len(c.order) > maxLayerEntries {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
}
