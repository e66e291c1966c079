// Package watch is attestd's event intake: an http.Handler per registry
// flavour (CNCF Distribution, generic JSON) that authenticates, parses and
// filters deliveries and hands the accepted events to a Sink, which makes
// them durable before the handler answers 2xx. It imports nothing of attestd
// but the standard library: the Sink is implemented by app on the store.
package watch

import (
	"context"
	"path"
	"regexp"
	"slices"
	"strings"
)

// Action is what happened in the registry.
type Action string

const (
	ActionPush   Action = "push"
	ActionDelete Action = "delete"
)

// Event is one normalised registry event.
type Event struct {
	Source     string // the configured source name
	ID         string // the delivery's event ID, when the format has one
	Action     Action
	Registry   string // host[:port] as in image references
	Repository string
	Digest     string // sha256:…; empty when only a tag is known (generic receiver)
	Tag        string
	MediaType  string
	// Pusher is who pushed, when the format says (Distribution's
	// actor.name, Harbor's operator). Informational: it is a claim of the
	// sender, recorded in provenance as such.
	Pusher string
	// Children are the manifest digests an index push lists.
	Children []string
	// Backfill marks what the poller found: queued behind webhook events.
	Backfill bool
}

// Ref is "registry/repository@digest".
func (e Event) Ref() string { return e.Registry + "/" + e.Repository + "@" + e.Digest }

// Sink makes accepted events durable. Accept must not return before they are
// committed; an error means nothing was acknowledged.
type Sink interface {
	Accept(ctx context.Context, events []Event) (Accepted, error)
}

// Accepted counts what the sink did with the events it was given.
type Accepted struct {
	Queued    int `json:"queued"`    // new jobs
	Duplicate int `json:"duplicate"` // already known image or redelivered event
	Recorded  int `json:"recorded"`  // deletes: recorded, not processed
}

// Rule selects repositories of one registry: "*" matches within one path
// segment, "**" any number of segments.
type Rule struct {
	Registry     string
	Repositories []string
}

// Filter decides which events become jobs.
type Filter struct {
	Rules []Rule
	// Own reports manifests attestd itself wrote (its bundles, indexes and
	// promotion copies): their events are ignored. It is what attestd
	// recorded, never the delivery's User-Agent, which any client sets.
	Own func(registry, repository, digest string) bool
}

// Reasons an event is ignored; they are also metric labels.
const (
	ReasonAction     = "action"     // pull, mount, …
	ReasonMediaType  = "media_type" // not an image manifest or index
	ReasonArtifact   = "artifact"   // signature, attestation, SBOM or other referrer
	ReasonOwnPush    = "own_push"
	ReasonNotWatched = "not_watched"
	ReasonInvalid    = "invalid"          // e.g. a delete that names no digest
	ReasonNotImage   = "not_image"        // config type not a container image's (Helm, WASM, …)
	ReasonAlgorithm  = "digest_algorithm" // well-formed but not sha256
)

var (
	sigTag    = regexp.MustCompile(`^sha256-[0-9a-f]{64}(\..+)?$`)
	digestRe  = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	repoRe    = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	imageType = map[string]bool{
		"application/vnd.oci.image.manifest.v1+json":                true,
		"application/vnd.oci.image.index.v1+json":                   true,
		"application/vnd.docker.distribution.manifest.v2+json":      true,
		"application/vnd.docker.distribution.manifest.list.v2+json": true,
	}
)

// artifactMediaType reports media types that mark a manifest as a signature,
// attestation, SBOM or other referrer artifact rather than a runnable image.
func artifactMediaType(mt string) bool {
	for _, p := range []string{
		"application/vnd.dev.cosign.", "application/vnd.dev.sigstore.", "application/vnd.in-toto",
		"application/spdx", "application/vnd.cyclonedx", "application/vnd.oci.empty.v1+json",
		"application/vnd.dsse.", "application/vnd.syft+json", "application/vnd.dev.attestd.",
	} {
		if strings.HasPrefix(mt, p) {
			return true
		}
	}
	return false
}

// runnableLayer reports filesystem layer media types (OCI and Docker, any
// compression, foreign and non-distributable ones included).
func runnableLayer(mt string) bool {
	return strings.HasPrefix(mt, "application/vnd.oci.image.layer.") ||
		strings.HasPrefix(mt, "application/vnd.docker.image.rootfs.")
}

// Classify returns "" when the event should become a job (or, for a
// delete, be recorded), else the reason it is ignored. The event's values
// were validated (Incoming.check) before.
func (f Filter) Classify(in Incoming) string {
	e := in.Event
	switch e.Action {
	case ActionPush, ActionDelete:
	default:
		return ReasonAction
	}
	if e.Digest == "" && (e.Tag == "" || e.Action == ActionDelete) {
		return ReasonInvalid
	}
	if e.Digest != "" && !digestRe.MatchString(e.Digest) {
		return ReasonAlgorithm
	}
	if e.Tag != "" && sigTag.MatchString(e.Tag) {
		return ReasonArtifact
	}
	if e.Action == ActionPush && e.MediaType != "" && !imageType[e.MediaType] {
		if artifactMediaType(e.MediaType) {
			return ReasonArtifact
		}
		return ReasonMediaType
	}
	if e.Action == ActionPush {
		if artifactMediaType(in.ConfigType) {
			return ReasonArtifact
		}
		if in.ConfigType != "" && !imageConfigTypes[in.ConfigType] {
			return ReasonNotImage
		}
		// An image config with a filesystem layer is an image, whatever
		// else the manifest carries: marking it as an artifact must not
		// let a pusher keep an image from being analysed. Without one,
		// an artifactType or an artifact layer (cosign's simple signing,
		// BuildKit's in-toto attestations) makes it an artifact.
		if !(imageConfigTypes[in.ConfigType] && slices.ContainsFunc(in.RefTypes, runnableLayer)) {
			if in.ArtifactType != "" || slices.ContainsFunc(in.RefTypes, artifactMediaType) {
				return ReasonArtifact
			}
		}
	}
	if !f.Watched(e.Registry, e.Repository) {
		return ReasonNotWatched
	}
	if e.Action == ActionPush && e.Digest != "" && f.Own != nil && f.Own(e.Registry, e.Repository, e.Digest) {
		return ReasonOwnPush
	}
	return ""
}

// Watched reports whether a rule selects registry/repo.
func (f Filter) Watched(registry, repo string) bool {
	for _, r := range f.Rules {
		if !strings.EqualFold(r.Registry, registry) {
			continue
		}
		for _, p := range r.Repositories {
			if Match(p, repo) {
				return true
			}
		}
	}
	return false
}

// Match reports whether repo matches pattern: "*" within one segment, "**"
// across any number of segments (including none).
func Match(pattern, repo string) bool {
	return matchSegs(strings.Split(pattern, "/"), strings.Split(repo, "/"))
}

func matchSegs(pat, segs []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(segs); i++ {
				if matchSegs(pat[1:], segs[i:]) {
					return true
				}
			}
			return false
		}
		if len(segs) == 0 {
			return false
		}
		if ok, err := path.Match(pat[0], segs[0]); err != nil || !ok {
			return false
		}
		pat, segs = pat[1:], segs[1:]
	}
	return len(segs) == 0
}
