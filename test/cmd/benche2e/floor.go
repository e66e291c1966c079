package main

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"golang.org/x/sync/errgroup"
)

// Bounds of the floor's two parts.
const (
	floorReadTimeout = 5 * time.Minute
	rekorTimeout     = 30 * time.Second
)

// readLayers is the I/O and CPU floor of any analysis of ref: the manifest,
// then every layer blob GET once from the registry, its compressed bytes
// hashed (ggcr checks the digest) while gunzipped, the uncompressed stream
// hashed and compared with the config's diff ID — in process, layers in
// parallel up to the number of CPUs.
func readLayers(ctx context.Context, ref name.Digest) (layersRead, error) {
	ctx, cancel := context.WithTimeout(ctx, floorReadTimeout)
	defer cancel()
	start := time.Now()
	img, err := remote.Image(ref, remoteOpts(ctx)...)
	if err != nil {
		return layersRead{}, fmt.Errorf("floor: %s: %w", ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return layersRead{}, fmt.Errorf("floor: %s: %w", ref, err)
	}
	var gz, raw atomic.Int64
	g, _ := errgroup.WithContext(ctx)
	g.SetLimit(runtime.NumCPU())
	for _, l := range layers {
		g.Go(func() error {
			c, u, err := readLayer(l)
			gz.Add(c)
			raw.Add(u)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return layersRead{}, fmt.Errorf("floor: %s: %w", ref, err)
	}
	return layersRead{took: time.Since(start), gz: gz.Load(), raw: raw.Load()}, nil
}

// layersRead is what readLayers did: how long, compressed and uncompressed
// bytes.
type layersRead struct {
	took    time.Duration
	gz, raw int64
}

func readLayer(l v1.Layer) (gz, raw int64, err error) {
	want, err := l.DiffID()
	if err != nil {
		return 0, 0, err
	}
	rc, err := l.Compressed() // verified against the layer digest at EOF
	if err != nil {
		return 0, 0, err
	}
	defer rc.Close()
	cr := &countingReader{r: rc}
	zr, err := gzip.NewReader(cr)
	if err != nil {
		return cr.n, 0, err
	}
	h := sha256.New()
	raw, err = io.Copy(h, zr)
	if err != nil {
		return cr.n, raw, err
	}
	// Drain: the digest check happens when the compressed stream ends.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return cr.n, raw, err
	}
	if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != want.String() {
		return cr.n, raw, fmt.Errorf("layer diff ID %s, config says %s", got, want)
	}
	return cr.n, raw, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// rekorRound is the transparency log's floor: one entry — a tiny in-toto
// statement in a DSSE envelope, signed with an ephemeral key — posted to
// the stack's Rekor v2 with sigstore-go, until it returns the entry with
// its inclusion proof. Most of it is waiting for the next checkpoint (1 s
// interval); no Fulcio, no TSA.
func rekorRound(ctx context.Context, rekorURL string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, rekorTimeout)
	defer cancel()
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		return 0, err
	}
	stmt, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []map[string]any{{"name": "bench-e2e", "digest": map[string]string{"sha256": fmt.Sprintf("%x", sha256.Sum256([]byte(time.Now().String())))}}},
		"predicateType": "https://attestd.dev/bench-e2e/rekor-round/v1",
		"predicate":     map[string]string{},
	})
	if err != nil {
		return 0, err
	}
	start := time.Now()
	_, err = sign.Bundle(&sign.DSSEData{Data: stmt, PayloadType: "application/vnd.in-toto+json"}, kp, sign.BundleOptions{
		Context:          ctx,
		TransparencyLogs: []sign.Transparency{sign.NewRekor(&sign.RekorOptions{BaseURL: rekorURL, Version: 2, Timeout: rekorTimeout})},
	})
	if err != nil {
		return 0, fmt.Errorf("floor: Rekor round at %s: %w", rekorURL, err)
	}
	return time.Since(start), nil
}
