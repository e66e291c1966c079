package watch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// DockerHubRegistry is the host of Docker Hub events, as image references
// and watch rules name it (the registry client maps it to index.docker.io).
const DockerHubRegistry = "docker.io"

// DockerHub parses Docker Hub repository webhooks:
//
//	{"push_data": {"tag": "latest", "pusher": "…"},
//	 "repository": {"repo_name": "user/app", "namespace": "user", "name": "app"}, …}
//
// Docker Hub only reports pushes, names the tag and never the digest (the
// receiver resolves it), carries no delivery id and cannot sign or send
// headers: the source is authenticated by a secret path token.
//
// The payload's callback_url is deliberately never called: whoever can post
// to the hook would make attestd send requests to any URL they like (and
// Docker Hub no longer supports it).
type DockerHub struct {
	// Registry replaces docker.io (e.g. for a mirror attestd pulls from).
	Registry string
}

type dockerHubBody struct {
	PushData *struct {
		Tag    string `json:"tag"`
		Pusher string `json:"pusher"`
	} `json:"push_data"`
	Repository *struct {
		RepoName  string `json:"repo_name"`
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"repository"`
}

// ContentTypes implements Parser.
func (DockerHub) ContentTypes() []string { return []string{"application/json"} }

// Parse implements Parser.
func (d DockerHub) Parse(_ *http.Request, body []byte) ([]Incoming, error) {
	var b dockerHubBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, fmt.Errorf("docker hub webhook: %w", err)
	}
	if b.Repository == nil {
		return nil, fieldErr("repository", errors.New(`missing: a Docker Hub webhook has "repository" and "push_data"`))
	}
	if b.PushData == nil {
		return nil, fieldErr("push_data", errors.New(`missing: a Docker Hub webhook has "repository" and "push_data"`))
	}
	repo := dockerHubRepo(b.Repository.RepoName)
	if err := ValidRepository(repo); err != nil {
		return nil, fieldErr("repository.repo_name", err)
	}
	// namespace and name say the same as repo_name; a delivery where they
	// disagree means different things to different readers.
	if ns, n := b.Repository.Namespace, b.Repository.Name; ns != "" || n != "" {
		if other := dockerHubRepo(ns + "/" + n); other != repo {
			return nil, fieldErr("repository.repo_name", fmt.Errorf("%q disagrees with repository.namespace and repository.name (%q)", b.Repository.RepoName, other))
		}
	}
	host := d.Registry
	if host == "" {
		host = DockerHubRegistry
	}
	return []Incoming{{
		Event: Event{Action: ActionPush, Registry: host, Repository: repo, Tag: b.PushData.Tag, Pusher: b.PushData.Pusher},
		Fields: Fields{Registry: "sources[].registry (attestd's configuration)", Repository: "repository.repo_name",
			Digest: "push_data.tag", Tag: "push_data.tag"},
	}}, nil
}

// dockerHubRepo maps a Docker Hub repository name to its path on the
// registry: official images ("nginx") live under library/.
func dockerHubRepo(name string) string {
	if name != "" && !strings.Contains(name, "/") {
		return "library/" + name
	}
	return name
}
