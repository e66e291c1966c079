package watch

import (
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
)

const (
	zotGolang = "sha256:efd14fdcfc3071f223b6b72e78c81004485e67725700d7a5c6673bc20394d3b2"
	zotHelm   = "sha256:1e3cbcae2e5fc59a195cbbc020fa5268ee114704a08a260f278764aeaa3bd82d"
	// zotBasic is what Zot sends for credentials jane.joe / opensesame
	// (its test/blackbox/events_http.bats): "Basic " + base64(user:pass).
	zotBasic = "Basic amFuZS5qb2U6b3BlbnNlc2FtZQ=="
)

var ceWatch = Filter{Rules: []Rule{
	{Registry: "zot.local:5000", Repositories: []string{"**"}},
	{Registry: "harbor.dev", Repositories: []string{"library/*"}},
	{Registry: "registry.example.com", Repositories: []string{"team/**"}},
}}

// zotHeaders are the binary-mode headers Zot's HTTP sink (CloudEvents
// sdk-go, binary encoding) sends for an event of type typ.
func zotHeaders(typ string) map[string]string {
	return map[string]string{"Content-Type": "application/json", "Authorization": zotBasic, "Ce-Specversion": "1.0",
		"Ce-Id": "3f0c2b8e-1d7a-4e59-9b6c-5a2e8d1f7c40", "Ce-Source": "zotregistry.dev", "Ce-Type": typ, "Ce-Time": "2026-08-20T09:30:12.402917Z"}
}

func ceSource() intakeSource {
	return intakeSource{
		cfg:      SourceConfig{Name: "events", Type: "cloudevents", Registry: "zot.local:5000", Auth: "header", Secret: []byte(zotBasic)},
		filter:   ceWatch,
		resolver: tagResolver{"registry.example.com/team/app:v1.2.0": []byte(imageManifest)},
		headers:  map[string]string{"Content-Type": CloudEventsMediaType, "Authorization": zotBasic},
	}
}

// structured wraps Zot's data in a structured-mode event, as data or as
// data_base64.
func structured(t testing.TB, data []byte, b64 bool) []byte {
	t.Helper()
	head := `{"specversion":"1.0","id":"3f0c2b8e-1d7a-4e59-9b6c-5a2e8d1f7c40","source":"zotregistry.dev","type":"zotregistry.image.updated","datacontenttype":"application/json",`
	if b64 {
		return []byte(head + `"data_base64":"` + base64.StdEncoding.EncodeToString(data) + `"}`)
	}
	return []byte(head + `"data":` + string(data) + `}`)
}

