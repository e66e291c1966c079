package watch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// recordingSink is a hand-written fake: it records what it was given and can
// fail on demand.
type recordingSink struct {
	mu     sync.Mutex
	events []Event
	err    error
}

func (s *recordingSink) Accept(_ context.Context, ev []Event) (Accepted, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return Accepted{}, s.err
	}
	s.events = append(s.events, ev...)
	return Accepted{Queued: len(ev)}, nil
}

func load(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var everything = Filter{Rules: []Rule{{Registry: "127.0.0.1:5000", Repositories: []string{"**"}}}, Own: func(_, repo, _ string) bool { return repo == "own" }}

func TestDistributionClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file   string
		filter Filter
		want   []string // reason per event, "" = accepted
	}{
		{"distribution-push.json", everything, []string{""}},
		{"distribution-push-cosign-sig.json", everything, []string{ReasonArtifact}},
		{"synthetic-pull.json", everything, []string{ReasonAction}},
		{"synthetic-delete.json", everything, []string{""}},
		{"synthetic-index.json", everything, []string{""}},
		{"synthetic-bundle.json", everything, []string{ReasonArtifact}},
		{"synthetic-two-events.json", everything, []string{"", ""}},
		{"distribution-push.json", Filter{Rules: []Rule{{Registry: "127.0.0.1:5000", Repositories: []string{"prod/*"}}}}, []string{ReasonNotWatched}},
		{"distribution-push.json", Filter{Rules: []Rule{{Registry: "other:5000", Repositories: []string{"**"}}}}, []string{ReasonNotWatched}},
	} {
		in, err := Distribution{Registry: "127.0.0.1:5000"}.Parse(nil, load(t, tc.file))
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		var got []string
		for _, x := range in {
			got = append(got, tc.filter.Classify(x))
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.file, diff)
		}
	}
	in, _ := Distribution{Registry: "127.0.0.1:5000"}.Parse(nil, load(t, "distribution-push.json"))
	if e := in[0].Event; e.Ref() != "127.0.0.1:5000/demo/hello@sha256:2e8f9f12e5673cd129cdbd504990bd61f3c5de14aff882a0bbf7e50f9ef2ea81" || e.Tag != "v1" {
		t.Errorf("event = %+v", e)
	}
	in, _ = Distribution{Registry: "registry.internal"}.Parse(nil, load(t, "distribution-push.json"))
	if in[0].Event.Registry != "registry.internal" {
		t.Errorf("registry override ignored: %+v", in[0].Event)
	}
	own := in[0]
	own.Event.Registry, own.UserAgent = "127.0.0.1:5000", "attestd/dev"
	if r := everything.Classify(own); r != "" {
		t.Errorf("a User-Agent made a push attestd's own: %q", r)
	}
	own.Event.Repository = "own"
	if r := everything.Classify(own); r != ReasonOwnPush {
		t.Errorf("own push: %q", r)
	}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pat, repo string
		want      bool
	}{
		{"**", "a", true}, {"**", "a/b/c", true}, {"team/*", "team/app", true}, {"team/*", "team/a/b", false},
		{"team/**", "team/a/b", true}, {"team/**", "team", true}, {"*/app", "x/app", true}, {"apps/**/web", "apps/a/b/web", true},
		{"apps/**/web", "apps/web", true}, {"apps/**/web", "apps/a/api", false}, {"staging-*", "staging-eu", true}, {"a", "ab", false},
	} {
		if got := Match(tc.pat, tc.repo); got != tc.want {
			t.Errorf("Match(%q, %q) = %v", tc.pat, tc.repo, got)
		}
	}
}

