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

// DistributionMediaType is the envelope type CNCF Distribution sends.
const DistributionMediaType = "application/vnd.docker.distribution.events.v1+json"

// Distribution parses CNCF Distribution (docker-registry, Zot's compatible
// mode, GitLab) notification envelopes: {"events":[…]}.
type Distribution struct {
	// Registry overrides the host taken from each event's request.host
	// (set it when the registry is reached under another name than the one
	// its clients use).
	Registry string
}

type distEnvelope struct {
	Events *[]distEvent `json:"events"`
}

type distEvent struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Target struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
		References []struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
		} `json:"references"`
	} `json:"target"`
	Actor struct {
		Name string `json:"name"`
	} `json:"actor"`
	Request struct {
		Host      string `json:"host"`
		UserAgent string `json:"useragent"`
	} `json:"request"`
}

// ContentTypes implements Parser.
func (Distribution) ContentTypes() []string {
	return []string{DistributionMediaType, "application/json"}
}

// Parse implements Parser.
func (d Distribution) Parse(_ *http.Request, body []byte) ([]Incoming, error) {
	var env distEnvelope
	if err := decodeStrict(body, &env); err != nil {
		return nil, fmt.Errorf("distribution envelope: %w", err)
	}
	if env.Events == nil {
		return nil, fmt.Errorf(`distribution envelope: missing "events" array`)
	}
	out := make([]Incoming, 0, len(*env.Events))
	for i, e := range *env.Events {
		host := d.Registry
		if host == "" {
			host = e.Request.Host
		}
		if host == "" && e.Target.URL != "" {
			if u, err := url.Parse(e.Target.URL); err == nil {
				host = u.Host
			}
		}
		if e.Action == "" {
			return nil, fieldErr(fmt.Sprintf("events[%d].action", i), errors.New("missing"))
		}
		in := Incoming{
			Event: Event{ID: e.ID, Action: Action(e.Action), Registry: host, Repository: e.Target.Repository, Pusher: e.Actor.Name,
				Digest: e.Target.Digest, Tag: e.Target.Tag, MediaType: e.Target.MediaType},
			UserAgent: e.Request.UserAgent,
			Fields: Fields{Registry: fmt.Sprintf("events[%d].request.host", i), Repository: fmt.Sprintf("events[%d].target.repository", i),
				Digest: fmt.Sprintf("events[%d].target.digest", i), Tag: fmt.Sprintf("events[%d].target.tag", i)},
		}
		if d.Registry != "" {
			in.Fields.Registry = "sources[].registry (attestd's configuration)"
		}
		index := isIndex(e.Target.MediaType)
		for j, r := range e.Target.References {
			in.RefTypes = append(in.RefTypes, r.MediaType)
			if index && imageType[r.MediaType] {
				if err := ValidDigest(r.Digest); err != nil {
					return nil, fieldErr(fmt.Sprintf("events[%d].target.references[%d].digest", i, j), err)
				}
				in.Event.Children = append(in.Event.Children, r.Digest)
			}
		}
		if !index && imageType[e.Target.MediaType] && len(e.Target.References) > 0 && strings.Contains(e.Target.References[0].MediaType, "config") {
			// Distribution lists an image manifest's config first, then its layers.
			in.ConfigType = e.Target.References[0].MediaType
		}
		out = append(out, in)
	}
	return out, nil
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
