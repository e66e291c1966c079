// Package analyze is the analysis stage: for an image, or every platform
// manifest of an index, it fetches each layer once into the layer cache,
// reads the image once (sbom.Scan) and derives everything from that one
// local copy — SPDX and CycloneDX SBOMs, the hardening report and SLSA
// provenance — then stores the documents as content-addressed blobs and
// returns what the pipeline records on the digest.
//
// A step is done only when every part of it is: any failed fetch, scan,
// check or write fails the whole analysis, and nothing is recorded.
package analyze

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/slsa"
	"github.com/attestd/attestd/sbom"
	"github.com/attestd/attestd/sbom/harden"
	"github.com/attestd/attestd/sbom/vuln"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/layers"
	"github.com/attestd/attestd/store/registry"
)

// Kinds of artifacts, as recorded in store.Artifact.Kind.
const (
	KindSPDX       = "spdx"
	KindCycloneDX  = "cyclonedx"
	KindHardening  = "hardening"
	KindProvenance = "provenance"
	KindVulns      = "vulnerabilities"
)

// Predicate types the SBOMs are attested as (cosign's --type spdxjson and
// cyclonedx map to these).
const (
	PredicateSPDX      = attest.PredicateSPDX
	PredicateCycloneDX = attest.PredicateCycloneDX
)

// MediaTypeJSON is the media type of the hardening report and provenance
// statement blobs.
const (
	MediaTypeHardening = "application/vnd.attestd.hardening.v1+json"
	MediaTypeInToto    = "application/vnd.in-toto+json"
	MediaTypeVulns     = "application/vnd.attestd.vulnerabilities.v1+json"
)

// VulnScanner matches an SBOM against the vulnerability database
// (vuln.Scanner). Any error fails the analysis: a digest is never
// recorded as analysed without its scan.
type VulnScanner interface {
	Scan(ctx context.Context, in vuln.Input) (*vuln.Report, error)
}

// Blobs stores documents by content digest.
type Blobs interface {
	PutBlob(ctx context.Context, data []byte) (string, error)
}

// Options configure the analyser; zero values take defaults.
type Options struct {
	SBOM   sbom.Options // WorkDir required
	Harden harden.Options
	// Builders map repositories/pushers to provenance builder IDs.
	Builders []slsa.Builder
	// LayerConcurrency bounds parallel layer downloads of one job. Default 3.
	LayerConcurrency int
	// Image bounds the layers of one platform image together: uncompressed
	// bytes, compressed bytes (as the manifest declares them) and tar
	// entries. Zero fields: no limit. Each layer alone is bounded by the
	// layer cache (layers.WithLayerLimits).
	Image layers.ImageLimits
	// MaxIndexManifests bounds the entries of an index (platform images
	// and attestation manifests). Default DefaultMaxIndexManifests.
	MaxIndexManifests int
	// MaxLayers bounds the layers of one platform image. Default
	// DefaultMaxLayers.
	MaxLayers int

	Version string // attestd's version, for provenance
	// Vulns scans each platform's SBOM; nil disables the scan.
	Vulns  VulnScanner
	Logger *slog.Logger
	Now    func() time.Time
}

// Analyzer runs the analysis stage.
type Analyzer struct {
	reg   *registry.Client
	cache *layers.Cache
	blobs Blobs
	o     Options
	log   *slog.Logger
}

