package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// bomb is a tar holding one file of n zero bytes: a few KiB once gzipped.
func bomb(t *testing.T, n int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: n, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, zeros{}, n); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	return buf.Bytes()
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// manyFiles is a tar of n empty files.
func manyFiles(t *testing.T, prefix string, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range n {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("%s/%d", prefix, i), Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	return buf.Bytes()
}

// endless serves head, then repeats tail for ever, counting what was read.
type endless struct {
	head, tail []byte
	off        int
	n          atomic.Int64
}

func (e *endless) Read(b []byte) (int, error) {
	var n int
	for n < len(b) {
		var src []byte
		if e.off < len(e.head) {
			src = e.head[e.off:]
		} else {
			src = e.tail[(e.off-len(e.head))%len(e.tail):]
		}
		m := copy(b[n:], src)
		n += m
		e.off += m
	}
	e.n.Add(int64(n))
	return n, nil
}

func (e *endless) Close() error { return nil }

// partials lists the temp files of downloads left in dir.
func partials(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if strings.HasPrefix(de.Name(), "partial-") {
			out = append(out, de.Name())
		}
	}
	return out
}

func limitErr(t *testing.T, err error) *LimitError {
	t.Helper()
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want a *LimitError wrapping ErrTooLarge", err)
	}
	return le
}

