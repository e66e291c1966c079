package layers

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// tarOf returns a tar holding one file with content.
func tarOf(t *testing.T, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(content))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// blob returns a gzip layer (a tar of one file with content) and its
// descriptor.
func blob(t *testing.T, content string) ([]byte, Layer) {
	t.Helper()
	return gz(t, tarOf(t, content))
}

// gz compresses plain as a gzip layer and describes it.
func gz(t *testing.T, plain []byte) ([]byte, Layer) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(plain)
	zw.Close()
	b := buf.Bytes()
	return b, Layer{Digest: sum(b), DiffID: sum(plain), MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Size: int64(len(b))}
}

func serve(b []byte, calls *atomic.Int32) Fetch {
	return func(context.Context) (io.ReadCloser, error) {
		calls.Add(1)
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

func TestGetFetchesOnceAndVerifies(t *testing.T) {
	ctx := context.Background()
	c, err := Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	b, l := blob(t, strings.Repeat("layer content ", 1000))
	var calls atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := c.Get(ctx, l, serve(b, &calls), nil)
			if err != nil {
				t.Error(err)
				return
			}
			defer h.Release()
			got, _ := os.ReadFile(h.Path)
			if sum(got) != l.DiffID || h.Entries != 1 {
				t.Error("cached tar is not the uncompressed content")
			}
		}()
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("8 concurrent Gets fetched %d times, want 1", n)
	}
	if st := c.Stats(); st.Fetches != 1 || st.Hits != 7 {
		t.Errorf("stats %+v", st)
	}
}

func TestGetRejectsWrongContent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c, _ := Open(dir, 1<<20)
	b, l := blob(t, "the real layer")
	other, _ := blob(t, "something else")
	var calls atomic.Int32
	for name, tc := range map[string]struct {
		l    Layer
		body []byte
		want string
	}{
		"wrong blob":    {l, other, "registry served the wrong content"},
		"wrong diff ID": {Layer{Digest: l.Digest, DiffID: sum([]byte("x")), MediaType: l.MediaType, Size: l.Size}, b, "config says diff ID"},
		"wrong size":    {Layer{Digest: l.Digest, DiffID: l.DiffID, MediaType: l.MediaType, Size: l.Size + 1}, b, "manifest says"},
		"not gzip":      {Layer{Digest: sum([]byte("plain")), MediaType: l.MediaType, Size: 5}, []byte("plain"), "not"},
		"not a tar":     {Layer{Digest: sum([]byte("plain, not a tar")), MediaType: "application/vnd.oci.image.layer.v1.tar", Size: 16}, []byte("plain, not a tar"), "not a readable tar"},
		// A manifest that declares 0 for a blob with bytes bounds it at 0,
		// not at nothing.
		"zero size": {Layer{Digest: l.Digest, DiffID: l.DiffID, MediaType: l.MediaType}, b, "larger than the 0 bytes its manifest declares"},
	} {
		_, err := c.Get(ctx, tc.l, serve(tc.body, &calls), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
	des, _ := os.ReadDir(dir)
	if len(des) != 0 || c.Stats().Entries != 0 {
		t.Errorf("failed downloads left %d files, %d entries", len(des), c.Stats().Entries)
	}
}

func TestEvictsLeastRecentlyUsedIdle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c, _ := Open(dir, 6000) // room for two layers of a 1000-byte file (2560-byte tars)
	var calls atomic.Int32
	get := func(content string) *Handle {
		b, l := blob(t, content)
		h, err := c.Get(ctx, l, serve(b, &calls), nil)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	a := get(strings.Repeat("a", 1000))
	a.Release()
	time.Sleep(10 * time.Millisecond)
	b := get(strings.Repeat("b", 1000))
	b.Release()
	time.Sleep(10 * time.Millisecond)
	get(strings.Repeat("a", 1000)).Release() // a is now the most recent
	cHeld := get(strings.Repeat("c", 1000))  // evicts b, not a
	if _, err := os.Stat(b.Path); !os.IsNotExist(err) {
		t.Errorf("b (least recently used) not evicted: %v", err)
	}
	if _, err := os.Stat(a.Path); err != nil {
		t.Errorf("a evicted: %v", err)
	}
	// A held layer is never evicted, even over the cap.
	d := get(strings.Repeat("d", 1000))
	e := get(strings.Repeat("e", 1000))
	for _, h := range []*Handle{cHeld, d, e} {
		if _, err := os.Stat(h.Path); err != nil {
			t.Errorf("held layer %s evicted", h.Digest)
		}
	}
	cHeld.Release()
	d.Release()
	e.Release()
	if st := c.Stats(); st.Bytes > 6000 {
		t.Errorf("after release the cache holds %d bytes > cap", st.Bytes)
	}

	// Reopen: partial downloads are removed, layers are indexed.
	os.WriteFile(filepath.Join(dir, "partial-123"), []byte("x"), 0o600)
	c2, err := Open(dir, 6000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "partial-123")); !os.IsNotExist(err) {
		t.Error("partial download survived Open")
	}
	if c2.Stats().Entries == 0 {
		t.Error("reopened cache forgot its layers")
	}
}

// What a manifest declares belongs to that manifest: an attacker's image
// declaring a shared layer one byte short fails, and a legitimate image
// waiting on the same download fetches the layer itself instead of
// inheriting that (permanent) error.
func TestWaiterDoesNotInheritAnotherManifestsDeclaredSize(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, _ := Open(t.TempDir(), 1<<20)
	b, good := blob(t, strings.Repeat("x", 4096))
	bad := good
	bad.Size = good.Size - 1
	release := make(chan struct{})
	var calls atomic.Int32
	fetch := func(context.Context) (io.ReadCloser, error) {
		if calls.Add(1) == 1 {
			<-release // the attacker's download is the one in flight
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	errA := make(chan error, 1)
	go func() { _, err := c.Get(ctx, bad, fetch, nil); errA <- err }()
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	errB := make(chan error, 1)
	go func() {
		h, err := c.Get(ctx, good, fetch, nil)
		if err == nil {
			h.Release()
		}
		errB <- err
	}()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := <-errA; !errors.Is(err, ErrTooLarge) {
		t.Errorf("attacker's Get: %v, want ErrTooLarge", err)
	}
	if err := <-errB; err != nil {
		t.Errorf("legitimate Get inherited the other manifest's error: %v", err)
	}
}
