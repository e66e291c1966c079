// Package layers is attestd's on-disk layer cache: each image layer is
// downloaded once, checked against its digest and diff ID while it streams,
// decompressed once, and kept as an uncompressed tar file named by its
// compressed digest. Every analyser of a job (SBOM, hardening, later
// vulnerability matching) reads that one local copy, and images that share a
// base layer reuse it across jobs. The cache has a size cap and evicts the
// least recently used layers that no job is reading.
//
// Nothing is held in memory but bookkeeping: layers stream from the registry
// through the hashes and the decompressor straight to a temp file, which is
// fsynced and renamed into place only when both digests match.
package layers

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// Layer describes what the manifest and config say about a layer.
type Layer struct {
	Digest    string // sha256:… of the compressed blob (manifest)
	DiffID    string // sha256:… of the uncompressed tar (config rootfs.diff_ids); may be empty
	MediaType string
	Size      int64 // compressed size from the manifest
}

// Fetch opens the compressed blob of a layer.
type Fetch func(ctx context.Context) (io.ReadCloser, error)

// Stats count what the cache did since Open.
type Stats struct {
	Hits      int64 // layers served from disk
	Fetches   int64 // layers downloaded (each digest at most once while cached)
	Evictions int64
	Bytes     int64 // uncompressed bytes on disk now
	Entries   int
}

// Cache is safe for concurrent use by many jobs of one process.
type Cache struct {
	dir string
	max int64

	mu       sync.Mutex
	entries  map[string]*entry // compressed digest → entry
	inflight map[string]*call
	stats    Stats
}

type entry struct {
	size int64 // uncompressed bytes
	used time.Time
	refs int
}

type call struct {
	done chan struct{}
	err  error
}

const suffix = ".tar"

// Open uses dir as the cache (creating it), removes partial downloads a crash
// left behind, and indexes the layers already there, oldest-used first.
func Open(dir string, maxBytes int64) (*Cache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("layer cache %s: size cap must be positive, got %d", dir, maxBytes)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("layer cache: %w", err)
	}
	c := &Cache{dir: dir, max: maxBytes, entries: map[string]*entry{}, inflight: map[string]*call{}}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("layer cache: %w", err)
	}
	for _, de := range des {
		name := de.Name()
		p := filepath.Join(dir, name)
		if strings.HasPrefix(name, "partial-") {
			_ = os.Remove(p)
			continue
		}
		hexd, ok := strings.CutSuffix(name, suffix)
		if !ok || !isHex64(hexd) || !de.Type().IsRegular() {
			continue // not ours; leave it alone
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		c.entries["sha256:"+hexd] = &entry{size: fi.Size(), used: fi.ModTime()}
		c.stats.Bytes += fi.Size()
	}
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	return c, nil
}

// Dir is where the cache keeps its files.
func (c *Cache) Dir() string { return c.dir }

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = len(c.entries)
	return s
}

// Handle is a reference to a cached layer; the file stays on disk until
// Release, whatever the cap says.
type Handle struct {
	Layer
	Path             string // uncompressed tar
	UncompressedSize int64
	c                *Cache
	once             sync.Once
}

// Open opens the uncompressed tar.
func (h *Handle) Open() (*os.File, error) { return os.Open(h.Path) }

// Release lets the cache evict the layer again.
func (h *Handle) Release() {
	h.once.Do(func() {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		if e := h.c.entries[h.Digest]; e != nil && e.refs > 0 {
			e.refs--
		}
		h.c.evictLocked()
	})
}

