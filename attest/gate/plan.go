package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/slsa"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/policy/promote"
)

// Plan is what a promotion copies, as values (like promo-tools' edges):
// exactly the verified closure of one evaluated digest. It is printed by
// `attestd promote --dry-run`.
type Plan struct {
	Source string // host/repo in staging
	Digest string // the evaluated digest: the only one that may be promoted
	// MediaType and Raw are the digest's manifest, put byte for byte.
	MediaType types.MediaType `json:"mediaType"`
	Raw       []byte          `json:"-"`
	// Manifests are an index's children, copied before the index: the
	// platforms that were evaluated and BuildKit attestation manifests
	// (checked to hold only in-toto layers, so they cannot run).
	Manifests []Item
	// Referrers are the bundles that verified for an allowed signer, and
	// the documents their signed document references name.
	Referrers []Item
	// Classic are cosign classic tag images (sha256-<hex>.sig/.att) whose
	// every layer verified, copied by the digest that was verified and
	// tagged in the destination.
	Classic []Item
	// Skipped are referrers and tags left behind, with why.
	Skipped []Item
	Edges   []promote.Edge
	// Job is the pipeline job promoting (0: none, e.g. an override): it
	// keys the audit entry of a promotion a crash made it redo (see
	// auditPromotion).
	Job uint64 `json:"job,omitempty"`
}

// Item is one manifest of a plan.
type Item struct {
	Digest  string `json:"digest"`
	Subject string `json:"subject,omitempty"` // the digest it refers to
	Kind    string `json:"kind"`              // platform, attestation-manifest, a predicate type, document, classic
	Tag     string `json:"tag,omitempty"`     // classic: the tag name
	// MediaType is what a child must be served as (from the index).
	MediaType types.MediaType `json:"mediaType,omitempty"`
	Why       string          `json:"why,omitempty"` // skipped: why
}

func (it Item) String() string {
	s := it.Kind + " " + it.Digest
	if it.Tag != "" {
		s += " (" + it.Tag + ")"
	}
	if it.Subject != "" {
		s += " of " + short(it.Subject)
	}
	if it.Why != "" {
		s += ": " + it.Why
	}
	return s
}

