package watch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Generic parses the JSON that CI pipelines send:
//
//	{"image": "registry.example.com/team/app@sha256:…"}
//	{"images": ["registry.example.com/team/app:v1", …]}
//
// A tag-only reference is resolved to its digest by the receiver. A
// Standard Webhooks webhook-id header is the delivery's event ID (the
// sender's idempotency key): image i of a list gets "ID/i".
type Generic struct {
	// TrustWebhookID: the source authenticates with Standard Webhooks,
	// whose signature covers webhook-id; otherwise the header is ignored
	// (anyone replaying a signed body could set it).
	TrustWebhookID bool
}

type genericBody struct {
	Image  string   `json:"image"`
	Images []string `json:"images"`
}

// ContentTypes implements Parser.
func (Generic) ContentTypes() []string { return []string{"application/json"} }

// Parse implements Parser.
func (g Generic) Parse(r *http.Request, body []byte) ([]Incoming, error) {
	var b genericBody
	if err := decodeStrict(body, &b); err != nil {
		return nil, err
	}
	refs := b.Images
	if b.Image != "" {
		refs = append([]string{b.Image}, refs...)
	}
	if len(refs) == 0 {
		return nil, errors.New(`want {"image": "host/repo:tag|@sha256:…"} or {"images": [...]}`)
	}
	var id string
	if r != nil && g.TrustWebhookID {
		id = r.Header.Get(HeaderWebhookID)
	}
	out := make([]Incoming, 0, len(refs))
	for i, ref := range refs {
		e, err := ParseRef(ref)
		if err != nil {
			return nil, fmt.Errorf("images[%d]: %w", i, err)
		}
		e.Action, e.ID = ActionPush, id
		if id != "" && len(refs) > 1 {
			e.ID = fmt.Sprintf("%s/%d", id, i)
		}
		f := fmt.Sprintf("images[%d]", i)
		out = append(out, Incoming{Event: e, Fields: Fields{Registry: f, Repository: f, Digest: f, Tag: f}})
	}
	return out, nil
}

// ParseRef splits "host/repo:tag", "host/repo@sha256:…" or
// "host/repo:tag@sha256:…" into an Event. A registry host is required.
func ParseRef(ref string) (Event, error) {
	var e Event
	rest := ref
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		e.Digest, rest = rest[at+1:], rest[:at]
		if !digestRe.MatchString(e.Digest) {
			return Event{}, fmt.Errorf("%q: digest must be sha256:<64 hex>", ref)
		}
	}
	host, path, ok := strings.Cut(rest, "/")
	if !ok || !(strings.ContainsAny(host, ".:") || host == "localhost") {
		return Event{}, fmt.Errorf("%q: needs a registry host (registry.example.com/team/app:tag)", ref)
	}
	if c := strings.LastIndex(path, ":"); c >= 0 {
		e.Tag, path = path[c+1:], path[:c]
		if e.Tag == "" {
			return Event{}, fmt.Errorf("%q: empty tag", ref)
		}
	}
	if e.Tag == "" && e.Digest == "" {
		return Event{}, fmt.Errorf("%q: needs a tag or a digest", ref)
	}
	if !repoRe.MatchString(path) {
		return Event{}, fmt.Errorf("%q: %q is not a valid repository name", ref, path)
	}
	e.Registry, e.Repository = host, path
	return e, nil
}
