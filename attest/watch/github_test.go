package watch

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	ghSecret   = "It's a Secret to Everybody" // GitHub's documentation example
	ghDelivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
	wwwDigest  = "sha256:89160c587d0c36bf54090497a465445c14980ba48efbcf3b0d03c49b76f3feb8"
	helloDig   = "sha256:3da1996a8115d7616457760d9920b815241d0a03b34cf5f04e9a0e9d8de37498"
)

var (
	ghSource = SourceConfig{Name: "gh", Type: "github", Auth: "github", Secret: []byte(ghSecret)}
	ghWatch  = Filter{Rules: []Rule{{Registry: "ghcr.io", Repositories: []string{"**"}}}}
	ghTags   = tagResolver{"ghcr.io/theryangeary/www:0e2a89b": []byte(imageManifest)}
)

// ghHeaders are the headers GitHub sends for body.
func ghHeaders(t *testing.T, event, contentType string, body []byte) http.Header {
	t.Helper()
	sig, err := NewGitHubSignature([]byte(ghSecret))
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("Content-Type", contentType)
	h.Set(HeaderGitHubEvent, event)
	h.Set(HeaderGitHubDelivery, ghDelivery)
	h.Set(HeaderGitHubSignature, sig.Sign(body))
	h.Set("User-Agent", "GitHub-Hookshot/24bccdc")
	return h
}

