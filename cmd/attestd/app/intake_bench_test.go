package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/store"
)

// BenchmarkIntakeHTTP measures durable webhook intake end to end: a real HTTP
// client on loopback POSTs one Distribution event per request (as the
// registry does) from 64 concurrent senders; the receiver authenticates,
// parses, filters and commits to bbolt before answering 202. Reports
// events/s and the p99 request latency.
func BenchmarkIntakeHTTP(b *testing.B) {
	// Distribution sends one event per POST; an envelope may carry several
	// (other senders, or a registry that batches).
	for _, per := range []int{1, 10} {
		b.Run(fmt.Sprintf("events-per-post=%d", per), func(b *testing.B) { benchIntake(b, per) })
	}
}

func benchIntake(b *testing.B, perPost int) {
	db, err := store.Open(filepath.Join(b.TempDir(), "a.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	sink := &intakeSink{db: db, wake: func() {}, log: slog.New(slog.DiscardHandler)}
	auth, _ := watch.NewHeader("Authorization", "Bearer bench-secret")
	filter := watch.Filter{Rules: []watch.Rule{{Registry: "127.0.0.1:5000", Repositories: []string{"**"}}}}
	recv, err := watch.NewReceiver("bench", watch.Distribution{}, auth, filter, sink, watch.ReceiverOptions{})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 128}
	client := &http.Client{Transport: tr}

	const senders = 64
	var next atomic.Int64
	posts := (b.N + perPost - 1) / perPost
	lat := make([]time.Duration, posts)
	body := func(i int64) []byte {
		buf := []byte(`{"events":[`)
		for k := range perPost {
			n := i*int64(perPost) + int64(k)
			if k > 0 {
				buf = append(buf, ',')
			}
			buf = fmt.Appendf(buf, `{"id":"ev-%d","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%064x","repository":"bench/app","tag":"v%d"},"request":{"host":"127.0.0.1:5000","useragent":"docker/27"}}`, n, n, n)
		}
		return append(buf, "]}"...)
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(posts) {
					return
				}
				req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, srv.URL, bytes.NewReader(body(i)))
				req.Header.Set("Content-Type", watch.DistributionMediaType)
				req.Header.Set("Authorization", "Bearer bench-secret")
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[i] = time.Since(t0)
				if resp.StatusCode != http.StatusAccepted {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(posts*perPost)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	st, _ := db.Stats(context.Background())
	if st.Jobs[store.JobPending] != posts*perPost {
		b.Fatalf("%d jobs pending, want %d", st.Jobs[store.JobPending], posts*perPost)
	}
}