func TestCloudEventsDeliveries(t *testing.T) {
	t.Parallel()
	updated := load(t, "cloudevents-zot-image-updated.json")
	golang := Event{Source: "events", ID: "3f0c2b8e-1d7a-4e59-9b6c-5a2e8d1f7c40", Action: ActionPush, Registry: "zot.local:5000", Repository: "golang",
		Digest: zotGolang, Tag: "1.20", MediaType: "application/vnd.oci.image.manifest.v1+json", Pusher: "admin"}
	byDigest := golang
	byDigest.Tag = ""
	deleted := golang
	deleted.Action = ActionDelete
	resolved := Event{Source: "events", ID: "b5a1d3e0-6c2f-4f7a-9e18-2d4c6b8a0f13", Action: ActionPush, Registry: "registry.example.com", Repository: "team/app",
		Digest: sha256Digest([]byte(imageManifest)), Tag: "v1.2.0", MediaType: "application/vnd.oci.image.manifest.v1+json"}
	runIntakeCases(t, ceSource(), []intakeCase{
		{name: "Zot image.updated (binary)", body: updated, headers: zotHeaders("zotregistry.image.updated"), code: 202, want: []Event{golang}},
		{name: "Zot image.updated by digest", body: edit(t, updated, `"reference":"1.20"`, `"reference":"`+zotGolang+`"`), headers: zotHeaders("zotregistry.image.updated"), code: 202, want: []Event{byDigest}},
		{name: "Zot image.updated (structured, data)", body: structured(t, updated, false), code: 202, want: []Event{golang}},
		{name: "Zot image.updated (structured, data_base64)", body: structured(t, updated, true), code: 202, want: []Event{golang}},
		{name: "Zot image.deleted", body: load(t, "cloudevents-zot-image-deleted.json"), headers: zotHeaders("zotregistry.image.deleted"), code: 202, want: []Event{deleted}},
		{name: "Zot Helm chart: the included manifest's config says so", body: load(t, "cloudevents-zot-helm.json"), headers: zotHeaders("zotregistry.image.updated"), code: 202, ignored: map[string]int{ReasonNotImage: 1}},
		{name: "Zot repository.created", body: load(t, "cloudevents-zot-repository-created.json"), headers: zotHeaders("zotregistry.repository.created"), code: 202, ignored: map[string]int{"action": 1}},
		{name: "Zot image.lint_failed", body: updated, headers: zotHeaders("zotregistry.image.lint_failed"), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "another registry's image.updated", body: updated, headers: zotHeaders("example.image.updated"), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "attestd CI event by digest", body: load(t, "cloudevents-attestd.json"), code: 202,
			want: []Event{{Source: "events", ID: "ci-1", Action: ActionPush, Registry: "registry.example.com", Repository: "team/app", Digest: "sha256:" + strings.Repeat("b", 64)}}},
		{name: "attestd CI event by tag (data_base64), resolved", body: load(t, "cloudevents-attestd-base64.json"), code: 202, want: []Event{resolved}},
		{name: "attestd CI event posted as application/json", body: load(t, "cloudevents-attestd.json"), headers: map[string]string{"Content-Type": "application/json"}, code: 202,
			want: []Event{{Source: "events", ID: "ci-1", Action: ActionPush, Registry: "registry.example.com", Repository: "team/app", Digest: "sha256:" + strings.Repeat("b", 64)}}},
		{name: "unknown tag", body: edit(t, load(t, "cloudevents-attestd.json"), "@sha256:"+strings.Repeat("b", 64), ":v9"), code: 422},
		{name: "other event type", body: []byte(`{"specversion":"1.0","id":"1","source":"/x","type":"com.example.object.created","data":{"a":1}}`), code: 202, ignored: map[string]int{ReasonAction: 1}},
	})
	src := ceSource()
	src.resolver = unreachable{}
	runIntakeCases(t, src, []intakeCase{
		{name: "registry unreachable", body: load(t, "cloudevents-attestd-base64.json"), code: 503},
	})
	// Harbor's resource_url names its host; sources[].registry would
	// override it.
	src = ceSource()
	src.cfg.Registry = ""
	runIntakeCases(t, src, []intakeCase{
		{name: "Harbor (structured)", body: load(t, "harbor-cloudevents-push.json"), code: 202,
			want: []Event{{Source: "events", ID: "4b2f89a6-548d-4c12-9993-a1f5790b97d2", Action: ActionPush, Registry: "harbor.dev", Repository: "library/busybox", Digest: busybox, Tag: "1.36", Pusher: "admin"}}},
	})
}

func TestCloudEventsSourceAndPrefix(t *testing.T) {
	t.Parallel()
	updated := load(t, "cloudevents-zot-image-updated.json")
	src := ceSource()
	src.cfg.EventSource, src.cfg.TypePrefix = "zotregistry.dev", "acme"
	other := zotHeaders("acme.image.updated")
	other["Ce-Source"] = "zotregistry.evil"
	runIntakeCases(t, src, []intakeCase{
		{name: "configured prefix", body: updated, headers: zotHeaders("acme.image.updated"), code: 202,
			want: []Event{{Source: "events", ID: "3f0c2b8e-1d7a-4e59-9b6c-5a2e8d1f7c40", Action: ActionPush, Registry: "zot.local:5000", Repository: "golang",
				Digest: zotGolang, Tag: "1.20", MediaType: "application/vnd.oci.image.manifest.v1+json", Pusher: "admin"}}},
		{name: "the default prefix is not this source's", body: updated, headers: zotHeaders("zotregistry.image.updated"), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "another source (binary)", body: updated, headers: other, code: 400, field: "ce-source"},
		{name: "another source (structured)", body: load(t, "harbor-cloudevents-push.json"), code: 400, field: "source"},
	})
	for name, c := range map[string]SourceConfig{
		"prefix without registry": {Name: "z", Type: "cloudevents", TypePrefix: "zotregistry", Auth: "none"},
		"prefix with a dot":       {Name: "z", Type: "cloudevents", Registry: "zot.local", TypePrefix: "zotregistry.", Auth: "none"},
	} {
		_, _, err := NewSource(c, ceWatch, &recordingSink{}, ReceiverOptions{})
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%s: NewSource = %v, want a FieldError", name, err)
		}
	}
}