func TestGitHubDeliveries(t *testing.T) {
	t.Parallel()
	www := Event{Source: "gh", ID: ghDelivery, Action: ActionPush, Registry: "ghcr.io", Repository: "theryangeary/www",
		Digest: wwwDigest, Tag: "0e2a89b", MediaType: "application/vnd.docker.distribution.manifest.list.v2+json", Pusher: "theryangeary"}
	tagOnly := www
	tagOnly.Digest, tagOnly.MediaType = sha256Digest([]byte(imageManifest)), "application/vnd.oci.image.manifest.v1+json"
	for _, tc := range []struct {
		name, file, event, contentType string
		edit                           func(t *testing.T, b []byte) []byte
		want                           []Event
		ignored                        map[string]int
	}{
		{name: "package event, index (real delivery)", file: "github-package-published.json", event: "package", contentType: "application/json",
			want: []Event{www}},
		{name: "form-encoded", file: "github-package-published-form.txt", event: "package", contentType: FormMediaType, want: []Event{www}},
		{name: "registry_package, untagged, owner with capitals", file: "github-registry-package-published.json", event: "registry_package",
			contentType: "application/json", want: []Event{{Source: "gh", ID: ghDelivery, Action: ActionPush, Registry: "ghcr.io",
				Repository: "codertocat/hello-world", Digest: helloDig, MediaType: "application/vnd.docker.distribution.manifest.v2+json",
				Pusher: "github-actions[bot]"}}},
		{name: "tag only: resolved", file: "github-package-published.json", event: "package", contentType: "application/json",
			edit: func(t *testing.T, b []byte) []byte { return editBody(t, b, wwwDigest, "") }, want: []Event{tagOnly}},
		{name: "npm package", file: "github-package-npm.json", event: "package", contentType: "application/json", ignored: map[string]int{ReasonAction: 1}},
		{name: "ping", file: "github-ping.json", event: "ping", contentType: "application/json", ignored: map[string]int{ReasonAction: 1}},
		{name: "other event", file: "github-ping.json", event: "push", contentType: "application/json", ignored: map[string]int{ReasonAction: 1}},
		{name: "other action", file: "github-package-published.json", event: "package", contentType: "application/json",
			edit: func(t *testing.T, b []byte) []byte {
				return editBody(t, b, `"action": "published"`, `"action": "deleted"`)
			}, ignored: map[string]int{ReasonAction: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := load(t, tc.file)
			if tc.edit != nil {
				body = tc.edit(t, body)
			}
			code, resp, got := postHook(t, ghSource, ghWatch, ghTags, body, ghHeaders(t, tc.event, tc.contentType, body))
			if code != http.StatusAccepted {
				t.Fatalf("status %d: %+v", code, resp)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if len(tc.ignored) > 0 || len(resp.Ignored) > 0 {
				if diff := cmp.Diff(tc.ignored, resp.Ignored); diff != "" {
					t.Errorf("ignored (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestGitHubRejects(t *testing.T) {
	t.Parallel()
	real := load(t, "github-package-published.json")
	pv := "package.package_version."
	type edit = func(t *testing.T, b []byte) []byte
	sub := func(old, new string) edit {
		return func(t *testing.T, b []byte) []byte { return editBody(t, b, old, new) }
	}
	purl := `"package_url": "ghcr.io/theryangeary/www:0e2a89b"`
	withURL := func(u string) edit { return sub(purl, `"package_url": "`+u+`"`) }
	for _, tc := range []struct {
		name    string
		body    []byte
		edit    edit
		headers func(h http.Header)
		res     Resolver
		code    int
		field   string // in the answer's field or error
	}{
		{name: "no signature", headers: func(h http.Header) { h.Del(HeaderGitHubSignature) }, code: 401},
		{name: "wrong secret", headers: func(h http.Header) {
			s, _ := NewGitHubSignature([]byte("not the webhook's secret"))
			h.Set(HeaderGitHubSignature, s.Sign(real))
		}, code: 401},
		{name: "sha1 signature only", headers: func(h http.Header) {
			h.Set(HeaderGitHubSignature, "sha1="+strings.Repeat("ab", 20))
		}, code: 401},
		{name: "tampered body", edit: sub(`"tag": {`, `"tag":  {`), headers: func(h http.Header) {
			s, _ := NewGitHubSignature([]byte(ghSecret))
			h.Set(HeaderGitHubSignature, s.Sign(real))
		}, code: 401},
		{name: "wrong content type", headers: func(h http.Header) { h.Set("Content-Type", "text/plain") }, code: 415},
		{name: "no event header", headers: func(h http.Header) { h.Del(HeaderGitHubEvent) }, code: 400, field: HeaderGitHubEvent},
		{name: "no delivery header", headers: func(h http.Header) { h.Del(HeaderGitHubDelivery) }, code: 400, field: HeaderGitHubDelivery},
		{name: "registry_package header, package body", headers: func(h http.Header) { h.Set(HeaderGitHubEvent, "registry_package") }, code: 400, field: "registry_package"},
		{name: "form with a second field", body: []byte("payload=" + url.QueryEscape(string(real)) + "&payload=%7B%7D"),
			headers: func(h http.Header) { h.Set("Content-Type", FormMediaType) }, code: 400, field: "payload"},
		{name: "duplicate package_url", edit: sub(purl, `"package_url": "ghcr.io/theryangeary/www:0e2a89b", "package_url": "ghcr.io/evil/www:0e2a89b"`), code: 400, field: "package_url"},
		{name: "case-folded duplicate package_url", edit: sub(purl, purl+`, "Package_URL": "ghcr.io/evil/www:0e2a89b"`), code: 400, field: "Package_URL"},
		{name: "duplicate tag name", edit: sub(`"name": "0e2a89b",`, `"name": "0e2a89b", "name": "latest",`), code: 400, field: "name"},
		{name: "case-folded duplicate digest", edit: sub(`"digest": "`+wwwDigest+`"
        },`, `"digest": "`+wwwDigest+`", "DIGEST": "sha256:`+strings.Repeat("0", 64)+`"
        },`), code: 400, field: "DIGEST"},
		{name: "duplicate version name", edit: sub(`"name": "`+wwwDigest+`",`, `"name": "`+wwwDigest+`", "name": "sha256:`+strings.Repeat("0", 64)+`",`), code: 400, field: "name"},
		{name: "trailing data", body: append(append([]byte{}, real...), []byte(`{"action": "published"}`)...), code: 400, field: "data after"},
		{name: "missing package_url", edit: sub(purl, `"package_url": ""`), code: 400, field: pv + "package_url"},
		{name: "upper-case repository", edit: withURL("ghcr.io/theryangeary/WWW:0e2a89b"), code: 400, field: pv + "package_url"},
		{name: "dot-dot repository", edit: withURL("ghcr.io/theryangeary/../www:0e2a89b"), code: 400, field: pv + "package_url"},
		{name: "absolute repository", edit: withURL("ghcr.io//www:0e2a89b"), code: 400, field: pv + "package_url"},
		{name: "control character", edit: withURL(`ghcr.io/theryangeary/w\u0007w:0e2a89b`), code: 400, field: pv + "package_url"},
		{name: "look-alike", edit: withURL("ghcr.io/theryangeary/wwԝ:0e2a89b"), code: 400, field: pv + "package_url"},
		{name: "Kelvin-sign owner", edit: withURL("ghcr.io/\u212Aelvin/www:0e2a89b"), code: 400, field: pv + "package_url"},
		{name: "bad host", edit: withURL("ghcr..io/theryangeary/www:0e2a89b"), code: 400, field: pv + "package_url"},
		{name: "tag too long", edit: sub(`0e2a89b"`, strings.Repeat("t", 129)+`"`), code: 400, field: pv + "container_metadata.tag.name"},
		{name: "tag bad characters", edit: sub(`0e2a89b"`, `0e2a89b!"`), code: 400, field: pv + "container_metadata.tag.name"},
		{name: "tag disagrees with package_url", edit: withURL("ghcr.io/theryangeary/www:latest"), code: 400, field: pv + "container_metadata.tag.name"},
		{name: "digest upper-case hex", edit: sub(wwwDigest, wwwDigest[:7]+strings.ToUpper(wwwDigest[7:17])+wwwDigest[17:]), code: 400, field: pv + "name"},
		{name: "digest wrong length", edit: sub(wwwDigest, wwwDigest[:70]), code: 400, field: pv + "name"},
		{name: "digest unknown algorithm", edit: sub(wwwDigest, "md5:"+wwwDigest[7:39]), code: 400, field: pv + "name"},
		{name: "digests disagree", edit: sub(`"digest": "`+wwwDigest+`"
        },`, `"digest": "sha256:`+strings.Repeat("0", 64)+`"
        },`), code: 400, field: pv + "container_metadata.tag.digest"},
		{name: "neither digest nor tag", edit: func(t *testing.T, b []byte) []byte {
			b = editBody(t, b, wwwDigest, "")
			b = editBody(t, b, `"name": "0e2a89b"`, `"name": ""`)
			return editBody(t, b, purl, `"package_url": "ghcr.io/theryangeary/www:"`)
		}, code: 400, field: pv + "name"},
		{name: "npm package: ignored", body: load(t, "github-package-npm.json"), code: 202},
		{name: "ping: ignored", body: load(t, "github-ping.json"), headers: func(h http.Header) { h.Set(HeaderGitHubEvent, "ping") }, code: 202},
		{name: "malformed ping", body: []byte(`{"zen": "x", "zen": "y"}`), headers: func(h http.Header) { h.Set(HeaderGitHubEvent, "ping") }, code: 400, field: "zen"},
		{name: "unknown tag", edit: func(t *testing.T, b []byte) []byte {
			return editBody(t, editBody(t, b, wwwDigest, ""), `0e2a89b"`, `v9"`)
		}, code: 422},
		{name: "registry unreachable", edit: sub(wwwDigest, ""), res: offlineRegistry{}, code: 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := tc.body
			if body == nil {
				body = real
			}
			if tc.edit != nil {
				body = tc.edit(t, body)
			}
			h := ghHeaders(t, "package", "application/json", body)
			if tc.headers != nil {
				tc.headers(h)
			}
			res := tc.res
			if res == nil {
				res = ghTags
			}
			code, resp, got := postHook(t, ghSource, ghWatch, res, body, h)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %+v", code, tc.code, resp)
			}
			if code >= 400 && resp.Error == "" {
				t.Error("error answer without a message")
			}
			if tc.field != "" && resp.Field != tc.field && !strings.Contains(resp.Error, tc.field) {
				t.Errorf("answer names neither field nor error %q: %+v", tc.field, resp)
			}
			if len(got) != 0 {
				t.Errorf("sink got %+v", got)
			}
		})
	}
}

func FuzzGitHub(f *testing.F) {
	for _, n := range []string{"github-package-published.json", "github-registry-package-published.json", "github-package-npm.json",
		"github-ping.json", "github-package-published-form.txt"} {
		f.Add(load(f, n))
	}
	anyGHCR := Filter{Rules: []Rule{{Registry: "ghcr.io", Repositories: []string{"**"}}, {Registry: "containers.example.com", Repositories: []string{"**"}}}}
	f.Fuzz(func(t *testing.T, body []byte) {
		// One parse per input (the seeds are real, 10–20 KB deliveries):
		// the form decoder for what looks like a form, the event by length.
		ct, event := "application/json", "package"
		if bytes.HasPrefix(body, []byte("payload=")) {
			ct = FormMediaType
		}
		if len(body)%2 == 1 {
			event = "registry_package"
		}
		req := httptest.NewRequest("POST", "/", nil)
		req.Header.Set("Content-Type", ct)
		req.Header.Set(HeaderGitHubEvent, event)
		req.Header.Set(HeaderGitHubDelivery, ghDelivery)
		in, err := GitHub{}.Parse(req, body)
		if err != nil {
			return
		}
		for _, x := range in {
			acceptable(t, anyGHCR, x)
		}
	})
}
