package watch

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"
)

// CloudEvents parses CloudEvents 1.0 in structured (application/
// cloudevents+json, data or data_base64) and binary (ce-* headers, the body
// is the data) content modes:
//   - harbor.artifact.pushed / .deleted (Harbor's CloudEvents format),
//   - dev.attestd.image.pushed with data {"image": "host/repo:tag|@sha256:…"}
//     — the documented event type for CI systems,
//   - PREFIX.image.updated / .image.deleted (Zot, PREFIX "zotregistry") with
//     data {"name", "reference", "digest", "mediaType", "manifest"}; the
//     registry host comes from Registry (required), and the manifest Zot
//     includes must hash to the digest.
//
// Other types are accepted and counted as ignored.
type CloudEvents struct {
	Registry string
	// TypePrefix is the prefix of Zot-style event types; default
	// DefaultZotTypePrefix.
	TypePrefix string
	// Source, when set, is the only source attribute accepted (Zot sends
	// "zotregistry.dev", Harbor "/projects/ID/webhook/policies/ID"); any
	// other is a 400.
	Source string
	// SignedBody: the source's authentication signs the body only (hmac,
	// standard_webhooks). Binary mode's attributes are ce-* headers no
	// signature covers — a captured delete could be replayed as a push —
	// so only structured mode is accepted.
	SignedBody bool
}

// AttestdEventType is the CloudEvents type CI systems send to attestd.
const AttestdEventType = "dev.attestd.image.pushed"

// DefaultZotTypePrefix prefixes the event types Zot sends
// (zotregistry.image.updated, …).
const DefaultZotTypePrefix = "zotregistry"

// ContentTypes implements Parser.
func (CloudEvents) ContentTypes() []string { return []string{CloudEventsMediaType, "application/json"} }

// ceEvent is one CloudEvent in either content mode; field names the
// attributes as the sender wrote them (header or JSON member).
type ceEvent struct {
	typ, id, source, operator string
	data                      []byte
	field                     map[string]string // attribute → where it was
}

// Parse implements Parser.
func (c CloudEvents) Parse(r *http.Request, body []byte) ([]Incoming, error) {
	if c.SignedBody && r != nil && r.Header.Get("Ce-Specversion") != "" {
		return nil, fieldErr("ce-specversion", errors.New("this source signs the body, and binary mode's ce-* attributes are outside it: send structured mode (application/cloudevents+json)"))
	}
	ev, err := decodeCloudEvent(r, body)
	if err != nil {
		return nil, err
	}
	if c.Source != "" && ev.source != c.Source {
		return nil, fieldErr(ev.field["source"], fmt.Errorf("%q is not the source this endpoint accepts (sources[].event_source: %q)", ev.source, c.Source))
	}
	prefix := orDefault(c.TypePrefix, DefaultZotTypePrefix) + "."
	switch {
	case strings.HasPrefix(ev.typ, "harbor."):
		return Harbor{Registry: c.Registry}.fromData(ev.typ, ev.id, ev.operator, ev.field["data"], ev.data)
	case ev.typ == AttestdEventType:
		return c.attestd(ev)
	case ev.typ == prefix+"image.updated":
		return c.zot(ev, ActionPush)
	case ev.typ == prefix+"image.deleted":
		return c.zot(ev, ActionDelete)
	}
	return []Incoming{{Event: Event{ID: ev.id, Action: Action(ev.typ)}}}, nil
}

// decodeCloudEvent reads the context attributes and the data. The content
// mode follows the HTTP binding: application/cloudevents+json is
// structured; otherwise a ce-specversion header means binary; a body
// without either is read as structured (what CI scripts post).
func decodeCloudEvent(r *http.Request, body []byte) (ceEvent, error) {
	binary := false
	if r != nil && r.Header.Get("Ce-Specversion") != "" {
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		binary = mt != CloudEventsMediaType
	}
	if binary {
		h := r.Header
		ev := ceEvent{typ: h.Get("Ce-Type"), id: h.Get("Ce-Id"), source: h.Get("Ce-Source"), operator: h.Get("Ce-Operator"), data: body,
			field: map[string]string{"specversion": "ce-specversion", "type": "ce-type", "id": "ce-id", "source": "ce-source", "data": "data"}}
		return ev, ev.required(h.Get("Ce-Specversion"))
	}
	var env struct {
		SpecVersion     string          `json:"specversion"`
		Type            string          `json:"type"`
		ID              string          `json:"id"`
		Source          string          `json:"source"`
		Operator        string          `json:"operator"`
		DataContentType string          `json:"datacontenttype"`
		Data            json.RawMessage `json:"data"`
		DataBase64      *string         `json:"data_base64"`
	}
	if err := decodeStrict(body, &env); err != nil {
		return ceEvent{}, err
	}
	ev := ceEvent{typ: env.Type, id: env.ID, source: env.Source, operator: env.Operator, data: env.Data,
		field: map[string]string{"specversion": "specversion", "type": "type", "id": "id", "source": "source", "data": "data"}}
	if bytes.Equal(env.Data, []byte("null")) {
		ev.data = nil
	}
	if env.DataBase64 != nil {
		if ev.data != nil {
			return ceEvent{}, fieldErr("data_base64", errors.New("an event carries data or data_base64, not both"))
		}
		b, err := base64.StdEncoding.DecodeString(*env.DataBase64)
		if err != nil {
			return ceEvent{}, fieldErr("data_base64", fmt.Errorf("not base64: %w", err))
		}
		ev.data, ev.field["data"] = b, "data_base64"
	}
	if ct := env.DataContentType; ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || !(mt == "application/json" || strings.HasSuffix(mt, "+json")) {
			return ceEvent{}, fieldErr("datacontenttype", fmt.Errorf("%q: the data of the events attestd reads is JSON", ct))
		}
	}
	return ev, ev.required(env.SpecVersion)
}