func TestCloudEventsRejections(t *testing.T) {
	t.Parallel()
	updated := load(t, "cloudevents-zot-image-updated.json")
	zh := zotHeaders("zotregistry.image.updated")
	with := func(k, v string) map[string]string {
		h := zotHeaders("zotregistry.image.updated")
		h[k] = v
		return h
	}
	const (
		name   = `"name":"golang",`
		digest = `"digest":"` + zotGolang + `",`
		ref    = `"reference":"1.20",`
	)
	zot := func(old, new string) []byte { return edit(t, updated, old, new) }
	other := "sha256:" + strings.Repeat("0", 64)
	attestd := load(t, "cloudevents-attestd.json")
	runIntakeCases(t, ceSource(), []intakeCase{
		{name: "no Authorization", body: updated, headers: with("Authorization", ""), code: 401},
		{name: "wrong password", body: updated, headers: with("Authorization", "Basic amFuZS5qb2U6b3BlbnNlc2FtRQ=="), code: 401},
		{name: "wrong content type", body: updated, headers: with("Content-Type", "text/plain"), code: 415},
		{name: "manifest of another digest", body: zot(digest, `"digest":"`+zotHelm+`",`), headers: zh, code: 400, field: "data.manifest"},
		{name: "manifest altered", body: zot(`\"size\":7051`, `\"size\":7052`), headers: zh, code: 400, field: "data.manifest"},
		{name: "manifest altered (data_base64)", body: structured(t, zot(`\"size\":7051`, `\"size\":7052`), true), code: 400, field: "data_base64.manifest"},
		{name: "manifest that is not JSON", body: zot(`"manifest":"{`, `"manifest":"x{`), headers: zh, code: 400, field: "data.manifest"},
		{name: "duplicate name", body: zot(name, name+`"name":"evil",`), headers: zh, code: 400, field: "data", errHas: "$.name"},
		{name: "case-folded duplicate name", body: zot(name, name+`"NAME":"evil",`), headers: zh, code: 400, field: "data", errHas: "NAME"},
		{name: "long-s duplicate digest", body: zot(digest, digest+`"digeſt":"`+other+`",`), headers: zh, code: 400, field: "data", errHas: "digeſt"},
		{name: "case-folded duplicate reference", body: zot(ref, ref+`"Reference":"latest",`), headers: zh, code: 400, field: "data", errHas: "Reference"},
		{name: "case-folded duplicate image", body: edit(t, attestd, `"image"`, `"IMAGE": "registry.example.com/evil/app:v1", "image"`), code: 400, errHas: "IMAGE"},
		{name: "case-folded duplicate type", body: edit(t, attestd, `"type"`, `"Type": "harbor.artifact.pushed", "type"`), code: 400, errHas: "Type"},
		{name: "trailing data", body: append(append([]byte{}, updated...), ` {}`...), headers: zh, code: 400, field: "data", errHas: "after the JSON document"},
		{name: "invalid UTF-8", body: zot(name, "\"name\":\"gol\xe0ng\","), headers: zh, code: 400, field: "data", errHas: "UTF-8"},
		{name: "upper-case name", body: zot(name, `"name":"GoLang",`), headers: zh, code: 400, field: "data.name"},
		{name: "dot-dot name", body: zot(name, `"name":"../golang",`), headers: zh, code: 400, field: "data.name"},
		{name: "absolute name", body: zot(name, `"name":"/golang",`), headers: zh, code: 400, field: "data.name"},
		{name: "control character in name", body: zot(name, `"name":"go\nlang",`), headers: zh, code: 400, field: "data.name"},
		{name: "look-alike name", body: zot(name, `"name":"gоlang",`), headers: zh, code: 400, field: "data.name"},
		{name: "tag over 128", body: zot(ref, `"reference":"`+strings.Repeat("1", 129)+`",`), headers: zh, code: 400, field: "data.reference"},
		{name: "tag with a space", body: zot(ref, `"reference":"1 20",`), headers: zh, code: 400, field: "data.reference"},
		{name: "a digest reference that is not the digest", body: zot(ref, `"reference":"`+other+`",`), headers: zh, code: 400, field: "data.reference"},
		{name: "upper-case digest", body: zot(digest, `"digest":"`+strings.ToUpper(zotGolang)+`",`), headers: zh, code: 400, field: "data.digest"},
		{name: "short digest", body: zot(digest, `"digest":"sha256:efd14fdc",`), headers: zh, code: 400, field: "data.digest"},
		{name: "unknown algorithm", body: zot(digest, `"digest":"sha384:`+strings.Repeat("a", 96)+`",`), headers: zh, code: 400, field: "data.digest"},
		{name: "no digest", body: zot(digest, ``), headers: zh, code: 400, field: "data.digest"},
		{name: "specversion 0.3", body: updated, headers: with("Ce-Specversion", "0.3"), code: 400, field: "ce-specversion"},
		{name: "no ce-id", body: updated, headers: with("Ce-Id", ""), code: 400, field: "ce-id"},
		{name: "no ce-source", body: updated, headers: with("Ce-Source", ""), code: 400, field: "ce-source"},
		{name: "structured without source", body: edit(t, attestd, `"source": "ci/pipeline/42",`, ``), code: 400, field: "source"},
		{name: "data and data_base64", body: edit(t, attestd, `"data": {`, `"data_base64": "e30=", "data": {`), code: 400, field: "data_base64"},
		{name: "data_base64 that is not base64", body: edit(t, load(t, "cloudevents-attestd-base64.json"), `"data_base64": "eyJ`, `"data_base64": "!eyJ`), code: 400, field: "data_base64"},
		{name: "data that is not JSON", body: edit(t, load(t, "cloudevents-attestd-base64.json"), `"datacontenttype": "application/json"`, `"datacontenttype": "text/plain"`), code: 400, field: "datacontenttype"},
		{name: "image without registry host", body: edit(t, attestd, `"registry.example.com/team/app@`, `"team/app@`), code: 400, field: "data.image"},
		{name: "image without registry host (data_base64)", body: []byte(`{"specversion":"1.0","id":"1","source":"/ci","type":"dev.attestd.image.pushed","data_base64":"` + base64.StdEncoding.EncodeToString([]byte(`{"image":"app:v1"}`)) + `"}`), code: 400, field: "data_base64.image"},
	})
	src := ceSource()
	src.cfg.Registry = ""
	runIntakeCases(t, src, []intakeCase{
		{name: "Zot event without a configured registry", body: updated, headers: zh, code: 400, field: "sources[].registry (attestd's configuration)"},
	})
}

func FuzzCloudEvents(f *testing.F) {
	for _, n := range []string{"harbor-cloudevents-push.json", "harbor-cloudevents-pull.json", "cloudevents-attestd.json", "cloudevents-attestd-base64.json"} {
		f.Add(load(f, n), false)
	}
	for _, n := range []string{"cloudevents-zot-image-updated.json", "cloudevents-zot-image-deleted.json", "cloudevents-zot-helm.json"} {
		f.Add(load(f, n), true)
		f.Add(structured(f, load(f, n), true), false)
	}
	p := CloudEvents{Registry: "zot.local:5000"}
	f.Fuzz(func(t *testing.T, body []byte, binary bool) {
		r := httptest.NewRequest("POST", "/", nil)
		if binary {
			for k, v := range zotHeaders("zotregistry.image.updated") {
				r.Header.Set(k, v)
			}
		}
		in, err := p.Parse(r, body)
		if err != nil {
			return
		}
		checkFuzzAccepted(t, in)
	})
}