// Get returns the cached layer l, downloading it with fetch when it is not on
// disk. Concurrent Gets of one digest share one download. The caller must
// Release the handle.
func (c *Cache) Get(ctx context.Context, l Layer, fetch Fetch) (*Handle, error) {
	if !validDigest(l.Digest) {
		return nil, fmt.Errorf("layer cache: layer digest %q is not sha256:<64 hex>", l.Digest)
	}
	if l.DiffID != "" && !validDigest(l.DiffID) {
		return nil, fmt.Errorf("layer cache: diff ID %q is not sha256:<64 hex>", l.DiffID)
	}
	for {
		c.mu.Lock()
		if e := c.entries[l.Digest]; e != nil {
			now := time.Now()
			e.refs++
			e.used = now
			size := e.size
			c.stats.Hits++
			c.mu.Unlock()
			p := c.path(l.Digest)
			_ = os.Chtimes(p, now, now) // LRU order survives restarts
			return &Handle{Layer: l, Path: p, UncompressedSize: size, c: c}, nil
		}
		if cl := c.inflight[l.Digest]; cl != nil {
			c.mu.Unlock()
			select {
			case <-cl.done:
				if cl.err != nil {
					return nil, cl.err
				}
				continue // now cached (or evicted already: fetch again)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		cl := &call{done: make(chan struct{})}
		c.inflight[l.Digest] = cl
		c.stats.Fetches++
		c.mu.Unlock()

		size, err := c.download(ctx, l, fetch)

		c.mu.Lock()
		delete(c.inflight, l.Digest)
		cl.err = err
		close(cl.done)
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		e := &entry{size: size, used: time.Now(), refs: 1}
		c.entries[l.Digest] = e
		c.stats.Bytes += size
		c.evictLocked()
		c.mu.Unlock()
		return &Handle{Layer: l, Path: c.path(l.Digest), UncompressedSize: size, c: c}, nil
	}
}

func (c *Cache) path(digest string) string {
	return filepath.Join(c.dir, strings.TrimPrefix(digest, "sha256:")+suffix)
}

// evictLocked removes unreferenced layers, least recently used first, until
// the cache is under its cap.
func (c *Cache) evictLocked() {
	if c.stats.Bytes <= c.max {
		return
	}
	type kv struct {
		d string
		e *entry
	}
	var idle []kv
	for d, e := range c.entries {
		if e.refs == 0 {
			idle = append(idle, kv{d, e})
		}
	}
	slices.SortFunc(idle, func(a, b kv) int { return a.e.used.Compare(b.e.used) })
	for _, x := range idle {
		if c.stats.Bytes <= c.max {
			return
		}
		if err := os.Remove(c.path(x.d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		delete(c.entries, x.d)
		c.stats.Bytes -= x.e.size
		c.stats.Evictions++
	}
}

// download streams the blob through the compressed digest, the decompressor
// and the diff ID into a temp file, and renames it into place only when both
// digests match.
func (c *Cache) download(ctx context.Context, l Layer, fetch Fetch) (int64, error) {
	rc, err := fetch(ctx)
	if err != nil {
		return 0, fmt.Errorf("fetch layer %s: %w", l.Digest, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(c.dir, "partial-")
	if err != nil {
		return 0, fmt.Errorf("layer cache: %w", err)
	}
	tmp := f.Name()
	defer func() {
		f.Close()
		os.Remove(tmp) // no-op after the rename
	}()

	blobHash := sha256.New()
	counted := &countReader{r: io.TeeReader(ctxReader{ctx, rc}, blobHash)}
	plain, closeDec, err := decompressor(l.MediaType, counted)
	if err != nil {
		return 0, fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	diffHash := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, diffHash), plain)
	closeDec()
	if err != nil {
		return 0, fmt.Errorf("layer %s: read: %w", l.Digest, err)
	}
	// Drain what the decompressor did not need (gzip trailer, padding) so
	// the blob digest covers every byte.
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return 0, fmt.Errorf("layer %s: read: %w", l.Digest, err)
	}
	if got := digestOf(blobHash); got != l.Digest {
		return 0, fmt.Errorf("layer %s: downloaded blob hashes to %s: registry served the wrong content", l.Digest, got)
	}
	if l.Size > 0 && counted.n != l.Size {
		return 0, fmt.Errorf("layer %s: downloaded %d bytes, manifest says %d", l.Digest, counted.n, l.Size)
	}
	if l.DiffID != "" {
		if got := digestOf(diffHash); got != l.DiffID {
			return 0, fmt.Errorf("layer %s: uncompressed content hashes to %s, image config says diff ID %s", l.Digest, got, l.DiffID)
		}
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("layer cache: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("layer cache: %w", err)
	}
	// No directory fsync: Open indexes whatever the directory holds, so a
	// rename a crash loses costs one download again, never a wrong layer.
	if err := os.Rename(tmp, c.path(l.Digest)); err != nil {
		return 0, fmt.Errorf("layer cache: %w", err)
	}
	return n, nil
}

// decompressor picks the decompressor from the media type, and for media
// types that do not say (Docker's and OCI's plain "tar") from the magic bytes.
func decompressor(mediaType string, r io.Reader) (io.Reader, func(), error) {
	br := &peekReader{r: r}
	magic, err := br.peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		zr.Multistream(true)
		return zr, func() { zr.Close() }, nil
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
	if strings.Contains(mediaType, "gzip") || strings.Contains(mediaType, "zstd") {
		return nil, nil, fmt.Errorf("media type %s but the blob is not %s compressed", mediaType, mediaType[strings.LastIndex(mediaType, "+")+1:])
	}
	return br, func() {}, nil
}

type peekReader struct {
	r   io.Reader
	buf []byte
}

func (p *peekReader) peek(n int) ([]byte, error) {
	p.buf = make([]byte, n)
	m, err := io.ReadFull(p.r, p.buf)
	p.buf = p.buf[:m]
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return p.buf, err
}

func (p *peekReader) Read(b []byte) (int, error) {
	if len(p.buf) > 0 {
		n := copy(b, p.buf)
		p.buf = p.buf[n:]
		return n, nil
	}
	return p.r.Read(b)
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// ctxReader stops a stalled copy when the job is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func validDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	return ok && isHex64(h)
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}