func short(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// String lists the plan, a line each.
func (p *Plan) String() string {
	var b strings.Builder
	for _, e := range p.Edges {
		fmt.Fprintf(&b, "edge: %s\n", e)
	}
	fmt.Fprintf(&b, "copy: %s %s@%s\n", p.MediaType, p.Source, p.Digest)
	for _, l := range []struct {
		verb  string
		items []Item
	}{{"child", p.Manifests}, {"referrer", p.Referrers}, {"classic", p.Classic}, {"skip", p.Skipped}} {
		for _, it := range l.items {
			fmt.Fprintf(&b, "%s: %s\n", l.verb, it)
		}
	}
	return b.String()
}

// planned reports whether digest is copied by p.
func (p *Plan) planned(digest string) bool {
	has := func(it Item) bool { return it.Digest == digest }
	return digest == p.Digest || slices.ContainsFunc(p.Manifests, has) || slices.ContainsFunc(p.Referrers, has) || slices.ContainsFunc(p.Classic, has)
}

// imageConfig are the config media types of runnable images.
var imageConfig = map[string]bool{
	"application/vnd.oci.image.config.v1+json":       true,
	"application/vnd.docker.container.image.v1+json": true,
}

// BuildKit's attestation manifests in an index.
const (
	refTypeAnnotation   = "vnd.docker.reference.type"
	refDigestAnnotation = "vnd.docker.reference.digest"
	inTotoLayer         = "application/vnd.in-toto+json"
)

// Plan builds the promotion plan of ev along edges: it reads manifests by
// digest (content-addressed: nobody can change them) and copies nothing
// that ev did not verify. An index child that was neither evaluated nor a
// BuildKit attestation manifest makes the index unpromotable: the error is
// permanent.
func (g *Gate) Plan(ctx context.Context, ev *Evaluation, edges []promote.Edge) (*Plan, error) {
	if g.o.Registry == nil {
		return nil, fmt.Errorf("promote: no registry client")
	}
	src := ev.Registry + "/" + ev.Repository
	repo, err := g.o.Registry.ParseRepository(src)
	if err != nil {
		return nil, pipeline.Permanent(err)
	}
	p := &Plan{Source: src, Digest: ev.Digest, Edges: edges}
	for _, e := range edges {
		if e.Src != src+"@"+ev.Digest {
			return nil, pipeline.Permanent(fmt.Errorf("edge %s is not for the evaluated digest %s", e, ev.Ref()))
		}
	}
	raw, mt := ev.manifest, types.MediaType(ev.MediaType)
	if got, _, err := v1.SHA256(bytes.NewReader(raw)); raw == nil || err != nil || got.String() != ev.Digest {
		if raw, mt, err = g.o.Registry.Manifest(ctx, repo.Digest(ev.Digest)); err != nil {
			return nil, fmt.Errorf("promote %s: %w", ev.Ref(), err)
		}
	}
	p.Raw, p.MediaType = raw, mt
	if mt.IsIndex() {
		if err := g.planChildren(ctx, repo, ev, p); err != nil {
			return nil, err
		}
	} else if len(ev.Subjects) != 1 {
		return nil, pipeline.Permanent(fmt.Errorf("%s is a %s but was evaluated with %d platforms", ev.Ref(), mt, len(ev.Subjects)-1))
	}
	for _, s := range ev.Subjects {
		if err := g.planReferrers(ctx, repo, s, ev.VSA, p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (g *Gate) planChildren(ctx context.Context, repo name.Repository, ev *Evaluation, p *Plan) error {
	im, err := v1.ParseIndexManifest(bytes.NewReader(p.Raw))
	if err != nil {
		return pipeline.Permanent(fmt.Errorf("index %s: %w", ev.Ref(), err))
	}
	evaluated := map[string]bool{}
	for _, s := range ev.Subjects[1:] {
		evaluated[s.Digest] = true
	}
	for _, m := range im.Manifests {
		d := m.Digest.String()
		switch {
		case evaluated[d] && m.MediaType.IsImage():
			p.Manifests = append(p.Manifests, Item{Digest: d, Kind: "platform", MediaType: m.MediaType})
		case evaluated[d]:
			return pipeline.Permanent(fmt.Errorf("index %s: child %s is a %s: only image manifests are promoted", ev.Ref(), d, m.MediaType))
		case m.Annotations[refTypeAnnotation] == "attestation-manifest" && evaluated[m.Annotations[refDigestAnnotation]]:
			if err := g.checkAttestationManifest(ctx, repo.Digest(d), m.Annotations[refDigestAnnotation]); err != nil {
				return pipeline.Permanent(fmt.Errorf("index %s: child %s claims to be an attestation manifest: %w", ev.Ref(), d, err))
			}
			p.Manifests = append(p.Manifests, Item{Digest: d, Subject: m.Annotations[refDigestAnnotation], Kind: "attestation-manifest", MediaType: m.MediaType})
		default:
			plat := "no platform"
			if m.Platform != nil {
				plat = m.Platform.String()
			}
			return pipeline.Permanent(fmt.Errorf("index %s: child %s (%s) was not evaluated and is not an attestation manifest of an evaluated platform: the index cannot be promoted as it is", ev.Ref(), d, plat))
		}
	}
	if len(p.Manifests) == 0 {
		return pipeline.Permanent(fmt.Errorf("index %s has no evaluated platform", ev.Ref()))
	}
	return nil
}

// maxAttestationLayers bounds the statements of a BuildKit attestation
// manifest copied with an index: BuildKit writes one per attestation (an
// SBOM, a provenance), and each is a copy at promotion.
const maxAttestationLayers = 64

// checkAttestationManifest makes sure d is an image manifest whose every
// layer is an in-toto statement — nothing a runtime could run — and that
// refers, if to anything, to its platform. Its statements are BuildKit's
// unsigned claims: copied as part of the index that was evaluated, never
// read as facts.
func (g *Gate) checkAttestationManifest(ctx context.Context, d name.Digest, platform string) error {
	raw, mt, err := g.o.Registry.Manifest(ctx, d)
	if err != nil {
		return err
	}
	if !mt.IsImage() {
		return fmt.Errorf("media type %s", mt)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	if len(m.Layers) == 0 {
		return fmt.Errorf("no layers")
	}
	if len(m.Layers) > maxAttestationLayers {
		return fmt.Errorf("%d layers, more than the %d an attestation manifest may have", len(m.Layers), maxAttestationLayers)
	}
	if m.Subject != nil && m.Subject.Digest.String() != platform {
		return fmt.Errorf("it names %s as its subject, not the platform %s", m.Subject.Digest, platform)
	}
	for _, l := range m.Layers {
		if string(l.MediaType) != inTotoLayer {
			return fmt.Errorf("layer %s is %s, not %s", l.Digest, l.MediaType, inTotoLayer)
		}
	}
	return nil
}

// planReferrers adds what verified for s: bundle referrers (of the
// verification summaries only vsa, the one in force), the documents of
// verified document references, and classic tags whose every layer
// verified.
func (g *Gate) planReferrers(ctx context.Context, repo name.Repository, s Verified, vsa string, p *Plan) error {
	res := s.Result
	verifiedLayers := map[string]bool{}
	statements := map[string]string{} // statement digest → the wrapper copied
	for _, pt := range sortedTypes(res.All) {
		evs := slices.Clone(res.All[pt])
		slices.SortFunc(evs, func(a, b verify.Evidence) int { return strings.Compare(a.Bundle, b.Bundle) })
		for _, e := range evs {
			if e.Classic != "" {
				verifiedLayers[e.Classic+"\x00"+e.Bundle] = true
				continue
			}
			if !isDigest(e.Bundle) || p.planned(e.Bundle) {
				continue
			}
			if first, dup := statements[e.Statement]; dup && e.Statement != "" {
				// The same signed statement in another manifest: one copy
				// is the attestation, the others are someone's wrappers.
				p.Skipped = append(p.Skipped, Item{Digest: e.Bundle, Subject: s.Digest, Kind: pt, Why: "another manifest of the statement in " + first})
				continue
			}
			statements[e.Statement] = e.Bundle
			if pt == slsa.VSAPredicateType && (e.Statement == "" || e.Statement != vsa) {
				p.Skipped = append(p.Skipped, Item{Digest: e.Bundle, Subject: s.Digest, Kind: pt, Why: "a verification summary of another decision"})
				continue
			}
			p.Referrers = append(p.Referrers, Item{Digest: e.Bundle, Subject: s.Digest, Kind: pt})
			if strings.HasPrefix(pt, attest.DocumentRefType("")) {
				doc, err := g.planDocument(ctx, repo, s.Digest, e.Predicate)
				if err != nil {
					return pipeline.Permanent(fmt.Errorf("document reference %s of %s: %w", e.Bundle, s.Digest, err))
				}
				if !p.planned(doc) {
					p.Referrers = append(p.Referrers, Item{Digest: doc, Subject: s.Digest, Kind: "document"})
				}
			}
		}
	}
	for _, r := range res.Rejected {
		p.Skipped = append(p.Skipped, Item{Digest: r.Bundle, Subject: s.Digest, Kind: "rejected", Why: r.Reason})
	}
	for _, ct := range res.Classic {
		var bad []string
		seen := map[string]bool{}
		for _, l := range ct.Layers {
			if !verifiedLayers[ct.Tag+"\x00"+l] || seen[l] {
				bad = append(bad, l)
			}
			seen[l] = true
		}
		it := Item{Digest: ct.Manifest, Subject: s.Digest, Kind: "classic", Tag: ct.Tag}
		if len(bad) > 0 {
			it.Why = fmt.Sprintf("layers %s did not verify for an allowed signer (or appear twice)", strings.Join(bad, ", "))
			p.Skipped = append(p.Skipped, it)
			continue
		}
		if why, err := g.classicShape(ctx, repo.Digest(ct.Manifest)); err != nil {
			return err
		} else if why != "" {
			it.Why = why
			p.Skipped = append(p.Skipped, it)
			continue
		}
		p.Classic = append(p.Classic, it)
	}
	return nil
}

// classicShape says why a classic tag image is not copied as it is ("":
// it is): cosign writes no subject and no manifest annotations there, so
// either would be content nobody signed (a subject would make the copy a
// referrer of another digest in the destination).
func (g *Gate) classicShape(ctx context.Context, d name.Digest) (string, error) {
	raw, _, err := g.o.Registry.Manifest(ctx, d)
	if err != nil {
		return "", err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return "unreadable manifest: " + err.Error(), nil
	}
	switch {
	case m.Subject != nil:
		return "the tag image names a subject (" + m.Subject.Digest.String() + "): cosign writes none", nil
	case len(m.Annotations) > 0:
		return "the tag image carries manifest annotations: cosign writes none", nil
	}
	return "", nil
}

// planDocument checks the artifact a verified document reference names:
// in the same repository, referring to subject, its one layer the signed
// digest. It returns the artifact's manifest digest.
func (g *Gate) planDocument(ctx context.Context, repo name.Repository, subject string, pred json.RawMessage) (string, error) {
	var ref attest.DocumentRef
	if err := json.Unmarshal(pred, &ref); err != nil {
		return "", err
	}
	at, ok := strings.CutPrefix(ref.URI, "oci://"+repo.String()+"@")
	if !ok || !isDigest(at) {
		return "", fmt.Errorf("uri %q is not an artifact of %s", ref.URI, repo)
	}
	raw, _, err := g.o.Registry.Manifest(ctx, repo.Digest(at))
	if err != nil {
		return "", err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return "", err
	}
	switch {
	case m.Subject == nil || m.Subject.Digest.String() != subject:
		return "", fmt.Errorf("artifact %s does not refer to %s", at, subject)
	case len(m.Layers) != 1 || m.Layers[0].Digest.String() != ref.Digest:
		return "", fmt.Errorf("artifact %s does not hold the signed document %s", at, ref.Digest)
	case imageConfig[string(m.Config.MediaType)]:
		return "", fmt.Errorf("artifact %s is a runnable image (config %s)", at, m.Config.MediaType)
	}
	return at, nil
}

func sortedTypes[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