// Every hostile layer stops at its limit: the error names the limit and
// the setting that raises it, nothing of the layer stays on disk, and no
// more than the limit was ever written.
func TestLayerLimits(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	bombGz, bombL := gz(t, bomb(t, 16<<20)) // 16 MiB of tar from ~16 KiB
	if len(bombGz) > 32<<10 {
		t.Fatalf("the bomb is %d bytes compressed, want a few KiB", len(bombGz))
	}
	small, smallL := blob(t, "just a small layer")
	files, filesL := gz(t, manyFiles(t, "f", 1000))

	// An endless gzip stream that decompresses to nothing: a valid header,
	// then empty stored deflate blocks (BFINAL=0, LEN=0, NLEN=0xffff).
	gzHead := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}
	emptyBlock := []byte{0, 0, 0, 0xff, 0xff}
	// An endless zstd stream: one empty frame, then skippable frames.
	zw, _ := zstd.NewWriter(nil)
	zHead := zw.EncodeAll(nil, nil)
	skippable := binary.LittleEndian.AppendUint32(nil, 0x184D2A50)
	skippable = binary.LittleEndian.AppendUint32(skippable, 8)
	skippable = append(skippable, make([]byte, 8)...)
	fakeDigest := sum([]byte("an endless stream has no digest"))

	for _, tc := range []struct {
		name    string
		opts    []Option
		cap     int64
		l       Layer
		body    func() io.ReadCloser
		want    LimitError // Digest and Limit are checked
		wantMsg string
		maxRead int64 // compressed bytes the fetch may have served (0: no check)
		noFetch bool
	}{{
		name: "gzip bomb past max_layer_bytes",
		opts: []Option{WithLayerLimits(LayerLimits{Bytes: Limit{limit, "analysis.max_layer_bytes"}})},
		cap:  64 << 20, l: bombL, body: reader(bombGz),
		want:    LimitError{Digest: bombL.Digest, Limit: Limit{limit, "analysis.max_layer_bytes"}},
		wantMsg: "expands past analysis.max_layer_bytes (1MiB = 1048576 bytes): raise it if this image is legitimate",
	}, {
		name: "gzip bomb past the cache cap",
		opts: []Option{WithCapSetting("analysis.layer_cache"), WithLayerLimits(LayerLimits{Bytes: Limit{64 << 20, "analysis.max_layer_bytes"}})},
		cap:  limit, l: bombL, body: reader(bombGz),
		want:    LimitError{Digest: bombL.Digest, Limit: Limit{limit, "analysis.layer_cache"}},
		wantMsg: "expands past analysis.layer_cache",
	}, {
		name: "declared size past max_compressed_layer_bytes",
		opts: []Option{WithLayerLimits(LayerLimits{CompressedBytes: Limit{1024, "analysis.max_compressed_layer_bytes"}})},
		cap:  limit, l: bombL, body: reader(bombGz), noFetch: true,
		want:    LimitError{Digest: bombL.Digest, Limit: Limit{1024, "analysis.max_compressed_layer_bytes"}, Compressed: true},
		wantMsg: "as downloaded: raise it",
	}, {
		name: "blob longer than its manifest says",
		cap:  limit, l: smallL, body: reader(append(bytes.Clone(small), make([]byte, 1<<20)...)),
		want:    LimitError{Digest: smallL.Digest, Limit: Limit{N: smallL.Size}, Compressed: true},
		wantMsg: "larger than the " + fmt.Sprint(smallL.Size) + " bytes its manifest declares",
		maxRead: smallL.Size + 64<<10,
	}, {
		name: "endless gzip of empty blocks, size declared",
		cap:  limit, l: Layer{Digest: fakeDigest, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Size: 4096},
		body:    func() io.ReadCloser { return &endless{head: gzHead, tail: emptyBlock} },
		want:    LimitError{Digest: fakeDigest, Limit: Limit{N: 4096}, Compressed: true},
		maxRead: 4096 + 64<<10,
	}, {
		name: "endless gzip of empty blocks, declared at the compressed limit",
		opts: []Option{WithLayerLimits(LayerLimits{CompressedBytes: Limit{8192, "analysis.max_compressed_layer_bytes"}})},
		cap:  limit, l: Layer{Digest: fakeDigest, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Size: 8192},
		body:    func() io.ReadCloser { return &endless{head: gzHead, tail: emptyBlock} },
		want:    LimitError{Digest: fakeDigest, Limit: Limit{N: 8192}, Compressed: true},
		maxRead: 8192 + 64<<10,
	}, {
		name: "endless zstd of skippable frames, size declared",
		cap:  limit, l: Layer{Digest: fakeDigest, MediaType: "application/vnd.oci.image.layer.v1.tar+zstd", Size: 4096},
		body:    func() io.ReadCloser { return &endless{head: zHead, tail: skippable} },
		want:    LimitError{Digest: fakeDigest, Limit: Limit{N: 4096}, Compressed: true},
		maxRead: 4096 + 64<<10,
	}, {
		name: "endless uncompressed tar",
		cap:  limit, l: Layer{Digest: fakeDigest, MediaType: "application/vnd.oci.image.layer.v1.tar", Size: limit},
		body: func() io.ReadCloser { return &endless{head: bomb(t, 0), tail: []byte("x")} },
		// Compressed and uncompressed are the same bytes here: the
		// download's counter (the declared size) trips first.
		want:    LimitError{Digest: fakeDigest, Limit: Limit{N: limit}, Compressed: true},
		maxRead: limit + 64<<10,
	}, {
		name: "a thousand files past max_files",
		opts: []Option{WithLayerLimits(LayerLimits{Entries: Limit{100, "analysis.max_files"}})},
		cap:  limit, l: filesL, body: reader(files),
		want:    LimitError{Digest: filesL.Digest, Limit: Limit{100, "analysis.max_files"}, Entries: true},
		wantMsg: "holds more than analysis.max_files (100) files",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			c, err := Open(dir, tc.cap, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int32
			var served []*endless
			var mu sync.Mutex
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err = c.Get(ctx, tc.l, func(context.Context) (io.ReadCloser, error) {
				calls.Add(1)
				rc := tc.body()
				if e, ok := rc.(*endless); ok {
					mu.Lock()
					served = append(served, e)
					mu.Unlock()
				}
				return rc, nil
			}, nil)
			le := limitErr(t, err)
			if le.Digest != tc.want.Digest || le.Limit != tc.want.Limit || le.Compressed != tc.want.Compressed || le.Entries != tc.want.Entries || le.Image {
				t.Errorf("got %+v, want %+v", *le, tc.want)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("err = %q, want it to say %q", err, tc.wantMsg)
			}
			if tc.noFetch && calls.Load() != 0 {
				t.Errorf("fetched %d times; the declared size alone refuses it", calls.Load())
			}
			for _, e := range served {
				if n := e.n.Load(); tc.maxRead > 0 && n > tc.maxRead {
					t.Errorf("read %d bytes of an endless stream, want ≤ %d", n, tc.maxRead)
				}
			}
			st := c.Stats()
			if bound := min(tc.cap, max(tc.want.Limit.N, 0)); !tc.want.Entries && !tc.want.Compressed && st.Written > bound {
				t.Errorf("wrote %d bytes to disk, limit %d", st.Written, bound)
			}
			if st.Written > tc.cap {
				t.Errorf("wrote %d bytes to disk past the cap %d", st.Written, tc.cap)
			}
			if st.Refused != 1 || st.Entries != 0 || st.Bytes != 0 {
				t.Errorf("stats %+v, want one refusal and nothing cached", st)
			}
			if des, _ := os.ReadDir(dir); len(des) != 0 {
				t.Errorf("left in the cache dir: %v", des)
			}
		})
	}
}

