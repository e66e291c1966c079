package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store/registry"
)

// lockedBuffer is an io.Writer a logger and the test may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// noSecretsLogged fails the test when any of secrets appears in the log.
func (ta *testAPI) noSecretsLogged(t *testing.T, secrets ...string) {
	t.Helper()
	logs := ta.logs.String()
	if !strings.Contains(logs, "API request refused") {
		t.Errorf("refusals were not logged:\n%s", logs)
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("a token was logged:\n%s", logs)
		}
	}
}

// TestAPIAuth: every authenticated endpoint refuses a request without a
// bearer token, with another scheme or with a wrong token (401, a
// WWW-Authenticate challenge, a message naming the token file), and
// serves one with the token from the file.
func TestAPIAuth(t *testing.T) {
	t.Parallel()
	ta := newTestAPI(t, false)
	ctx := context.Background()
	blob, err := ta.db.PutBlob(ctx, []byte(`{"spdxVersion":"SPDX-2.3"}`))
	if err != nil {
		t.Fatal(err)
	}
	if code, _, body := ta.do("POST", "/api/v1/submit?image="+ta.ref.String(), "Authorization", "Bearer "+ta.token); code != 202 {
		t.Fatalf("submit: %d %v", code, body)
	}
	const wrong = "not-the-token-but-long-enough-0123456789"
	for _, tc := range []struct {
		method, target string
		code           int // with the right token
	}{
		{"GET", "/api/v1/images?prefix=", 200},
		{"GET", "/api/v1/image?ref=" + ta.ref.String(), 200},
		{"GET", "/api/v1/blob?digest=" + blob, 200},
		{"GET", "/api/v1/backup", 200},
		{"POST", "/api/v1/submit?image=" + ta.ref.String(), 202},
		{"POST", "/api/v1/requeue?ref=" + ta.ref.String(), 409}, // authenticated: the store answered (the job is pending)
	} {
		for _, cred := range []struct {
			name, header, challenge string
			code                    int
		}{
			{"none", "", `Bearer realm="attestd"`, 401},
			{"basic", "Basic " + ta.token, `Bearer realm="attestd"`, 401},
			{"empty bearer", "Bearer ", `Bearer realm="attestd"`, 401},
			{"wrong", "Bearer " + wrong, `Bearer realm="attestd", error="invalid_token"`, 401},
			{"prefix of the token", "Bearer " + ta.token[:len(ta.token)-1], `Bearer realm="attestd", error="invalid_token"`, 401},
			{"right", "Bearer " + ta.token, "", tc.code},
			{"right, scheme in lower case", "bearer " + ta.token, "", tc.code},
		} {
			var hdr []string
			if cred.header != "" {
				hdr = []string{"Authorization", cred.header}
			}
			code, h, body := ta.do(tc.method, tc.target, hdr...)
			if code != cred.code {
				t.Errorf("%s %s, %s token: %d, want %d (%v)", tc.method, tc.target, cred.name, code, cred.code, body)
				continue
			}
			if got := h.Get("WWW-Authenticate"); got != cred.challenge {
				t.Errorf("%s %s, %s token: WWW-Authenticate %q, want %q", tc.method, tc.target, cred.name, got, cred.challenge)
			}
			if msg, _ := body["error"].(string); code == 401 && !strings.Contains(msg, ta.tokenFile) {
				t.Errorf("%s %s, %s token: the message does not say where the token is: %q", tc.method, tc.target, cred.name, msg)
			}
		}
	}
	ta.noSecretsLogged(t, ta.token, wrong)
}

