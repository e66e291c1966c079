package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/test/image"
	"github.com/attestd/attestd/test/stack"
)

// TestImagePractices builds attestd's image the way `make image` does, pushes
// it to the real registry, pulls it back and checks the practices attestd
// itself enforces.
func TestImagePractices(t *testing.T) {
	root, err := stack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	plat := "linux/" + runtime.GOARCH
	idx, err := image.Build(ctx, image.Options{RepoRoot: root, Platforms: []string{plat}, Version: "e2e", Revision: "abc123", Created: time.Unix(1700000000, 0).UTC()})
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(stk.RegistryHost + "/attestd/attestd:e2e")
	if err := image.Push(tag, idx, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Index(tag, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	im, _ := got.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Platform == nil || im.Manifests[0].Platform.String() != plat {
		t.Fatalf("index manifests = %+v", im.Manifests)
	}
	img, err := got.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" {
		t.Errorf("USER = %q, want 65532:65532", c.User)
	}
	if c.Healthcheck == nil || strings.Join(c.Healthcheck.Test, " ") != "CMD /usr/local/bin/attestd healthcheck" {
		t.Errorf("HEALTHCHECK = %+v", c.Healthcheck)
	}
	if len(c.ExposedPorts) != 1 {
		t.Errorf("EXPOSE = %v, want only 8080/tcp", c.ExposedPorts)
	}
	for _, k := range []string{"org.opencontainers.image.source", "org.opencontainers.image.revision", "org.opencontainers.image.base.name"} {
		if c.Labels[k] == "" {
			t.Errorf("label %s missing", k)
		}
	}
	for _, e := range c.Env {
		if strings.Contains(strings.ToLower(e), "password") || strings.Contains(strings.ToLower(e), "token") {
			t.Errorf("secret-looking env %q", e)
		}
	}

	files := readFiles(t, img)
	bin, ok := files["usr/local/bin/attestd"]
	if !ok {
		t.Fatalf("no /usr/local/bin/attestd; files: %v", keys(files))
	}
	if !strings.Contains(string(files["etc/passwd"]), "nonroot:x:65532:65532") || len(files["etc/ssl/certs/ca-certificates.crt"]) == 0 {
		t.Error("passwd entry or CA certificates missing")
	}
	for _, shell := range []string{"bin/sh", "bin/bash", "bin/busybox", "usr/bin/apt", "sbin/apk"} {
		if _, ok := files[shell]; ok {
			t.Errorf("image contains %s", shell)
		}
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has an ELF interpreter: not static")
		}
	}
	if f.Section(".symtab") != nil || f.Section(".debug_info") != nil {
		t.Error("binary is not stripped (-s -w)")
	}
	bi, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q", settings["CGO_ENABLED"], settings["-trimpath"])
	}
}

func readFiles(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			out[strings.TrimPrefix(h.Name, "/")] = b
		}
		rc.Close()
	}
	return out
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