// The layers of one image share a Budget: together they never write more
// than the image's limit, however many download at once, and the refused
// download leaves no partial file.
func TestImageBudget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	type layer struct {
		b []byte
		l Layer
	}
	var ls []layer
	for i := range 4 {
		b, l := gz(t, bomb(t, int64(100<<10+i))) // ~100 KiB each, distinct digests
		ls = append(ls, layer{b, l})
	}
	for _, tc := range []struct {
		name    string
		lim     ImageLimits
		wantMsg string
	}{
		{"bytes", ImageLimits{Bytes: Limit{250 << 10, "analysis.max_image_bytes"}}, "the image's layers expand past analysis.max_image_bytes (250KiB = 256000 bytes)"},
		{"compressed", ImageLimits{CompressedBytes: Limit{int64(len(ls[0].b)) + 10, "analysis.max_compressed_image_bytes"}}, "larger than analysis.max_compressed_image_bytes"},
		{"entries", ImageLimits{Entries: Limit{2, "analysis.max_files"}}, "the image's layers hold more than analysis.max_files (2)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			c, _ := Open(dir, 64<<20)
			budget := NewBudget(tc.lim)
			var calls atomic.Int32
			var wg sync.WaitGroup
			errs := make([]error, len(ls))
			for i, x := range ls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					h, err := c.Get(ctx, x.l, serve(x.b, &calls), budget)
					if err == nil {
						defer h.Release()
					}
					errs[i] = err
				}()
			}
			wg.Wait()
			refused := 0
			for _, err := range errs {
				if err == nil {
					continue
				}
				refused++
				le := limitErr(t, err)
				if !le.Image || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("err = %v, want the image's limit: %q", err, tc.wantMsg)
				}
			}
			if refused == 0 {
				t.Fatal("no layer was refused")
			}
			if st := c.Stats(); tc.lim.Bytes.N > 0 && st.Written > tc.lim.Bytes.N {
				t.Errorf("the image's layers wrote %d bytes, limit %d", st.Written, tc.lim.Bytes.N)
			}
			if p := partials(t, dir); len(p) != 0 {
				t.Errorf("partial downloads left: %v", p)
			}

			// Another image, with its own budget, gets the layers the first
			// could not (and hits the ones it could).
			for _, x := range ls {
				h, err := c.Get(ctx, x.l, serve(x.b, &calls), NewBudget(ImageLimits{}))
				if err != nil {
					t.Fatalf("a fresh budget: %v", err)
				}
				h.Release()
			}
		})
	}
}

// Limits lowered since a layer was cached apply to it too: what a Get
// returns never depends on what happens to be on disk.
func TestLimitsApplyToCachedLayers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	b, l := gz(t, manyFiles(t, "d", 50))
	var calls atomic.Int32
	c, _ := Open(dir, 1<<20)
	h, err := c.Get(ctx, l, serve(b, &calls), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.Release()
	for name, opt := range map[string]LayerLimits{
		"bytes":   {Bytes: Limit{1024, "analysis.max_layer_bytes"}},
		"entries": {Entries: Limit{10, "analysis.max_files"}},
	} {
		c2, err := Open(dir, 1<<20, WithLayerLimits(opt)) // reopened: entries are counted again
		if err != nil {
			t.Fatal(err)
		}
		_, err = c2.Get(ctx, l, serve(b, &calls), nil)
		if le := limitErr(t, err); le.Digest != l.Digest {
			t.Errorf("%s: %v", name, err)
		}
	}
	c3, _ := Open(dir, 1<<20)
	h, err = c3.Get(ctx, l, serve(b, &calls), nil)
	if err != nil || h.Entries != 50 {
		t.Fatalf("reopened without limits: %v, %d entries (want 50)", err, h.Entries)
	}
	h.Release()
	if calls.Load() != 1 {
		t.Errorf("fetched %d times, want 1 (the rest are hits)", calls.Load())
	}
}

func reader(b []byte) func() io.ReadCloser {
	return func() io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }
}

// A download that fails for the downloader's own reasons (its image's
// budget) says nothing about the layer: a Get waiting on it downloads the
// layer itself instead of inheriting the error.
func TestWaiterIgnoresAnotherImagesBudget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, _ := Open(t.TempDir(), 1<<20)
	b, l := blob(t, strings.Repeat("x", 4096))
	release := make(chan struct{})
	var calls atomic.Int32
	first := true
	var mu sync.Mutex
	fetch := func(context.Context) (io.ReadCloser, error) {
		calls.Add(1)
		mu.Lock()
		wait := first
		first = false
		mu.Unlock()
		if wait {
			<-release
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	errA := make(chan error, 1)
	go func() {
		_, err := c.Get(ctx, l, fetch, NewBudget(ImageLimits{Bytes: Limit{100, "analysis.max_image_bytes"}}))
		errA <- err
	}()
	for calls.Load() == 0 { // A is downloading
		time.Sleep(time.Millisecond)
	}
	errB := make(chan error, 1)
	go func() {
		h, err := c.Get(ctx, l, fetch, NewBudget(ImageLimits{}))
		if err == nil {
			h.Release()
		}
		errB <- err
	}()
	time.Sleep(20 * time.Millisecond) // B waits on A's download
	close(release)
	if le := limitErr(t, <-errA); !le.Image {
		t.Errorf("A: %v, want its image's limit", le)
	}
	if err := <-errB; err != nil {
		t.Errorf("B inherited A's budget: %v", err)
	}
}
