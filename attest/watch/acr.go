package watch

import (
	"errors"
	"fmt"
	"net/http"
)

// ACR parses Azure Container Registry webhooks:
//
//	{"id": "…", "action": "push",
//	 "target": {"mediaType": "…", "digest": "sha256:…", "repository": "hello-world", "tag": "v1"},
//	 "request": {"host": "myregistry.azurecr.io", …}}
//
// push and delete (of a manifest) are events; chart_push, chart_delete,
// quarantine, ping and repository deletes are ignored. The registry host is
// request.host unless Registry overrides it. ACR sends the custom headers the
// webhook is configured with, so the source authenticates by a header.
type ACR struct {
	Registry string
}

type acrEvent struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Target *struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		Host      string `json:"host"`
		UserAgent string `json:"useragent"`
	} `json:"request"`
	Actor struct {
		Name string `json:"name"`
	} `json:"actor"`
}

// acrRepositoryDeleted is the action of a delete that names a repository and
// no manifest: nothing attestd can record per image.
const acrRepositoryDeleted Action = "delete_repository"

// ContentTypes implements Parser.
func (ACR) ContentTypes() []string { return []string{"application/json"} }

// Parse implements Parser.
func (a ACR) Parse(_ *http.Request, body []byte) ([]Incoming, error) {
	var e acrEvent
	if err := decodeStrict(body, &e); err != nil {
		return nil, fmt.Errorf("acr webhook: %w", err)
	}
	var action Action
	switch e.Action {
	case "":
		return nil, fieldErr("action", errors.New("missing"))
	case "push":
		action = ActionPush
	case "delete":
		action = ActionDelete
	default:
		// chart_push, chart_delete, quarantine, ping: counted as ignored.
		return []Incoming{{Event: Event{ID: e.ID, Action: Action(e.Action)}}}, nil
	}
	if e.Target == nil {
		return nil, fieldErr("target", errors.New("missing"))
	}
	if e.Target.Digest == "" {
		if action == ActionDelete {
			return []Incoming{{Event: Event{ID: e.ID, Action: acrRepositoryDeleted}}}, nil
		}
		return nil, fieldErr("target.digest", errors.New("missing: ACR names the digest of every push"))
	}
	host, regField := a.Registry, "sources[].registry (attestd's configuration)"
	if host == "" {
		host, regField = e.Request.Host, "request.host"
	}
	return []Incoming{{
		Event: Event{ID: e.ID, Action: action, Registry: host, Repository: e.Target.Repository,
			Digest: e.Target.Digest, Tag: e.Target.Tag, MediaType: e.Target.MediaType, Pusher: e.Actor.Name},
		UserAgent: e.Request.UserAgent,
		Fields:    Fields{Registry: regField, Repository: "target.repository", Digest: "target.digest", Tag: "target.tag"},
	}}, nil
}
