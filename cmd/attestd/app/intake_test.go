package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// TestWebhookRejectionsChangeNothing drives the real receivers on the real
// store: every rejected delivery leaves the store exactly as it was.
func TestWebhookRejectionsChangeNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hmacFile, bearerFile := filepath.Join(dir, "hmac"), filepath.Join(dir, "bearer")
	os.WriteFile(hmacFile, []byte("0123456789abcdef-hmac-secret\n"), 0o600)
	os.WriteFile(bearerFile, []byte("Bearer registry-secret\n"), 0o600)
	cfg, err := configs.Load(strings.NewReader(fmt.Sprintf(`
registries: [{host: "127.0.0.1:5000"}]
watch: [{registry: "127.0.0.1:5000", repositories: ["**"]}]
intake: {max_body_bytes: 2048}
sources:
  - {name: reg, type: distribution, registry: "127.0.0.1:5000", auth: {type: header, secret_file: %q}}
  - {name: ci, type: generic, auth: {type: hmac, secret_file: %q}}
`, bearerFile, hmacFile)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(filepath.Join(dir, "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rc, _ := registry.New()
	mux := http.NewServeMux()
	sink := &intakeSink{db: db, rc: rc, wake: func() {}, log: slog.New(slog.DiscardHandler)}
	if err := mountSources(mux, cfg, rc, sink, watch.NewStats(), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	known := "127.0.0.1:5000/demo/hello@sha256:2e8f9f12e5673cd129cdbd504990bd61f3c5de14aff882a0bbf7e50f9ef2ea81"
	if _, err := db.Enqueue(ctx, store.EnqueueRequest{Ref: known, Source: "seed"}); err != nil {
		t.Fatal(err)
	}
	snapshot := func() string {
		var b bytes.Buffer
		st, _ := db.Stats(ctx)
		rec, _ := db.Image(ctx, known)
		jobs, _ := db.Jobs(ctx)
		hist, _ := db.TagHistory(ctx, "127.0.0.1:5000/demo/hello:v1")
		fmt.Fprintf(&b, "%v %d %d %d", st.Jobs, rec.Rev, len(jobs), len(hist))
		return b.String()
	}
	before := snapshot()
	good, _ := os.ReadFile("../../../attest/watch/testdata/distribution-push.json")
	hm, _ := watch.NewHMAC([]byte("0123456789abcdef-hmac-secret"), time.Minute)
	ts, sig := hm.Sign([]byte(`{"image":"127.0.0.1:5000/demo/x@sha256:`+strings.Repeat("1", 64)+`"}`), time.Now())
	for _, tc := range []struct {
		name, path, ctype, auth string
		body                    []byte
		hdr                     map[string]string
		code                    int
	}{
		{"401 no header", "/hooks/reg", watch.DistributionMediaType, "", good, nil, 401},
		{"401 wrong bearer", "/hooks/reg", watch.DistributionMediaType, "Bearer nope", good, nil, 401},
		{"401 hmac over another body", "/hooks/ci", "application/json", "", []byte(`{"image":"127.0.0.1:5000/demo/y:v1"}`), map[string]string{watch.HeaderTimestamp: ts, watch.HeaderSignature: sig}, 401},
		{"413", "/hooks/reg", watch.DistributionMediaType, "Bearer registry-secret", bytes.Repeat([]byte("x"), 4096), nil, 413},
		{"415", "/hooks/reg", "text/plain", "Bearer registry-secret", good, nil, 415},
		{"400 truncated", "/hooks/reg", watch.DistributionMediaType, "Bearer registry-secret", good[:len(good)/2], nil, 400},
		{"405", "/hooks/reg", watch.DistributionMediaType, "Bearer registry-secret", nil, nil, 405},
		{"404 unknown source", "/hooks/nope", watch.DistributionMediaType, "Bearer registry-secret", good, nil, 404},
	} {
		method := http.MethodPost
		if tc.code == 405 {
			method = http.MethodGet
		}
		req := httptest.NewRequest(method, tc.path, bytes.NewReader(tc.body))
		req.Header.Set("Content-Type", tc.ctype)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		for k, v := range tc.hdr {
			req.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		if w.Code != tc.code {
			t.Errorf("%s: status %d, want %d (%s)", tc.name, w.Code, tc.code, w.Body)
		}
		if after := snapshot(); after != before {
			t.Fatalf("%s changed the store:\n%s", tc.name, cmp.Diff(before, after))
		}
	}
	// The same push, authenticated: a duplicate of the known image — 202,
	// no new job, the tag recorded.
	req := httptest.NewRequest(http.MethodPost, "/hooks/reg", bytes.NewReader(good))
	req.Header.Set("Content-Type", watch.DistributionMediaType)
	req.Header.Set("Authorization", "Bearer registry-secret")
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, req)
	if w.Code != 202 || !strings.Contains(w.Body.String(), `"duplicate":1`) {
		t.Fatalf("authenticated duplicate: %d %s", w.Code, w.Body)
	}
	jobs, _ := db.Jobs(ctx)
	hist, _ := db.TagHistory(ctx, "127.0.0.1:5000/demo/hello:v1")
	if len(jobs) != 1 || len(hist) != 1 {
		t.Fatalf("jobs %d (want 1), tag history %d (want 1)", len(jobs), len(hist))
	}
}

// TestSinkRefusesItemsTheStoreCannotKey: an event the store cannot record
// (a tag longer than any key intake allows) is the sender's error (4xx, not
// retried), not a storage failure, and nothing is recorded.
func TestSinkRefusesItemsTheStoreCannotKey(t *testing.T) {
	t.Parallel()
	db, err := store.Open(filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sink := &intakeSink{db: db, wake: func() {}, log: slog.New(slog.DiscardHandler)}
	_, err = sink.Accept(context.Background(), []watch.Event{{Registry: "127.0.0.1:5000", Repository: "demo/app",
		Digest: "sha256:" + strings.Repeat("2", 64), Tag: strings.Repeat("t", 5000), Action: watch.ActionPush}})
	var ie *watch.InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "tag is") {
		t.Errorf("Accept = %v, want an input error naming the tag", err)
	}
	st, err := db.Stats(context.Background())
	if err != nil || len(st.Jobs) != 0 || len(st.Images) != 0 {
		t.Errorf("recorded: %+v %v", st, err)
	}
}

// TestIntakeSinkWakesForQueuedJobs: when Accept returns, every queued event
// is a job (there is one intake path, and its results are final), and the
// workers are woken; a redelivery queues nothing and wakes no one.
func TestIntakeSinkWakesForQueuedJobs(t *testing.T) {
	t.Parallel()
	db, err := store.Open(filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	wakes := 0
	sink := &intakeSink{db: db, wake: func() { wakes++ }, log: slog.New(slog.DiscardHandler)}
	ev := watch.Event{ID: "e1", Source: "reg", Registry: "127.0.0.1:5000", Repository: "demo/app",
		Digest: "sha256:" + strings.Repeat("3", 64), Tag: "v1", Action: watch.ActionPush}
	ctx := context.Background()
	for i, want := range []watch.Accepted{{Queued: 1}, {Duplicate: 1}} {
		acc, err := sink.Accept(ctx, []watch.Event{ev})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, acc); diff != "" {
			t.Errorf("delivery %d (-want +got):\n%s", i, diff)
		}
		if jobs, _ := db.Jobs(ctx); len(jobs) != 1 || wakes != 1 {
			t.Errorf("delivery %d: %d jobs, %d wakes; want 1 and 1", i, len(jobs), wakes)
		}
	}
}
