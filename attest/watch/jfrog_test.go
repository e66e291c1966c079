package watch

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	jfSecret  = "tell no one, 0123456789" // JFrog's REST API example secret, lengthened
	jfHost    = "mycompany.jfrog.io"
	busyboxSH = "2278daae78b8899e6c7192a8a6f49763b9e0cde6fcf94de34f115df4401b955f"
)

var (
	jfSource = SourceConfig{Name: "jf", Type: "jfrog", Registry: jfHost, Auth: "jfrog_signature", Secret: []byte(jfSecret)}
	jfWatch  = Filter{Rules: []Rule{{Registry: jfHost, Repositories: []string{"**"}}}}
	jfTags   = tagResolver{jfHost + "/test-repo/foo/bar/busybox:latest": []byte(imageManifest)}
)

// jfHeaders are the headers of a signed JFrog webhook delivery.
func jfHeaders(t *testing.T, body []byte) http.Header {
	t.Helper()
	sig, err := NewJFrogSignature([]byte(jfSecret))
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set(HeaderJFrogAuth, sig.Sign(body))
	return h
}

func TestJFrogDeliveries(t *testing.T) {
	t.Parallel()
	busybox := Event{Source: "jf", Action: ActionPush, Registry: jfHost, Repository: "test-repo/foo/bar/busybox",
		Digest: "sha256:" + busyboxSH, Tag: "latest"}
	deleted := busybox
	deleted.Action = ActionDelete
	resolved := busybox
	resolved.Digest, resolved.MediaType = sha256Digest([]byte(imageManifest)), "application/vnd.oci.image.manifest.v1+json"
	tokenSource := jfSource
	tokenSource.Auth = "jfrog_token"
	for _, tc := range []struct {
		name, file string
		source     SourceConfig
		headers    func(h http.Header)
		edit       func(t *testing.T, b []byte) []byte
		want       []Event
		ignored    map[string]int
	}{
		{name: "pushed, nested image (real JFrog Cloud delivery)", file: "jfrog-docker-pushed.json", want: []Event{busybox}},
		{name: "pushed, list manifest (JFrog's documentation)", file: "jfrog-docker-pushed-list.json",
			want: []Event{{Source: "jf", Action: ActionPush, Registry: jfHost, Repository: "docker-remote-cache/library/ubuntu",
				Digest: "sha256:35c4a2c15539c6c1e4e5fa4e554dac323ad0107d8eb5c582d6ff386b383b7dce", Tag: "latest"}}},
		{name: "deleted", file: "jfrog-docker-deleted.json", want: []Event{deleted}},
		{name: "secret token instead of a signature", file: "jfrog-docker-pushed.json", source: tokenSource,
			headers: func(h http.Header) { h.Set(HeaderJFrogAuth, jfSecret) }, want: []Event{busybox}},
		{name: "no sha256: tag resolved", file: "jfrog-docker-pushed.json",
			edit: func(t *testing.T, b []byte) []byte { return editBody(t, b, `"sha256": "`+busyboxSH+`",`, "") }, want: []Event{resolved}},
		{name: "artifact domain", file: "jfrog-artifact-deployed.json", ignored: map[string]int{ReasonAction: 1}},
		{name: "promoted", file: "jfrog-docker-pushed.json", ignored: map[string]int{ReasonAction: 1},
			edit: func(t *testing.T, b []byte) []byte { return editBody(t, b, `"pushed"`, `"promoted"`) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := load(t, tc.file)
			if tc.edit != nil {
				body = tc.edit(t, body)
			}
			h := jfHeaders(t, body)
			if tc.headers != nil {
				tc.headers(h)
			}
			src := tc.source
			if src.Name == "" {
				src = jfSource
			}
			code, resp, got := postHook(t, src, jfWatch, jfTags, body, h)
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

func TestJFrogRejects(t *testing.T) {
	t.Parallel()
	real := load(t, "jfrog-docker-pushed.json")
	type edit = func(t *testing.T, b []byte) []byte
	sub := func(old, new string) edit {
		return func(t *testing.T, b []byte) []byte { return editBody(t, b, old, new) }
	}
	path := `"path": "foo/bar/busybox/latest/manifest.json"`
	withPath := func(p string) edit { return sub(path, `"path": "`+p+`"`) }
	sha := `"sha256": "` + busyboxSH + `"`
	tokenSource := jfSource
	tokenSource.Auth = "jfrog_token"
	for _, tc := range []struct {
		name    string
		source  SourceConfig
		body    []byte
		edit    edit
		headers func(h http.Header)
		res     Resolver
		code    int
		field   string
	}{
		{name: "no signature", headers: func(h http.Header) { h.Del(HeaderJFrogAuth) }, code: 401},
		{name: "plain token to a signature source", headers: func(h http.Header) { h.Set(HeaderJFrogAuth, jfSecret) }, code: 401},
		{name: "tampered body", edit: sub(`"size": 527`, `"size": 528`), headers: func(h http.Header) {
			s, _ := NewJFrogSignature([]byte(jfSecret))
			h.Set(HeaderJFrogAuth, s.Sign(real))
		}, code: 401},
		{name: "wrong token", source: tokenSource, headers: func(h http.Header) { h.Set(HeaderJFrogAuth, "tell everyone, 0123456789") }, code: 401},
		{name: "signature to a token source", source: tokenSource, code: 401},
		{name: "wrong content type", headers: func(h http.Header) { h.Set("Content-Type", "text/plain") }, code: 415},
		{name: "duplicate sha256", edit: sub(sha, sha+`, "sha256": "`+strings.Repeat("0", 64)+`"`), code: 400, field: "sha256"},
		{name: "case-folded duplicate sha256", edit: sub(sha, sha+`, "SHA256": "`+strings.Repeat("0", 64)+`"`), code: 400, field: "SHA256"},
		{name: "duplicate tag", edit: sub(`"tag": "latest"`, `"tag": "latest", "tag": "v1"`), code: 400, field: "tag"},
		{name: "case-folded duplicate image_name", edit: sub(`"image_name": "busybox"`, `"image_name": "busybox", "Image_Name": "evil"`), code: 400, field: "Image_Name"},
		{name: "duplicate repo_key", edit: sub(`"repo_key": "test-repo"`, `"repo_key": "test-repo", "repo_key": "prod"`), code: 400, field: "repo_key"},
		{name: "trailing data", body: append(append([]byte{}, real...), "\n{}"...), code: 400, field: "data after"},
		{name: "not JFrog", body: []byte(`{"events": []}`), code: 400, field: "domain"},
		{name: "no data", body: []byte(`{"domain": "docker", "event_type": "pushed"}`), code: 400, field: "data"},
		{name: "missing tag", edit: sub(`"tag": "latest"`, `"tag": ""`), code: 400, field: "data.tag"},
		{name: "upper-case repository key", edit: sub(`"test-repo"`, `"Test-Repo"`), code: 400, field: "data.repo_key"},
		{name: "repository key with a slash", edit: sub(`"test-repo"`, `"test/repo"`), code: 400, field: "data.repo_key"},
		{name: "upper-case image path", edit: withPath("foo/Bar/busybox/latest/manifest.json"), code: 400, field: "data.path"},
		{name: "dot-dot image path", edit: withPath("foo/../busybox/latest/manifest.json"), code: 400, field: "data.path"},
		{name: "absolute image path", edit: withPath("/busybox/latest/manifest.json"), code: 400, field: "data.path"},
		{name: "control character", edit: withPath(`foo/b\u0000r/busybox/latest/manifest.json`), code: 400, field: "data.path"},
		{name: "look-alike", edit: sub("busybox", "bսsybox"), code: 400, field: "data.path"},
		{name: "path not of the tag", edit: withPath("foo/bar/busybox/v1/manifest.json"), code: 400, field: "data.path"},
		{name: "path not of the file", edit: withPath("foo/bar/busybox/latest/index.json"), code: 400, field: "data.path"},
		{name: "image_name not of the path", edit: sub(`"image_name": "busybox"`, `"image_name": "alpine"`), code: 400, field: "data.image_name"},
		{name: "tag too long", edit: sub("latest", strings.Repeat("l", 129)), code: 400, field: "data.tag"},
		{name: "tag bad characters", edit: sub("latest", "lat;est"), code: 400, field: "data.tag"},
		{name: "digest upper-case hex", edit: sub(busyboxSH, strings.ToUpper(busyboxSH)), code: 400, field: "data.sha256"},
		{name: "digest wrong length", edit: sub(busyboxSH, busyboxSH[:40]), code: 400, field: "data.sha256"},
		{name: "digest with an algorithm", edit: sub(busyboxSH, "sha512:"+busyboxSH), code: 400, field: "data.sha256"},
		{name: "artifact domain: ignored", body: load(t, "jfrog-artifact-deployed.json"), code: 202},
		{name: "promoted: ignored", edit: sub(`"pushed"`, `"promoted"`), code: 202},
		{name: "unknown tag", edit: func(t *testing.T, b []byte) []byte {
			return editBody(t, editBody(t, b, sha+",", ""), "latest", "v9")
		}, code: 422},
		{name: "registry unreachable", edit: sub(sha+",", ""), res: offlineRegistry{}, code: 503},
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
			h := jfHeaders(t, body)
			if tc.headers != nil {
				tc.headers(h)
			}
			src := tc.source
			if src.Name == "" {
				src = jfSource
			}
			res := tc.res
			if res == nil {
				res = jfTags
			}
			code, resp, got := postHook(t, src, jfWatch, res, body, h)
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

func TestJFrogSourceConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		c     SourceConfig
		field string
	}{
		{"no registry", SourceConfig{Name: "jf", Type: "jfrog", Auth: "jfrog_signature", Secret: []byte(jfSecret)}, "registry"},
		{"short secret", SourceConfig{Name: "jf", Type: "jfrog", Registry: jfHost, Auth: "jfrog_signature", Secret: []byte("short")}, "auth"},
		{"generic hmac", SourceConfig{Name: "jf", Type: "jfrog", Registry: jfHost, Auth: "hmac", Secret: []byte(jfSecret)}, "auth.type"},
	} {
		_, _, err := NewSource(tc.c, jfWatch, &recordingSink{}, ReceiverOptions{})
		fe, ok := err.(*FieldError)
		if !ok || fe.Field != tc.field {
			t.Errorf("%s: err = %v, want a FieldError of %s", tc.name, err, tc.field)
		}
	}
}

func FuzzJFrog(f *testing.F) {
	for _, n := range []string{"jfrog-docker-pushed.json", "jfrog-docker-pushed-list.json", "jfrog-docker-deleted.json", "jfrog-artifact-deployed.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := JFrog{Registry: jfHost}.Parse(httptest.NewRequest("POST", "/", nil), body)
		if err != nil {
			return
		}
		for _, x := range in {
			acceptable(t, jfWatch, x)
		}
	})
}
