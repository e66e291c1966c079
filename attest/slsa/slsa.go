// Package slsa writes SLSA v1.0 provenance for images attestd observed, as
// in-toto Statement v1 documents built with the in-toto attestation Go types.
//
// attestd did not build the images it sees, so its provenance is honest
// about where each fact came from:
//
//   - buildDefinition.externalParameters holds what attestd was TOLD and
//     could not check: OCI labels (source, revision, base image), the
//     registry event (source, pusher) and the config's created time.
//   - buildDefinition.internalParameters holds what attestd OBSERVED:
//     manifest and config digests, platform, layer count, when it looked.
//   - runDetails.builder.id comes from configuration (a mapping by
//     repository or pusher); without a mapping it is attestd's observer ID
//     and says so — it never claims a build platform it was not told about.
//   - Provenance that BuildKit attached to an index is referenced as a
//     byproduct (by digest), not merged: it is the builder's claim.
package slsa

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	prov "github.com/in-toto/attestation/go/predicates/provenance/v1"
	ita "github.com/in-toto/attestation/go/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// PredicateType is SLSA provenance v1.
const PredicateType = "https://slsa.dev/provenance/v1"

// BuildType says "attestd observed an image in a registry".
const BuildType = "https://attestd.dev/provenance/observed-image/v1"

// ObserverBuilderID is the builder ID used when no mapping names the real builder.
const ObserverBuilderID = "https://attestd.dev/builder/observer-only"

// Input is everything provenance may say about one image.
type Input struct {
	// Subjects are the digests the statement covers: the image, or an index
	// and each of its platform manifests.
	Subjects     []Subject
	Repository   string // host/repo
	Tags         []string
	Platform     string
	ConfigDigest string
	Layers       int
	Labels       map[string]string // the image config's labels
	Created      time.Time         // the image config's created time (told, not observed)
	// Event facts.
	EventSource string
	Pusher      string
	// BuilderID from configuration; empty means ObserverBuilderID.
	BuilderID string
	// BuildKit is provenance the image index carried, if any.
	BuildKit *Attached
	// ObservedAt is when attestd analysed the image.
	ObservedAt time.Time
	// Version of attestd.
	Version string
}

// Subject is one digest the statement is about.
type Subject struct {
	Name   string // host/repo
	Digest string // sha256:…
}

// Attached points at an attestation manifest found in the registry.
type Attached struct {
	Digest        string
	MediaType     string
	PredicateType string
	URI           string
}

// OCI label keys read as claims.
const (
	LabelSource     = "org.opencontainers.image.source"
	LabelRevision   = "org.opencontainers.image.revision"
	LabelBaseName   = "org.opencontainers.image.base.name"
	LabelBaseDigest = "org.opencontainers.image.base.digest"
)

