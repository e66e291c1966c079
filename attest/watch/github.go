package watch

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// GitHub headers that say what a delivery is.
const (
	HeaderGitHubEvent    = "X-GitHub-Event"
	HeaderGitHubDelivery = "X-GitHub-Delivery" // a GUID, the same on redelivery
)

// FormMediaType is the content type of GitHub webhooks created with
// "application/x-www-form-urlencoded": the JSON is the payload= field.
const FormMediaType = "application/x-www-form-urlencoded"

// GitHub parses GitHub webhooks about container packages on ghcr.io: the
// "package" event (repository and organization webhooks) and the
// "registry_package" event (GitHub Apps), actions published and updated.
// Other package types (npm, Maven, …), other actions, ping and every other
// event are well-formed but irrelevant. The registry host and repository
// come from package_version.package_url ("ghcr.io/owner/name:tag"; the
// owner is lower-cased, as ghcr.io names are, since GitHub writes the login
// as spelled); the digest from package_version.name, which for containers is
// the manifest digest, cross-checked with container_metadata.
type GitHub struct {
	// Registry overrides the host of package_url.
	Registry string
}

// ghPackage is the package object of both events.
type ghPackage struct {
	PackageType    string `json:"package_type"`
	PackageVersion *struct {
		Name              string `json:"name"`
		PackageURL        string `json:"package_url"`
		ContainerMetadata *struct {
			Tag *struct {
				Name   string `json:"name"`
				Digest string `json:"digest"`
			} `json:"tag"`
			Manifest *struct {
				Digest    string `json:"digest"`
				MediaType string `json:"media_type"`
				Config    *struct {
					MediaType string `json:"media_type"`
				} `json:"config"`
				Layers []struct {
					MediaType string `json:"media_type"`
				} `json:"layers"`
			} `json:"manifest"`
		} `json:"container_metadata"`
	} `json:"package_version"`
}

// ContentTypes implements Parser.
func (GitHub) ContentTypes() []string { return []string{"application/json", FormMediaType} }

