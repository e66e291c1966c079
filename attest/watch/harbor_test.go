package watch

import (
	"strings"
	"testing"
)

const busybox = "sha256:dde8e930c7b6a490f728e66292bc9bce42efc9bbb5278bae40e4f30f6e00fe8c"

var harborWatch = Filter{Rules: []Rule{{Registry: "harbor.dev", Repositories: []string{"library/*"}}}}

func harborSource(secret string) intakeSource {
	return intakeSource{
		cfg:     SourceConfig{Name: "harbor", Type: "harbor", Auth: "header", Secret: []byte(secret)},
		filter:  harborWatch,
		headers: map[string]string{"Content-Type": "application/json", "Authorization": secret},
	}
}

func TestHarborDeliveries(t *testing.T) {
	t.Parallel()
	ce := map[string]string{"Content-Type": CloudEventsMediaType}
	image := Event{Source: "harbor", Action: ActionPush, Registry: "harbor.dev", Repository: "library/busybox", Digest: busybox, Tag: "1.36", Pusher: "admin"}
	ceImage := image
	ceImage.ID = "4b2f89a6-548d-4c12-9993-a1f5790b97d2"
	untagged := image
	untagged.Tag, untagged.Pusher = "", "robot$library+ci"
	deleted := image
	deleted.Action = ActionDelete
	cases := []intakeCase{
		{name: "Default push", body: load(t, "harbor-default-push.json"), code: 202, want: []Event{image}},
		{name: "Default push of an untagged artifact (digest in tag)", body: load(t, "harbor-default-push-untagged.json"), code: 202, want: []Event{untagged}},
		{name: "CloudEvents push", body: load(t, "harbor-cloudevents-push.json"), headers: ce, code: 202, want: []Event{ceImage}},
		{name: "Default delete is recorded", body: load(t, "harbor-default-delete.json"), code: 202, want: []Event{deleted}},
		{name: "Default pull", body: load(t, "harbor-default-pull.json"), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "CloudEvents pull", body: load(t, "harbor-cloudevents-pull.json"), headers: ce, code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "scan completed", body: []byte(`{"type":"SCANNING_COMPLETED","occur_at":1678082303,"operator":"auto","event_data":{"resources":[{"digest":"` + busybox + `","tag":"1.36","resource_url":"harbor.dev/library/busybox:1.36","scan_overview":{}}],"repository":{"name":"busybox","namespace":"library","repo_full_name":"library/busybox","repo_type":"public"}}}`), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "no resources", body: []byte(`{"type":"PUSH_ARTIFACT","occur_at":1678082303,"operator":"admin","event_data":{"repository":{"name":"busybox","namespace":"library","repo_full_name":"library/busybox","repo_type":"public"}}}`), code: 202},
		{name: "empty resources", body: []byte(`{"type":"PUSH_ARTIFACT","occur_at":1678082303,"operator":"admin","event_data":{"resources":[],"repository":{"repo_full_name":"library/busybox"}}}`), code: 202},
	}
	runIntakeCases(t, harborSource("Bearer harbor-s3cret"), cases)
	// Harbor sends the Auth Header typed in the policy verbatim: a bare
	// secret works as well as "Bearer …" or "Basic …".
	runIntakeCases(t, harborSource("harbor-raw-s3cret"), cases[:1])
	runIntakeCases(t, harborSource("Basic amFuZS5qb2U6b3BlbnNlc2FtZQ=="), cases[:1])
}