// Statement returns the provenance statement as JSON.
func Statement(in Input) ([]byte, error) {
	if len(in.Subjects) == 0 {
		return nil, errors.New("slsa: no subjects")
	}
	st := &ita.Statement{Type: ita.StatementTypeUri, PredicateType: PredicateType}
	for _, s := range in.Subjects {
		alg, hexd, ok := strings.Cut(s.Digest, ":")
		if !ok || alg != "sha256" || !isHex(hexd, 64) {
			return nil, fmt.Errorf("slsa: subject %s: digest %q is not sha256:<64 hex>", s.Name, s.Digest)
		}
		st.Subject = append(st.Subject, &ita.ResourceDescriptor{Name: s.Name, Digest: map[string]string{"sha256": hexd}})
	}

	told := map[string]any{}
	image := map[string]any{"repository": in.Repository}
	if len(in.Tags) > 0 {
		image["tags"] = toAny(in.Tags)
	}
	told["image"] = image
	if ls := ociLabels(in.Labels); len(ls) > 0 {
		told["labels"] = ls
	}
	if !in.Created.IsZero() {
		told["created"] = in.Created.UTC().Format(time.RFC3339)
	}
	if in.EventSource != "" || in.Pusher != "" {
		ev := map[string]any{}
		if in.EventSource != "" {
			ev["source"] = in.EventSource
		}
		if in.Pusher != "" {
			ev["pusher"] = in.Pusher
		}
		told["event"] = ev
	}
	observed := map[string]any{
		"observer":   "attestd",
		"observedOn": in.ObservedAt.UTC().Format(time.RFC3339),
		"layers":     float64(in.Layers),
	}
	if in.Platform != "" {
		observed["platform"] = in.Platform
	}
	if in.ConfigDigest != "" {
		observed["configDigest"] = in.ConfigDigest
	}
	ext, err := structpb.NewStruct(told)
	if err != nil {
		return nil, fmt.Errorf("slsa: external parameters: %w", err)
	}
	internal, err := structpb.NewStruct(observed)
	if err != nil {
		return nil, fmt.Errorf("slsa: internal parameters: %w", err)
	}
	bd := &prov.BuildDefinition{BuildType: BuildType, ExternalParameters: ext, InternalParameters: internal}

	// Resolved dependencies, from labels: claims, named as such.
	if base := in.Labels[LabelBaseName]; base != "" && base != "scratch" {
		rd := &ita.ResourceDescriptor{Name: "base-image", Uri: "oci://" + base}
		if d := in.Labels[LabelBaseDigest]; d != "" {
			if alg, h, ok := strings.Cut(d, ":"); ok && alg == "sha256" && isHex(h, 64) {
				rd.Digest = map[string]string{"sha256": h}
			}
		}
		rd.Annotations = claimed(LabelBaseName)
		bd.ResolvedDependencies = append(bd.ResolvedDependencies, rd)
	}
	if src := in.Labels[LabelSource]; src != "" {
		rd := &ita.ResourceDescriptor{Name: "source", Uri: gitURI(src, in.Labels[LabelRevision])}
		if rev := in.Labels[LabelRevision]; isHex(rev, 40) || isHex(rev, 64) {
			rd.Digest = map[string]string{"gitCommit": rev}
		}
		rd.Annotations = claimed(LabelSource)
		bd.ResolvedDependencies = append(bd.ResolvedDependencies, rd)
	}

	builder := in.BuilderID
	if builder == "" {
		builder = ObserverBuilderID
	}
	rdt := &prov.RunDetails{
		Builder: &prov.Builder{Id: builder},
		Metadata: &prov.BuildMetadata{
			InvocationId: "attestd:" + in.Subjects[0].Digest,
		},
	}
	if in.Version != "" {
		rdt.Builder.Version = map[string]string{"attestd": in.Version}
	}
	if in.BuildKit != nil {
		alg, h, ok := strings.Cut(in.BuildKit.Digest, ":")
		if !ok || alg != "sha256" || !isHex(h, 64) {
			return nil, fmt.Errorf("slsa: BuildKit provenance digest %q is not sha256:<64 hex>", in.BuildKit.Digest)
		}
		ann, _ := structpb.NewStruct(map[string]any{"predicateType": in.BuildKit.PredicateType, "attestd.dev/claimedBy": "builder"})
		rdt.Byproducts = append(rdt.Byproducts, &ita.ResourceDescriptor{
			Name: "buildkit-provenance", Uri: in.BuildKit.URI, MediaType: in.BuildKit.MediaType,
			Digest: map[string]string{"sha256": h}, Annotations: ann,
		})
	}
	p := &prov.Provenance{BuildDefinition: bd, RunDetails: rdt}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("slsa: invalid provenance: %w", err)
	}
	pred, err := structFromProto(p)
	if err != nil {
		return nil, err
	}
	st.Predicate = pred
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("slsa: invalid statement: %w", err)
	}
	return protojson.MarshalOptions{}.Marshal(st)
}

// Predicate extracts the predicate of a statement as JSON (what cosign
// attest takes as --predicate).
func Predicate(statement []byte) ([]byte, error) {
	var st ita.Statement
	if err := protojson.Unmarshal(statement, &st); err != nil {
		return nil, fmt.Errorf("slsa: %w", err)
	}
	return protojson.Marshal(st.Predicate)
}

func structFromProto(p *prov.Provenance) (*structpb.Struct, error) {
	b, err := protojson.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("slsa: %w", err)
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("slsa: %w", err)
	}
	return s, nil
}

// claimedBy annotates a resolved dependency attestd only was told about.
const claimedBy = "attestd.dev/claimedBy"

func claimed(label string) *structpb.Struct {
	s, _ := structpb.NewStruct(map[string]any{claimedBy: "label " + label})
	return s
}

func gitURI(src, rev string) string {
	u := src
	if !strings.HasPrefix(u, "git+") {
		u = "git+" + u
	}
	if rev != "" {
		u += "@" + rev
	}
	return u
}

