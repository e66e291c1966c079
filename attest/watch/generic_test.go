package watch

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestGenericRejections: every rejection class of the generic receiver
// (attestd's HMAC) answers its status and stores nothing.
func TestGenericRejections(t *testing.T) {
	t.Parallel()
	secret := []byte("0123456789abcdef-hmac-secret")
	hm, _ := NewHMAC(secret, 5*time.Minute)
	cfg := SourceConfig{Name: "ci", Type: "generic", Auth: "hmac", Secret: secret}
	d := "sha256:" + strings.Repeat("2", 64)
	signed := func(body string) http.Header {
		ts, sig := hm.Sign([]byte(body), time.Now())
		return http.Header{"Content-Type": {"application/json"}, HeaderTimestamp: {ts}, HeaderSignature: {sig}}
	}
	wrongType := `{"image":"127.0.0.1:5000/demo/hello@` + d + `"}`
	textPlain := signed(wrongType)
	textPlain.Set("Content-Type", "text/plain")
	for _, tc := range []struct {
		name, body string
		headers    http.Header // nil: signed, application/json
		resolver   Resolver
		code       int
		has        string
	}{
		{name: "unsigned", body: `{"image":"127.0.0.1:5000/demo/hello@` + d + `"}`, headers: http.Header{"Content-Type": {"application/json"}}, code: 401},
		{name: "wrong content type", body: wrongType, headers: textPlain, code: 415},
		{name: "duplicate key", body: `{"image":"127.0.0.1:5000/demo/hello@` + d + `","image":"127.0.0.1:5000/demo/evil@` + d + `"}`, code: 400, has: "duplicate key"},
		{name: "case-folded duplicate key", body: `{"image":"127.0.0.1:5000/demo/hello@` + d + `","IMAGE":"127.0.0.1:5000/demo/evil@` + d + `"}`, code: 400, has: "name the same field"},
		{name: "trailing data", body: `{"image":"127.0.0.1:5000/demo/hello@` + d + `"} {"image":"x"}`, code: 400, has: "after the JSON document"},
		{name: "upper-case repository", body: `{"image":"127.0.0.1:5000/Demo/hello@` + d + `"}`, code: 400, has: "repository"},
		{name: "dot-dot repository", body: `{"image":"127.0.0.1:5000/demo/../hello@` + d + `"}`, code: 400, has: "repository"},
		{name: "absolute repository", body: `{"image":"127.0.0.1:5000//demo/hello@` + d + `"}`, code: 400, has: "repository"},
		{name: "control character", body: `{"image":"127.0.0.1:5000/demo/hel\u0000lo@` + d + `"}`, code: 400, has: "repository"},
		{name: "look-alike repository", body: `{"image":"127.0.0.1:5000/demo/hеllo@` + d + `"}`, code: 400, has: "repository"},
		{name: "tag over 128", body: `{"image":"127.0.0.1:5000/demo/hello:` + strings.Repeat("a", 129) + `"}`, code: 400, has: "tag"},
		{name: "tag with a bad character", body: `{"image":"127.0.0.1:5000/demo/hello:.v1"}`, code: 400, has: "tag"},
		{name: "upper-case digest", body: `{"image":"127.0.0.1:5000/demo/hello@sha256:` + strings.Repeat("A", 64) + `"}`, code: 400, has: "digest"},
		{name: "short digest", body: `{"image":"127.0.0.1:5000/demo/hello@sha256:` + strings.Repeat("a", 63) + `"}`, code: 400, has: "digest"},
		{name: "unknown algorithm", body: `{"image":"127.0.0.1:5000/demo/hello@md5:` + strings.Repeat("a", 32) + `"}`, code: 400, has: "digest"},
		{name: "tag that does not exist", body: `{"image":"127.0.0.1:5000/demo/hello:nope"}`, resolver: tags, code: 422},
		{name: "registry unreachable", body: `{"image":"127.0.0.1:5000/demo/hello:v1"}`, resolver: unreachable{}, code: 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := tc.headers
			if h == nil {
				h = signed(tc.body)
			}
			code, resp, got := postHook(t, cfg, everything, tc.resolver, []byte(tc.body), h)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %+v", code, tc.code, resp)
			}
			if len(got) != 0 || resp.Accepted != 0 {
				t.Fatalf("a refused delivery stored %+v", got)
			}
			if !strings.Contains(resp.Error, tc.has) {
				t.Errorf("error %q does not say %q", resp.Error, tc.has)
			}
		})
	}
}
