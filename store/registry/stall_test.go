package registry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// A registry that stops sending is cut off after the stall timeout: before
// the headers (the attempt is retried) and in the middle of a body (the
// caller's Read fails with ErrStalled), instead of holding a worker until
// the job's timeout.
func TestStalledRegistryIsCutOff(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch r.URL.Path {
		case "/headers":
			if n == 1 {
				select { // the first attempt never answers
				case <-r.Context().Done():
				case <-release:
				}
				return
			}
			_, _ = io.WriteString(w, "second attempt")
		case "/body":
			_, _ = io.WriteString(w, "some bytes, then nothing")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}
	}))
	defer srv.Close()
	tr := newTransport(http.DefaultTransport, 0, 1, 2, slog.New(slog.DiscardHandler))
	tr.stall, tr.base = 100*time.Millisecond, time.Millisecond
	c := &http.Client{Transport: tr}

	start := time.Now()
	resp, err := c.Get(srv.URL + "/headers")
	if err != nil {
		t.Fatalf("a stall before the headers must be retried: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "second attempt" || time.Since(start) > 5*time.Second {
		t.Fatalf("got %q after %s", b, time.Since(start))
	}

	resp, err = c.Get(srv.URL + "/body")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("read of a stalled body: %v, want ErrStalled", err)
	}

	// A caller's own deadline is not reported as a stall.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	tr.stall = time.Minute
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/body", nil)
	resp, err = c.Do(req)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil || errors.Is(err, ErrStalled) {
		t.Fatalf("caller's deadline: %v", err)
	}
}

// slowReader yields data steadily (a chunk every 20ms), like a large layer
// uploaded over a link slower than the stall window.
type slowReader struct{ left int }

func (s *slowReader) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	time.Sleep(20 * time.Millisecond)
	n := min(len(p), 1024, s.left)
	s.left -= n
	return n, nil
}

// An upload that takes longer than the stall window while bytes flow is
// not a stall: registries answer a PATCH or PUT only once they have the
// whole body.
func TestSlowUploadIsNotAStall(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	tr := newTransport(http.DefaultTransport, 0, 1, 0, slog.New(slog.DiscardHandler))
	tr.stall = 150 * time.Millisecond
	c := &http.Client{Transport: tr}
	// 20 chunks × 20 ms: 400 ms of steady upload against a 150 ms window.
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v2/r/blobs/uploads/x?digest=sha256:00", &slowReader{left: 20 * 1024})
	req.ContentLength = 20 * 1024
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("a steady upload was cut off: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("status %d", resp.StatusCode)
	}
}