func ociLabels(labels map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range labels {
		if strings.HasPrefix(k, "org.opencontainers.image.") {
			out[k] = v
		}
	}
	return out
}

func toAny(ss []string) []any {
	ss = slices.Clone(ss)
	slices.Sort(ss)
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// Builder maps an image to its builder ID by repository or pusher.
type Builder struct {
	Repository string // path.Match glob over host/repo; empty matches any
	Pusher     string // glob over the event's pusher; empty matches any
	ID         string
}

// BuilderFor returns the ID of the first mapping that matches, or "".
func BuilderFor(mappings []Builder, repository, pusher string) string {
	for _, m := range mappings {
		if m.Repository != "" {
			if ok, _ := path.Match(m.Repository, repository); !ok {
				continue
			}
		}
		if m.Pusher != "" {
			if ok, _ := path.Match(m.Pusher, pusher); !ok || pusher == "" {
				continue
			}
		}
		return m.ID
	}
	return ""
}

// Read is what a policy may use of a verified SLSA provenance, split into
// what the provenance's author observed and what it was told.
type Read struct {
	BuilderID string
	BuildType string
	// Observed is set for attestd's observed-image provenance: BuilderID is
	// then ObserverBuilderID, whatever the configuration mapped; the
	// mapping and the labels are claims.
	Observed bool
	// Sources (git, without the revision) and BaseImages (name:tag) are a
	// builder's resolved dependencies, except those it marks as claimed.
	Sources, BaseImages []string
	// ClaimedSources, ClaimedBaseImage and ClaimedBuilderID are what
	// attestd was told: OCI labels, the configured builder mapping.
	ClaimedSources   []string
	ClaimedBaseImage string
	ClaimedBuilderID string
}

// ReadProvenance reads a provenance predicate (JSON): attestd's own as
// Statement writes it, or a builder's.
func ReadProvenance(pred []byte) (*Read, error) {
	var p struct {
		BuildDefinition struct {
			BuildType          string `json:"buildType"`
			ExternalParameters struct {
				Labels map[string]string `json:"labels"`
			} `json:"externalParameters"`
			ResolvedDependencies []struct {
				URI         string         `json:"uri"`
				Annotations map[string]any `json:"annotations"`
			} `json:"resolvedDependencies"`
		} `json:"buildDefinition"`
		RunDetails struct {
			Builder struct {
				ID string `json:"id"`
			} `json:"builder"`
		} `json:"runDetails"`
	}
	if err := json.Unmarshal(pred, &p); err != nil {
		return nil, fmt.Errorf("slsa provenance: %w", err)
	}
	bd := p.BuildDefinition
	r := &Read{BuilderID: p.RunDetails.Builder.ID, BuildType: bd.BuildType}
	if r.BuilderID == "" {
		return nil, errors.New("slsa provenance: no runDetails.builder.id")
	}
	if bd.BuildType == BuildType {
		labels := bd.ExternalParameters.Labels
		r.Observed = true
		r.ClaimedBaseImage = labels[LabelBaseName]
		if src := labels[LabelSource]; src != "" {
			r.ClaimedSources = []string{src}
		}
		if r.BuilderID != ObserverBuilderID {
			r.ClaimedBuilderID, r.BuilderID = r.BuilderID, ObserverBuilderID
		}
		return r, nil
	}
	for _, d := range bd.ResolvedDependencies {
		if _, claimed := d.Annotations[claimedBy]; claimed {
			continue
		}
		switch {
		case strings.HasPrefix(d.URI, "git+"):
			u, _, _ := strings.Cut(strings.TrimPrefix(d.URI, "git+"), "@")
			if !slices.Contains(r.Sources, u) {
				r.Sources = append(r.Sources, u)
			}
		case strings.HasPrefix(d.URI, "pkg:docker/"):
			ref, _, _ := strings.Cut(strings.TrimPrefix(d.URI, "pkg:docker/"), "?")
			if n, v, ok := strings.Cut(ref, "@"); ok {
				ref = n + ":" + v
			}
			r.BaseImages = append(r.BaseImages, ref)
		case strings.HasPrefix(d.URI, "oci://"):
			r.BaseImages = append(r.BaseImages, strings.TrimPrefix(d.URI, "oci://"))
		}
	}
	return r, nil
}
