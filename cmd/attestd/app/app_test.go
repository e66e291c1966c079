package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/spf13/cobra"

	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Run(context.Background(), args, &o, &e, WithLookupEnv(func(string) (string, bool) { return "", false }))
	return code, o.String(), e.String()
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "attestd.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// testRegistry is ggcr's in-process registry with one pushed image.
func testRegistry(t *testing.T) (host string, ref name.Digest) {
	t.Helper()
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host = strings.TrimPrefix(srv.URL, "http://")
	img, _ := random.Image(128, 1)
	tag, _ := name.NewTag(host + "/demo/app:v1")
	if err := remote.Write(tag, img, remote.WithContext(context.Background())); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return host, tag.Context().Digest(d.String())
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	bad := writeFile(t, "registries:\n- host: r.example\n  auth: {username: u, password: hunter2}\nworkers: 0\n")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"invalid config", []string{"serve", "-c", bad}, []string{bad, "registries[0].auth.password", "password_file", "workers"}},
		{"missing config", []string{"serve", "-c", "/nonexistent/attestd.yaml"}, []string{"/nonexistent/attestd.yaml", "cannot read config"}},
		{"unknown flag", []string{"serve", "--nope"}, []string{"unknown flag"}},
		{"bad digest ref", []string{"requeue", "r.example/app:v1"}, []string{"host/repo@sha256"}},
		{"missing arg", []string{"process"}, []string{"usage: attestd process IMAGE"}},
		{"extra arg", []string{"version", "x"}, []string{"takes no arguments"}},
		{"short name", []string{"process", "--data-dir", "/nonexistent", "app:v1"}, []string{"needs a registry host"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, _, stderr := run(t, tc.args...)
			if code != ExitUsage {
				t.Errorf("exit %d, want %d; stderr: %s", code, ExitUsage, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "hunter2") {
				t.Errorf("secret leaked: %s", stderr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	code, out, _ := run(t, "version")
	if code != 0 || !strings.Contains(out, "attestd ") || !strings.Contains(out, "go: go1.") {
		t.Fatalf("exit %d: %s", code, out)
	}
}

func TestStoreFaults(t *testing.T) {
	t.Parallel()
	// Corrupt store: a clear error, exit 1, file untouched.
	dir := t.TempDir()
	junk := bytes.Repeat([]byte("junk"), 4096)
	os.WriteFile(filepath.Join(dir, "attestd.db"), junk, 0o600)
	code, _, stderr := run(t, "status", "--data-dir", dir)
	if code != ExitError || !strings.Contains(stderr, "corrupt") || !strings.Contains(stderr, "backup") {
		t.Fatalf("corrupt store: exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "attestd.db")); !bytes.Equal(b, junk) {
		t.Fatal("corrupt store was modified")
	}

	// Locked store and no daemon API answering: say both.
	dir = t.TempDir()
	db, err := store.Open(filepath.Join(dir, "attestd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	code, _, stderr = run(t, "status", "--data-dir", dir, "--listen", "127.0.0.1:1")
	if code != ExitError || !strings.Contains(stderr, "locked by a running daemon") {
		t.Fatalf("locked store: exit %d: %s", code, stderr)
	}

	// No store yet: status says so instead of creating one.
	dir = t.TempDir()
	code, _, stderr = run(t, "status", "--data-dir", dir)
	if code != ExitError || !strings.Contains(stderr, "no database yet") {
		t.Fatalf("missing store: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "attestd.db")); err == nil {
		t.Fatal("status created a database")
	}
}

func TestProcessSkipsUnbuiltStages(t *testing.T) {
	t.Parallel()
	host, ref := testRegistry(t)
	dir := t.TempDir()
	installVulnDB(t, dir)
	code, out, stderr := run(t, "process", "--data-dir", dir, host+"/demo/app:v1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, w := range []string{ref.String(), "state:  analysed", "resolve   passed", "analyse   passed", "sign      skipped  not configured", "evaluate  -        not reached", "vulns:  sha256:"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "sign      passed") {
		t.Fatal("an unbuilt stage reported as passed")
	}
	// Again: the known digest is re-driven, not duplicated.
	if code, _, stderr := run(t, "process", "--data-dir", dir, ref.String()); code != 0 {
		t.Fatalf("second process: exit %d: %s", code, stderr)
	}
	db, err := store.Open(filepath.Join(dir, "attestd.db"), store.ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	imgs, _ := db.Images(context.Background(), "")
	jobs, _ := db.Jobs(context.Background())
	if len(imgs) != 1 || len(jobs) != 2 {
		t.Fatalf("%d images, %d jobs; want 1 and 2", len(imgs), len(jobs))
	}
	hist, _ := db.TagHistory(context.Background(), host+"/demo/app:v1")
	if len(hist) != 1 || hist[0].Digest != ref.DigestStr() {
		t.Fatalf("tag history = %+v", hist)
	}
}

func TestProcessMissingImageWritesNothing(t *testing.T) {
	t.Parallel()
	host, _ := testRegistry(t)
	dir := t.TempDir()
	code, _, stderr := run(t, "process", "--data-dir", dir, host+"/demo/app:nope")
	if code != ExitError || !strings.Contains(stderr, "manifest not found") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "attestd.db")); err == nil {
		t.Fatal("a failed resolve created the store")
	}
}

// testAPI is the daemon's handler as serve builds it, on a fresh store,
// with a token file of one token and its log captured.
type testAPI struct {
	h         http.Handler
	mux       *http.ServeMux // for mounting webhook receivers
	db        *store.DB
	host      string // the test registry
	ref       name.Digest
	tokenFile string
	token     string
	logs      *lockedBuffer
}

func newTestAPI(t *testing.T, pprofOn bool) *testAPI {
	t.Helper()
	host, ref := testRegistry(t)
	dir := t.TempDir()
	db, err := store.Open(filepath.Join(dir, "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	rc, err := registry.New()
	if err != nil {
		t.Fatal(err)
	}
	ta := &testAPI{db: db, host: host, ref: ref, tokenFile: filepath.Join(dir, "api.token"), logs: &lockedBuffer{}}
	if _, err := ensureTokenFile(ta.tokenFile); err != nil {
		t.Fatal(err)
	}
	tok, err := apiToken(ta.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	ta.token = tok.Reveal()
	log := slog.New(slog.NewJSONHandler(ta.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tokens, err := newTokenFile(ta.tokenFile, log)
	if err != nil {
		t.Fatal(err)
	}
	var ready atomic.Bool
	ready.Store(true)
	ta.mux, ta.h = newAPI(&api{db: db, rc: rc, wake: func() {}, ready: &ready, log: log}, newGuard(tokens, []string{"attestd.example.com"}, log), pprofOn)
	return ta
}

// do sends one request; hdr are header name, value pairs.
func (ta *testAPI) do(method, target string, hdr ...string) (int, http.Header, map[string]any) {
	req := httptest.NewRequest(method, target, nil)
	req.RemoteAddr, req.Host = "127.0.0.1:5555", "127.0.0.1:8080" // not httptest's example.com
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	ta.h.ServeHTTP(w, req)
	var body map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	return w.Code, w.Header(), body
}

func TestAPI(t *testing.T) {
	t.Parallel()
	ta := newTestAPI(t, false)
	host, ref := ta.host, ta.ref
	auth := []string{"Authorization", "Bearer " + ta.token}
	for _, tc := range []struct {
		method, target string
		hdr            []string
		code           int
		field          string // a key the JSON body must have
	}{
		{"GET", "/healthz", nil, 200, ""},
		{"GET", "/readyz", nil, 200, ""},
		{"GET", "/debug/pprof/cmdline", auth, 404, ""}, // api.pprof is off
		{"POST", "/api/v1/submit", auth, 400, "error"},
		{"POST", "/api/v1/submit?image=app:v1", auth, 400, "error"},
		{"POST", "/api/v1/submit?image=" + host + "/demo/app:missing", auth, 404, "error"},
		{"POST", "/api/v1/submit?image=" + host + "/demo/app:v1", nil, 401, "error"},
		{"POST", "/api/v1/submit?image=" + host + "/demo/app:v1", auth, 202, "jobId"},
		{"POST", "/api/v1/submit?image=" + ref.String(), auth, 202, "duplicate"},
		{"POST", "/api/v1/requeue?ref=" + ref.String(), auth, 409, "error"},
		{"POST", "/api/v1/requeue?ref=" + host + "/demo/x@sha256:" + strings.Repeat("0", 64), auth, 404, "error"},
		{"GET", "/api/v1/image?ref=" + ref.String(), auth, 200, "state"},
		{"GET", "/api/v1/stats", nil, 200, "jobs"},
		{"GET", "/api/v1/backup", nil, 401, "error"},
		{"DELETE", "/api/v1/stats", auth, 405, ""},
	} {
		code, _, body := ta.do(tc.method, tc.target, tc.hdr...)
		if code != tc.code {
			t.Errorf("%s %s (%d headers): %d, want %d (%v)", tc.method, tc.target, len(tc.hdr)/2, code, tc.code, body)
			continue
		}
		if tc.field != "" {
			if _, ok := body[tc.field]; !ok {
				t.Errorf("%s %s: body lacks %q: %v", tc.method, tc.target, tc.field, body)
			}
		}
	}
	_, _, body := ta.do("POST", "/api/v1/submit?image="+ref.String(), auth...)
	if body["duplicate"] != true {
		t.Errorf("second submit not a duplicate: %v", body)
	}
}

func TestServeInProcess(t *testing.T) {
	t.Parallel()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	dataDir, cfgFile := t.TempDir(), writeFile(t, "registries: [{host: \"127.0.0.1:1\"}]\n")
	var daemonLog lockedBuffer
	go func() {
		done <- Run(ctx, []string{"serve", "--data-dir", dataDir, "--listen", addr, "-c", cfgFile}, &daemonLog, &daemonLog,
			WithLookupEnv(func(string) (string, bool) { return "", false }))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready in 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := Run(ctx, []string{"healthcheck", "--listen", addr}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("healthcheck exit %d", code)
	}
	// The daemon created its API token; the CLI, finding the store locked,
	// reads it and goes through the authenticated API.
	tokenFile := filepath.Join(dataDir, "api.token")
	if fi, err := os.Stat(tokenFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("API token file: %v %v", fi, err)
	}
	tok, err := apiToken(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	cli := func(env map[string]string, args ...string) (int, string) {
		var out bytes.Buffer
		code := Run(ctx, append(args, "--data-dir", dataDir, "--listen", addr, "-c", cfgFile), &out, &out,
			WithLookupEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
		return code, out.String()
	}
	snap := filepath.Join(t.TempDir(), "snap.db")
	if code, out := cli(nil, "store", "backup", snap); code != 0 || !strings.Contains(out, "wrote "+snap) {
		t.Fatalf("store backup through the API: exit %d: %s", code, out)
	}
	wrong := writeFile(t, "# another daemon's\nnot-this-daemons-token-0123456789\n")
	if code, out := cli(map[string]string{"ATTESTD_API_TOKEN_FILE": wrong}, "store", "backup", snap+"2"); code == 0 || !strings.Contains(out, "401") || !strings.Contains(out, wrong) {
		t.Fatalf("store backup with a wrong token: exit %d: %s", code, out)
	}
	if code, out := cli(map[string]string{"ATTESTD_API_TOKEN_FILE": "/nonexistent/api.token"}, "status"); code != 0 {
		t.Fatalf("status (open counts) without a token: exit %d: %s", code, out)
	}
	if code, out := cli(map[string]string{"ATTESTD_API_TOKEN_FILE": "/nonexistent/api.token"}, "store", "backup", snap+"3"); code == 0 || !strings.Contains(out, "run this as the daemon's user") {
		t.Fatalf("store backup without a readable token: exit %d: %s", code, out)
	}
	if resp, err := http.Get("http://" + addr + "/debug/pprof/cmdline"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("pprof is served by default: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// deep=1 also asks the configured registries (127.0.0.1:1 answers nothing).
	if resp, err := http.Get("http://" + addr + "/readyz?deep=1"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("deep readiness with an unreachable registry: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"# TYPE attestd_jobs gauge", "# TYPE attestd_decisions gauge", "# TYPE attestd_registry_responses_total counter",
		"# TYPE attestd_stage_duration_seconds histogram", "# TYPE attestd_vuln_scans_total counter", "attestd_queue_oldest_pending_seconds 0"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exit %d: %s", code, daemonLog.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop")
	}
	logs := daemonLog.String()
	if strings.Contains(logs, tok.Reveal()) || strings.Contains(logs, "not-this-daemons-token") {
		t.Errorf("a token was logged:\n%s", logs)
	}
	for _, w := range []string{"API token created", tokenFile, "API request refused"} {
		if !strings.Contains(logs, w) {
			t.Errorf("the daemon's log lacks %q:\n%s", w, logs)
		}
	}
}

func TestAPIBase(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		":8080": "http://127.0.0.1:8080", "0.0.0.0:80": "http://127.0.0.1:80", "[::]:80": "http://127.0.0.1:80",
		"10.1.2.3:9000": "http://10.1.2.3:9000", "[::1]:8080": "http://[::1]:8080",
	} {
		if got := apiBase(in); got != want {
			t.Errorf("apiBase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "workers: 2\nlisten: 127.0.0.1:9001\n")
	env := map[string]string{"ATTESTD_CONFIG": file, "ATTESTD_WORKERS": "3", "ATTESTD_LISTEN": "127.0.0.1:9002"}
	r := &runner{lookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	cmd := r.rootCommand()
	cmd.SetArgs([]string{"serve", "--workers", "5"})
	var cfg *configs.Config
	serve, _, _ := cmd.Find([]string{"serve"})
	serve.RunE = func(c *cobra.Command, _ []string) error {
		var err error
		cfg, err = r.loadConfig(c)
		return err
	}
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if cfg.Workers != 5 || cfg.Listen != "127.0.0.1:9002" {
		t.Fatalf("workers=%d listen=%s; want flag 5 and env 127.0.0.1:9002", cfg.Workers, cfg.Listen)
	}
}

// TestUnreachableRegistry: a registry that refuses connections gives a clear
// error naming it, after the shared transport's retries, and nothing is written.
func TestUnreachableRegistry(t *testing.T) {
	t.Parallel()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	code, _, stderr := run(t, "process", "--data-dir", dir, addr+"/demo/app:v1")
	if code != ExitError || !strings.Contains(stderr, addr) || !strings.Contains(stderr, "connection refused") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "attestd.db")); err == nil {
		t.Fatal("store created although nothing was resolved")
	}
}

// TestProcessArtifactIsNotAnImage: a referrer artifact (here a manifest with
// a subject and the empty config, like a cosign bundle) that reached the
// queue is recognised at resolve and goes no further.
func TestProcessArtifactIsNotAnImage(t *testing.T) {
	t.Parallel()
	host, subject := testRegistry(t)
	ctx := context.Background()
	desc, err := remote.Head(subject, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	art := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	art = mutate.ConfigMediaType(art, "application/vnd.oci.empty.v1+json")
	art = mutate.Subject(art, *desc).(v1.Image)
	ad, _ := art.Digest()
	ref, _ := name.NewDigest(host + "/demo/app@" + ad.String())
	if err := remote.Write(ref, art, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, "process", "--data-dir", t.TempDir(), ref.String())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "resolve   skipped  not an image: it refers to "+subject.DigestStr()) || !strings.Contains(out, "analyse   -") {
		t.Fatalf("output:\n%s", out)
	}
}

func TestAuditVerifyAndExport(t *testing.T) {
	t.Parallel()
	host, _ := testRegistry(t)
	dir := t.TempDir()
	installVulnDB(t, dir)
	if code, _, stderr := run(t, "process", "--data-dir", dir, host+"/demo/app:v1"); code != 0 {
		t.Fatalf("process: exit %d: %s", code, stderr)
	}
	code, out, stderr := run(t, "audit", "verify", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "audit log intact") {
		t.Fatalf("audit verify: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = run(t, "audit", "export", "--data-dir", dir, "--format", "csv")
	if code != 0 {
		t.Fatalf("export: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"seq,time,actor,action", "event.accepted", "stage", "state", `""stage"":""analyse""`} {
		if !strings.Contains(out, want) {
			t.Errorf("csv export lacks %q:\n%s", want, out)
		}
	}
	if code, _, stderr := run(t, "audit", "export", "--data-dir", dir, "--since", "yesterday"); code != ExitUsage || !strings.Contains(stderr, "RFC 3339") {
		t.Errorf("bad --since: exit %d: %s", code, stderr)
	}
}
