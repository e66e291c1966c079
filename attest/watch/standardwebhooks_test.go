package watch

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The Standard Webhooks reference libraries' test vector
// (standard-webhooks/standard-webhooks, libraries/go/webhook_test.go).
const (
	swSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	swID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	swTime   = 1614265330
	swBody   = `{"test": 2432232314}`
	swSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func TestStandardWebhooksVector(t *testing.T) {
	t.Parallel()
	sw, err := NewStandardWebhooks(swSecret, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got := sw.Sign(swID, time.Unix(swTime, 0), []byte(swBody)); got != swSig {
		t.Fatalf("Sign = %s, want %s", got, swSig)
	}
	at := func(d time.Duration) func() time.Time { return func() time.Time { return time.Unix(swTime, 0).Add(d) } }
	other := "v1," + strings.Repeat("A", 43) + "="
	for _, tc := range []struct {
		name          string
		id, ts, sig   string
		body          string
		now           func() time.Time
		authenticated bool
	}{
		{"vector", swID, strconv.Itoa(swTime), swSig, swBody, at(0), true},
		{"rotation: any signature matches", swID, strconv.Itoa(swTime), other + " v1a,aGVsbG8= " + swSig, swBody, at(0), true},
		{"within the window", swID, strconv.Itoa(swTime), swSig, swBody, at(4 * time.Minute), true},
		{"replayed", swID, strconv.Itoa(swTime), swSig, swBody, at(6 * time.Minute), false},
		{"from the future", swID, strconv.Itoa(swTime), swSig, swBody, at(-6 * time.Minute), false},
		{"other body", swID, strconv.Itoa(swTime), swSig, `{"test": 2432232315}`, at(0), false},
		{"other id", swID + "x", strconv.Itoa(swTime), swSig, swBody, at(0), false},
		{"only another key's signature", swID, strconv.Itoa(swTime), other, swBody, at(0), false},
		{"asymmetric signature only", swID, strconv.Itoa(swTime), "v1a," + swSig[3:], swBody, at(0), false},
		{"unversioned", swID, strconv.Itoa(swTime), swSig[3:], swBody, at(0), false},
		{"timestamp with a sign", swID, "+" + strconv.Itoa(swTime), swSig, swBody, at(0), false},
		{"timestamp with a leading zero", swID, "0" + strconv.Itoa(swTime), swSig, swBody, at(0), false},
		{"id with a dot", "msg.1", strconv.Itoa(swTime), swSig, swBody, at(0), false},
		{"no id", "", strconv.Itoa(swTime), swSig, swBody, at(0), false},
		{"no signature", swID, strconv.Itoa(swTime), "", swBody, at(0), false},
	} {
		sw.now = tc.now
		r := httptest.NewRequest("POST", "/", nil)
		r.Header.Set(HeaderWebhookID, tc.id)
		r.Header.Set(HeaderWebhookTimestamp, tc.ts)
		r.Header.Set(HeaderWebhookSignature, tc.sig)
		if err := sw.Authenticate(r, []byte(tc.body)); (err == nil) != tc.authenticated {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
	for _, bad := range []string{"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_c2hvcnQ="} {
		if _, err := NewStandardWebhooks(bad, time.Minute); err == nil {
			t.Errorf("secret %q accepted", bad)
		}
	}
}

func TestGenericStandardWebhooks(t *testing.T) {
	t.Parallel()
	sw, err := NewStandardWebhooks(swSecret, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	signed := func(id string, at time.Time, body []byte) http.Header {
		h := http.Header{}
		h.Set("Content-Type", "application/json")
		h.Set(HeaderWebhookID, id)
		h.Set(HeaderWebhookTimestamp, strconv.FormatInt(at.Unix(), 10))
		h.Set(HeaderWebhookSignature, sw.Sign(id, at, body))
		return h
	}
	digest, list := load(t, "generic-digest.json"), load(t, "generic-list.json")
	gen := SourceConfig{Name: "ci", Type: "generic", Auth: "standard_webhooks", Secret: []byte(swSecret)}
	for _, tc := range []struct {
		name    string
		body    []byte
		headers http.Header
		code    int
		want    []Event
	}{
		{"digest", digest, signed(swID, time.Now(), digest), 202, []Event{{Source: "ci", ID: swID, Action: ActionPush,
			Registry: "127.0.0.1:5000", Repository: "demo/hello", Digest: "sha256:" + strings.Repeat("2", 64)}}},
		{"list: one ID per image", list, signed(swID, time.Now(), list), 202, []Event{
			{Source: "ci", ID: swID + "/0", Action: ActionPush, Registry: "127.0.0.1:5000", Repository: "demo/hello",
				Digest: sha256Digest([]byte(imageManifest)), Tag: "v1", MediaType: "application/vnd.oci.image.manifest.v1+json"},
			{Source: "ci", ID: swID + "/1", Action: ActionPush, Registry: "127.0.0.1:5000", Repository: "demo/other", Digest: "sha256:" + strings.Repeat("3", 64)},
		}},
		{"replayed", digest, signed(swID, time.Now().Add(-time.Hour), digest), 401, nil},
		{"tampered", append(append([]byte{}, digest...), ' '), signed(swID, time.Now(), digest), 401, nil},
		{"unsigned", digest, http.Header{"Content-Type": {"application/json"}}, 401, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, resp, got := postHook(t, gen, everything, tags, tc.body, tc.headers)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %+v", code, tc.code, resp)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
	// cloudevents accepts the scheme too; github does not.
	ce := SourceConfig{Name: "ce", Type: "cloudevents", Auth: "standard_webhooks", Secret: []byte(swSecret)}
	body := load(t, "cloudevents-attestd.json")
	h := signed("ci-1", time.Now(), body)
	h.Set("Content-Type", CloudEventsMediaType)
	if code, resp, _ := postHook(t, ce, Filter{}, nil, body, h); code != 202 {
		t.Errorf("cloudevents: %d %+v", code, resp)
	}
	if _, _, err := NewSource(SourceConfig{Name: "gh", Type: "github", Auth: "standard_webhooks", Secret: []byte(swSecret)}, Filter{}, &recordingSink{}, ReceiverOptions{}); err == nil {
		t.Error("github source accepted standard_webhooks")
	}
	_, _, err = NewSource(SourceConfig{Name: "ci", Type: "generic", Auth: "standard_webhooks", Secret: []byte("0123456789abcdef0123456789")}, Filter{}, &recordingSink{}, ReceiverOptions{})
	if fe, ok := err.(*FieldError); !ok || fe.Field != "auth" || !strings.Contains(fe.Error(), "whsec_") {
		t.Errorf("secret without whsec_: %v", err)
	}
}
