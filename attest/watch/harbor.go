package watch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Harbor parses Harbor webhooks in both payload formats: "Default"
// ({"type":"PUSH_ARTIFACT","event_data":{…}}) and "CloudEvents" (structured
// mode, type harbor.artifact.pushed). The registry host comes from each
// resource_url unless Registry overrides it.
type Harbor struct {
	Registry string
}

// CloudEventsMediaType is the structured-mode content type.
const CloudEventsMediaType = "application/cloudevents+json"

type harborData struct {
	Resources []struct {
		Digest      string `json:"digest"`
		Tag         string `json:"tag"`
		ResourceURL string `json:"resource_url"`
	} `json:"resources"`
	Repository struct {
		RepoFullName string `json:"repo_full_name"`
	} `json:"repository"`
	Operator string `json:"operator"` // some Harbor versions put it inside data
}

// harborActions maps both formats' event types to actions.
var harborActions = map[string]Action{
	"PUSH_ARTIFACT": ActionPush, "harbor.artifact.pushed": ActionPush,
	"DELETE_ARTIFACT": ActionDelete, "harbor.artifact.deleted": ActionDelete,
}

// ContentTypes implements Parser.
func (Harbor) ContentTypes() []string { return []string{"application/json", CloudEventsMediaType} }

// Parse implements Parser.
func (h Harbor) Parse(r *http.Request, body []byte) ([]Incoming, error) {
	var env struct {
		Type        string          `json:"type"`
		ID          string          `json:"id"`
		SpecVersion string          `json:"specversion"`
		EventData   json.RawMessage `json:"event_data"`
		Operator    string          `json:"operator"` // default format: top level
		Data        json.RawMessage `json:"data"`
	}
	if err := decodeStrict(body, &env); err != nil {
		return nil, err
	}
	if env.Type == "" {
		return nil, errors.New(`harbor payload: missing "type"`)
	}
	raw := env.EventData
	if env.SpecVersion != "" {
		raw = env.Data
	}
	return h.fromData(env.Type, env.ID, env.Operator, raw)
}

func (h Harbor) fromData(typ, id, operator string, raw json.RawMessage) ([]Incoming, error) {
	action, ok := harborActions[typ]
	if !ok {
		// Pulls, scans, quota, replication: counted as ignored, not errors.
		return []Incoming{{Event: Event{ID: id, Action: Action(typ)}}}, nil
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, fmt.Errorf("harbor %s: missing event data", typ)
	}
	var d harborData
	if err := decodeStrict(raw, &d); err != nil {
		return nil, fmt.Errorf("harbor %s data: %w", typ, err)
	}
	if d.Repository.RepoFullName == "" || len(d.Resources) == 0 {
		return nil, fmt.Errorf("harbor %s: want data.repository.repo_full_name and data.resources", typ)
	}
	if d.Operator != "" {
		operator = d.Operator
	}
	out := make([]Incoming, 0, len(d.Resources))
	for i, res := range d.Resources {
		host := h.Registry
		if host == "" {
			host, _, _ = strings.Cut(res.ResourceURL, "/")
		}
		tag := res.Tag
		if strings.HasPrefix(tag, "sha256:") {
			tag = "" // Harbor puts the digest in tag for untagged artifacts
		}
		evID := id
		if evID != "" && len(d.Resources) > 1 {
			evID = fmt.Sprintf("%s/%d", id, i)
		}
		out = append(out, Incoming{Event: Event{ID: evID, Action: action, Registry: host,
			Repository: d.Repository.RepoFullName, Digest: res.Digest, Tag: tag, Pusher: operator}})
	}
	return out, nil
}

// CloudEvents parses CloudEvents 1.0 in structured (application/
// cloudevents+json) and binary (ce-* headers, JSON data) content modes:
//   - harbor.artifact.pushed / .deleted (Harbor's CloudEvents format),
//   - dev.attestd.image.pushed with data {"image": "host/repo:tag|@sha256:…"}
//     — the documented event type for CI systems,
//   - *.image.updated (Zot-style) with data {"name", "reference", "digest",
//     "mediaType"}; the registry host comes from Registry (required).
//
// Other types are accepted and counted as ignored.
type CloudEvents struct {
	Registry string
}

// AttestdEventType is the CloudEvents type CI systems send to attestd.
const AttestdEventType = "dev.attestd.image.pushed"

// ContentTypes implements Parser.
func (CloudEvents) ContentTypes() []string { return []string{CloudEventsMediaType, "application/json"} }

// Parse implements Parser.
func (c CloudEvents) Parse(r *http.Request, body []byte) ([]Incoming, error) {
	var typ, id, operator string // operator: Harbor's extension attribute
	var data json.RawMessage
	if v := r.Header.Get("Ce-Specversion"); v != "" {
		if v != "1.0" {
			return nil, fmt.Errorf("cloudevents: specversion %q, want 1.0", v)
		}
		typ, id, operator, data = r.Header.Get("Ce-Type"), r.Header.Get("Ce-Id"), r.Header.Get("Ce-Operator"), body
	} else {
		var env struct {
			SpecVersion string          `json:"specversion"`
			Type        string          `json:"type"`
			ID          string          `json:"id"`
			Operator    string          `json:"operator"`
			Data        json.RawMessage `json:"data"`
		}
		if err := decodeStrict(body, &env); err != nil {
			return nil, err
		}
		if env.SpecVersion != "1.0" {
			return nil, fmt.Errorf(`cloudevents: structured mode needs "specversion":"1.0" (binary mode: ce-specversion header), got %q`, env.SpecVersion)
		}
		typ, id, operator, data = env.Type, env.ID, env.Operator, env.Data
	}
	if typ == "" || id == "" {
		return nil, errors.New("cloudevents: type and id are required")
	}
	switch {
	case strings.HasPrefix(typ, "harbor."):
		return Harbor(c).fromData(typ, id, operator, data)
	case typ == AttestdEventType:
		var d struct {
			Image string `json:"image"`
		}
		if err := decodeStrict(data, &d); err != nil {
			return nil, fmt.Errorf("%s data: %w", typ, err)
		}
		e, err := ParseRef(d.Image)
		if err != nil {
			return nil, fmt.Errorf("%s data.image: %w", typ, err)
		}
		e.ID, e.Action = id, ActionPush
		return []Incoming{{Event: e}}, nil
	case strings.HasSuffix(typ, ".image.updated"):
		if c.Registry == "" {
			return nil, fmt.Errorf("%s carries no registry host: set sources[].registry", typ)
		}
		var d struct {
			Name      string `json:"name"`
			Reference string `json:"reference"`
			Digest    string `json:"digest"`
			MediaType string `json:"mediaType"`
		}
		if err := decodeStrict(data, &d); err != nil {
			return nil, fmt.Errorf("%s data: %w", typ, err)
		}
		tag := d.Reference
		if strings.HasPrefix(tag, "sha256:") {
			tag = ""
		}
		return []Incoming{{Event: Event{ID: id, Action: ActionPush, Registry: c.Registry, Repository: d.Name,
			Digest: d.Digest, Tag: tag, MediaType: d.MediaType}}}, nil
	}
	return []Incoming{{Event: Event{ID: id, Action: Action(typ)}}}, nil
}