func TestParseRef(t *testing.T) {
	t.Parallel()
	d := "sha256:" + strings.Repeat("a", 64)
	for _, tc := range []struct {
		in                   string
		reg, repo, tag, dgst string
		err                  string
	}{
		{in: "127.0.0.1:5000/a/b:v1", reg: "127.0.0.1:5000", repo: "a/b", tag: "v1"},
		{in: "r.example/a@" + d, reg: "r.example", repo: "a", dgst: d},
		{in: "r.example/a:v1@" + d, reg: "r.example", repo: "a", tag: "v1", dgst: d},
		{in: "app:v1", err: "registry host"},
		{in: "r.example/a", err: "tag or a digest"},
		{in: "r.example/A:v1", err: "valid repository"},
		{in: "r.example/a@sha256:12", err: "64 hex"},
	} {
		e, err := ParseRef(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseRef(%q) err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || e.Registry != tc.reg || e.Repository != tc.repo || e.Tag != tc.tag || e.Digest != tc.dgst {
			t.Errorf("ParseRef(%q) = %+v, %v", tc.in, e, err)
		}
	}
}

// tagResolver is a hand-written fake Resolver: tags map to manifests.
type tagResolver map[string][]byte

func (m tagResolver) Resolve(_ context.Context, registry, repo, tag string) (string, []byte, error) {
	b, ok := m[registry+"/"+repo+":"+tag]
	if !ok {
		return "", nil, fmt.Errorf("%s/%s:%s: %w", registry, repo, tag, ErrNotFound)
	}
	return sha256Digest(b), b, nil
}

func sha256Digest(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

const imageManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":2},"layers":[]}`

var tags = tagResolver{"127.0.0.1:5000/demo/hello:v1": []byte(imageManifest)}

func newRecv(t *testing.T, p Parser, a Authenticator, s Sink) *Receiver {
	t.Helper()
	r, err := NewReceiver("src", p, a, everything, s, ReceiverOptions{MaxBody: 4096, Resolver: tags})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestReceiverStatuses(t *testing.T) {
	t.Parallel()
	hm, _ := NewHMAC([]byte("0123456789abcdef-secret"), 5*time.Minute)
	hdr, _ := NewHeader("Authorization", "Bearer s3cret-token")
	good := load(t, "distribution-push.json")
	signed := func(body []byte, at time.Time) http.Header {
		ts, sig := hm.Sign(body, at)
		return http.Header{"Content-Type": {DistributionMediaType}, HeaderTimestamp: {ts}, HeaderSignature: {sig}}
	}
	bearer := http.Header{"Content-Type": {DistributionMediaType}, "Authorization": {"Bearer s3cret-token"}}
	for _, tc := range []struct {
		name    string
		auth    Authenticator
		method  string
		body    []byte
		headers http.Header
		code    int
		queued  int
	}{
		{"no auth header", hdr, "POST", good, http.Header{"Content-Type": {DistributionMediaType}}, 401, 0},
		{"wrong bearer", hdr, "POST", good, http.Header{"Content-Type": {DistributionMediaType}, "Authorization": {"Bearer nope-nope"}}, 401, 0},
		{"hmac missing", hm, "POST", good, http.Header{"Content-Type": {DistributionMediaType}}, 401, 0},
		{"hmac tampered", hm, "POST", append(append([]byte{}, good...), ' '), signed(good, time.Now()), 401, 0},
		{"hmac replayed", hm, "POST", good, signed(good, time.Now().Add(-time.Hour)), 401, 0},
		{"too large", hdr, "POST", bytes.Repeat([]byte(" "), 5000), bearer, 413, 0},
		{"wrong content type", hdr, "POST", good, http.Header{"Content-Type": {"text/plain"}, "Authorization": {"Bearer s3cret-token"}}, 415, 0},
		{"malformed", hdr, "POST", []byte(`{"events": [`), bearer, 400, 0},
		{"not an envelope", hdr, "POST", []byte(`{"foo": 1}`), bearer, 400, 0},
		{"wrong types", hdr, "POST", []byte(`{"events": [{"action": 5}]}`), bearer, 400, 0},
		{"GET", hdr, "GET", nil, bearer, 405, 0},
		{"only ignored", hdr, "POST", load(t, "synthetic-pull.json"), bearer, 202, 0},
		{"accepted (bearer)", hdr, "POST", good, bearer, 202, 1},
		{"accepted (hmac)", hm, "POST", good, signed(good, time.Now()), 202, 1},
		{"two events", hdr, "POST", load(t, "synthetic-two-events.json"), bearer, 202, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sink := &recordingSink{}
			h := newRecv(t, Distribution{Registry: "127.0.0.1:5000"}, tc.auth, sink)
			req := httptest.NewRequest(tc.method, "/hooks/src", bytes.NewReader(tc.body))
			req.Header = tc.headers.Clone()
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
			}
			var resp Response
			if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
				t.Fatalf("body is not JSON: %s", w.Body)
			}
			if tc.code >= 400 && resp.Error == "" {
				t.Error("error response without a message")
			}
			if len(sink.events) != tc.queued {
				t.Fatalf("sink got %d events, want %d", len(sink.events), tc.queued)
			}
		})
	}
}

