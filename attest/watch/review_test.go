package watch

// Tests from the intake attack review: each was a weakness, fixed.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Distribution marks blob events by "/blobs/" anywhere in target.url: a
// manifest push to a repository with a path component named "blobs" is
// answered 202 and dropped (ignored as an action).
func TestReviewDistributionBlobsRepository(t *testing.T) {
	t.Parallel()
	push := load(t, "distribution-v3-push.json")
	body := bytes.ReplaceAll(push, []byte("team/app"), []byte("team/blobs/app"))
	const d = "sha256:f1ce57ecd6215582a6007751c3e481595b2744e7e6416b5e0457b45903977404"
	runIntakeCases(t, distSource("header", "Bearer s3cret-token"), []intakeCase{
		{name: "push to team/blobs/app", body: body, code: 202, want: []Event{{Source: "dist", ID: "8a3e0d6c-6f1b-4f0e-9a51-3c2d7b9e1f04",
			Action: ActionPush, Registry: "registry.example.com", Repository: "team/blobs/app", Digest: d, Tag: "v1.2.0",
			MediaType: "application/vnd.oci.image.manifest.v1+json", Pusher: "ci-bot"}}},
	})
}

// request.host is the Host header of the registry client's request
// (distribution notifications.NewRequestRecord: Host: r.Host). Any client
// that can pull chooses it; a pull event is irrelevant, yet its host is
// validated and the delivery refused — and Distribution retries a refused
// delivery forever, blocking the endpoint's queue for every later push.
func TestReviewDistributionPullHostBlocksQueue(t *testing.T) {
	t.Parallel()
	push := load(t, "distribution-v3-push.json")
	pull := edit(t, push, `"action": "push"`, `"action": "pull"`)
	pull = edit(t, pull, `"host": "registry.example.com",`, `"host": "registry_example.com",`)
	runIntakeCases(t, distSource("header", "Bearer s3cret-token"), []intakeCase{
		{name: "pull with a client-chosen Host header", body: pull, code: 202, ignored: map[string]int{ReasonAction: 1}},
	})
}

// The same client-chosen host on a push: host names are case-insensitive,
// the watch rule is compared byte for byte, and a pusher who writes the
// registry's name in capitals gets the push answered 202 and never analysed.
func TestReviewDistributionPushHostCase(t *testing.T) {
	t.Parallel()
	push := load(t, "distribution-v3-push.json")
	body := edit(t, push, `"host": "registry.example.com",`, `"host": "Registry.Example.com",`)
	sink := &recordingSink{}
	h, err := NewReceiver("dist", Distribution{Registry: "registry.example.com"}, NoAuthUnsafe{}, distWatch, sink, ReceiverOptions{})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("POST", "/hooks/dist", bytes.NewReader(body))
	req.Header.Set("Content-Type", DistributionV2MediaType)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code/100 == 2 && len(sink.events) == 0 {
		t.Fatalf("%d and nothing stored for a push to a watched registry spelled in capitals: %s", w.Code, w.Body)
	}
}