// TestAPITokenRotation: the file is re-read when it changes, without a
// restart: a token added works at once, a token removed stops working, a
// deleted file refuses everything (fail closed), a rewrite in place that
// keeps size and time is seen within tokenRecheck.
func TestAPITokenRotation(t *testing.T) {
	t.Parallel()
	ta := newTestAPI(t, false)
	old, next := ta.token, "second-token-0123456789abcdefghijklmnopq"
	status := func(tok string) int {
		code, _, _ := ta.do("GET", "/api/v1/images", "Authorization", "Bearer "+tok)
		return code
	}
	replace := func(content string) { // as an operator's editor or a Kubernetes secret update: a new file renamed into place
		t.Helper()
		tmp := ta.tokenFile + ".new"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, ta.tokenFile); err != nil {
			t.Fatal(err)
		}
	}
	check := func(step string, want map[string]int) {
		t.Helper()
		for tok, code := range want {
			if got := status(tok); got != code {
				name := "old"
				if tok == next {
					name = "new"
				}
				t.Errorf("%s: the %s token: %d, want %d", step, name, got, code)
			}
		}
	}
	check("before", map[string]int{old: 200, next: 401})
	replace("# rotation\n" + next + "\n" + old + "\n")
	check("both listed", map[string]int{old: 200, next: 200})
	if err := os.WriteFile(ta.tokenFile, []byte(next+"\n"), 0o600); err != nil { // in place
		t.Fatal(err)
	}
	check("old removed", map[string]int{old: 401, next: 200})
	if err := os.Remove(ta.tokenFile); err != nil {
		t.Fatal(err)
	}
	check("file deleted", map[string]int{old: 401, next: 401})
	replace("   \n# nothing\n")
	check("no token", map[string]int{old: 401, next: 401})
	replace(next + "\n")
	check("restored", map[string]int{old: 401, next: 200})

	// Same inode, same size, same modification time: a rewrite within one
	// tick of the filesystem's clock, which no stat can tell.
	third := strings.Repeat("3", len(next))
	before, err := os.Stat(ta.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ta.tokenFile, []byte(third+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(ta.tokenFile, time.Time{}, before.ModTime()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(tokenRecheck + 2*time.Second)
	for status(third) != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("a rewrite in place was not seen after %s", tokenRecheck+2*time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	check("rewritten in place", map[string]int{next: 401})
	ta.noSecretsLogged(t, old, next, third)
	if !strings.Contains(ta.logs.String(), "API token file unusable") {
		t.Error("a deleted token file was not logged")
	}
}

// TestAPICrossSite: a browser's cross-site request is refused on every
// unsafe method and every authenticated endpoint, token or not; a name
// other than an IP literal, localhost or api.hosts is refused on /api/
// (DNS rebinding); the webhook receivers answer under any name, but not to
// a browser's cross-site POST.
func TestAPICrossSite(t *testing.T) {
	t.Parallel()
	ta := newTestAPI(t, false)
	cfg, err := configs.Load(strings.NewReader(fmt.Sprintf("registries: [{host: %q}]\nwatch: [{registry: %q, repositories: [\"**\"]}]\nsources: [{name: ci, type: generic, auth: {type: none}}]\n",
		ta.host, ta.host)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := registry.New()
	sink := &intakeSink{db: ta.db, rc: rc, wake: func() {}, log: ta.logsLogger()}
	if err := mountSources(ta.mux, cfg, rc, sink, watch.NewStats(), ta.logsLogger()); err != nil {
		t.Fatal(err)
	}
	auth := []string{"Authorization", "Bearer " + ta.token}
	submit := "/api/v1/submit?image=" + ta.ref.String()
	with := func(hdr ...string) []string { return append(append([]string{}, auth...), hdr...) }
	for _, tc := range []struct {
		name, method, target string
		hdr                  []string
		code                 int
	}{
		{"same-origin fetch", "POST", submit, with("Sec-Fetch-Site", "same-origin", "Host", "127.0.0.1:8080"), 202},
		{"typed by the user", "POST", submit, with("Sec-Fetch-Site", "none"), 202},
		{"cross-site fetch", "POST", submit, with("Sec-Fetch-Site", "cross-site"), 403},
		{"same-site fetch", "POST", submit, with("Sec-Fetch-Site", "same-site"), 403},
		{"foreign Origin", "POST", submit, with("Origin", "https://evil.example", "Host", "127.0.0.1:8080"), 403},
		{"null Origin", "POST", submit, with("Origin", "null"), 403},
		{"own Origin", "POST", submit, with("Origin", "http://127.0.0.1:8080", "Host", "127.0.0.1:8080"), 202},
		{"cross-site, no token", "POST", submit, []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"cross-site GET of a backup", "GET", "/api/v1/backup", with("Sec-Fetch-Site", "cross-site"), 403},
		{"foreign Origin on the records", "GET", "/api/v1/images", with("Origin", "https://evil.example"), 403},
		{"cross-site GET of counts", "GET", "/api/v1/stats", []string{"Sec-Fetch-Site", "cross-site"}, 200},

		{"rebound name, open endpoint", "GET", "/api/v1/stats", []string{"Host", "evil.example:8080"}, 403},
		{"rebound name, with token", "POST", submit, with("Host", "evil.example:8080"), 403},
		{"rebound name, pprof path", "GET", "/debug/pprof/", []string{"Host", "evil.example"}, 403},
		{"configured name", "GET", "/api/v1/images", with("Host", "attestd.example.com:8080"), 200},
		{"configured name, any case, FQDN", "GET", "/api/v1/images", with("Host", "AttestD.Example.COM."), 200},
		{"localhost", "GET", "/api/v1/images", with("Host", "localhost:8080"), 200},
		{"IPv6 literal", "GET", "/api/v1/images", with("Host", "[::1]:8080"), 200},
		{"IPv4 literal, no port", "GET", "/api/v1/images", with("Host", "10.0.0.7"), 200},
		{"a name containing localhost", "GET", "/api/v1/images", with("Host", "localhost.evil.example"), 403},
		{"health under any name", "GET", "/healthz", []string{"Host", "evil.example"}, 200},
		{"readiness under any name", "GET", "/readyz", []string{"Host", "attestd.internal"}, 200},
	} {
		if code, _, body := ta.do(tc.method, tc.target, tc.hdr...); code != tc.code {
			t.Errorf("%s: %s %s: %d, want %d (%v)", tc.name, tc.method, tc.target, code, tc.code, body)
		}
	}

	// Webhooks: registries address the daemon by its DNS name.
	delivery := func(hdr ...string) int {
		req := httptest.NewRequest("POST", "/hooks/ci", strings.NewReader(`{"image":"`+ta.ref.String()+`"}`))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(hdr); i += 2 {
			if hdr[i] == "Host" {
				req.Host = hdr[i+1]
			} else {
				req.Header.Set(hdr[i], hdr[i+1])
			}
		}
		w := httptest.NewRecorder()
		ta.h.ServeHTTP(w, req)
		return w.Code
	}
	if byName, byIP := delivery("Host", "attestd.prod.example.net"), delivery("Host", "127.0.0.1:8080"); byName != byIP || byName/100 != 2 {
		t.Errorf("webhook under a DNS name: %d, under an IP: %d; want the same 2xx", byName, byIP)
	}
	if code := delivery("Host", "attestd.prod.example.net", "Sec-Fetch-Site", "cross-site"); code != 403 {
		t.Errorf("a browser's cross-site POST to a webhook: %d, want 403", code)
	}
	ta.noSecretsLogged(t, ta.token)
}

func (ta *testAPI) logsLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(ta.logs, nil)) }

// TestAPIPprof: off by default (404, TestAPI); when enabled, behind the
// token like the rest.
func TestAPIPprof(t *testing.T) {
	t.Parallel()
	ta := newTestAPI(t, true)
	for _, tc := range []struct {
		hdr  []string
		code int
	}{
		{nil, 401},
		{[]string{"Authorization", "Bearer wrong-token-0123456789abcdef"}, 401},
		{[]string{"Authorization", "Bearer " + ta.token}, 200},
		{[]string{"Authorization", "Bearer " + ta.token, "Sec-Fetch-Site", "cross-site"}, 403},
	} {
		if code, _, _ := ta.do("GET", "/debug/pprof/cmdline", tc.hdr...); code != tc.code {
			t.Errorf("pprof with %q: %d, want %d", tc.hdr, code, tc.code)
		}
	}
	ta.noSecretsLogged(t, ta.token)
}

func TestParseTokens(t *testing.T) {
	t.Parallel()
	const a, b = "aaaaaaaaaaaaaaaaaaaaaaaa", "b-b.b_b~b+b/bbbbbbbbbbbbbbb=="
	for _, tc := range []struct {
		name, in string
		want     []string
		err      string
	}{
		{"one", a + "\n", []string{a}, ""},
		{"no final newline", a, []string{a}, ""},
		{"comments, blanks, CRLF, indentation", "# rotation 2026-05\r\n\r\n  " + a + "  \r\n# old:\r\n" + b + "\r\n", []string{a, b}, ""},
		{"empty", "", nil, "holds no token"},
		{"comments only", "# x\n\n#y\n", nil, "holds no token"},
		{"too short", a + "\nshort-secret\n", nil, "line 2: a token must have at least"},
		{"inner space", "aaaaaaaaaaaa bbbbbbbbbbbbbbbb\n", nil, "line 1: a token is printable ASCII without spaces"},
		{"not ASCII", "aaaaaaaaaaaaaaaaaaaaaaa\u00e9\n", nil, "line 1: a token is printable ASCII"},
	} {
		got, err := parseTokens([]byte(tc.in))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case err != nil && (strings.Contains(err.Error(), "aaaa") || strings.Contains(err.Error(), "short-secret")):
			t.Errorf("%s: the error quotes the token: %v", tc.name, err)
		case err == nil && !slices.Equal(got, tc.want):
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestEnsureTokenFile: created once, 0600, with a token of 32 random
// bytes; never overwritten, never replacing a file that exists.
func TestEnsureTokenFile(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "api.token")
	created, err := ensureTokenFile(p)
	if err != nil || !created {
		t.Fatalf("first call: created %v, %v", created, err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	first, _ := os.ReadFile(p)
	toks, err := parseTokens(first)
	if err != nil || len(toks) != 1 || len(toks[0]) != 43 {
		t.Fatalf("generated file holds %d tokens (%v); want one of 43 characters", len(toks), err)
	}
	if created, err := ensureTokenFile(p); err != nil || created {
		t.Fatalf("second call: created %v, %v", created, err)
	}
	if again, _ := os.ReadFile(p); !bytes.Equal(again, first) {
		t.Error("the token file was overwritten")
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
	q := filepath.Join(t.TempDir(), "api.token")
	if err := os.WriteFile(q, []byte("operator-written-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if created, err := ensureTokenFile(q); err != nil || created {
		t.Fatalf("existing file: created %v, %v", created, err)
	}
	if _, err := ensureTokenFile(filepath.Join(t.TempDir(), "missing", "api.token")); err == nil {
		t.Error("a token file in a missing directory: no error")
	}
}

// TestGuardFor: the default token file is created under data_dir; a
// configured one must exist and hold a token, or serve does not start;
// listen's name is accepted as a Host.
func TestGuardFor(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	cfg := configs.Default()
	cfg.DataDir, cfg.Listen = dir, "attestd.internal:8080"
	g, err := guardFor(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if g.tokens.path != filepath.Join(dir, "api.token") {
		t.Errorf("token file %s", g.tokens.path)
	}
	for host, want := range map[string]bool{"attestd.internal:8080": true, "localhost": true, "127.0.0.1:8080": true, "evil.example": false} {
		if got := g.hostAllowed(host); got != want {
			t.Errorf("Host %s allowed: %v, want %v", host, got, want)
		}
	}
	for _, content := range []string{"", "# none yet\n", "short\n"} {
		cfg := configs.Default()
		cfg.DataDir, cfg.API.TokenFile = dir, filepath.Join(t.TempDir(), "tokens")
		if content != "" {
			os.WriteFile(cfg.API.TokenFile, []byte(content), 0o600)
		}
		var ce *configs.Error
		if _, err := guardFor(cfg, log); !errors.As(err, &ce) || ce.Field != "api.token_file" {
			t.Errorf("token file %q: %v, want an error on api.token_file", content, err)
		}
		if _, err := os.Stat(cfg.APITokenFile()); content == "" && err == nil {
			t.Error("a configured token file was created")
		}
	}
}

// FuzzParseTokens: whatever a token file holds, the parser returns only
// tokens a client can send in a header, or an error that quotes none of it.
func FuzzParseTokens(f *testing.F) {
	for _, s := range []string{"aaaaaaaaaaaaaaaaaaaaaaaa\n", "# c\r\n\r\n  bbbbbbbbbbbbbbbbbbbbbbbbbbbb  \n", "short\n", "a b\n", "\x00\xff\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		toks, err := parseTokens(b)
		if err != nil {
			if len(toks) != 0 {
				t.Fatalf("tokens with an error: %q", toks)
			}
			return
		}
		for _, tok := range toks {
			if len(tok) < minTokenLen || strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }) || strings.HasPrefix(tok, "#") {
				t.Fatalf("token %q accepted", tok)
			}
		}
	})
}
