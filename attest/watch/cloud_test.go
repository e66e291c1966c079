package watch

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Tests of the hosted registries' receivers (dockerhub, quay, acr, ecr),
// each built by NewSource as app builds it.

const (
	hubToken  = "hub-0123456789abcdef"
	quayToken = "quay-0123456789abcdef"
	acrSecret = "Bearer acr-6f1c2d9e8b7a"
	ecrSecret = "ecr-api-key-5b2d7c0e91"
	ecrHost   = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
)

var cloudSources = map[string]SourceConfig{
	"dockerhub": {Name: "hub", Type: "dockerhub", Auth: "path_token", Secret: []byte(hubToken)},
	"quay":      {Name: "quay", Type: "quay", Auth: "path_token", Secret: []byte(quayToken)},
	"acr":       {Name: "acr", Type: "acr", Auth: "header", Secret: []byte(acrSecret)},
	"ecr":       {Name: "ecr", Type: "ecr", Auth: "header", Header: "X-Attestd-Key", Secret: []byte(ecrSecret)},
}

var cloudWatch = Filter{Rules: []Rule{
	{Registry: "docker.io", Repositories: []string{"svendowideit/testhook", "library/*"}},
	{Registry: "hub-mirror.internal", Repositories: []string{"**"}},
	{Registry: "quay.io", Repositories: []string{"dgangaia/*", "coreos/*"}},
	{Registry: "myregistry.azurecr.io", Repositories: []string{"**"}},
	{Registry: ecrHost, Repositories: []string{"**"}},
	{Registry: "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", Repositories: []string{"**"}},
	{Registry: "ecr.internal", Repositories: []string{"**"}},
}}

var cloudTags = tagResolver{
	"docker.io/svendowideit/testhook:latest":           []byte(imageManifest),
	"docker.io/library/nginx:latest":                   []byte(imageManifest),
	"hub-mirror.internal/svendowideit/testhook:latest": []byte(imageManifest),
	"quay.io/dgangaia/test:latest":                     []byte(imageManifest),
	"quay.io/coreos/etcd:latest":                       []byte(imageManifest),
	"quay.io/coreos/etcd:foo":                          []byte(imageManifest),
}

// cloudPost delivers body to the typ source (with registry as
// sources[].registry) the way its sender does, after mod changes the
// request, and returns the answer and what reached the sink.
func cloudPost(t *testing.T, typ, registry string, res Resolver, body []byte, mod func(*http.Request)) (int, Response, []Event) {
	t.Helper()
	c := cloudSources[typ]
	c.Registry = registry
	sink := &recordingSink{}
	pattern, h, err := NewSource(c, cloudWatch, sink, ReceiverOptions{MaxBody: 1 << 16, Resolver: res})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(pattern, h)
	path := "/hooks/" + c.Name
	if c.Auth == "path_token" {
		path += "/" + string(c.Secret)
	}
	req := httptest.NewRequest("POST", path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if c.Auth == "header" {
		req.Header.Set(orDefault(c.Header, "Authorization"), string(c.Secret))
	}
	if typ == "ecr" {
		req.Header.Set("Content-Type", "application/json; charset=utf-8") // as API destinations send it
	}
	if mod != nil {
		mod(req)
	}
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, req)
	var resp Response
	if w.Code == http.StatusNotFound {
		return w.Code, resp, sink.events // the mux's: no source there
	}
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
		t.Fatalf("answer is not JSON: %s", w.Body)
	}
	return w.Code, resp, sink.events
}

// swap returns testdata file with each old→new replacement made; every old
// must occur, so a mutation cannot silently miss.
func swap(t testing.TB, file string, oldNew ...string) []byte {
	t.Helper()
	b := string(load(t, file))
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(b, oldNew[i]) {
			t.Fatalf("%s has no %q", file, oldNew[i])
		}
		b = strings.ReplaceAll(b, oldNew[i], oldNew[i+1])
	}
	return []byte(b)
}

