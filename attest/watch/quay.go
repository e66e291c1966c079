package watch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Quay parses Quay (quay.io and self-hosted Red Hat Quay) "Push to
// Repository" notifications sent by the "Webhook POST" method:
//
//	{"repository": "ns/repo", "namespace": "ns", "name": "repo",
//	 "docker_url": "quay.io/ns/repo", "homepage": "…", "updated_tags": ["latest"]}
//
// Every Quay event posts the same envelope; only pushes carry updated_tags,
// so the others (builds, vulnerabilities, mirror syncs) are ignored. Each
// updated tag is one event naming no digest: the receiver resolves it. The
// registry host is docker_url's unless Registry overrides it. Quay can
// neither sign nor send headers: the source is authenticated by a secret path
// token.
type Quay struct {
	Registry string
}

type quayBody struct {
	Repository  string    `json:"repository"`
	DockerURL   string    `json:"docker_url"`
	UpdatedTags *[]string `json:"updated_tags"`
}

// quayNotPush is the action of Quay notifications other than pushes.
const quayNotPush Action = "quay_not_push"

// ContentTypes implements Parser.
func (Quay) ContentTypes() []string { return []string{"application/json"} }

// Parse implements Parser.
func (q Quay) Parse(_ *http.Request, body []byte) ([]Incoming, error) {
	var b quayBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, fmt.Errorf("quay notification: %w", err)
	}
	if b.UpdatedTags == nil {
		return []Incoming{{Event: Event{Action: quayNotPush}}}, nil
	}
	if len(*b.UpdatedTags) == 0 {
		return nil, fieldErr("updated_tags", errors.New("empty: a push names the tags it updated"))
	}
	if err := ValidRepository(b.Repository); err != nil {
		return nil, fieldErr("repository", err)
	}
	host, err := q.host(b)
	if err != nil {
		return nil, err
	}
	regField := "docker_url"
	if q.Registry != "" {
		regField = "sources[].registry (attestd's configuration)"
	}
	out := make([]Incoming, 0, len(*b.UpdatedTags))
	for i, tag := range *b.UpdatedTags {
		f := fmt.Sprintf("updated_tags[%d]", i)
		out = append(out, Incoming{
			Event:  Event{Action: ActionPush, Registry: host, Repository: b.Repository, Tag: tag},
			Fields: Fields{Registry: regField, Repository: "repository", Digest: f, Tag: f},
		})
	}
	return out, nil
}

// host returns the registry host: Registry, or docker_url's, whose path must
// be the repository either way.
func (q Quay) host(b quayBody) (string, error) {
	if b.DockerURL == "" {
		if q.Registry != "" {
			return q.Registry, nil
		}
		return "", fieldErr("docker_url", errors.New(`missing: it names the registry host (or set sources[].registry)`))
	}
	host, path, ok := strings.Cut(b.DockerURL, "/")
	if !ok || strings.Contains(b.DockerURL, "://") {
		return "", fieldErr("docker_url", fmt.Errorf("%q is not host/namespace/repository", b.DockerURL))
	}
	if path != b.Repository {
		return "", fieldErr("docker_url", fmt.Errorf("%q names another repository than %q", b.DockerURL, b.Repository))
	}
	if q.Registry != "" {
		return q.Registry, nil
	}
	if err := ValidHost(host); err != nil {
		return "", fieldErr("docker_url", err)
	}
	return host, nil
}