// New returns an Analyzer.
func New(reg *registry.Client, cache *layers.Cache, blobs Blobs, o Options) (*Analyzer, error) {
	if reg == nil || cache == nil || blobs == nil {
		return nil, errors.New("analyze: registry, layer cache and blob store are required")
	}
	if o.SBOM.WorkDir == "" {
		return nil, errors.New("analyze: SBOM work dir is required")
	}
	if err := os.MkdirAll(o.SBOM.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	if o.LayerConcurrency <= 0 {
		o.LayerConcurrency = 3
	}
	if o.MaxIndexManifests <= 0 {
		o.MaxIndexManifests = DefaultMaxIndexManifests
	}
	if o.MaxLayers <= 0 {
		o.MaxLayers = DefaultMaxLayers
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.SBOM.ToolName == "" {
		o.SBOM.ToolName, o.SBOM.ToolVersion = "attestd", o.Version
	}
	l := o.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &Analyzer{reg: reg, cache: cache, blobs: blobs, o: o, log: l}, nil
}

// Warm builds now what the first analysis would otherwise build on its
// clock: syft's shared license scanner (about 0.6 s of CPU) and the open
// vulnerability database (checksum verified). A daemon calls it before
// its pipeline starts. A missing or stale database is reported, not
// fatal: each job's scan says so again, and one installed later is
// opened then.
func (a *Analyzer) Warm() error {
	var errs []error
	if l := a.o.SBOM.Licenses; l != nil {
		errs = append(errs, l.Build())
	}
	if o, ok := a.o.Vulns.(interface{ Open() error }); ok {
		errs = append(errs, o.Open())
	}
	return errors.Join(errs...)
}

// CleanWorkDir removes scans a crash left behind. Call once at start, before
// any Analyze.
func (a *Analyzer) CleanWorkDir() error {
	des, err := os.ReadDir(a.o.SBOM.WorkDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range des {
		if strings.HasPrefix(de.Name(), "scan-") {
			errs = append(errs, os.RemoveAll(filepath.Join(a.o.SBOM.WorkDir, de.Name())))
		}
	}
	return errors.Join(errs...)
}

// Request is one digest to analyse.
type Request struct {
	Ref       string // host/repo@sha256:…
	MediaType string
	// Manifest is Ref's manifest as resolved (read by digest, so checked
	// against it); nil: Analyze reads it.
	Manifest []byte
	Children []store.Child
	Tags     []string // tags currently pointing at Ref
	Source   string   // intake source name
	Pusher   string
}

// Result is what the pipeline records on the digest.
type Result struct {
	Artifacts []store.Artifact
	Facts     []store.Facts
}

// Analyze analyses req. For an index it analyses every platform manifest
// and writes index-level provenance covering all of them.
func (a *Analyzer) Analyze(ctx context.Context, req Request) (*Result, error) {
	ref, err := name.NewDigest(req.Ref)
	if err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	repo := ref.Context()
	res := &Result{}
	raw, mt := req.Manifest, types.MediaType(req.MediaType)
	if raw == nil || mt == "" {
		if raw, mt, err = a.reg.Manifest(ctx, ref); err != nil {
			return nil, err
		}
	}
	if !mt.IsIndex() {
		if err := a.image(ctx, req, repo, ref.DigestStr(), "", raw, nil, res); err != nil {
			return nil, err
		}
		return res, nil
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("analyze: index %s: %w", ref, err)
	}
	if err := checkIndexSize(ref.String(), len(idx.Manifests), a.o.MaxIndexManifests); err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	kids, err := registry.ChildrenOf(raw, mt)
	if err != nil {
		return nil, fmt.Errorf("analyze: index %s: %w", ref, err)
	}
	if len(kids) == 0 {
		return nil, fmt.Errorf("analyze: index %s lists no platform manifests", ref)
	}
	subjects := []slsa.Subject{{Name: repo.Name(), Digest: ref.DigestStr()}}
	for _, k := range kids {
		child := repo.Digest(k.Digest.String())
		craw, cmt, err := a.reg.Manifest(ctx, child)
		if err != nil {
			return nil, err
		}
		if cmt.IsIndex() {
			return nil, fmt.Errorf("analyze: %s: nested index %s is not supported", ref, child)
		}
		bk, err := a.buildKitProvenance(ctx, idx, k.Digest, repo)
		if err != nil {
			return nil, err
		}
		if err := a.image(ctx, req, repo, k.Digest.String(), k.Platform, craw, bk, res); err != nil {
			return nil, err
		}
		subjects = append(subjects, slsa.Subject{Name: repo.Name(), Digest: k.Digest.String()})
	}
	st, err := slsa.Statement(slsa.Input{
		Subjects: subjects, Repository: repo.Name(), Tags: req.Tags,
		EventSource: req.Source, Pusher: req.Pusher,
		BuilderID:  slsa.BuilderFor(a.o.Builders, repo.Name(), req.Pusher),
		ObservedAt: a.o.Now(), Version: a.o.Version,
	})
	if err != nil {
		return nil, err
	}
	if err := a.put(ctx, res, store.Artifact{Subject: ref.DigestStr(), Kind: KindProvenance, MediaType: MediaTypeInToto, PredicateType: slsa.PredicateType}, st); err != nil {
		return nil, err
	}
	return res, nil
}

// image analyses one platform image.
func (a *Analyzer) image(ctx context.Context, req Request, repo name.Repository, digest, platform string, raw []byte, bk *slsa.Attached, res *Result) error {
	ref := repo.Digest(digest)
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("analyze: manifest %s: %w", ref, err)
	}
	if len(m.Layers) > a.o.MaxLayers {
		return fmt.Errorf("analyze: %s: %w: it has %d layers, more than analysis.max_layers (%d): raise it if this image is legitimate", ref, ErrLimit, len(m.Layers), a.o.MaxLayers)
	}
	if m.Config.MediaType != "" && !m.Config.MediaType.IsConfig() {
		return fmt.Errorf("analyze: %s: config media type %s is not an image config", ref, m.Config.MediaType)
	}
	rawCfg, err := a.blob(ctx, repo, m.Config.Digest.String(), 4<<20)
	if err != nil {
		return err
	}
	cf, err := sbom.ConfigFile(rawCfg)
	if err != nil {
		return fmt.Errorf("analyze: config of %s: %w", ref, err)
	}
	if p := cf.Platform(); platform == "" && p != nil && p.OS != "" {
		platform = p.String()
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("analyze: %s: manifest has %d layers, config %d diff IDs", ref, len(m.Layers), len(cf.RootFS.DiffIDs))
	}

	// Fetch every layer once (bounded), into the shared cache.
	handles := make([]*layers.Handle, len(m.Layers))
	defer func() {
		for _, h := range handles {
			if h != nil {
				h.Release()
			}
		}
	}()
	size := m.Config.Size
	var compressed int64
	for i, l := range m.Layers {
		size += l.Size
		if !isTarLayer(l.MediaType) {
			return fmt.Errorf("analyze: %s: layer %d has media type %s, not a filesystem layer", ref, i, l.MediaType)
		}
		// The declared sizes are what the downloads may cost (a blob may
		// not exceed its own): refuse before fetching anything.
		if compressed += max(l.Size, 0); a.o.Image.CompressedBytes.N > 0 && compressed > a.o.Image.CompressedBytes.N {
			return fmt.Errorf("analyze: %s: %w", ref, &layers.LimitError{Digest: l.Digest.String(), Limit: a.o.Image.CompressedBytes, Image: true, Compressed: true})
		}
	}
	budget := layers.NewBudget(a.o.Image)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(a.o.LayerConcurrency)
	for i, l := range m.Layers {
		g.Go(func() error {
			h, err := a.cache.Get(gctx, layers.Layer{
				Digest: l.Digest.String(), DiffID: cf.RootFS.DiffIDs[i].String(),
				MediaType: string(l.MediaType), Size: l.Size,
			}, func(ctx context.Context) (io.ReadCloser, error) {
				return a.reg.Blob(ctx, repo, l.Digest.String())
			}, budget)
			if err != nil {
				return fmt.Errorf("analyze: %s: %w", ref, err)
			}
			handles[i] = h
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	img := sbom.Image{Name: ref.String(), RawManifest: raw, RawConfig: rawCfg}
	if len(req.Tags) > 0 {
		img.Tag = req.Tags[0]
	}
	for i, h := range handles {
		img.Layers = append(img.Layers, sbom.LayerFile{
			Digest: h.Digest, DiffID: cf.RootFS.DiffIDs[i].String(), MediaType: h.MediaType, Size: h.Size, Path: h.Path,
		})
	}

	scan, err := sbom.Open(ctx, img, a.o.SBOM)
	if err != nil {
		return err
	}
	defer scan.Close()
	docs, err := scan.Documents(ctx)
	if err != nil {
		return err
	}
	files, err := scan.Files()
	if err != nil {
		return err
	}
	hin := harden.Input{Config: cf, Open: scan.OpenFile, Size: size, OSPackages: docs.OSPackages}
	for _, f := range files {
		hin.Files = append(hin.Files, harden.File{Path: f.Path, Mode: f.Mode, Size: f.Size, UID: f.UID, GID: f.GID, Link: f.Link})
	}
	hin.Tag = pickTag(req.Tags)
	report, err := harden.Run(ctx, hin, a.o.Harden)
	if err != nil {
		return fmt.Errorf("analyze: %s: %w", ref, err)
	}
	hjson, err := json.Marshal(report)
	if err != nil {
		return fmt.Errorf("analyze: %w", err)
	}
	prov, err := slsa.Statement(slsa.Input{
		Subjects:     []slsa.Subject{{Name: repo.Name(), Digest: digest}},
		Repository:   repo.Name(),
		Tags:         req.Tags,
		Platform:     platform,
		ConfigDigest: m.Config.Digest.String(),
		Layers:       len(m.Layers),
		Labels:       cf.Config.Labels,
		Created:      cf.Created.Time,
		EventSource:  req.Source,
		Pusher:       req.Pusher,
		BuilderID:    slsa.BuilderFor(a.o.Builders, repo.Name(), req.Pusher),
		BuildKit:     bk,
		ObservedAt:   a.o.Now(),
		Version:      a.o.Version,
	})
	if err != nil {
		return err
	}
	type doc struct {
		art  store.Artifact
		body []byte
	}
	out := []doc{
		{store.Artifact{Kind: KindSPDX, MediaType: sbom.MediaTypeSPDX, PredicateType: PredicateSPDX}, docs.SPDX},
		{store.Artifact{Kind: KindCycloneDX, MediaType: sbom.MediaTypeCycloneDX, PredicateType: PredicateCycloneDX}, docs.CycloneDX},
		{store.Artifact{Kind: KindHardening, MediaType: MediaTypeHardening, PredicateType: harden.PredicateType}, hjson},
		{store.Artifact{Kind: KindProvenance, MediaType: MediaTypeInToto, PredicateType: slsa.PredicateType}, prov},
	}
	facts := store.Facts{
		Subject: digest, Platform: platform, Packages: docs.Packages, Size: size,
		Failed: report.Failed, BaseImage: cf.Config.Labels[harden.LabelBaseName],
	}
	if a.o.Vulns != nil {
		body, counts, err := a.scanVulns(ctx, repo.Name(), digest, docs.CycloneDX)
		if err != nil {
			return fmt.Errorf("analyze: %s: vulnerability scan: %w", ref, err)
		}
		out = append(out, doc{store.Artifact{Kind: KindVulns, MediaType: MediaTypeVulns, PredicateType: vuln.PredicateType}, body})
		facts.Vulns = counts
	}
	for _, d := range out {
		d.art.Subject, d.art.Platform = digest, platform
		if err := a.put(ctx, res, d.art, d.body); err != nil {
			return err
		}
	}
	res.Facts = append(res.Facts, facts)
	a.log.InfoContext(ctx, "analysed", "digest", digest, "platform", platform, "packages", docs.Packages,
		"hardening_failed", len(report.Failed), "layers", len(m.Layers), "vulnerabilities", vulnTotal(facts.Vulns))
	return nil
}

// scanVulns matches the platform's CycloneDX SBOM — the document attestd
// attests, so a re-scan of the stored SBOM sees exactly the same packages —
// and returns the cosign vuln predicate and the counts.
func (a *Analyzer) scanVulns(ctx context.Context, repo, digest string, cdx []byte) ([]byte, *store.VulnCounts, error) {
	rep, err := a.o.Vulns.Scan(ctx, vuln.Input{SBOM: cdx, Repository: repo, Digest: digest})
	if err != nil {
		return nil, nil, err
	}
	body, err := rep.Predicate("https://attestd.dev/analyze", repo+"@"+digest, "https://attestd.dev/attestd@"+a.o.Version)
	if err != nil {
		return nil, nil, err
	}
	return body, VulnCounts(rep), nil
}

// VulnCounts is what the store records of a scan.
func VulnCounts(rep *vuln.Report) *store.VulnCounts {
	c := rep.Counts
	return &store.VulnCounts{
		Critical: c.Critical, High: c.High, Medium: c.Medium, Low: c.Low, Negligible: c.Negligible, Unknown: c.Unknown,
		UnknownAs: c.UnknownAs, Suppressed: c.Suppressed, MaxSeverity: c.MaxSeverity,
		DB: rep.DB.Digest, DBBuilt: rep.DB.Built, ScannedAt: rep.Finished, Findings: rep.Findings(),
	}
}

func vulnTotal(c *store.VulnCounts) int {
	if c == nil {
		return 0
	}
	return c.Critical + c.High + c.Medium + c.Low + c.Negligible + c.Unknown
}

func (a *Analyzer) put(ctx context.Context, res *Result, art store.Artifact, body []byte) error {
	d, err := a.blobs.PutBlob(ctx, body)
	if err != nil {
		return fmt.Errorf("analyze: %w", err)
	}
	art.Digest, art.Size = d, int64(len(body))
	res.Artifacts = append(res.Artifacts, art)
	return nil
}

// blob fetches a small blob (a config) into memory, bounded and verified.
func (a *Analyzer) blob(ctx context.Context, repo name.Repository, digest string, max int64) ([]byte, error) {
	rc, err := a.reg.Blob(ctx, repo, digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("analyze: blob %s: %w", digest, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("analyze: blob %s: %w: larger than %d bytes; no image config needs that much", digest, ErrLimit, max)
	}
	h, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil || h.String() != digest {
		return nil, fmt.Errorf("analyze: blob %s: content hashes to %s", digest, h)
	}
	return b, nil
}

// DefaultMaxLayers bounds an image's layers unless configured: Docker's
// builders stop at 127, and each layer is a download, a cache file and a
// mount at promotion.
const DefaultMaxLayers = 256

// DefaultMaxIndexManifests bounds an index's entries unless configured: a
// multi-platform image lists a platform image and, from BuildKit, an
// attestation manifest per platform, a few dozen at most.
const DefaultMaxIndexManifests = 128

// checkIndexSize refuses an index with more than max entries: each is a
// manifest to read and a platform to analyse, sign and promote.
func checkIndexSize(ref string, n, max int) error {
	if n > max {
		return fmt.Errorf("index %s: %w: it lists %d manifests, more than analysis.max_index_manifests (%d): raise it if this image is legitimate", ref, ErrLimit, n, max)
	}
	return nil
}

func isTarLayer(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerUncompressedLayer, types.DockerForeignLayer,
		types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer,
		types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer:
		return true
	}
	return false
}

// pickTag prefers "latest" (so the check sees it) and otherwise the first tag.
func pickTag(tags []string) string {
	for _, t := range tags {
		if t == "latest" {
			return t
		}
	}
	if len(tags) > 0 {
		return tags[0]
	}
	return ""
}

// buildKitProvenance finds the provenance BuildKit attached to child in
// idx: an attestation manifest (annotation vnd.docker.reference.digest =
// child) with a layer annotated in-toto.io/predicate-type = SLSA
// provenance. It returns nil when there is none.
func (a *Analyzer) buildKitProvenance(ctx context.Context, idx *v1.IndexManifest, child v1.Hash, repo name.Repository) (*slsa.Attached, error) {
	for _, m := range idx.Manifests {
		if m.Annotations["vnd.docker.reference.type"] != "attestation-manifest" ||
			m.Annotations["vnd.docker.reference.digest"] != child.String() {
			continue
		}
		ref := repo.Digest(m.Digest.String())
		raw, _, err := a.reg.Manifest(ctx, ref)
		if err != nil {
			return nil, err
		}
		am, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("analyze: attestation manifest %s: %w", ref, err)
		}
		for _, l := range am.Layers {
			pt := l.Annotations["in-toto.io/predicate-type"]
			if strings.HasPrefix(pt, "https://slsa.dev/provenance/") {
				return &slsa.Attached{Digest: m.Digest.String(), MediaType: string(m.MediaType), PredicateType: pt, URI: "oci://" + ref.String()}, nil
			}
		}
	}
	return nil, nil
}
