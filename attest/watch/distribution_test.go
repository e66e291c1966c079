package watch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// intakeCase is one delivery to a source built by NewSource, and what must
// come of it: the status, the field a 400 names, and exactly the events the
// sink was given (none for every rejection).
type intakeCase struct {
	name    string
	body    []byte
	headers map[string]string // over the source's defaults; "" deletes
	code    int
	field   string // Response.Field of a 400
	errHas  string // a substring of Response.Error
	want    []Event
	ignored map[string]int
}

// intakeSource is a configured source under test.
type intakeSource struct {
	cfg      SourceConfig
	filter   Filter
	resolver Resolver
	headers  map[string]string // sent with every delivery
}

func runIntakeCases(t *testing.T, src intakeSource, cases []intakeCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := &recordingSink{}
			pattern, h, err := NewSource(src.cfg, src.filter, sink, ReceiverOptions{MaxBody: 1 << 20, Resolver: src.resolver})
			if err != nil {
				t.Fatal(err)
			}
			mux := http.NewServeMux()
			mux.Handle(pattern, h)
			req := httptest.NewRequest("POST", "/hooks/"+src.cfg.Name, bytes.NewReader(tc.body))
			for _, hs := range []map[string]string{src.headers, tc.headers} {
				for k, v := range hs {
					if v == "" {
						req.Header.Del(k)
						continue
					}
					req.Header.Set(k, v)
				}
			}
			w := httptest.NewRecorder()
			mux.ServeHTTP(w, req)
			var resp Response
			if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
				t.Fatalf("answer is not JSON: %s", w.Body)
			}
			if w.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
			}
			if tc.field != "" && resp.Field != tc.field {
				t.Errorf("field %q, want %q (%s)", resp.Field, tc.field, resp.Error)
			}
			if tc.code >= 400 && resp.Error == "" {
				t.Error("an error answer without a message")
			}
			if !strings.Contains(resp.Error, tc.errHas) {
				t.Errorf("error %q does not say %q", resp.Error, tc.errHas)
			}
			if diff := cmp.Diff(tc.want, sink.events, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("sink (-want +got):\n%s", diff)
			}
			if tc.ignored != nil {
				if diff := cmp.Diff(tc.ignored, resp.Ignored, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("ignored (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// edit returns body with old replaced by new exactly once, failing the test
// when old is not there (so a case cannot silently test the original).
func edit(t testing.TB, body []byte, old, new string) []byte {
	t.Helper()
	if bytes.Count(body, []byte(old)) != 1 {
		t.Fatalf("%q occurs %d times, want once", old, bytes.Count(body, []byte(old)))
	}
	return bytes.Replace(body, []byte(old), []byte(new), 1)
}

// unreachable is a Resolver whose registry does not answer.
type unreachable struct{}

func (unreachable) Resolve(context.Context, string, string, string) (string, []byte, error) {
	return "", nil, errors.New("dial tcp 10.0.0.9:443: connect: connection refused")
}

// checkFuzzAccepted does what the receiver does with parsed events — check
// every one, describe included manifests, classify — and fails when an
// event the receiver would accept lacks a valid registry, repository and
// digest or tag.
func checkFuzzAccepted(t *testing.T, in []Incoming) {
	t.Helper()
	for i := range in {
		if in[i].check() != nil {
			return // the whole delivery is a 400
		}
		if in[i].Manifest != nil && in[i].describe(in[i].Manifest) != nil {
			return
		}
	}
	for _, x := range in {
		e := x.Event
		all := Filter{Rules: []Rule{{Registry: e.Registry, Repositories: []string{"**"}}}}
		if all.Classify(x) != "" {
			continue
		}
		if err := ValidHost(e.Registry); err != nil {
			t.Fatalf("accepted %+v: %v", e, err)
		}
		if err := ValidRepository(e.Repository); err != nil {
			t.Fatalf("accepted %+v: %v", e, err)
		}
		if ValidDigest(e.Digest) != nil && ValidTag(e.Tag) != nil {
			t.Fatalf("accepted %+v without a valid digest or tag", e)
		}
	}
}

const (
	v3Image = "sha256:f1ce57ecd6215582a6007751c3e481595b2744e7e6416b5e0457b45903977404"
	v3Index = "sha256:3a5dbea502ae44263e31f5bb0eaa03b4a93802b77f567262015de5b9daa67564"
	v3Arm   = "sha256:239a2f8f7c466ec676aea64db5ea34e120e77fbad1b3dff6a8650e0350f28069"
)

var distWatch = Filter{Rules: []Rule{
	{Registry: "registry.example.com", Repositories: []string{"team/**", "charts/**", "wasm/**"}},
	{Registry: "registry.test:5000", Repositories: []string{"root/**"}},
	{Registry: "127.0.0.1:5000", Repositories: []string{"**"}},
}}

func distSource(auth string, secret string) intakeSource {
	return intakeSource{
		cfg:     SourceConfig{Name: "dist", Type: "distribution", Registry: "registry.example.com", Auth: auth, Secret: []byte(secret)},
		filter:  distWatch,
		headers: map[string]string{"Content-Type": DistributionV2MediaType, "Authorization": "Bearer s3cret-token"},
	}
}

func TestDistributionDeliveries(t *testing.T) {
	t.Parallel()
	push := load(t, "distribution-v3-push.json")
	image := Event{Source: "dist", ID: "8a3e0d6c-6f1b-4f0e-9a51-3c2d7b9e1f04", Action: ActionPush, Registry: "registry.example.com",
		Repository: "team/app", Digest: v3Image, Tag: "v1.2.0", MediaType: "application/vnd.oci.image.manifest.v1+json", Pusher: "ci-bot"}
	runIntakeCases(t, distSource("header", "Bearer s3cret-token"), []intakeCase{
		{name: "3.x push (events.v2+json)", body: push, code: 202, want: []Event{image}},
		{name: "3.x index lists its platform manifests", body: load(t, "distribution-v3-index.json"), code: 202,
			want: []Event{{Source: "dist", ID: "c1f4f1b2-77a0-4d5e-8a3c-0e9b6d2f5a17", Action: ActionPush, Registry: "registry.example.com", Repository: "team/app",
				Digest: v3Index, Tag: "v1.2.0", MediaType: "application/vnd.oci.image.index.v1+json", Pusher: "ci-bot", Children: []string{v3Image, v3Arm}}}},
		{name: "Helm chart pushed with helm/ORAS", body: load(t, "distribution-v3-helm.json"), code: 202, ignored: map[string]int{ReasonNotImage: 1}},
		{name: "WASM module pushed with ORAS", body: load(t, "distribution-v3-wasm.json"), code: 202, ignored: map[string]int{ReasonNotImage: 1}},
		{name: "cosign signature", body: load(t, "distribution-push-cosign-sig.json"), code: 202, ignored: map[string]int{ReasonArtifact: 1}},
		{name: "blob push", body: load(t, "distribution-v3-blob-push.json"), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "repository delete", body: load(t, "distribution-v3-repo-delete.json"), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "tag delete names no digest", body: load(t, "distribution-v3-tag-delete.json"), code: 202, ignored: map[string]int{ReasonInvalid: 1}},
		{name: "pull", body: edit(t, push, `"action": "push"`, `"action": "pull"`), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "mount", body: edit(t, push, `"action": "push"`, `"action": "mount"`), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "empty envelope as Distribution marshals it", body: []byte(`{}`), code: 202},
		{name: "empty events", body: []byte(`{"events": []}`), code: 202},
	})
	// The Debian registry captured here; the host is the configured one.
	local := distSource("header", "Bearer s3cret-token")
	local.cfg.Registry = "127.0.0.1:5000"
	runIntakeCases(t, local, []intakeCase{
		{name: "2.x push (events.v1+json)", body: load(t, "distribution-push.json"), headers: map[string]string{"Content-Type": DistributionMediaType}, code: 202,
			want: []Event{{Source: "dist", ID: "01c86faf-b332-40ea-ba26-0b6fdcc42155", Action: ActionPush, Registry: "127.0.0.1:5000", Repository: "demo/hello",
				Digest: "sha256:2e8f9f12e5673cd129cdbd504990bd61f3c5de14aff882a0bbf7e50f9ef2ea81", Tag: "v1", MediaType: "application/vnd.docker.distribution.manifest.v2+json"}}},
		{name: "manifest delete is recorded", body: load(t, "synthetic-delete.json"), code: 202,
			want: []Event{{Source: "dist", ID: "del-1", Action: ActionDelete, Registry: "127.0.0.1:5000", Repository: "demo/hello", Digest: "sha256:2e8f9f12e5673cd129cdbd504990bd61f3c5de14aff882a0bbf7e50f9ef2ea81"}}},
	})
	// request.host is the Host header of whichever client pushed: it is
	// never the event's registry (a pusher could name another one).
	runIntakeCases(t, local, []intakeCase{
		{name: "a client's Host header names another watched registry", body: edit(t, load(t, "distribution-push.json"), `"host": "127.0.0.1:5000",`, `"host": "registry.example.com",`),
			headers: map[string]string{"Content-Type": DistributionMediaType}, code: 202,
			want: []Event{{Source: "dist", ID: "01c86faf-b332-40ea-ba26-0b6fdcc42155", Action: ActionPush, Registry: "127.0.0.1:5000", Repository: "demo/hello",
				Digest: "sha256:2e8f9f12e5673cd129cdbd504990bd61f3c5de14aff882a0bbf7e50f9ef2ea81", Tag: "v1", MediaType: "application/vnd.docker.distribution.manifest.v2+json"}}},
	})
}

func TestGitLabDeliveries(t *testing.T) {
	t.Parallel()
	// GitLab's registry sends the configured Authorization value as is:
	// the documentation's token has no scheme.
	src := distSource("header", "AUTHORIZATION_EXAMPLE_TOKEN")
	src.cfg.Registry = "registry.test:5000"
	src.headers = map[string]string{"Content-Type": DistributionMediaType, "Authorization": "AUTHORIZATION_EXAMPLE_TOKEN"}
	runIntakeCases(t, src, []intakeCase{
		{name: "push", body: load(t, "distribution-gitlab-push.json"), code: 202,
			want: []Event{{Source: "dist", ID: "a582a0f3-e620-43e6-8e98-ff850fc9d984", Action: ActionPush, Registry: "registry.test:5000", Repository: "root/test",
				Digest: "sha256:af06af3514c44a964d3b905b498cf6493db8f1cde7c10e078213a89c87308ba0", Tag: "latest", MediaType: "application/vnd.docker.distribution.manifest.v2+json", Pusher: "root"}}},
		{name: "rename", body: load(t, "distribution-gitlab-rename.json"), code: 202, ignored: map[string]int{ReasonAction: 1}},
		{name: "a Bearer scheme the registry does not send", body: load(t, "distribution-gitlab-push.json"), headers: map[string]string{"Authorization": "Bearer AUTHORIZATION_EXAMPLE_TOKEN"}, code: 401},
	})
}

func TestDistributionRejections(t *testing.T) {
	t.Parallel()
	push := load(t, "distribution-v3-push.json")
	const (
		repo   = `"repository": "team/app",`
		digest = `"digest": "sha256:f1ce57ecd6215582a6007751c3e481595b2744e7e6416b5e0457b45903977404",`
		tag    = `"tag": "v1.2.0",`
		url    = `"url": "https://registry.example.com/v2/team/app/manifests/sha256:f1ce57ecd6215582a6007751c3e481595b2744e7e6416b5e0457b45903977404",`
		host   = `"host": "registry.example.com",`
	)
	f := func(s string) string { return "events[0]." + s }
	runIntakeCases(t, distSource("header", "Bearer s3cret-token"), []intakeCase{
		{name: "no Authorization", body: push, headers: map[string]string{"Authorization": ""}, code: 401},
		{name: "wrong token", body: push, headers: map[string]string{"Authorization": "Bearer s3cret-tokeN"}, code: 401},
		{name: "wrong content type", body: push, headers: map[string]string{"Content-Type": "text/plain"}, code: 415},
		{name: "duplicate repository", body: edit(t, push, repo, repo+` "repository": "team/evil",`), code: 400, errHas: "$.events[0].target.repository"},
		{name: "case-folded duplicate repository", body: edit(t, push, repo, repo+` "Repository": "team/evil",`), code: 400, errHas: "$.events[0].target.Repository"},
		{name: "long-s duplicate digest", body: edit(t, push, digest, digest+` "digeſt": "sha256:`+strings.Repeat("0", 64)+`",`), code: 400, errHas: "digeſt"},
		{name: "case-folded duplicate tag", body: edit(t, push, tag, tag+` "TAG": "latest",`), code: 400, errHas: "TAG"},
		{name: "case-folded duplicate url", body: edit(t, push, url, url+` "URL": "https://evil.example/v2/x/manifests/latest",`), code: 400, errHas: "URL"},
		{name: "trailing data", body: append(append([]byte{}, push...), `{"events": []}`...), code: 400, errHas: "after the JSON document"},
		{name: "not an envelope", body: []byte(`{"event": []}`), code: 400, field: "events"},
		{name: "null events", body: []byte(`{"events": null}`), code: 400, field: "events"},
		{name: "invalid UTF-8", body: edit(t, push, `"team/app"`, "\"team/\xffapp\""), code: 400, errHas: "UTF-8"},
		{name: "upper-case repository", body: edit(t, push, repo, `"repository": "Team/App",`), code: 400, field: f("target.repository")},
		{name: "dot-dot repository", body: edit(t, push, repo, `"repository": "team/../admin",`), code: 400, field: f("target.repository")},
		{name: "absolute repository", body: edit(t, push, repo, `"repository": "/team/app",`), code: 400, field: f("target.repository")},
		{name: "control character in repository", body: edit(t, push, repo, `"repository": "team/app\u0000",`), code: 400, field: f("target.repository")},
		{name: "look-alike repository", body: edit(t, push, repo, `"repository": "tеam/app",`), code: 400, field: f("target.repository")},
		{name: "tag over 128", body: edit(t, push, tag, `"tag": "`+strings.Repeat("v", 129)+`",`), code: 400, field: f("target.tag")},
		{name: "tag with a space", body: edit(t, push, tag, `"tag": "v1 2",`), code: 400, field: f("target.tag")},
		{name: "tag starting with a dash", body: edit(t, push, tag, `"tag": "-v1",`), code: 400, field: f("target.tag")},
		{name: "upper-case digest", body: edit(t, push, digest, `"digest": "sha256:F1CE57ECD6215582A6007751C3E481595B2744E7E6416B5E0457B45903977404",`), code: 400, field: f("target.digest"), errHas: "lower-case"},
		{name: "short digest", body: edit(t, push, digest, `"digest": "sha256:f1ce57ec",`), code: 400, field: f("target.digest"), errHas: "want 64"},
		{name: "unknown algorithm", body: edit(t, push, digest, `"digest": "md5:`+strings.Repeat("a", 32)+`",`), code: 400, field: f("target.digest"), errHas: "not sha256 or sha512"},
		{name: "push without digest", body: edit(t, push, digest, ``), code: 400, field: f("target.digest")},
		{name: "missing action", body: edit(t, push, `"action": "push",`, ``), code: 400, field: f("action")},
		{name: "relative url", body: edit(t, push, url, `"url": "/v2/team/app/manifests/latest",`), code: 400, field: f("target.url")},
		{name: "index child with a bad digest", body: edit(t, load(t, "distribution-v3-index.json"), `"digest": "`+v3Arm+`"`, `"digest": "sha256:XYZ"`), code: 400, field: f("target.references[1].digest")},
		{name: "wrong type", body: edit(t, push, `"action": "push"`, `"action": 5`), code: 400},
	})
}

func TestDistributionRegistryOverride(t *testing.T) {
	t.Parallel()
	src := distSource("header", "Bearer s3cret-token")
	src.cfg.Registry = "registry.example.com"
	runIntakeCases(t, src, []intakeCase{
		{name: "2.x push reached through 127.0.0.1", body: load(t, "distribution-push.json"), code: 202, ignored: map[string]int{ReasonNotWatched: 1}},
	})
}

func FuzzDistribution(f *testing.F) {
	for _, n := range []string{"distribution-push.json", "distribution-push-cosign-sig.json", "distribution-v3-push.json", "distribution-v3-index.json",
		"distribution-v3-helm.json", "distribution-v3-wasm.json", "distribution-v3-blob-push.json", "distribution-v3-repo-delete.json",
		"distribution-v3-tag-delete.json", "distribution-gitlab-push.json", "distribution-gitlab-rename.json", "synthetic-two-events.json", "synthetic-delete.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := Distribution{Registry: "registry.example.com"}.Parse(nil, body)
		if err != nil {
			return
		}
		checkFuzzAccepted(t, in)
	})
}
