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
//
// Layers are pushed by whoever can write to the staging registry, so every
// download is bounded while it streams: the blob by its declared size and a
// compressed limit, the tar by a per-layer limit and the cache cap, the
// layers of one image together by a Budget. A layer over a limit stops at
// the first byte past it, its partial file is removed, and Get returns a
// *LimitError (ErrTooLarge).
package layers

import (
	"archive/tar"
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
	"sync/atomic"
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
	// Written counts the uncompressed bytes downloads wrote, kept or not.
	Written int64
	// Refused counts layers refused for a limit (LimitError).
	Refused int64
}

// Cache is safe for concurrent use by many jobs of one process.
type Cache struct {
	dir string
	max int64
	cap Limit // max, named for errors
	lim LayerLimits

	mu       sync.Mutex
	entries  map[string]*entry // compressed digest → entry
	inflight map[string]*call
	stats    Stats
}

type entry struct {
	size    int64 // uncompressed bytes
	entries int64 // tar entries; -1 until counted (layers found by Open)
	used    time.Time
	refs    int
}

type call struct {
	done chan struct{}
	err  error
	// notLayer: err is not a fact about the blob alone, so a waiter
	// downloads the layer itself. Only the cache's own per-layer limits
	// (max_layer_bytes, max_files…) hold for every image that names the
	// blob; the downloader's Budget, its job's context, and what its
	// manifest declared (size, diff ID, media type: an attacker's image
	// may declare a shared base layer one byte short) are its own, and a
	// network error is worth one more try.
	notLayer bool
}

// LayerLimits bound one layer. A zero N takes the default: the cache cap
// for the byte limits, no limit on entries.
type LayerLimits struct {
	// Bytes bounds the uncompressed tar. The cache cap bounds it too: a
	// layer larger than the whole cache is refused.
	Bytes Limit
	// CompressedBytes bounds the blob as downloaded, whatever its declared
	// size says; the declared size bounds it too (a blob may not be
	// longer than its manifest says).
	CompressedBytes Limit
	// Entries bounds the tar's entries (files, directories, links,
	// whiteouts), counted once when the layer is downloaded.
	Entries Limit
}

// Option configures Open.
type Option func(*Cache) error

// WithLayerLimits bounds each layer (see LayerLimits).
func WithLayerLimits(l LayerLimits) Option {
	return func(c *Cache) error {
		for _, x := range []Limit{l.Bytes, l.CompressedBytes, l.Entries} {
			if x.N < 0 {
				return fmt.Errorf("limit %s must not be negative, got %d", x.Setting, x.N)
			}
		}
		c.lim = l
		return nil
	}
}

// WithCapSetting names the setting of the cache cap in errors, e.g.
// "analysis.layer_cache".
func WithCapSetting(name string) Option {
	return func(c *Cache) error {
		c.cap.Setting = name
		return nil
	}
}

const suffix = ".tar"

// Open uses dir as the cache (creating it), removes partial downloads a crash
// left behind, and indexes the layers already there, oldest-used first.
// maxBytes caps the uncompressed bytes on disk; no one layer may exceed it.
func Open(dir string, maxBytes int64, opts ...Option) (*Cache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("layer cache %s: size cap must be positive, got %d", dir, maxBytes)
	}
	c := &Cache{dir: dir, max: maxBytes, cap: Limit{N: maxBytes, Setting: "the layer cache's size cap"}, entries: map[string]*entry{}, inflight: map[string]*call{}}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, fmt.Errorf("layer cache %s: %w", dir, err)
		}
	}
	if c.lim.Bytes.N == 0 || c.lim.Bytes.N > maxBytes {
		c.lim.Bytes = c.cap
	}
	if c.lim.CompressedBytes.N == 0 {
		c.lim.CompressedBytes = c.cap
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("layer cache: %w", err)
	}
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
		c.entries["sha256:"+hexd] = &entry{size: fi.Size(), entries: -1, used: fi.ModTime()}
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
	Entries          int64 // tar entries
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