func TestHarborRejections(t *testing.T) {
	t.Parallel()
	push := load(t, "harbor-default-push.json")
	untagged := load(t, "harbor-default-push-untagged.json")
	const (
		repo   = `"repo_full_name": "library/busybox",`
		digest = `"digest": "` + busybox + `",`
		tag    = `"tag": "1.36",`
		url    = `"resource_url": "harbor.dev/library/busybox:1.36"`
	)
	// A tag and the resource_url naming it, changed together.
	withTag := func(tg string) []byte {
		return edit(t, edit(t, push, tag, `"tag": "`+tg+`",`), url, `"resource_url": "harbor.dev/library/busybox:`+tg+`"`)
	}
	withRepo := func(r string) []byte {
		return edit(t, edit(t, push, repo, `"repo_full_name": "`+r+`",`), url, `"resource_url": "harbor.dev/`+r+`:1.36"`)
	}
	const (
		fRepo   = "event_data.repository.repo_full_name"
		fDigest = "event_data.resources[0].digest"
		fTag    = "event_data.resources[0].tag"
		fURL    = "event_data.resources[0].resource_url"
	)
	runIntakeCases(t, harborSource("Bearer harbor-s3cret"), []intakeCase{
		{name: "no Authorization", body: push, headers: map[string]string{"Authorization": ""}, code: 401},
		{name: "wrong Authorization", body: push, headers: map[string]string{"Authorization": "Bearer harbor-s3creT"}, code: 401},
		{name: "the secret without the scheme it was configured with", body: push, headers: map[string]string{"Authorization": "harbor-s3cret"}, code: 401},
		{name: "wrong content type", body: push, headers: map[string]string{"Content-Type": "text/plain"}, code: 415},
		{name: "duplicate repo_full_name", body: edit(t, push, repo, repo+` "repo_full_name": "library/evil",`), code: 400, errHas: "$.event_data.repository.repo_full_name"},
		{name: "case-folded duplicate repo_full_name", body: edit(t, push, repo, repo+` "Repo_Full_Name": "library/evil",`), code: 400, errHas: "Repo_Full_Name"},
		{name: "long-s duplicate digest", body: edit(t, push, digest, digest+` "digeſt": "sha256:`+strings.Repeat("0", 64)+`",`), code: 400, errHas: "digeſt"},
		{name: "case-folded duplicate tag", body: edit(t, push, tag, tag+` "Tag": "latest",`), code: 400, errHas: `"Tag"`},
		{name: "case-folded duplicate resource_url", body: edit(t, push, url, url+`, "RESOURCE_URL": "evil.example/library/busybox:1.36"`), code: 400, errHas: "RESOURCE_URL"},
		{name: "duplicate type", body: edit(t, push, `"type": "PUSH_ARTIFACT",`, `"type": "PUSH_ARTIFACT", "TYPE": "PULL_ARTIFACT",`), code: 400, errHas: "TYPE"},
		{name: "trailing data", body: append(append([]byte{}, push...), "\n{}"...), code: 400, errHas: "after the JSON document"},
		{name: "invalid UTF-8", body: edit(t, push, `"operator": "admin"`, "\"operator\": \"adm\xc3\""), code: 400, errHas: "UTF-8"},
		{name: "upper-case repository", body: withRepo("Library/BusyBox"), code: 400, field: fRepo},
		{name: "dot-dot repository", body: withRepo("library/../admin"), code: 400, field: fRepo},
		{name: "absolute repository", body: withRepo("/library/busybox"), code: 400, field: fRepo},
		{name: "control character in repository", body: withRepo(`library/busybox\u0007`), code: 400, field: fRepo},
		{name: "look-alike repository", body: withRepo("library/bυsybox"), code: 400, field: fRepo},
		{name: "tag over 128", body: withTag(strings.Repeat("1", 129)), code: 400, field: fTag},
		{name: "tag with a slash", body: withTag("1/36"), code: 400, field: fTag},
		{name: "upper-case digest", body: edit(t, push, digest, `"digest": "`+strings.ToUpper(busybox)+`",`), code: 400, field: fDigest},
		{name: "short digest", body: edit(t, push, digest, `"digest": "sha256:dde8e930",`), code: 400, field: fDigest},
		{name: "unknown algorithm", body: edit(t, push, digest, `"digest": "sha1:`+strings.Repeat("a", 40)+`",`), code: 400, field: fDigest},
		{name: "no digest", body: edit(t, push, digest, ``), code: 400, field: fDigest},
		{name: "a digest in tag that is not the artifact's", body: edit(t, untagged, `"tag": "`+busybox+`"`, `"tag": "sha256:`+strings.Repeat("0", 64)+`"`), code: 400, field: fTag},
		{name: "resource_url of another repository", body: edit(t, push, url, `"resource_url": "harbor.dev/library/other:1.36"`), code: 400, field: fURL},
		{name: "resource_url host that is no host", body: edit(t, push, url, `"resource_url": "harbor_dev/library/busybox:1.36"`), code: 400, field: fURL},
		{name: "no repo_full_name", body: edit(t, push, repo, ``), code: 400, field: fRepo},
		{name: "no type", body: edit(t, push, `"type": "PUSH_ARTIFACT",`, ``), code: 400, field: "type"},
		{name: "no event_data", body: []byte(`{"type": "PUSH_ARTIFACT", "occur_at": 1678082303, "operator": "admin"}`), code: 400, field: "event_data"},
		{name: "CloudEvents 0.3", body: edit(t, load(t, "harbor-cloudevents-push.json"), `"specversion": "1.0"`, `"specversion": "0.3"`), code: 400, field: "specversion"},
		{name: "CloudEvents without id", body: edit(t, load(t, "harbor-cloudevents-push.json"), `"id": "4b2f89a6-548d-4c12-9993-a1f5790b97d2",`, ``), code: 400, field: "id"},
	})
}

func TestHarborRegistryOverride(t *testing.T) {
	t.Parallel()
	src := harborSource("Bearer harbor-s3cret")
	src.cfg.Registry = "harbor.internal:8443"
	src.filter = Filter{Rules: []Rule{{Registry: "harbor.internal:8443", Repositories: []string{"**"}}}}
	runIntakeCases(t, src, []intakeCase{
		{name: "push", body: load(t, "harbor-default-push.json"), code: 202,
			want: []Event{{Source: "harbor", Action: ActionPush, Registry: "harbor.internal:8443", Repository: "library/busybox", Digest: busybox, Tag: "1.36", Pusher: "admin"}}},
	})
}

func FuzzHarbor(f *testing.F) {
	for _, n := range []string{"harbor-default-push.json", "harbor-default-push-untagged.json", "harbor-default-delete.json", "harbor-default-pull.json",
		"harbor-cloudevents-push.json", "harbor-cloudevents-pull.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := Harbor{}.Parse(nil, body)
		if err != nil {
			return
		}
		checkFuzzAccepted(t, in)
	})
}