// required checks the attributes CloudEvents 1.0 requires.
func (ev ceEvent) required(specversion string) error {
	if specversion != "1.0" {
		return fieldErr(ev.field["specversion"], fmt.Errorf("%q, want 1.0 (structured mode: the specversion member; binary mode: the ce-specversion header)", specversion))
	}
	for _, a := range []struct{ name, v string }{{"id", ev.id}, {"source", ev.source}, {"type", ev.typ}} {
		if a.v == "" {
			return fieldErr(ev.field[a.name], errors.New("missing: CloudEvents 1.0 requires it"))
		}
	}
	return nil
}

func (c CloudEvents) attestd(ev ceEvent) ([]Incoming, error) {
	f := ev.field["data"] + ".image"
	var d struct {
		Image string `json:"image"`
	}
	if err := decodeStrict(ev.data, &d); err != nil {
		return nil, fieldErr(ev.field["data"], err)
	}
	e, err := ParseRef(d.Image)
	if err != nil {
		return nil, fieldErr(f, err)
	}
	e.ID, e.Action = ev.id, ActionPush
	return []Incoming{{Event: e, Fields: Fields{Registry: f, Repository: f, Digest: f, Tag: f}}}, nil
}

// zotData is the data of Zot's image events (pkg/extensions/events).
type zotData struct {
	Name      string `json:"name"`
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	// Manifest is the manifest as pushed, a JSON string (image.updated).
	Manifest *string `json:"manifest"`
	Actor    struct {
		Name string `json:"name"`
	} `json:"actor"`
	Request struct {
		UserAgent string `json:"useragent"`
	} `json:"request"`
}

func (c CloudEvents) zot(ev ceEvent, action Action) ([]Incoming, error) {
	at := ev.field["data"]
	if c.Registry == "" {
		return nil, fieldErr("sources[].registry (attestd's configuration)", fmt.Errorf("%s events carry no registry host: set the host of the registry that sends them", ev.typ))
	}
	var d zotData
	if err := decodeStrict(ev.data, &d); err != nil {
		return nil, fieldErr(at, err)
	}
	in := Incoming{
		Event:     Event{ID: ev.id, Action: action, Registry: c.Registry, Repository: d.Name, Digest: d.Digest, MediaType: d.MediaType, Pusher: d.Actor.Name},
		UserAgent: d.Request.UserAgent,
		Fields: Fields{Registry: "sources[].registry (attestd's configuration)", Repository: at + ".name", Digest: at + ".digest",
			Tag: at + ".reference", Manifest: at + ".manifest"},
	}
	if d.Digest == "" {
		return nil, fieldErr(in.Fields.Digest, fmt.Errorf("missing: %s names the manifest's digest", ev.typ))
	}
	switch {
	case d.Reference == "":
		return nil, fieldErr(in.Fields.Tag, errors.New("missing: the tag or digest the manifest was pushed under"))
	case strings.Contains(d.Reference, ":"):
		// Pushed by digest: the reference is the digest itself.
		if d.Reference != d.Digest {
			return nil, fieldErr(in.Fields.Tag, fmt.Errorf("%q is neither a tag nor the event's digest %s", d.Reference, d.Digest))
		}
	default:
		in.Event.Tag = d.Reference
	}
	if d.Manifest != nil {
		// Zot sends the manifest bytes as a JSON string: Incoming.check
		// verifies they hash to the digest before anything is believed.
		in.Manifest = []byte(*d.Manifest)
	}
	return []Incoming{in}, nil
}
