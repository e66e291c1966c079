// Package image assembles attestd's own container image without a Docker
// engine, following the practices attestd enforces: a static, stripped,
// -trimpath Go binary on an empty base with CA certificates and a nonroot
// passwd entry, USER 65532, a HEALTHCHECK, one EXPOSE and OCI labels. It is
// the same image the Dockerfile describes.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Options say what to build.
type Options struct {
	RepoRoot  string   // the attestd checkout
	Platforms []string // "linux/amd64", "linux/arm64"
	Version   string
	Revision  string    // git commit
	Created   time.Time // file mtimes and config time (reproducible builds)
	CACerts   string    // default /etc/ssl/certs/ca-certificates.crt
}

// UID/GID of the runtime user, as in distroless' nonroot.
const nonroot = 65532

// Build returns a multi-platform index.
func Build(ctx context.Context, o Options) (v1.ImageIndex, error) {
	if len(o.Platforms) == 0 {
		return nil, fmt.Errorf("image: no platforms")
	}
	if o.CACerts == "" {
		o.CACerts = "/etc/ssl/certs/ca-certificates.crt"
	}
	certs, err := os.ReadFile(o.CACerts)
	if err != nil {
		return nil, fmt.Errorf("image: CA certificates: %w (install the ca-certificates package)", err)
	}
	base, err := baseLayer(certs, o.Created)
	if err != nil {
		return nil, err
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range o.Platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			return nil, err
		}
		bin, err := goBuild(ctx, o, plat)
		if err != nil {
			return nil, err
		}
		binLayer, err := layer(o.Created, file{"usr/local/bin/attestd", bin, 0o755, 0})
		if err != nil {
			return nil, err
		}
		img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), base, binLayer)
		if err != nil {
			return nil, err
		}
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
		cf.Created = v1.Time{Time: o.Created}
		cf.Config = v1.Config{
			User:         fmt.Sprintf("%d:%d", nonroot, nonroot),
			Entrypoint:   []string{"/usr/local/bin/attestd"},
			Cmd:          []string{"serve"},
			Volumes:      map[string]struct{}{"/var/lib/attestd": {}},
			Env:          []string{"ATTESTD_LISTEN=:8080", "ATTESTD_DATA_DIR=/var/lib/attestd"},
			ExposedPorts: map[string]struct{}{"8080/tcp": {}},
			Healthcheck: &v1.HealthConfig{
				Test:     []string{"CMD", "/usr/local/bin/attestd", "healthcheck"},
				Interval: 30 * time.Second, Timeout: 5 * time.Second, StartPeriod: 10 * time.Second, Retries: 3,
			},
			Labels: map[string]string{
				"org.opencontainers.image.title":       "attestd",
				"org.opencontainers.image.description": "Supply-chain gate between a staging registry and production",
				"org.opencontainers.image.source":      "https://github.com/attestd/attestd",
				"org.opencontainers.image.revision":    o.Revision,
				"org.opencontainers.image.version":     o.Version,
				"org.opencontainers.image.licenses":    "Apache-2.0",
				"org.opencontainers.image.created":     o.Created.UTC().Format(time.RFC3339),
				// Built FROM scratch: no base image, so no base digest to pin.
				"org.opencontainers.image.base.name": "scratch",
			},
		}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: plat}})
	}
	return idx, nil
}

// Push writes idx to ref (tag or repo) with opts.
func Push(ref name.Reference, idx v1.ImageIndex, opts ...remote.Option) error {
	return remote.WriteIndex(ref, idx, opts...)
}

func goBuild(ctx context.Context, o Options, p *v1.Platform) ([]byte, error) {
	dir, err := os.MkdirTemp("", "attestd-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "attestd")
	ld := fmt.Sprintf("-s -w -X github.com/attestd/attestd/cmd/attestd/app.version=%s -X github.com/attestd/attestd/cmd/attestd/app.commit=%s", o.Version, o.Revision)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ld, "-o", out, "./cmd/attestd")
	cmd.Dir = o.RepoRoot
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture, "GOFLAGS=-buildvcs=false")
	if p.Variant != "" && p.Architecture == "arm" {
		env = append(env, "GOARM="+strings.TrimPrefix(p.Variant, "v"))
	}
	cmd.Env = env
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build for %s: %w\n%s", p, err, b)
	}
	return os.ReadFile(out)
}

type file struct {
	name string
	data []byte
	mode int64
	uid  int
}

// baseLayer is what scratch lacks: CA certificates, a passwd/group with the
// nonroot user, a writable /tmp, and the data dir owned by nonroot.
func baseLayer(certs []byte, mtime time.Time) (v1.Layer, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonroot, nonroot)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", nonroot)
	return layer(mtime,
		file{"etc/ssl/certs/ca-certificates.crt", certs, 0o644, 0},
		file{"etc/passwd", []byte(passwd), 0o644, 0},
		file{"etc/group", []byte(group), 0o644, 0},
		file{"tmp/", nil, 0o1777, 0},
		file{"home/nonroot/", nil, 0o700, nonroot},
		file{"var/lib/attestd/", nil, 0o700, nonroot},
	)
}

func layer(mtime time.Time, files ...file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		// Parent directories first, root-owned.
		parts := strings.Split(strings.TrimSuffix(f.name, "/"), "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/") + "/"
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
		}
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.uid, ModTime: mtime, Format: tar.FormatPAX}
		if strings.HasSuffix(f.name, "/") {
			dirs[f.name] = true
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}