func TestCloudDeliveries(t *testing.T) {
	t.Parallel()
	resolved := sha256Digest([]byte(imageManifest))
	const ociManifest = "application/vnd.oci.image.manifest.v1+json"
	const dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	acrDigest := "sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d"
	ecrDigest := "sha256:7f5b2640fe6fb4f46592dfd3410c4a79dac4f89e4782432e0378abcd12345678"
	for _, tc := range []struct {
		name, typ, registry string
		body                []byte
		want                []Event
		ignored             map[string]int
	}{
		{name: "docker hub push", typ: "dockerhub", body: load(t, "dockerhub-push.json"),
			want: []Event{{Source: "hub", Action: ActionPush, Registry: "docker.io", Repository: "svendowideit/testhook", Digest: resolved, Tag: "latest", MediaType: ociManifest, Pusher: "trustedbuilder"}}},
		{name: "docker hub official image", typ: "dockerhub",
			body: swap(t, "dockerhub-push.json", `"repo_name": "svendowideit/testhook"`, `"repo_name": "nginx"`, `"namespace": "svendowideit"`, `"namespace": "library"`, `"name": "testhook"`, `"name": "nginx"`),
			want: []Event{{Source: "hub", Action: ActionPush, Registry: "docker.io", Repository: "library/nginx", Digest: resolved, Tag: "latest", MediaType: ociManifest, Pusher: "trustedbuilder"}}},
		{name: "docker hub mirror", typ: "dockerhub", registry: "hub-mirror.internal", body: load(t, "dockerhub-push.json"),
			want: []Event{{Source: "hub", Action: ActionPush, Registry: "hub-mirror.internal", Repository: "svendowideit/testhook", Digest: resolved, Tag: "latest", MediaType: ociManifest, Pusher: "trustedbuilder"}}},
		{name: "quay push (Red Hat docs)", typ: "quay", body: load(t, "quay-push.json"),
			want: []Event{{Source: "quay", Action: ActionPush, Registry: "quay.io", Repository: "dgangaia/test", Digest: resolved, Tag: "latest", MediaType: ociManifest}}},
		{name: "quay test notification, two tags", typ: "quay", body: load(t, "quay-test-notification.json"),
			want: []Event{
				{Source: "quay", Action: ActionPush, Registry: "quay.io", Repository: "coreos/etcd", Digest: resolved, Tag: "latest", MediaType: ociManifest},
				{Source: "quay", Action: ActionPush, Registry: "quay.io", Repository: "coreos/etcd", Digest: resolved, Tag: "foo", MediaType: ociManifest},
			}},
		{name: "quay build ignored", typ: "quay", body: load(t, "quay-build-success.json"), ignored: map[string]int{ReasonAction: 1}},
		{name: "acr push", typ: "acr", body: load(t, "acr-push.json"),
			want: []Event{{Source: "acr", ID: "cb8c3971-9adc-488b-bdd8-43cbb4974ff5", Action: ActionPush, Registry: "myregistry.azurecr.io", Repository: "hello-world", Digest: acrDigest, Tag: "v1", MediaType: dockerManifest}}},
		{name: "acr delete", typ: "acr", body: load(t, "acr-delete.json"),
			want: []Event{{Source: "acr", ID: "afc359ce-df7f-4e32-bdde-1ff8aa80927b", Action: ActionDelete, Registry: "myregistry.azurecr.io", Repository: "hello-world", Digest: acrDigest, MediaType: dockerManifest}}},
		{name: "acr chart push ignored", typ: "acr", body: load(t, "acr-chart-push.json"), ignored: map[string]int{ReasonAction: 1}},
		{name: "acr ping answered", typ: "acr", body: load(t, "acr-ping.json"), ignored: map[string]int{ReasonAction: 1}},
		{name: "acr repository delete ignored", typ: "acr", body: swap(t, "acr-delete.json", `"digest": "`+acrDigest+`",`, ``), ignored: map[string]int{ReasonAction: 1}},
		{name: "ecr push", typ: "ecr", body: load(t, "ecr-push.json"),
			want: []Event{{Source: "ecr", ID: "13cde686-328b-6117-af20-0e5566167482", Action: ActionPush, Registry: ecrHost, Repository: "my-repository-name", Digest: ecrDigest, Tag: "latest"}}},
		{name: "ecr delete", typ: "ecr", body: load(t, "ecr-delete.json"),
			want: []Event{{Source: "ecr", ID: "dd3b46cb-2c74-f49e-393b-28286b67279d", Action: ActionDelete, Registry: ecrHost, Repository: "my-repository-name", Digest: ecrDigest, Tag: "latest"}}},
		{name: "ecr china region", typ: "ecr", body: swap(t, "ecr-push.json", `"us-west-2"`, `"cn-north-1"`),
			want: []Event{{Source: "ecr", ID: "13cde686-328b-6117-af20-0e5566167482", Action: ActionPush, Registry: "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", Repository: "my-repository-name", Digest: ecrDigest, Tag: "latest"}}},
		{name: "ecr registry override", typ: "ecr", registry: "ecr.internal", body: load(t, "ecr-push.json"),
			want: []Event{{Source: "ecr", ID: "13cde686-328b-6117-af20-0e5566167482", Action: ActionPush, Registry: "ecr.internal", Repository: "my-repository-name", Digest: ecrDigest, Tag: "latest"}}},
		{name: "ecr media types of an image", typ: "ecr",
			body: swap(t, "ecr-push.json", `"image-tag": "latest"`, `"image-tag": "latest", "manifest-media-type": "`+ociManifest+`", "artifact-media-type": "application/vnd.oci.image.config.v1+json"`),
			want: []Event{{Source: "ecr", ID: "13cde686-328b-6117-af20-0e5566167482", Action: ActionPush, Registry: ecrHost, Repository: "my-repository-name", Digest: ecrDigest, Tag: "latest", MediaType: ociManifest}}},
		{name: "ecr helm chart ignored", typ: "ecr",
			body:    swap(t, "ecr-push.json", `"image-tag": "latest"`, `"image-tag": "1.2.0", "manifest-media-type": "`+ociManifest+`", "artifact-media-type": "application/vnd.cncf.helm.config.v1+json"`),
			ignored: map[string]int{ReasonNotImage: 1}},
		{name: "ecr scan ignored", typ: "ecr", body: load(t, "ecr-scan.json"), ignored: map[string]int{ReasonAction: 1}},
		{name: "ecr failed push ignored", typ: "ecr", body: swap(t, "ecr-push.json", `"SUCCESS"`, `"FAILURE"`), ignored: map[string]int{ReasonAction: 1}},
		{name: "ecr other source ignored", typ: "ecr", body: swap(t, "ecr-push.json", `"aws.ecr"`, `"com.example.ci"`), ignored: map[string]int{ReasonAction: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, resp, got := cloudPost(t, tc.typ, tc.registry, cloudTags, tc.body, nil)
			if code != http.StatusAccepted {
				t.Fatalf("status %d: %+v", code, resp)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("stored events (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.ignored, resp.Ignored, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ignored (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCloudRejections(t *testing.T) {
	t.Parallel()
	hub := func(oldNew ...string) []byte { return swap(t, "dockerhub-push.json", oldNew...) }
	quay := func(oldNew ...string) []byte { return swap(t, "quay-push.json", oldNew...) }
	acr := func(oldNew ...string) []byte { return swap(t, "acr-push.json", oldNew...) }
	ecr := func(oldNew ...string) []byte { return swap(t, "ecr-push.json", oldNew...) }
	const (
		hubRepo  = `"repo_name": "svendowideit/testhook"`
		hubTag   = `"tag": "latest"`
		quayRepo = `"repository": "dgangaia/test"`
		quayURL  = `"docker_url": "quay.io/dgangaia/test"`
		quayTags = `"latest"`
		acrRepo  = `"repository": "hello-world"`
		acrTag   = `"tag": "v1"`
		acrHex   = "80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d"
		ecrRepo  = `"repository-name": "my-repository-name"`
		ecrTag   = `"image-tag": "latest"`
		ecrHex   = "7f5b2640fe6fb4f46592dfd3410c4a79dac4f89e4782432e0378abcd12345678"
	)
	long := strings.Repeat("a", 129)
	wrongToken := func(r *http.Request) {
		r.URL.Path = r.URL.Path[:strings.LastIndex(r.URL.Path, "/")+1] + "0123456789abcdef-wrong"
	}
	noToken := func(r *http.Request) { r.URL.Path = r.URL.Path[:strings.LastIndex(r.URL.Path, "/")] }
	header := func(name, v string) func(*http.Request) { return func(r *http.Request) { r.Header.Set(name, v) } }
	noHeader := func(name string) func(*http.Request) { return func(r *http.Request) { r.Header.Del(name) } }
	textPlain := header("Content-Type", "text/plain")
	for _, tc := range []struct {
		name, typ string
		body      []byte
		mod       func(*http.Request)
		res       Resolver
		code      int
		field     string // Response.Field, when the error is a field's
		msg       string // in Response.Error
	}{
		// Docker Hub: path token, tag only.
		{name: "wrong token", typ: "dockerhub", body: hub(), mod: wrongToken, code: 401},
		{name: "no token", typ: "dockerhub", body: hub(), mod: noToken, code: 404},
		{name: "content type", typ: "dockerhub", body: hub(), mod: textPlain, code: 415},
		{name: "duplicate tag", typ: "dockerhub", body: hub(hubTag, hubTag+`, "tag": "v2"`), code: 400, msg: "$.push_data.tag"},
		{name: "case-folded duplicate repo_name", typ: "dockerhub", body: hub(hubRepo, hubRepo+`, "Repo_Name": "evil/app"`), code: 400, msg: `"repo_name" and "Repo_Name"`},
		{name: "duplicate name", typ: "dockerhub", body: hub(`"name": "testhook"`, `"name": "testhook", "name": "other"`), code: 400, msg: "$.repository.name"},
		{name: "trailing data", typ: "dockerhub", body: append(hub(), `{"push_data": {"tag": "evil"}}`...), code: 400, msg: "data after the JSON document"},
		{name: "upper-case repository", typ: "dockerhub", body: hub(hubRepo, `"repo_name": "Svendowideit/testhook"`), code: 400, field: "repository.repo_name"},
		{name: "dot-dot repository", typ: "dockerhub", body: hub(hubRepo, `"repo_name": "svendowideit/../testhook"`), code: 400, field: "repository.repo_name"},
		{name: "absolute repository", typ: "dockerhub", body: hub(hubRepo, `"repo_name": "/svendowideit/testhook"`), code: 400, field: "repository.repo_name"},
		{name: "control character", typ: "dockerhub", body: hub(hubRepo, `"repo_name": "svendowideit/test\u0000hook"`), code: 400, field: "repository.repo_name"},
		{name: "look-alike repository", typ: "dockerhub", body: hub(hubRepo, `"repo_name": "svendowideit/tеsthook"`), code: 400, field: "repository.repo_name"},
		{name: "repo_name disagrees with namespace/name", typ: "dockerhub", body: hub(hubRepo, `"repo_name": "svendowideit/other"`), code: 400, field: "repository.repo_name", msg: "disagrees"},
		{name: "tag too long", typ: "dockerhub", body: hub(hubTag, `"tag": "`+long+`"`), code: 400, field: "push_data.tag"},
		{name: "tag bad characters", typ: "dockerhub", body: hub(hubTag, `"tag": "-latest;rm"`), code: 400, field: "push_data.tag"},
		{name: "no tag", typ: "dockerhub", body: hub(hubTag, `"tag": ""`), code: 400, field: "push_data.tag"},
		{name: "no push_data", typ: "dockerhub", body: []byte(`{"repository": {"repo_name": "svendowideit/testhook"}}`), code: 400, field: "push_data"},
		{name: "unknown tag", typ: "dockerhub", body: hub(hubTag, `"tag": "v9"`), code: 422, msg: "docker.io/svendowideit/testhook:v9"},
		{name: "registry unreachable", typ: "dockerhub", body: hub(), res: unreachable{}, code: 503, msg: "retry"},

		// Quay: path token, one event per updated tag.
		{name: "wrong token", typ: "quay", body: quay(), mod: wrongToken, code: 401},
		{name: "content type", typ: "quay", body: quay(), mod: textPlain, code: 415},
		{name: "duplicate docker_url", typ: "quay", body: quay(quayURL, quayURL+`, "docker_url": "evil.example/dgangaia/test"`), code: 400, msg: "$.docker_url"},
		{name: "case-folded duplicate repository", typ: "quay", body: quay(quayRepo, quayRepo+`, "Repository": "evil/app"`), code: 400, msg: `"repository" and "Repository"`},
		{name: "duplicate updated_tags", typ: "quay", body: quay(`"updated_tags"`, `"updated_tags": ["evil"], "updated_tags"`), code: 400, msg: "$.updated_tags"},
		{name: "duplicate name", typ: "quay", body: quay(`"name": "repository"`, `"name": "repository", "NAME": "x"`), code: 400, msg: `"name" and "NAME"`},
		{name: "trailing data", typ: "quay", body: append(quay(), `garbage`...), code: 400, msg: "data after the JSON document"},
		{name: "upper-case repository", typ: "quay", body: quay(quayRepo, `"repository": "dgangaia/Test"`, quayURL, `"docker_url": "quay.io/dgangaia/Test"`), code: 400, field: "repository"},
		{name: "dot-dot repository", typ: "quay", body: quay(quayRepo, `"repository": "dgangaia/../test"`), code: 400, field: "repository"},
		{name: "absolute repository", typ: "quay", body: quay(quayRepo, `"repository": "/dgangaia/test"`), code: 400, field: "repository"},
		{name: "control character", typ: "quay", body: quay(quayRepo, `"repository": "dgangaia/te\u001bst"`), code: 400, field: "repository"},
		{name: "look-alike repository", typ: "quay", body: quay(quayRepo, `"repository": "dgangaia/tеst"`), code: 400, field: "repository"},
		{name: "docker_url names another repository", typ: "quay", body: quay(quayURL, `"docker_url": "quay.io/dgangaia/other"`), code: 400, field: "docker_url"},
		{name: "docker_url is a URL", typ: "quay", body: quay(quayURL, `"docker_url": "https://quay.io/dgangaia/test"`), code: 400, field: "docker_url"},
		{name: "docker_url bad host", typ: "quay", body: quay(quayURL, `"docker_url": "quay.io:99999:1/dgangaia/test"`), code: 400, field: "docker_url"},
		{name: "no docker_url", typ: "quay", body: quay(quayURL+",", ""), code: 400, field: "docker_url"},
		{name: "tag too long", typ: "quay", body: quay(quayTags, `"`+long+`"`), code: 400, field: "updated_tags[0]"},
		{name: "tag bad characters", typ: "quay", body: quay(quayTags, `"latest", "../etc"`), code: 400, field: "updated_tags[1]"},
		{name: "no updated tags", typ: "quay", body: quay(quayTags, ``), code: 400, field: "updated_tags"},
		{name: "updated_tags of old Quay (object)", typ: "quay", body: quay(`[`, `{`, quayTags, `"latest": "b750fe79269d"`, `]`, `}`), code: 400, msg: "updated_tags"},
		{name: "unknown tag", typ: "quay", body: quay(quayTags, `"v9"`), code: 422, msg: "quay.io/dgangaia/test:v9"},
		{name: "registry unreachable", typ: "quay", body: quay(), res: unreachable{}, code: 503, msg: "retry"},

		// ACR: header, digest and tag.
		{name: "no header", typ: "acr", body: acr(), mod: noHeader("Authorization"), code: 401},
		{name: "wrong header", typ: "acr", body: acr(), mod: header("Authorization", "Bearer acr-6f1c2d9e8b7b"), code: 401},
		{name: "content type", typ: "acr", body: acr(), mod: header("Content-Type", "application/x-www-form-urlencoded"), code: 415},
		{name: "duplicate digest", typ: "acr", body: acr(`"digest"`, `"digest": "sha256:`+strings.Repeat("e", 64)+`", "digest"`), code: 400, msg: "$.target.digest"},
		{name: "case-folded duplicate repository", typ: "acr", body: acr(acrRepo, acrRepo+`, "REPOSITORY": "evil"`), code: 400, msg: `"repository" and "REPOSITORY"`},
		{name: "duplicate tag", typ: "acr", body: acr(acrTag, acrTag+`, "tag": "v2"`), code: 400, msg: "$.target.tag"},
		{name: "Unicode-folded duplicate host", typ: "acr", body: acr(`"host"`, `"hoſt": "evil.example", "host"`), code: 400, msg: `"hoſt" and "host"`},
		{name: "trailing data", typ: "acr", body: append(acr(), `{}`...), code: 400, msg: "data after the JSON document"},
		{name: "upper-case repository", typ: "acr", body: acr(acrRepo, `"repository": "Hello-World"`), code: 400, field: "target.repository"},
		{name: "dot-dot repository", typ: "acr", body: acr(acrRepo, `"repository": "hello/../world"`), code: 400, field: "target.repository"},
		{name: "absolute repository", typ: "acr", body: acr(acrRepo, `"repository": "/hello-world"`), code: 400, field: "target.repository"},
		{name: "control character", typ: "acr", body: acr(acrRepo, `"repository": "hello-world\n"`), code: 400, field: "target.repository"},
		{name: "look-alike repository", typ: "acr", body: acr(acrRepo, `"repository": "hellо-world"`), code: 400, field: "target.repository"},
		{name: "tag too long", typ: "acr", body: acr(acrTag, `"tag": "`+long+`"`), code: 400, field: "target.tag"},
		{name: "tag bad characters", typ: "acr", body: acr(acrTag, `"tag": "v1 v2"`), code: 400, field: "target.tag"},
		{name: "digest upper-case hex", typ: "acr", body: acr(acrHex, strings.ToUpper(acrHex)), code: 400, field: "target.digest"},
		{name: "digest wrong length", typ: "acr", body: acr(acrHex, acrHex[:60]), code: 400, field: "target.digest"},
		{name: "digest unknown algorithm", typ: "acr", body: acr(`"sha256:`+acrHex, `"md5:`+acrHex[:32]), code: 400, field: "target.digest"},
		{name: "no digest", typ: "acr", body: acr(`"digest": "sha256:`+acrHex+`",`, ``), code: 400, field: "target.digest"},
		{name: "host with a path", typ: "acr", body: acr(`"myregistry.azurecr.io"`, `"myregistry.azurecr.io/evil"`), code: 400, field: "request.host"},
		{name: "no action", typ: "acr", body: acr(`"action": "push",`, ``), code: 400, field: "action"},

		// ECR through EventBridge: header, digest.
		{name: "no header", typ: "ecr", body: ecr(), mod: noHeader("X-Attestd-Key"), code: 401},
		{name: "key in another header", typ: "ecr", body: ecr(), mod: func(r *http.Request) { r.Header.Del("X-Attestd-Key"); r.Header.Set("Authorization", ecrSecret) }, code: 401},
		{name: "content type", typ: "ecr", body: ecr(), mod: textPlain, code: 415},
		{name: "duplicate image-digest", typ: "ecr", body: ecr(`"image-digest"`, `"image-digest": "sha256:`+strings.Repeat("e", 64)+`", "image-digest"`), code: 400, msg: "$.detail.image-digest"},
		{name: "case-folded duplicate image-tag", typ: "ecr", body: ecr(ecrTag, ecrTag+`, "Image-Tag": "prod"`), code: 400, msg: `"image-tag" and "Image-Tag"`},
		{name: "duplicate repository-name", typ: "ecr", body: ecr(ecrRepo, ecrRepo+`, "repository-name": "evil"`), code: 400, msg: "$.detail.repository-name"},
		{name: "duplicate account", typ: "ecr", body: ecr(`"account": "123456789012"`, `"account": "123456789012", "account": "210987654321"`), code: 400, msg: "$.account"},
		{name: "trailing data", typ: "ecr", body: append(ecr(), "\n{}"...), code: 400, msg: "data after the JSON document"},
		{name: "upper-case repository", typ: "ecr", body: ecr(ecrRepo, `"repository-name": "My-Repository-Name"`), code: 400, field: "detail.repository-name"},
		{name: "dot-dot repository", typ: "ecr", body: ecr(ecrRepo, `"repository-name": "team/../my-repository-name"`), code: 400, field: "detail.repository-name"},
		{name: "absolute repository", typ: "ecr", body: ecr(ecrRepo, `"repository-name": "/my-repository-name"`), code: 400, field: "detail.repository-name"},
		{name: "control character", typ: "ecr", body: ecr(ecrRepo, `"repository-name": "my-repository\u007fname"`), code: 400, field: "detail.repository-name"},
		{name: "look-alike repository", typ: "ecr", body: ecr(ecrRepo, `"repository-name": "my-rеpository-name"`), code: 400, field: "detail.repository-name"},
		{name: "tag too long", typ: "ecr", body: ecr(ecrTag, `"image-tag": "`+long+`"`), code: 400, field: "detail.image-tag"},
		{name: "tag bad characters", typ: "ecr", body: ecr(ecrTag, `"image-tag": ".latest"`), code: 400, field: "detail.image-tag"},
		{name: "digest upper-case hex", typ: "ecr", body: ecr(ecrHex, strings.ToUpper(ecrHex)), code: 400, field: "detail.image-digest"},
		{name: "digest of the ECR docs (60 hex)", typ: "ecr", body: ecr(ecrHex, ecrHex[:60]), code: 400, field: "detail.image-digest", msg: "60 hex"},
		{name: "digest unknown algorithm", typ: "ecr", body: ecr(`"sha256:`, `"sha1:`), code: 400, field: "detail.image-digest"},
		{name: "no digest", typ: "ecr", body: ecr(`"image-digest": "sha256:`+ecrHex+`",`, ``), code: 400, field: "detail.image-digest"},
		{name: "account not 12 digits", typ: "ecr", body: ecr(`"123456789012"`, `"12345678901x"`), code: 400, field: "account"},
		{name: "region not a region", typ: "ecr", body: ecr(`"us-west-2"`, `"us-west-2.evil.example/x"`), code: 400, field: "region"},
		{name: "input transformer (no id)", typ: "ecr", body: ecr(`"id": "13cde686-328b-6117-af20-0e5566167482",`, ``), code: 400, field: "id"},
		{name: "not an EventBridge event", typ: "ecr", body: []byte(`{"image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/app:v1"}`), code: 400, field: "id"},
	} {
		t.Run(tc.typ+" "+tc.name, func(t *testing.T) {
			t.Parallel()
			res := tc.res
			if res == nil {
				res = cloudTags
			}
			code, resp, stored := cloudPost(t, tc.typ, "", res, tc.body, tc.mod)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %+v", code, tc.code, resp)
			}
			if len(stored) != 0 {
				t.Errorf("a rejected delivery reached the sink: %+v", stored)
			}
			if code == http.StatusNotFound {
				return // no route: the mux answered
			}
			if resp.Error == "" || resp.Accepted != 0 {
				t.Errorf("answer %+v: want an error and nothing accepted", resp)
			}
			if tc.field != "" && resp.Field != tc.field {
				t.Errorf("field %q, want %q (%s)", resp.Field, tc.field, resp.Error)
			}
			if !strings.Contains(resp.Error, tc.msg) {
				t.Errorf("error %q does not say %q", resp.Error, tc.msg)
			}
		})
	}
}

// fuzzCloud parses body as p would for the receiver and fails on any event
// the receiver would accept without a valid registry, repository and digest
// or tag.
func fuzzCloud(t *testing.T, p Parser, body []byte) {
	in, err := p.Parse(httptest.NewRequest("POST", "/", nil), body)
	if err != nil {
		return
	}
	for _, x := range in {
		if x.check() != nil {
			continue // 400
		}
		f := Filter{Rules: []Rule{{Registry: x.Event.Registry, Repositories: []string{"**"}}}}
		if f.Classify(x) != "" {
			continue // ignored
		}
		e := x.Event
		if ValidHost(e.Registry) != nil || ValidRepository(e.Repository) != nil {
			t.Fatalf("accepted %+v", e)
		}
		if e.Digest == "" && (e.Tag == "" || ValidTag(e.Tag) != nil) || e.Digest != "" && ValidDigest(e.Digest) != nil {
			t.Fatalf("accepted without a valid digest or tag: %+v", e)
		}
	}
}

func FuzzDockerHub(f *testing.F) {
	f.Add(load(f, "dockerhub-push.json"))
	f.Fuzz(func(t *testing.T, body []byte) { fuzzCloud(t, DockerHub{}, body) })
}

func FuzzQuay(f *testing.F) {
	for _, n := range []string{"quay-push.json", "quay-test-notification.json", "quay-build-success.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) { fuzzCloud(t, Quay{}, body) })
}

func FuzzACR(f *testing.F) {
	for _, n := range []string{"acr-push.json", "acr-delete.json", "acr-chart-push.json", "acr-ping.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) { fuzzCloud(t, ACR{}, body) })
}

func FuzzECR(f *testing.F) {
	for _, n := range []string{"ecr-push.json", "ecr-delete.json", "ecr-scan.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) { fuzzCloud(t, ECR{}, body) })
}

func TestCloudSourceConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		c       SourceConfig
		pattern string
		field   string
	}{
		{c: cloudSources["dockerhub"], pattern: "POST /hooks/hub/{token}"},
		{c: cloudSources["quay"], pattern: "POST /hooks/quay/{token}"},
		{c: cloudSources["acr"], pattern: "POST /hooks/acr"},
		{c: cloudSources["ecr"], pattern: "POST /hooks/ecr"},
		{c: SourceConfig{Name: "hub", Type: "dockerhub", Auth: "none"}, field: "auth.type"},
		{c: SourceConfig{Name: "hub", Type: "dockerhub", Auth: "header", Secret: []byte(acrSecret)}, field: "auth.type"},
		{c: SourceConfig{Name: "quay", Type: "quay", Auth: "hmac", Secret: []byte(quayToken)}, field: "auth.type"},
		{c: SourceConfig{Name: "acr", Type: "acr", Auth: "none"}, field: "auth.type"},
		{c: SourceConfig{Name: "ecr", Type: "ecr", Auth: "path_token", Secret: []byte(hubToken)}, field: "auth.type"},
		{c: SourceConfig{Name: "ecr", Type: "ecr", Auth: "header", Header: "X-Attestd-Key", Secret: []byte("short")}, field: "auth"},
		{c: SourceConfig{Name: "hub", Type: "dockerhub", Registry: "https://hub", Auth: "path_token", Secret: []byte(hubToken)}, field: "registry"},
	} {
		pattern, _, err := NewSource(tc.c, cloudWatch, &recordingSink{}, ReceiverOptions{})
		var fe *FieldError
		switch {
		case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field):
			t.Errorf("%+v: err %v, want a FieldError of %s", tc.c, err, tc.field)
		case tc.field == "" && (err != nil || pattern != tc.pattern):
			t.Errorf("%+v: %q, %v; want %q", tc.c, pattern, err, tc.pattern)
		}
	}
}
