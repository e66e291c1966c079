package loadgen

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestRawPoster(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch {
		case r.Method != http.MethodPost || r.Header.Get("Authorization") != "Bearer x" || r.Header.Get("Content-Type") != "application/json":
			http.Error(w, "bad request line or headers", http.StatusBadRequest)
		case string(b) == "fail":
			http.Error(w, "refused: "+string(b), http.StatusServiceUnavailable)
		case string(b) == "close":
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusAccepted)
		default:
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write(b) // echoed: the poster must discard it
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	p, err := NewRawPoster(srv.URL+"/hooks/x?token=1", "Bearer x", "application/json", http.StatusAccepted)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range 50 {
		if err := p.Post([]byte(strings.Repeat("e", i*100))); err != nil {
			t.Fatalf("post %d: %v", i, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 50 sequential posts, want 1 (keep-alive)", n)
	}
	if err := p.Post([]byte("fail")); err == nil || !strings.Contains(err.Error(), "status 503") || !strings.Contains(err.Error(), "refused: fail") {
		t.Fatalf("503 answer: err = %v, want the status and the server's message", err)
	}
	if err := p.Post([]byte("close")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if err := p.Post([]byte("{}")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if _, err := NewRawPoster("https://example.com/x", "", "a/b", 202); err == nil {
		t.Fatal("https URL accepted")
	}
}
