package watch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

// offlineRegistry is a Resolver whose registry does not answer.
type offlineRegistry struct{}

func (offlineRegistry) Resolve(context.Context, string, string, string) (string, []byte, error) {
	return "", nil, errors.New("dial tcp 203.0.113.7:443: connect: connection refused")
}

// editBody replaces every old in body with new and fails when there is
// none, so a test cannot silently send the unedited delivery.
func editBody(t *testing.T, body []byte, old, new string) []byte {
	t.Helper()
	if !bytes.Contains(body, []byte(old)) {
		t.Fatalf("test body has no %q", old)
	}
	return bytes.ReplaceAll(body, []byte(old), []byte(new))
}

// postHook sends body with headers to a receiver of c (built by NewSource,
// so the registration in senders and authSchemes is what is tested) and
// returns the answer and what the sink got.
func postHook(t *testing.T, c SourceConfig, f Filter, res Resolver, body []byte, headers http.Header) (int, Response, []Event) {
	t.Helper()
	sink := &recordingSink{}
	pattern, h, err := NewSource(c, f, sink, ReceiverOptions{MaxBody: 1 << 20, Resolver: res})
	if err != nil {
		t.Fatal(err)
	}
	if pattern != "POST /hooks/"+c.Name {
		t.Fatalf("pattern %q", pattern)
	}
	req := httptest.NewRequest("POST", "/hooks/"+c.Name, bytes.NewReader(body))
	req.Header = headers.Clone()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var resp Response
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
		t.Fatalf("answer is not JSON: %s", w.Body)
	}
	return w.Code, resp, sink.events
}

// acceptable asserts that an event the receiver would accept names a valid
// registry, repository and a digest or tag (fuzz targets).
func acceptable(t *testing.T, f Filter, x Incoming) {
	t.Helper()
	if x.check() != nil || f.Classify(x) != "" {
		return
	}
	e := x.Event
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
