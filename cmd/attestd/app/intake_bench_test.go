package app

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/test/loadgen"
)

// BenchmarkIntakeHTTP measures durable webhook intake end to end: a real HTTP
// client on loopback POSTs Distribution events; the receiver authenticates,
// parses, filters and commits them to bbolt (the store's group commit)
// before answering 202. Reports events/s acknowledged and the p50/p99
// latency of the POSTs.
//
// Two kinds of load: open loop ("rate=R": R events/s offered on a fixed
// schedule whatever the answers, latency counted from the scheduled send,
// so a stall is not hidden by senders that wait), and closed loop
// ("senders=N": N senders, each POSTing again as soon as answered — the
// most the server acknowledges at that concurrency). b.N events in all
// (-benchtime 20000x: a burst of 20,000 pushes).
func BenchmarkIntakeHTTP(b *testing.B) {
	// Distribution sends one event per POST; an envelope may carry several
	// (other senders, or a registry that batches).
	for _, l := range []loadgen.Load{{Rate: 20000, Per: 10}, {Rate: 20000, Per: 1}, {Rate: 10000, Per: 1}, {Senders: 8, Per: 10}, {Senders: 64, Per: 1}} {
		b.Run(l.String(), func(b *testing.B) { benchIntake(b, l) })
	}
}

func benchIntake(b *testing.B, l loadgen.Load) {
	db, err := store.Open(filepath.Join(b.TempDir(), "a.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	benchSink(b, &intakeSink{db: db, wake: func() {}, log: slog.New(slog.DiscardHandler)}, l)
	want := (b.N+l.Per-1)/l.Per*l.Per + warmEvents
	st, _ := db.Stats(context.Background())
	if st.Jobs[store.JobPending] != want {
		b.Fatalf("%d jobs pending, want %d", st.Jobs[store.JobPending], want)
	}
}

// BenchmarkIntakeCeiling is BenchmarkIntakeHTTP with a sink that stores
// nothing: the ceiling of the HTTP path on this machine (client and server
// sharing its cores, auth, parse, filter) before durability costs anything.
func BenchmarkIntakeCeiling(b *testing.B) {
	for _, l := range []loadgen.Load{{Rate: 20000, Per: 1}, {Senders: 64, Per: 1}, {Rate: 20000, Per: 10}, {Senders: 8, Per: 10}} {
		b.Run(l.String(), func(b *testing.B) { benchSink(b, nopSink{}, l) })
	}
}

type nopSink struct{}

func (nopSink) Accept(_ context.Context, evs []watch.Event) (watch.Accepted, error) {
	return watch.Accepted{Queued: len(evs)}, nil
}

// warmEvents are sent before the measured load (events 0 to warmEvents-1),
// so that it finds open connections and a grown heap, as a running
// daemon's intake does: 64 concurrent POSTs of 4 events each.
const warmEvents = 64 * 4

func warmUp(b *testing.B, url string, client *http.Client) {
	var wg sync.WaitGroup
	for s := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := loadgen.Post(client, url, "Bearer bench-secret", loadgen.DistributionBody(s*4, 4, benchRegistry, true)); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
}

// benchRegistry is the registry the benchmark's events name.
const benchRegistry = "127.0.0.1:5000"

// benchSink drives sink through a real receiver on loopback with l, b.N
// events in all; reports events/s and the p50/p99 POST latency.
func benchSink(b *testing.B, sink watch.Sink, l loadgen.Load) {
	auth, _ := watch.NewHeader("Authorization", "Bearer bench-secret")
	filter := watch.Filter{Rules: []watch.Rule{{Registry: benchRegistry, Repositories: []string{"**"}}}}
	recv, err := watch.NewReceiver("bench", watch.Distribution{Registry: benchRegistry}, auth, filter, sink, watch.ReceiverOptions{})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	warmUp(b, srv.URL, client)
	posts := (b.N + l.Per - 1) / l.Per
	b.ResetTimer()
	start := time.Now()
	lat, err := loadgen.Run(l, posts, func(i int) error {
		return loadgen.Post(client, srv.URL, "Bearer bench-secret", loadgen.DistributionBody(warmEvents+i*l.Per, l.Per, benchRegistry, true))
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(posts*l.Per)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
