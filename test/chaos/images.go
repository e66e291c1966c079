package chaos

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// entry is one tar entry of a layer the campaign builds.
type entry struct {
	hdr  tar.Header
	data []byte
}

func tarBytes(entries []entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		h.ModTime, h.Format = time.Unix(0, 0), tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if len(e.data) > 0 {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func layerOf(entries []entry) (v1.Layer, error) {
	data, err := tarBytes(entries)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
}

func nonce() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// baseImage is the shared base of the campaign's images: an os-release, a
// passwd with the nonroot user, and some bulk, so a shared layer is worth
// caching.
func baseImage(arch string) (v1.Image, error) {
	bulk := make([]byte, 256<<10)
	_, _ = rand.Read(bulk)
	l, err := layerOf([]entry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/os-release"}, data: []byte("ID=chaos\nVERSION_ID=1\nPRETTY_NAME=\"chaos base\"\n")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd"}, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n")},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/share/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/share/chaos-bulk"}, data: bulk},
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), l)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	return mutate.ConfigFile(img, cf)
}

// appImage is base plus a nonce layer (a new digest every call); user is
// the config's USER: "65532" passes the campaign's policy, "" (root) is
// denied by it.
func appImage(base v1.Image, user string) (v1.Image, error) {
	n := nonce()
	l, err := layerOf([]entry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "app/nonce"}, data: []byte(n)},
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(base, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: "chaos: nonce " + n}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config.User = user
	cf.Config.Healthcheck = &v1.HealthConfig{Test: []string{"NONE"}}
	return mutate.ConfigFile(img, cf)
}

// multiPlatform is an index of two app images on the amd64 and arm64 bases.
func multiPlatform(bases map[string]v1.Image, user string) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := appImage(bases[arch], user)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return idx, nil
}

// pushImage writes img or an index to ref (host/repo:tag) and returns the
// digest reference.
func pushImage(ctx context.Context, ref string, t remote.Taggable) (name.Digest, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return name.Digest{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	opts := []remote.Option{remote.WithContext(pctx), remote.WithUserAgent("attestd-chaos")}
	switch x := t.(type) {
	case v1.Image:
		err = remote.Write(tag, x, opts...)
	case v1.ImageIndex:
		err = remote.WriteIndex(tag, x, opts...)
	default:
		return name.Digest{}, fmt.Errorf("push %s: %T is neither an image nor an index", ref, t)
	}
	if err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	var d v1.Hash
	switch x := t.(type) {
	case v1.Image:
		d, err = x.Digest()
	case v1.ImageIndex:
		d, err = x.Digest()
	}
	if err != nil {
		return name.Digest{}, err
	}
	return tag.Context().Digest(d.String()), nil
}

// bombLayer is a gzip layer of a tar holding one file of size bytes of
// zeros: a few KiB compressed per GiB expanded (gzip members of 1 MiB of
// zeros, concatenated: a valid multi-member stream). Its diff ID is a lie,
// as an attacker's would be: the truth is only known after expanding it.
type bombLayer struct {
	gz     []byte
	digest v1.Hash
}

func newBomb(size int64) (*bombLayer, error) {
	const mib = 1 << 20
	size = (size / mib) * mib
	member := func(b []byte) []byte {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(b)
		_ = zw.Close()
		return buf.Bytes()
	}
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bomb", Mode: 0o644, Size: size, ModTime: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	zeros := member(make([]byte, mib))
	var gz bytes.Buffer
	gz.Write(member(hdr.Bytes()))
	for range size / mib {
		gz.Write(zeros)
	}
	gz.Write(member(make([]byte, 1024))) // end-of-archive blocks
	h := sha256.Sum256(gz.Bytes())
	return &bombLayer{gz: gz.Bytes(), digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h[:])}}, nil
}

func (b *bombLayer) Digest() (v1.Hash, error) { return b.digest, nil }
func (b *bombLayer) DiffID() (v1.Hash, error) {
	h := sha256.Sum256([]byte("not the diff id of a bomb"))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h[:])}, nil
}
func (b *bombLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b.gz)), nil
}
func (b *bombLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, fmt.Errorf("bomb: not expanded here")
}
func (b *bombLayer) Size() (int64, error)                { return int64(len(b.gz)), nil }
func (b *bombLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// onBase puts layers on base with a nonroot USER (so only the hostile part
// can deny it).
func onBase(base v1.Image, ls ...v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(base, ls...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config.User = "65532"
	return mutate.ConfigFile(img, cf)
}

// escapeLayer holds entries that point outside the root filesystem:
// "../" and absolute names, hard links and symlinks out, a symlink loop.
func escapeLayer(marker string) (v1.Layer, error) {
	return layerOf([]entry{
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "../../../../../../tmp/" + marker}, data: []byte("escaped")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "/tmp/" + marker + "-abs"}, data: []byte("absolute")},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "x/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "x/shadow", Linkname: "../../../../etc/shadow"}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "x/abs-hard", Linkname: "/etc/passwd"}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "x/root", Linkname: "/"}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "x/up", Linkname: "../../../../.."}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "x/loop-a", Linkname: "loop-b"}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "x/loop-b", Linkname: "loop-a"}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "x/self", Linkname: "self/self"}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "x/root/tmp/" + marker + "-via-symlink"}, data: []byte("through a symlink")},
	})
}

// manyFilesLayer is a gzip layer with n empty files.
func manyFilesLayer(n int) (v1.Layer, error) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	for i := range n {
		if i%1000 == 0 {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%d/", i/1000), Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
				return nil, err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%d/f%d", i/1000, i), Mode: 0o644, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
}