// ImageLimits bound the layers of one image together (see Budget). A zero
// N is no limit.
type ImageLimits struct {
	Bytes           Limit // uncompressed
	CompressedBytes Limit // as declared by the manifest (a blob may not exceed it)
	Entries         Limit
}

// Budget is what the layers of one image may still take. Share one among
// the Gets of one image's layers; it is safe for concurrent use.
// Downloads charge it as they stream, so the image's layers together never
// write more than its limits to disk, however many download at once.
type Budget struct {
	lim                        ImageLimits
	bytes, compressed, entries atomic.Int64
}

// NewBudget starts the budget of one image.
func NewBudget(l ImageLimits) *Budget { return &Budget{lim: l} }

// take charges n against max; false when that takes used past max.
func take(used *atomic.Int64, max Limit, n int64) bool {
	return max.N <= 0 || used.Add(n) <= max.N
}

// takeBytes charges n uncompressed bytes of layer digest.
func (b *Budget) takeBytes(digest string, n int64) error {
	if b != nil && !take(&b.bytes, b.lim.Bytes, n) {
		return &LimitError{Digest: digest, Limit: b.lim.Bytes, Image: true}
	}
	return nil
}

func (b *Budget) takeEntries(digest string, n int64) error {
	if b != nil && !take(&b.entries, b.lim.Entries, n) {
		return &LimitError{Digest: digest, Limit: b.lim.Entries, Image: true, Entries: true}
	}
	return nil
}

func (b *Budget) takeCompressed(digest string, n int64) error {
	if b != nil && !take(&b.compressed, b.lim.CompressedBytes, n) {
		return &LimitError{Digest: digest, Limit: b.lim.CompressedBytes, Image: true, Compressed: true}
	}
	return nil
}

// Get returns the cached layer l, downloading it with fetch when it is not on
// disk, and charges it to the image's budget b (nil: none). Concurrent Gets
// of one digest share one download. A layer over a limit is a *LimitError
// and leaves nothing on disk. The caller must Release the handle.
func (c *Cache) Get(ctx context.Context, l Layer, fetch Fetch, b *Budget) (*Handle, error) {
	h, err := c.get(ctx, l, fetch, b)
	if errors.Is(err, ErrTooLarge) {
		c.mu.Lock()
		c.stats.Refused++
		c.mu.Unlock()
	}
	return h, err
}

