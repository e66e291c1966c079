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
// resource_url (Harbor's external URL without the scheme) unless Registry
// overrides it; the repository is repo_full_name (project/name).
type Harbor struct {
	Registry string
}

// CloudEventsMediaType is the structured-mode content type.
const CloudEventsMediaType = "application/cloudevents+json"

// harborData is Harbor's EventData (src/pkg/notifier/model/event.go) as far
// as artifact events fill it.
type harborData struct {
	Resources []struct {
		Digest      string `json:"digest"`
		Tag         string `json:"tag"`
		ResourceURL string `json:"resource_url"`
	} `json:"resources"`
	Repository struct {
		RepoFullName string `json:"repo_full_name"`
	} `json:"repository"`
}

// harborActions maps both formats' event types to actions; every other type
// (pulls, scans, quota, replication, retention, …) is ignored.
var harborActions = map[string]Action{
	"PUSH_ARTIFACT": ActionPush, "harbor.artifact.pushed": ActionPush,
	"DELETE_ARTIFACT": ActionDelete, "harbor.artifact.deleted": ActionDelete,
}

// ContentTypes implements Parser.
func (Harbor) ContentTypes() []string { return []string{"application/json", CloudEventsMediaType} }

// Parse implements Parser.
func (h Harbor) Parse(_ *http.Request, body []byte) ([]Incoming, error) {
	var env struct {
		Type        string          `json:"type"`
		ID          string          `json:"id"`
		SpecVersion string          `json:"specversion"`
		EventData   json.RawMessage `json:"event_data"`
		Operator    string          `json:"operator"` // Default: payload field; CloudEvents: extension attribute
		Data        json.RawMessage `json:"data"`
	}
	if err := decodeStrict(body, &env); err != nil {
		return nil, err
	}
	if env.Type == "" {
		return nil, fieldErr("type", errors.New("missing: Harbor sends PUSH_ARTIFACT, … (Default) or harbor.artifact.pushed, … (CloudEvents)"))
	}
	if env.SpecVersion == "" {
		return h.fromData(env.Type, "", env.Operator, "event_data", env.EventData)
	}
	if env.SpecVersion != "1.0" {
		return nil, fieldErr("specversion", fmt.Errorf("%q, want 1.0", env.SpecVersion))
	}
	if env.ID == "" {
		return nil, fieldErr("id", errors.New("missing: a CloudEvent has an id"))
	}
	return h.fromData(env.Type, env.ID, env.Operator, "data", env.Data)
}

// fromData maps Harbor's event data (at JSON path at) to events.
func (h Harbor) fromData(typ, id, operator, at string, raw json.RawMessage) ([]Incoming, error) {
	action, ok := harborActions[typ]
	if !ok {
		return []Incoming{{Event: Event{ID: id, Action: Action(typ)}}}, nil
	}
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, fieldErr(at, fmt.Errorf("missing: %s carries its resources there", typ))
	}
	var d harborData
	if err := decodeStrict(raw, &d); err != nil {
		return nil, fieldErr(at, err)
	}
	if len(d.Resources) == 0 {
		// Well-formed and about nothing: acknowledged, nothing stored.
		return nil, nil
	}
	repo := d.Repository.RepoFullName
	if repo == "" {
		return nil, fieldErr(at+".repository.repo_full_name", errors.New("missing"))
	}
	out := make([]Incoming, 0, len(d.Resources))
	for i, res := range d.Resources {
		p := fmt.Sprintf("%s.resources[%d]", at, i)
		if res.Digest == "" {
			return nil, fieldErr(p+".digest", errors.New("missing: Harbor names the artifact's digest"))
		}
		tag := res.Tag
		if strings.Contains(tag, ":") {
			// An untagged artifact: Harbor puts its digest where the tag goes.
			if tag != res.Digest {
				return nil, fieldErr(p+".tag", fmt.Errorf("%q is neither a tag nor the artifact's digest %s", tag, res.Digest))
			}
			tag = ""
		}
		in := Incoming{Event: Event{ID: id, Action: action, Registry: h.Registry, Repository: repo, Digest: res.Digest, Tag: tag, Pusher: operator},
			Fields: Fields{Registry: "sources[].registry (attestd's configuration)", Repository: at + ".repository.repo_full_name",
				Digest: p + ".digest", Tag: p + ".tag"}}
		if h.Registry == "" {
			host, rest, _ := strings.Cut(res.ResourceURL, "/")
			// resource_url is EXT_URL/repo:tag or EXT_URL/repo@digest
			// (BuildImageResourceURL): it must name the same artifact.
			if rest != repo+":"+res.Tag && rest != repo+"@"+res.Digest {
				return nil, fieldErr(p+".resource_url", fmt.Errorf("%q is not %s/%s:%s or @%s", res.ResourceURL, "HOST", repo, res.Tag, res.Digest))
			}
			in.Event.Registry, in.Fields.Registry = host, p+".resource_url"
		}
		if id != "" && len(d.Resources) > 1 {
			in.Event.ID = fmt.Sprintf("%s/%d", id, i)
		}
		out = append(out, in)
	}
	return out, nil
}
