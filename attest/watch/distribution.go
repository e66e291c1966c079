package watch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Envelope media types of CNCF Distribution notifications: 2.x (and the
// GitLab fork) send v1, 3.x sends v2. The event format is the same but for
// the target, which embeds an OCI descriptor in 3.x (so it may carry
// annotations, platform and artifactType).
const (
	DistributionMediaType   = "application/vnd.docker.distribution.events.v1+json"
	DistributionV2MediaType = "application/vnd.docker.distribution.events.v2+json"
)

// Distribution parses CNCF Distribution 2.x and 3.x (docker-registry,
// GitLab's container registry) notification envelopes: {"events":[…]}.
// Distribution retries a delivery that is not answered 2xx/3xx forever and
// blocks the endpoint's queue meanwhile, so every well-formed event —
// pulls, mounts, blob pushes, repository deletes, GitLab renames — is
// answered 2xx and counted as ignored; only malformed deliveries are 400.
type Distribution struct {
	// Registry overrides the host taken from each event's request.host
	// (set it when the registry is reached under another name than the one
	// its clients use).
	Registry string
}

type distEnvelope struct {
	Events *[]distEvent `json:"events"`
}

type distDescriptor struct {
	MediaType    string `json:"mediaType"`
	Digest       string `json:"digest"`
	ArtifactType string `json:"artifactType"` // 3.x: OCI descriptor field
}

type distEvent struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Target struct {
		distDescriptor
		Repository string           `json:"repository"`
		URL        string           `json:"url"`
		Tag        string           `json:"tag"`
		References []distDescriptor `json:"references"`
	} `json:"target"`
	Actor struct {
		Name string `json:"name"`
	} `json:"actor"`
	Request struct {
		Host      string `json:"host"`
		UserAgent string `json:"useragent"`
	} `json:"request"`
}

// Actions Distribution sends that attestd does not act on, named so that
// they are counted as ignored (ReasonAction) rather than mistaken for the
// manifest events they resemble.
const (
	actionBlob             = "_blob"             // suffix: a layer or config blob, not a manifest
	actionDeleteRepository = "delete_repository" // a delete naming neither digest nor tag
)

// ContentTypes implements Parser.
func (Distribution) ContentTypes() []string {
	return []string{DistributionMediaType, DistributionV2MediaType, "application/json"}
}

// Parse implements Parser.
func (d Distribution) Parse(_ *http.Request, body []byte) ([]Incoming, error) {
	var env distEnvelope
	if err := decodeStrict(body, &env); err != nil {
		return nil, fmt.Errorf("distribution envelope: %w", err)
	}
	if env.Events == nil {
		// Distribution's Envelope omits an empty events list ("{}"): a
		// well-formed envelope with nothing in it. Anything else is not an
		// envelope.
		var top map[string]json.RawMessage
		if err := decodeStrict(body, &top); err != nil || top == nil || len(top) > 0 {
			return nil, fieldErr("events", errors.New(`missing: a Distribution envelope is {"events": [...]}`))
		}
		return nil, nil
	}
	out := make([]Incoming, 0, len(*env.Events))
	for i, e := range *env.Events {
		in, err := d.event(i, e)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

func (d Distribution) event(i int, e distEvent) (Incoming, error) {
	p := fmt.Sprintf("events[%d]", i)
	t := e.Target
	if e.Action == "" {
		return Incoming{}, fieldErr(p+".action", errors.New("missing"))
	}
	in := Incoming{
		Event: Event{ID: e.ID, Action: Action(e.Action), Repository: t.Repository, Pusher: e.Actor.Name,
			Digest: t.Digest, Tag: t.Tag, MediaType: t.MediaType},
		UserAgent:    e.Request.UserAgent,
		ArtifactType: t.ArtifactType,
		Fields: Fields{Registry: p + ".request.host", Repository: p + ".target.repository",
			Digest: p + ".target.digest", Tag: p + ".target.tag"},
	}
	var u *url.URL
	if t.URL != "" {
		var err error
		if u, err = url.Parse(t.URL); err != nil || u.Host == "" {
			return Incoming{}, fieldErr(p+".target.url", fmt.Errorf("%q is not an absolute URL", t.URL))
		}
	}
	// The host is attestd's configuration, never the event's: Distribution
	// fills request.host (and target.url) from the Host header of whichever
	// client pushed or pulled, so a pusher could name another registry.
	in.Event.Registry, in.Fields.Registry = d.Registry, "sources[].registry (attestd's configuration)"
	if u != nil && strings.HasPrefix(u.Path, "/v2/"+t.Repository+"/blobs/") {
		// Layer and config blob pushes, pulls and mounts (3.x and GitLab
		// send them; their url is /v2/NAME/blobs/DIGEST).
		in.Event.Action += actionBlob
		return in, nil
	}
	switch Action(e.Action) {
	case ActionPush:
		if t.Digest == "" {
			return Incoming{}, fieldErr(in.Fields.Digest, errors.New("a manifest push names its digest"))
		}
	case ActionDelete:
		if t.Digest == "" && t.Tag == "" {
			// RepoDeleted: only the repository.
			in.Event.Action = actionDeleteRepository
			return in, nil
		}
	}
	index := isIndex(t.MediaType)
	for j, r := range t.References {
		in.RefTypes = append(in.RefTypes, r.MediaType)
		if index && imageType[r.MediaType] {
			if err := ValidDigest(r.Digest); err != nil {
				return Incoming{}, fieldErr(fmt.Sprintf("%s.target.references[%d].digest", p, j), err)
			}
			in.Event.Children = append(in.Event.Children, r.Digest)
		}
	}
	if !index && imageType[t.MediaType] && len(t.References) > 0 {
		// With includereferences, a manifest's references are its config,
		// then its layers (Manifest.References in both 2.x and 3.x): the
		// config type tells a Helm chart or WASM module from an image.
		in.ConfigType = t.References[0].MediaType
	}
	return in, nil
}

// jsonError adds the byte offset and line of a JSON syntax error.
func jsonError(body []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line := 1 + bytes.Count(body[:min(int(se.Offset), len(body))], []byte("\n"))
		return fmt.Errorf("malformed JSON at line %d (byte %d): %v", line, se.Offset, err)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q: expected %s, got %s", te.Field, te.Type, te.Value)
	}
	return err
}
