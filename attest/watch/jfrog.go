package watch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// JFrog parses JFrog Platform (Artifactory) predefined webhooks of the
// Docker domain: "pushed" and "deleted" (a tag of an image). Promotions,
// other domains ("artifact" fires for every file, layers included, in every
// package type) and other event types are well-formed but irrelevant.
//
// The events name the repository key and the path of the tag's manifest
// file in it, never the Docker host: Registry is that host, and the
// repository is "<repo_key>/<image path>", which is how clients pull with
// the repository path method, the one JFrog Cloud uses by default
// (mycompany.jfrog.io/docker-local/team/app:tag). The image path is taken
// from data.path ("team/app/<tag>/manifest.json"): data.image_name is only
// its last segment for nested images. The digest is "sha256:" + data.sha256,
// the checksum of the stored manifest.json (or list.manifest.json), which is
// the manifest as pushed, so its digest.
type JFrog struct {
	Registry string
}

// ContentTypes implements Parser.
func (JFrog) ContentTypes() []string { return []string{"application/json"} }

// Parse implements Parser.
func (j JFrog) Parse(_ *http.Request, body []byte) ([]Incoming, error) {
	var env struct {
		Domain    string          `json:"domain"`
		EventType string          `json:"event_type"`
		Data      json.RawMessage `json:"data"`
	}
	if err := decodeStrict(body, &env); err != nil {
		return nil, err
	}
	if env.Domain == "" {
		return nil, fieldErr("domain", errors.New("missing: not a JFrog webhook payload"))
	}
	if env.EventType == "" {
		return nil, fieldErr("event_type", errors.New("missing"))
	}
	var action Action
	switch {
	case env.Domain != "docker":
	case env.EventType == "pushed":
		action = ActionPush
	case env.EventType == "deleted":
		action = ActionDelete
	}
	if action == "" {
		return []Incoming{{Event: Event{Action: Action("jfrog:" + env.Domain + " " + env.EventType)}}}, nil
	}
	if len(bytes.TrimSpace(env.Data)) == 0 || string(bytes.TrimSpace(env.Data)) == "null" {
		return nil, fieldErr("data", errors.New("missing"))
	}
	var d struct {
		RepoKey   string `json:"repo_key"`
		Path      string `json:"path"`
		Name      string `json:"name"`
		SHA256    string `json:"sha256"`
		ImageName string `json:"image_name"`
		Tag       string `json:"tag"`
	}
	if err := decodeStrict(env.Data, &d); err != nil {
		return nil, fieldErr("data", err)
	}
	for _, f := range []struct{ name, v string }{{"repo_key", d.RepoKey}, {"path", d.Path}, {"image_name", d.ImageName}, {"tag", d.Tag}} {
		if f.v == "" {
			return nil, fieldErr("data."+f.name, errors.New("missing"))
		}
	}
	if err := ValidRepository(d.RepoKey); err != nil || strings.Contains(d.RepoKey, "/") {
		if err == nil {
			err = fmt.Errorf("repository key %q has a '/'", d.RepoKey)
		}
		return nil, fieldErr("data.repo_key", err)
	}
	image, err := jfrogImagePath(d.Path, d.Tag, d.Name, d.ImageName)
	if err != nil {
		return nil, err
	}
	in := Incoming{
		Event: Event{Action: action, Registry: j.Registry, Repository: d.RepoKey + "/" + image, Tag: d.Tag},
		Fields: Fields{Registry: "sources[].registry (attestd's configuration)", Repository: "data.path",
			Digest: "data.sha256", Tag: "data.tag"},
	}
	if d.SHA256 != "" {
		if strings.Contains(d.SHA256, ":") {
			return nil, fieldErr("data.sha256", fmt.Errorf("%q: want the bare hex checksum Artifactory sends", d.SHA256))
		}
		in.Event.Digest = "sha256:" + d.SHA256
	}
	return []Incoming{in}, nil
}

// jfrogImagePath returns the image's path in its repository from the
// manifest file's path "<image path>/<tag>/<file>", checking that it agrees
// with the event's tag, file name and image name.
func jfrogImagePath(path, tag, name, imageName string) (string, error) {
	segs := strings.Split(path, "/")
	n := len(segs)
	if n < 3 || segs[n-2] != tag || (name != "" && segs[n-1] != name) {
		return "", fieldErr("data.path", fmt.Errorf("%q is not <image>/%s/%s", path, tag, orDefault(name, "<manifest file>")))
	}
	image := strings.Join(segs[:n-2], "/")
	if image != imageName && !strings.HasSuffix(image, "/"+imageName) {
		return "", fieldErr("data.image_name", fmt.Errorf("%q is not the image of data.path %q", imageName, path))
	}
	return image, nil
}
