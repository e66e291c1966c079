package harden

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var updateDocs = flag.Bool("update", false, "rewrite the check table in docs/hardening.md")

type memFS map[string]string

func (m memFS) open(p string) (io.ReadCloser, error) {
	b, ok := m[p]
	if !ok {
		return nil, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
	}
	return io.NopCloser(strings.NewReader(b)), nil
}

func status(r *Report, id string) Result {
	for _, c := range r.Checks {
		if c.ID == id {
			return c
		}
	}
	return Result{}
}

// nonrootInput is an image whose config User is user, with passwd and group
// as /etc/passwd and /etc/group ("" leaves the file out).
func nonrootInput(user, passwd, group string) Input {
	in := Input{Config: &v1.ConfigFile{Config: v1.Config{User: user}}}
	files := memFS{}
	for p, s := range map[string]string{"/etc/passwd": passwd, "/etc/group": group} {
		if s != "" {
			files[p] = s
			in.Files = append(in.Files, File{Path: p, Mode: 0o644, Size: int64(len(s))})
		}
	}
	in.Open = files.open
	return in
}

func TestNonrootUser(t *testing.T) {
	passwd := "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/sbin/nologin\ntoor:x:0:0::/:/bin/sh\n"
	group := "root:x:0:\napp:x:1000:\n"
	for _, tc := range []struct {
		user string
		want Status
	}{
		{"", Fail}, {"root", Fail}, {"0", Fail}, {"0:0", Fail}, {"root:root", Fail},
		{"65532", Pass}, {"65532:65532", Pass}, {"app", Pass}, {"app:app", Pass},
		{"toor", Fail},  // UID 0 by another name
		{"ghost", Fail}, // not in /etc/passwd
	} {
		r, err := Run(context.Background(), nonrootInput(tc.user, passwd, group), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := status(r, "nonroot-user"); got.Status != tc.want {
			t.Errorf("User %q: %s %v, want %s", tc.user, got.Status, got.Evidence, tc.want)
		}
	}
}

// TestNonrootUserSpec covers how the config User string is parsed: the
// runtimes read the user part with strconv.Atoi, so "00", "+0" and "-0" are
// all UID 0; anything else that is neither ASCII digits nor a valid name
// proves nothing and fails closed.
func TestNonrootUserSpec(t *testing.T) {
	t.Parallel()
	passwd := "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/sbin/nologin\napp:x:1000:1000::/app:/sbin/nologin\n"
	group := "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n"
	for _, tc := range []struct {
		user string
		want Status
		why  string // a substring of the evidence
	}{
		{"", Fail, "empty"},
		{"root", Fail, "root"},
		{"0", Fail, "UID 0"},
		{"00", Fail, "UID 0"},
		{"0000:0", Fail, "UID 0"},
		{"0:0", Fail, "UID 0"},
		{"+0", Fail, "sign"},
		{"-0", Fail, "sign"},
		{"+1000", Fail, "sign"},
		{"-1", Fail, "sign"},
		{" 0", Fail, "whitespace"},
		{"0 ", Fail, "whitespace"},
		{" 1000", Fail, "whitespace"},
		{"1000\n", Fail, "whitespace"},
		{"\uff11\uff10\uff10\uff10", Fail, "not a valid user name"}, // fullwidth digits
		{"1000", Pass, "UID 1000"},
		{"01000", Pass, "UID 1000"},
		{"1000:0", Pass, "UID 1000"}, // GID 0 does not make the process root
		{"65534:65534", Pass, "UID 65534"},
		{"65532:65532", Pass, "UID 65532"},
		{"4294967294", Pass, "UID 4294967294"},
		{"nobody", Pass, "UID 65534"}, // names resolve through the image's /etc/passwd
		{"nobody:nogroup", Pass, "UID 65534"},
		{"app:1000", Pass, "UID 1000"},
		{"ghost", Fail, "not in /etc/passwd"},
		{"4294967296", Fail, "out of range"},
		{"99999999999999999999", Fail, "out of range"},
		{"4294967295", Fail, "(uid_t)-1"},
		{"1000:abc", Fail, `group "abc" is not in /etc/group`},
		{"1000:+0", Fail, "sign"},
		{"1000:4294967296", Fail, "out of range"},
		{"1000:", Fail, "empty group"},
		{":1000", Fail, "no user part"},
		{"1000:1000:1000", Fail, "more than one ':'"},
		{"+", Fail, "sign"},
		{"-app", Fail, "sign"},
		{"ap p", Fail, "whitespace"},
	} {
		r, err := Run(context.Background(), nonrootInput(tc.user, passwd, group), Options{})
		if err != nil {
			t.Fatal(err)
		}
		got := status(r, "nonroot-user")
		ev := strings.Join(got.Evidence, "\n")
		if got.Status != tc.want || !strings.Contains(ev, tc.why) {
			t.Errorf("User %q: %s %q, want %s with %q", tc.user, got.Status, ev, tc.want, tc.why)
		}
		if got.Status == Fail && !strings.Contains(got.Fix, "USER 65532:65532") {
			t.Errorf("User %q: fix %q does not say how to fix it", tc.user, got.Fix)
		}
	}
	// Without /etc/passwd and /etc/group only numeric IDs can be resolved.
	for _, tc := range []struct {
		user string
		want Status
	}{
		{"65532:65532", Pass}, {"nobody", Fail}, {"1000:app", Fail}, {"00", Fail},
	} {
		r, err := Run(context.Background(), nonrootInput(tc.user, "", ""), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := status(r, "nonroot-user"); got.Status != tc.want {
			t.Errorf("User %q without /etc/passwd: %s %v, want %s", tc.user, got.Status, got.Evidence, tc.want)
		}
	}
}

func TestSecretsRedactedInEvidence(t *testing.T) {
	in := Input{Config: &v1.ConfigFile{Config: v1.Config{
		Env:    []string{"PATH=/usr/bin", "DB_PASSWORD=hunter2", "GITHUB=ghp_" + strings.Repeat("a", 36), "TOKEN_FILE=/run/secrets/t", "EMPTY_SECRET="},
		Labels: map[string]string{"org.opencontainers.image.authors": "me", "api_key": "abc"},
	}}, Open: memFS{}.open}
	r, err := Run(context.Background(), in, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res := status(r, "no-secrets-in-config")
	if res.Status != Fail {
		t.Fatalf("status %s", res.Status)
	}
	ev := strings.Join(res.Evidence, "\n")
	for _, want := range []string{"ENV DB_PASSWORD", "ENV GITHUB", "LABEL api_key"} {
		if !strings.Contains(ev, want) {
			t.Errorf("evidence lacks %q:\n%s", want, ev)
		}
	}
	for _, not := range []string{"hunter2", "ghp_", "abc", "TOKEN_FILE", "EMPTY_SECRET", "authors", "PATH="} {
		if strings.Contains(ev, not) {
			t.Errorf("evidence contains %q:\n%s", not, ev)
		}
	}
}

func TestSecretFiles(t *testing.T) {
	files := memFS{
		"/etc/ssl/certs/ca.pem":    "-----BEGIN CERTIFICATE-----\n",
		"/app/tls.key":             "-----BEGIN EC PRIVATE KEY-----\n",
		"/app/.env":                "X=1",
		"/root/.ssh/id_ed25519":    "x",
		"/home/u/.aws/credentials": "x",
		"/src/.git/HEAD":           "ref",
		"/src/.git/config":         "x",
		"/app/main":                "x",
	}
	var in Input
	in.Config = &v1.ConfigFile{}
	in.Open = files.open
	for p, b := range files {
		in.Files = append(in.Files, File{Path: p, Mode: 0o644, Size: int64(len(b))})
	}
	r, err := Run(context.Background(), in, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res := status(r, "no-secret-files")
	want := []string{"/app/.env (dotenv file)", "/app/tls.key (PEM private key)", "/home/u/.aws/credentials (AWS credentials)",
		"/root/.ssh/id_ed25519 (SSH private key)", "/src/.git/ (git repository)"}
	if res.Status != Fail || !slices.Equal(res.Evidence, want) {
		t.Errorf("got %s %q\nwant fail %q", res.Status, res.Evidence, want)
	}
}

func TestBaseRepository(t *testing.T) {
	for in, want := range map[string]string{
		"alpine":      "docker.io/library/alpine",
		"alpine:3.20": "docker.io/library/alpine",
		"docker.io/library/alpine:3.20@sha256:ab": "docker.io/library/alpine",
		"gcr.io/distroless/static:nonroot":        "gcr.io/distroless/static",
		"localhost:5000/base:1":                   "localhost:5000/base",
		"user/img:1":                              "docker.io/user/img",
		"scratch":                                 "scratch",
	} {
		if got := BaseRepository(in); got != want {
			t.Errorf("BaseRepository(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMinimalBaseAndLatest(t *testing.T) {
	for _, tc := range []struct {
		base, tag     string
		osPkgs        int
		base_, latest Status
	}{
		{"gcr.io/distroless/static:nonroot", "v1", 0, Pass, Pass},
		{"gcr.io/distroless/static@sha256:" + strings.Repeat("a", 64), "v1", 0, Pass, Pass},
		{"debian:bookworm", "v1", 90, Fail, Pass},
		{"alpine", "v1", 15, Pass, Fail}, // implicit latest
		{"", "latest", 0, Pass, Fail},
		{"", "", 12, Fail, NotApplicable},
	} {
		cf := &v1.ConfigFile{Config: v1.Config{Labels: map[string]string{}}}
		if tc.base != "" {
			cf.Config.Labels[LabelBaseName] = tc.base
		}
		r, err := Run(context.Background(), Input{Config: cf, Tag: tc.tag, OSPackages: tc.osPkgs, Open: memFS{}.open}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := status(r, "minimal-base"); got.Status != tc.base_ {
			t.Errorf("base %q: minimal-base %s %v, want %s", tc.base, got.Status, got.Evidence, tc.base_)
		}
		if got := status(r, "no-latest-tag"); got.Status != tc.latest {
			t.Errorf("base %q tag %q: no-latest-tag %s %v, want %s", tc.base, tc.tag, got.Status, got.Evidence, tc.latest)
		}
	}
}

// Go checks read real binaries: a static stripped -trimpath build of a tiny
// program and a plain (unstripped, no -trimpath) build of it.
func TestGoBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go binary")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	os.WriteFile(src, []byte("package main\nfunc main(){}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\ngo 1.22\n"), 0o644)
	bin := filepath.Join(dir, "app")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	good, _ := os.ReadFile(bin)
	cmd = exec.Command("go", "build", "-o", bin+"-debug", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	unstripped, _ := os.ReadFile(bin + "-debug")
	files := map[string][]byte{"/app": good, "/debug": unstripped, "/script": []byte("#!/bin/sh\n" + strings.Repeat("x", 100))}
	in := Input{Config: &v1.ConfigFile{}, Open: func(p string) (io.ReadCloser, error) {
		b, ok := files[p]
		if !ok {
			return nil, errors.New("missing")
		}
		return readerAt{bytes.NewReader(b)}, nil
	}}
	for p, b := range files {
		in.Files = append(in.Files, File{Path: p, Mode: 0o755, Size: int64(len(b))})
	}
	r, err := Run(context.Background(), in, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GoBinaries) != 2 {
		t.Fatalf("found %d Go binaries, want 2: %+v", len(r.GoBinaries), r.GoBinaries)
	}
	app := r.GoBinaries[0]
	if app.Path != "/app" || !app.Static || !app.Stripped || !app.Trimpath || app.CGO != "0" {
		t.Errorf("/app observed as %+v, want static stripped trimpath CGO=0", app)
	}
	if dbg := r.GoBinaries[1]; dbg.Stripped || dbg.Trimpath {
		t.Errorf("plain build observed as %+v, want unstripped without trimpath", dbg)
	}
	for _, id := range []string{"go-stripped", "go-trimpath"} {
		if got := status(r, id); got.Status != Fail {
			t.Errorf("%s = %s, want fail (the plain build)", id, got.Status)
		}
	}
	if got := status(r, "go-supported"); got.Status != Pass {
		t.Errorf("go-supported = %s %v", got.Status, got.Evidence)
	}
	r, _ = Run(context.Background(), in, Options{MinGoVersion: "go1.99"})
	if got := status(r, "go-supported"); got.Status != Fail {
		t.Errorf("go-supported with min go1.99 = %s", got.Status)
	}
}

type readerAt struct{ *bytes.Reader }

func (readerAt) Close() error { return nil }

func TestDefaultMinGoVersion(t *testing.T) {
	if v := DefaultMinGoVersion(); !strings.HasPrefix(v, "go1.") || v == "go1.0" {
		t.Errorf("DefaultMinGoVersion() = %q", v)
	}
}

// docs/hardening.md carries the table of checks generated from Checks.
func TestDocsListEveryCheck(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "hardening.md")
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- checks:begin -->\n", "<!-- checks:end -->"
	i, j := bytes.Index(doc, []byte(begin)), bytes.Index(doc, []byte(end))
	if i < 0 || j < i {
		t.Fatalf("%s lacks the %q … %q markers", path, begin, end)
	}
	var b strings.Builder
	for _, c := range Checks() {
		fmt.Fprintf(&b, "### `%s` — %s\n\n**Why.** %s\n\n**Fix.** %s\n\n", c.ID, c.Title, c.Why, c.Fix)
	}
	table := b.String()
	if got := string(doc[i+len(begin) : j]); got != table {
		if *updateDocs {
			out := append(append(append([]byte{}, doc[:i+len(begin)]...), table...), doc[j:]...)
			if err := os.WriteFile(path, out, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("%s is out of date with Checks(): run go test ./sbom/harden -run TestDocs -update", path)
	}
}

// TestReadReportRoundTrip: what Run writes, ReadReport reads back; what it
// never writes is refused.
func TestReadReportRoundTrip(t *testing.T) {
	rep := &Report{Checks: []Result{{ID: "nonroot-user", Status: Pass}, {ID: "no-shell", Status: Fail}, {ID: "healthcheck", Status: NotApplicable}}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	passed, failed, err := ReadReport(b)
	if err != nil || !slices.Equal(passed, []string{"nonroot-user"}) || !slices.Equal(failed, []string{"no-shell"}) {
		t.Fatalf("ReadReport = %v, %v, %v", passed, failed, err)
	}
	for _, bad := range []string{`{}`, `{"checks":[{"status":"pass"}]}`, `{"checks":[{"id":"x","status":"passed"}]}`, `[`} {
		if _, _, err := ReadReport([]byte(bad)); err == nil {
			t.Errorf("ReadReport(%s) accepted", bad)
		}
	}
}