func TestReceiverSinkFailureIs503(t *testing.T) {
	t.Parallel()
	hdr, _ := NewHeader("Authorization", "Bearer s3cret-token")
	h := newRecv(t, Distribution{Registry: "127.0.0.1:5000"}, hdr, &recordingSink{err: errors.New("disk full")})
	req := httptest.NewRequest("POST", "/hooks/src", bytes.NewReader(load(t, "distribution-push.json")))
	req.Header.Set("Content-Type", DistributionMediaType)
	req.Header.Set("Authorization", "Bearer s3cret-token")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d: a delivery that was not stored must not be acknowledged", w.Code)
	}
}

func TestPathToken(t *testing.T) {
	t.Parallel()
	pt, err := NewPathToken("0123456789abcdef0123")
	if err != nil {
		t.Fatal(err)
	}
	sink := &recordingSink{}
	mux := http.NewServeMux()
	mux.Handle("POST /hooks/src/{token}", newRecv(t, Generic{}, pt, sink))
	for token, want := range map[string]int{"0123456789abcdef0123": 202, "0123456789abcdef0124": 401} {
		req := httptest.NewRequest("POST", "/hooks/src/"+token, bytes.NewReader(load(t, "generic-list.json")))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		if w.Code != want {
			t.Errorf("token %s: %d, want %d", token, w.Code, want)
		}
	}
	if len(sink.events) != 2 || sink.events[0].Tag != "v1" || sink.events[1].Digest == "" {
		t.Errorf("events = %+v", sink.events)
	}
	if _, err := NewPathToken("short"); err == nil {
		t.Error("short token accepted")
	}
}

func FuzzGeneric(f *testing.F) {
	for _, n := range []string{"generic-digest.json", "generic-list.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := Generic{}.Parse(nil, body)
		if err != nil {
			return
		}
		for _, x := range in {
			if x.Event.Registry == "" || (x.Event.Tag == "" && x.Event.Digest == "") {
				t.Fatalf("parsed an incomplete reference: %+v", x.Event)
			}
		}
	})
}

// TestDeliveryBounds: a delivery carries at most MaxEvents events and asks
// the registry about at most MaxResolves tags; beyond either it is a 400 and
// nothing is stored or resolved.
func TestDeliveryBounds(t *testing.T) {
	t.Parallel()
	d := "@sha256:" + strings.Repeat("a", 64)
	for _, tc := range []struct {
		name string
		refs func(i int) string
		n    int
		code int
	}{
		{"events at the bound", func(i int) string { return fmt.Sprintf("127.0.0.1:5000/app%d%s", i, d) }, MaxEvents, 202},
		{"events over the bound", func(i int) string { return fmt.Sprintf("127.0.0.1:5000/app%d%s", i, d) }, MaxEvents + 1, 400},
		{"resolves over the bound", func(i int) string { return fmt.Sprintf("127.0.0.1:5000/app%d:v1", i) }, MaxResolves + 1, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			refs := make([]string, tc.n)
			for i := range refs {
				refs[i] = tc.refs(i)
			}
			body, _ := json.Marshal(map[string][]string{"images": refs})
			sink, res := &recordingSink{}, &countingResolver{m: []byte(imageManifest)}
			h, err := NewReceiver("src", Generic{}, NoAuthUnsafe{}, everything, sink, ReceiverOptions{MaxBody: 1 << 20, Resolver: res})
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest("POST", "/hooks/src", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
			}
			if tc.code != 202 && (len(sink.events) != 0 || res.n.Load() > MaxResolves) {
				t.Fatalf("refused delivery stored %d events after %d resolves", len(sink.events), res.n.Load())
			}
		})
	}
}