// A runnable image (image config type) with an artifactType, or with one
// layer whose media type looks like an attestation, is ignored as an
// artifact: the allowlist is the config type, but Classify rejects first.
func TestReviewArtifactTypeOnImage(t *testing.T) {
	t.Parallel()
	m := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/x-anything",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + strings.Repeat("b", 64) + `","size":3}]}`
	res := tagResolver{"127.0.0.1:5000/demo/hello:v1": []byte(m)}
	code, resp, got := postHook(t, SourceConfig{Name: "ci", Type: "generic", Auth: "none"}, everything, res,
		[]byte(`{"image":"127.0.0.1:5000/demo/hello:v1"}`), http.Header{"Content-Type": {"application/json"}})
	if len(got) != 1 {
		t.Fatalf("%d %+v: a runnable image was not stored", code, resp)
	}
}

// countingResolver counts Resolve calls (each is a HEAD and a GET with
// attestd's registry credentials; on Docker Hub the GET is a rate-limited pull).
type countingResolver struct {
	n atomic.Int64
	m []byte
}

func (c *countingResolver) Resolve(context.Context, string, string, string) (string, []byte, error) {
	c.n.Add(1)
	return sha256Digest(c.m), c.m, nil
}

// One delivery of repeated (or many distinct) tag-only references makes
// one registry round trip per entry, sequentially, while holding a
// delivery slot: nothing bounds the number of events per delivery or dedupes
// the lookups.
func TestReviewResolveAmplification(t *testing.T) {
	t.Parallel()
	res := &countingResolver{m: []byte(imageManifest)}
	refs := make([]string, 5000)
	for i := range refs {
		refs[i] = "127.0.0.1:5000/demo/hello:v1"
	}
	body, _ := json.Marshal(map[string][]string{"images": refs})
	code, _, got := postHook(t, SourceConfig{Name: "ci", Type: "generic", Auth: "none"}, everything, res, body, http.Header{"Content-Type": {"application/json"}})
	if n := res.n.Load(); n > 1 {
		t.Errorf("%d: %d registry lookups (and %d events to the sink) for one tag named %d times", code, n, len(got), len(refs))
	}
}

// blockingBody never ends (a client trickling its body).
type blockingBody struct{ done chan struct{} }

func (b blockingBody) Read([]byte) (int, error) { <-b.done; return 0, io.EOF }

// For body-signing schemes the delivery slot is taken before the body is
// read and authenticated: whoever can reach the port holds every slot for
// readTimeout (30 s) per connection with unsigned, slow bodies, and every
// signed delivery gets 503 (GitHub does not redeliver on its own).
func TestReviewUnauthenticatedSlotExhaustion(t *testing.T) {
	t.Parallel()
	hm, _ := NewHMAC([]byte("0123456789abcdef-secret"), 5*time.Minute)
	h, err := NewReceiver("src", Distribution{Registry: "127.0.0.1:5000"}, hm, everything, &recordingSink{}, ReceiverOptions{MaxInFlight: 1, BusyWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	slow := httptest.NewRequest("POST", "/hooks/src", blockingBody{stop})
	slow.Header.Set("Content-Type", DistributionMediaType)
	slow.Header.Set(HeaderTimestamp, fmt.Sprint(time.Now().Unix()))
	slow.Header.Set(HeaderSignature, "sha256=00")
	go h.ServeHTTP(httptest.NewRecorder(), slow)
	time.Sleep(20 * time.Millisecond) // the slow body is being read
	good := load(t, "distribution-push.json")
	ts, sig := hm.Sign(good, time.Now())
	req := httptest.NewRequest("POST", "/hooks/src", bytes.NewReader(good))
	req.Header.Set("Content-Type", DistributionMediaType)
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, sig)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code == http.StatusServiceUnavailable {
		t.Fatalf("a signed delivery was refused because an unsigned one holds the slot: %s", w.Body)
	}
}

// Under a body-signing scheme (hmac, standard_webhooks) a binary-mode
// CloudEvent's attributes are ce-* headers that no signature covers: a
// captured, signed image.deleted is replayed inside the window as
// image.updated (a push is queued), with any ce-id (defeating the event-ID
// dedupe) and any ce-source (defeating sources[].event_source).
func TestReviewCloudEventsUnsignedAttributes(t *testing.T) {
	t.Parallel()
	hm, _ := NewHMAC([]byte("0123456789abcdef-secret"), 5*time.Minute)
	body := load(t, "cloudevents-zot-image-deleted.json") // signed as a delete
	ts, sig := hm.Sign(body, time.Now())
	h := http.Header{}
	for k, v := range zotHeaders("zotregistry.image.updated") { // the type is changed in transit
		h.Set(k, v)
	}
	h.Set("Ce-Id", "replayed-1")
	h.Set(HeaderTimestamp, ts)
	h.Set(HeaderSignature, sig)
	cfg := SourceConfig{Name: "zot", Type: "cloudevents", Registry: "zot.local:5000", Auth: "hmac", Secret: []byte("0123456789abcdef-secret"), EventSource: "zotregistry.dev"}
	code, resp, got := postHook(t, cfg, ceWatch, nil, body, h)
	for _, e := range got {
		if e.Action == ActionPush {
			t.Fatalf("%d %+v: a signed delete was stored as a push through an unsigned ce-type header", code, resp)
		}
	}
}

// Without a filesystem layer, an artifactType still marks an artifact.
func TestArtifactTypeWithoutLayersIsAnArtifact(t *testing.T) {
	t.Parallel()
	m := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/x-anything",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`
	res := tagResolver{"127.0.0.1:5000/demo/hello:v1": []byte(m)}
	code, resp, got := postHook(t, SourceConfig{Name: "ci", Type: "generic", Auth: "none"}, everything, res,
		[]byte(`{"image":"127.0.0.1:5000/demo/hello:v1"}`), http.Header{"Content-Type": {"application/json"}})
	if len(got) != 0 || resp.Ignored[ReasonArtifact] != 1 {
		t.Fatalf("%d %+v: an artifact was stored", code, resp)
	}
}