// Parse implements Parser.
func (g GitHub) Parse(r *http.Request, body []byte) ([]Incoming, error) {
	event, delivery := r.Header.Get(HeaderGitHubEvent), r.Header.Get(HeaderGitHubDelivery)
	if event == "" {
		return nil, fieldErr(HeaderGitHubEvent, errors.New("missing: not a GitHub webhook delivery"))
	}
	if delivery == "" {
		return nil, fieldErr(HeaderGitHubDelivery, errors.New("missing: not a GitHub webhook delivery"))
	}
	payload, err := githubPayload(r, body)
	if err != nil {
		return nil, err
	}
	// Prefixed: the event type "push" must not read as ActionPush.
	ignored := func(what string) []Incoming {
		return []Incoming{{Event: Event{ID: delivery, Action: Action("github:" + what)}}}
	}
	if event != "package" && event != "registry_package" {
		// ping and everything else: only well-formedness matters.
		if err := decodeStrict(payload, &struct{}{}); err != nil {
			return nil, err
		}
		return ignored(event), nil
	}
	var env struct {
		Action          string     `json:"action"`
		Package         *ghPackage `json:"package"`
		RegistryPackage *ghPackage `json:"registry_package"`
		Sender          struct {
			Login string `json:"login"`
		} `json:"sender"`
	}
	if err := decodeStrict(payload, &env); err != nil {
		return nil, err
	}
	pkg := env.Package
	if event == "registry_package" {
		pkg = env.RegistryPackage
	}
	if pkg == nil {
		return nil, fieldErr(event, fmt.Errorf("missing from a %s event", event))
	}
	if env.Action == "" {
		return nil, fieldErr("action", errors.New("missing"))
	}
	if !strings.EqualFold(pkg.PackageType, "container") {
		return ignored(fmt.Sprintf("%s %s (%s)", event, env.Action, pkg.PackageType)), nil
	}
	if env.Action != "published" && env.Action != "updated" {
		return ignored(event + " " + env.Action), nil
	}
	pv := pkg.PackageVersion
	if pv == nil {
		return ignored(event + " " + env.Action + " without a version"), nil
	}
	base := event + ".package_version"
	in := Incoming{
		Event: Event{ID: delivery, Action: ActionPush, Digest: pv.Name, Pusher: env.Sender.Login},
		Fields: Fields{Registry: base + ".package_url", Repository: base + ".package_url", Digest: base + ".name",
			Tag: base + ".package_url"},
	}
	if pv.PackageURL == "" {
		return nil, fieldErr(in.Fields.Repository, errors.New("missing: the image reference of the version"))
	}
	host, repo, tag, err := splitPackageURL(pv.PackageURL)
	if err != nil {
		return nil, fieldErr(in.Fields.Repository, err)
	}
	in.Event.Registry, in.Event.Repository, in.Event.Tag = host, repo, tag
	if g.Registry != "" {
		in.Event.Registry, in.Fields.Registry = g.Registry, "sources[].registry (attestd's configuration)"
	}
	if cm := pv.ContainerMetadata; cm != nil {
		cmBase := base + ".container_metadata"
		if t := cm.Tag; t != nil {
			if t.Name != "" {
				if tag != "" && t.Name != tag {
					return nil, fieldErr(cmBase+".tag.name", fmt.Errorf("%q is not the tag of package_url %q", t.Name, pv.PackageURL))
				}
				in.Event.Tag, in.Fields.Tag = t.Name, cmBase+".tag.name"
			}
			if err := agree(&in.Event.Digest, &in.Fields.Digest, t.Digest, cmBase+".tag.digest"); err != nil {
				return nil, err
			}
		}
		if m := cm.Manifest; m != nil {
			if err := agree(&in.Event.Digest, &in.Fields.Digest, m.Digest, cmBase+".manifest.digest"); err != nil {
				return nil, err
			}
			// What the manifest is, only when it is known which one it
			// is: a tag-only event is described by what the tag resolves to.
			if in.Event.Digest != "" {
				in.Event.MediaType = m.MediaType
				if m.Config != nil {
					in.ConfigType = m.Config.MediaType
				}
				for _, l := range m.Layers {
					in.RefTypes = append(in.RefTypes, l.MediaType)
				}
			}
		}
	}
	return []Incoming{in}, nil
}

// agree sets *digest from v (found at field) when it is unset, and fails
// when the two name different manifests.
func agree(digest, digestField *string, v, field string) error {
	switch {
	case v == "":
	case *digest == "":
		*digest, *digestField = v, field
	case v != *digest:
		return fieldErr(field, fmt.Errorf("%q is not the digest %q of %s", v, *digest, *digestField))
	}
	return nil
}

// githubPayload returns the JSON of a delivery: the body, or for a
// form-encoded webhook its one payload= field.
func githubPayload(r *http.Request, body []byte) ([]byte, error) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != FormMediaType {
		return body, nil
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, fmt.Errorf("form body: %w", err)
	}
	if len(form) != 1 || len(form["payload"]) != 1 {
		return nil, fieldErr("payload", errors.New("a form-encoded GitHub delivery has exactly one field, payload=<JSON>"))
	}
	return []byte(form["payload"][0]), nil
}

// splitPackageURL splits GitHub's "host/owner/name:tag" (tag empty for an
// untagged version). The owner is a GitHub login, which GitHub spells with
// capitals and ghcr.io serves in lower case; only ASCII letters are folded,
// so a look-alike stays non-ASCII and is refused.
func splitPackageURL(u string) (host, repo, tag string, err error) {
	host, rest, ok := strings.Cut(u, "/")
	if !ok || strings.Contains(rest, "@") {
		return "", "", "", fmt.Errorf("%q is not host/owner/name:tag", u)
	}
	if i := strings.LastIndex(rest, ":"); i >= 0 {
		rest, tag = rest[:i], rest[i+1:]
	}
	owner, name, ok := strings.Cut(rest, "/")
	if !ok {
		return "", "", "", fmt.Errorf("%q is not host/owner/name:tag", u)
	}
	return host, asciiLower(owner) + "/" + name, tag, nil
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}
