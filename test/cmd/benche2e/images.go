package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// pushTimeout bounds one image push (a cold Debian base is ~120 MB).
const pushTimeout = 5 * time.Minute

// remoteOpts are the harness's registry options: its own User-Agent, so
// the access log tells its requests from the pipelines'.
func remoteOpts(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithUserAgent(harnessUA)}
}

// pushBase pushes a fixture once to bench-base/<name> (a repository no
// pipeline watches) and returns it as a remote image: images made from it
// carry its layers as mountable remote layers, so later pushes mount them
// instead of uploading ~120 MB again (push time is excluded anyway; this
// keeps the run short).
func (b *bench) pushBase(ctx context.Context, repo string, img v1.Image) (v1.Image, error) {
	tag, err := name.NewTag(b.stk.RegistryHost + "/bench-base/" + repo + ":latest")
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	if err := remote.Write(tag, img, remoteOpts(pctx)...); err != nil {
		return nil, fmt.Errorf("push %s: %w", tag, err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	// ctx, not pctx: the remote image outlives this call.
	return remote.Image(tag.Context().Digest(d.String()), remoteOpts(ctx)...)
}

// fresh is base plus one tiny layer holding a random nonce: a new image
// digest (and a new top layer) every call, so nothing is reused by digest —
// neither attestd's records nor anyone's cache of that layer. The base's
// layers are the same blobs each time, as when an app is rebuilt on its
// base.
func fresh(base v1.Image) (v1.Image, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	n := hex.EncodeToString(nonce)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "etc/attestd-bench/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "etc/attestd-bench/nonce", Mode: 0o644, Size: int64(len(n))},
	} {
		h.ModTime, h.Format = time.Unix(0, 0), tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	}
	if _, err := tw.Write([]byte(n)); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	return mutate.Append(base, mutate.Addendum{Layer: l, History: v1.History{
		Created: v1.Time{Time: time.Unix(0, 0).UTC()}, CreatedBy: "benche2e: nonce " + n,
	}})
}

// push writes img as repoTag (host/repo:tag) and returns its digest ref.
func (b *bench) push(ctx context.Context, repoTag string, img v1.Image) (name.Digest, error) {
	tag, err := name.NewTag(b.stk.RegistryHost + "/" + repoTag)
	if err != nil {
		return name.Digest{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	if err := remote.Write(tag, img, remoteOpts(pctx)...); err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", tag, err)
	}
	d, err := img.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	return tag.Context().Digest(d.String()), nil
}