func (c *Cache) get(ctx context.Context, l Layer, fetch Fetch, b *Budget) (*Handle, error) {
	if !validDigest(l.Digest) {
		return nil, fmt.Errorf("layer cache: layer digest %q is not sha256:<64 hex>", l.Digest)
	}
	if l.DiffID != "" && !validDigest(l.DiffID) {
		return nil, fmt.Errorf("layer cache: diff ID %q is not sha256:<64 hex>", l.DiffID)
	}
	// The declared size is checked before anything is fetched: a blob may
	// not be longer than it (download enforces that), so it is the most
	// the layer can cost.
	if l.Size < 0 {
		return nil, &LimitError{Digest: l.Digest, Limit: Limit{N: l.Size}, Compressed: true}
	}
	if l.Size > c.lim.CompressedBytes.N {
		return nil, &LimitError{Digest: l.Digest, Limit: c.lim.CompressedBytes, Compressed: true}
	}
	if err := b.takeCompressed(l.Digest, max(l.Size, 0)); err != nil {
		return nil, err
	}
	for {
		c.mu.Lock()
		if e := c.entries[l.Digest]; e != nil {
			now := time.Now()
			e.refs++
			e.used = now
			size, n := e.size, e.entries
			c.stats.Hits++
			c.mu.Unlock()
			p := c.path(l.Digest)
			_ = os.Chtimes(p, now, now) // LRU order survives restarts
			h := &Handle{Layer: l, Path: p, UncompressedSize: size, Entries: n, c: c}
			if err := c.admit(h, b); err != nil {
				h.Release()
				return nil, err
			}
			return h, nil
		}
		if cl := c.inflight[l.Digest]; cl != nil {
			c.mu.Unlock()
			select {
			case <-cl.done:
				if cl.err != nil && !cl.notLayer {
					return nil, cl.err
				}
				continue // now cached (or evicted already, or failed for the downloader's own reasons: fetch again)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		cl := &call{done: make(chan struct{})}
		c.inflight[l.Digest] = cl
		c.stats.Fetches++
		c.mu.Unlock()

		size, n, written, err := c.download(ctx, l, fetch, b)

		c.mu.Lock()
		delete(c.inflight, l.Digest)
		var le *LimitError
		cl.err = err
		cl.notLayer = !errors.As(err, &le) || le.Image || le.Limit.Setting == ""
		close(cl.done)
		c.stats.Written += written
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		e := &entry{size: size, entries: n, used: time.Now(), refs: 1}
		c.entries[l.Digest] = e
		c.stats.Bytes += size
		c.evictLocked()
		c.mu.Unlock()
		return &Handle{Layer: l, Path: c.path(l.Digest), UncompressedSize: size, Entries: n, c: c}, nil
	}
}

// admit checks a layer found on disk against the limits (they may have
// been lowered since it was downloaded), counting its entries if nobody
// has since Open, and charges it to b.
func (c *Cache) admit(h *Handle, b *Budget) error {
	if h.UncompressedSize > c.lim.Bytes.N {
		return &LimitError{Digest: h.Digest, Limit: c.lim.Bytes}
	}
	if h.Entries < 0 {
		f, err := os.Open(h.Path)
		if err != nil {
			return fmt.Errorf("layer cache: %w", err)
		}
		n, err := countEntries(f, h.Digest, c.lim.Entries)
		f.Close()
		if err != nil {
			return err
		}
		h.Entries = n
		c.mu.Lock()
		if e := c.entries[h.Digest]; e != nil {
			e.entries = n
		}
		c.mu.Unlock()
	} else if c.lim.Entries.N > 0 && h.Entries > c.lim.Entries.N {
		return &LimitError{Digest: h.Digest, Limit: c.lim.Entries, Entries: true}
	}
	if err := b.takeBytes(h.Digest, h.UncompressedSize); err != nil {
		return err
	}
	return b.takeEntries(h.Digest, h.Entries)
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
// digests match and the tar's entries are counted. Every limit is enforced
// on the stream: the download stops at the first byte past one, and the
// temp file is removed.
func (c *Cache) download(ctx context.Context, l Layer, fetch Fetch, b *Budget) (size, entries, written int64, err error) {
	rc, err := fetch(ctx)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("fetch layer %s: %w", l.Digest, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(c.dir, "partial-")
	if err != nil {
		return 0, 0, 0, fmt.Errorf("layer cache: %w", err)
	}
	tmp := f.Name()
	defer func() {
		f.Close()
		os.Remove(tmp) // no-op after the rename
	}()

	// A blob is exactly as long as its manifest says: a manifest that
	// says 0 for a blob with bytes is refused, not unbounded (get refused
	// negative sizes and sizes over the compressed limit already).
	bound := Limit{N: l.Size}
	blobHash := sha256.New()
	counted := &limitReader{r: io.TeeReader(ctxReader{ctx, rc}, blobHash), max: bound.N,
		over: &LimitError{Digest: l.Digest, Limit: bound, Compressed: true}}
	plain, closeDec, err := decompressor(l.MediaType, counted)
	if err != nil {
		if counted.exceeded() {
			return 0, 0, 0, counted.over
		}
		return 0, 0, 0, fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	diffHash := sha256.New()
	out := &limitWriter{w: io.MultiWriter(f, diffHash), max: c.lim.Bytes.N, digest: l.Digest, budget: b,
		over: &LimitError{Digest: l.Digest, Limit: c.lim.Bytes}}
	n, err := io.Copy(out, plain)
	closeDec()
	if err == nil {
		// Drain what the decompressor did not need (gzip trailer, padding)
		// so the blob digest covers every byte; bounded like the rest.
		_, err = io.Copy(io.Discard, counted)
	}
	// The decompressor may have wrapped or replaced the error: a limit
	// crossed is what happened, whatever it says.
	switch {
	case counted.exceeded():
		return 0, 0, out.n, counted.over
	case out.err != nil:
		return 0, 0, out.n, out.err
	case err != nil:
		return 0, 0, out.n, fmt.Errorf("layer %s: read: %w", l.Digest, err)
	}
	if got := digestOf(blobHash); got != l.Digest {
		return 0, 0, out.n, fmt.Errorf("layer %s: downloaded blob hashes to %s: registry served the wrong content", l.Digest, got)
	}
	if counted.n != l.Size {
		return 0, 0, out.n, fmt.Errorf("layer %s: downloaded %d bytes, manifest says %d", l.Digest, counted.n, l.Size)
	}
	if l.DiffID != "" {
		if got := digestOf(diffHash); got != l.DiffID {
			return 0, 0, out.n, fmt.Errorf("layer %s: uncompressed content hashes to %s, image config says diff ID %s", l.Digest, got, l.DiffID)
		}
	}
	if entries, err = countEntries(f, l.Digest, c.lim.Entries); err != nil {
		return 0, 0, out.n, err
	}
	if err := b.takeEntries(l.Digest, entries); err != nil {
		return 0, 0, out.n, err
	}
	if err := f.Sync(); err != nil {
		return 0, 0, out.n, fmt.Errorf("layer cache: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, 0, out.n, fmt.Errorf("layer cache: %w", err)
	}
	// No directory fsync: Open indexes whatever the directory holds, so a
	// rename a crash loses costs one download again, never a wrong layer.
	if err := os.Rename(tmp, c.path(l.Digest)); err != nil {
		return 0, 0, out.n, fmt.Errorf("layer cache: %w", err)
	}
	return n, entries, n, nil
}

// countEntries counts the tar entries of f (from its start), up to max.
// It reads headers only: archive/tar seeks over file contents.
func countEntries(f *os.File, digest string, max Limit) (int64, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("layer cache: %w", err)
	}
	tr := tar.NewReader(f)
	var n int64
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("layer %s: not a readable tar archive: %w", digest, err)
		}
		if n++; max.N > 0 && n > max.N {
			return 0, &LimitError{Digest: digest, Limit: max, Entries: true}
		}
	}
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

// limitReader counts what it reads and fails once it has read max+1
// bytes: the one byte past the limit is how it knows the blob is longer.
type limitReader struct {
	r    io.Reader
	n    int64
	max  int64
	over error
}

func (r *limitReader) exceeded() bool { return r.n > r.max }

func (r *limitReader) Read(b []byte) (int, error) {
	if r.exceeded() {
		return 0, r.over
	}
	if rest := r.max + 1 - r.n; int64(len(b)) > rest {
		b = b[:rest]
	}
	n, err := r.r.Read(b)
	r.n += int64(n)
	if r.exceeded() {
		return n, r.over
	}
	return n, err
}

// limitWriter writes the uncompressed tar up to max bytes, charging the
// image's budget as it goes; a write that would cross either limit writes
// nothing, so no more than the limit ever reaches the disk.
type limitWriter struct {
	w      io.Writer
	n      int64
	max    int64
	digest string
	budget *Budget
	over   error
	err    error // the limit crossed, once one is
}

func (w *limitWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.n+int64(len(p)) > w.max {
		w.err = w.over
		return 0, w.err
	}
	if err := w.budget.takeBytes(w.digest, int64(len(p))); err != nil {
		w.err = err
		return 0, err
	}
	n, err := w.w.Write(p)
	w.n += int64(n)
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
