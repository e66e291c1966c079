// Command benchintake measures durable webhook intake of the real attestd
// daemon from a separate load-generator process, as a registry sends it: it
// builds and starts `attestd serve` (a Distribution source with a bearer
// header), POSTs Distribution events to it over loopback, and reports
// events/s acknowledged and the p50/p99/max latency of the POSTs — each
// acknowledged once committed to the database (the store's group commit) —
// then checks that every acknowledged event is a record with a job.
//
// Loads (loadgen.Load): open loop (rate=R: R events/s offered on a fixed
// schedule whatever the answers; latency counts from the scheduled send, so
// a stall is not hidden by senders that wait) at 20k and 10k events/s, and
// closed loop (senders=N: each POSTs again as soon as answered), with 10
// and 1 events per POST, sent by this process over raw HTTP/1.1 keep-alive
// connections ("go/…", loadgen.RawPoster: prebuilt requests, a minimal
// response reader — on a 2-core machine the load generator's own cost
// decides how much CPU the daemon gets, and net/http's client costs
// several times more per request); and closed loops driven by wrk
// ("wrk/…", Debian's package, installed when missing), with 1 and 10
// events per POST.
// The wrk loads also run against attestd's own receiver with a sink that
// stores nothing, served by this process ("none (nothing stored)"): the
// ceiling the machine sets before durability costs anything. A last table
// puts the two side by side per wrk load (medians over the runs): durable
// events/s ÷ the ceiling's, and durable p99 ÷ the ceiling's.
// Events are untagged pushes, whose jobs wait 3 s (the index-folding
// delay), so that no job runs during the burst.
//
//	go run ./test/cmd/benchintake [-events 20000] [-runs 3] [-wrk=false] [-wrk-duration 2s] [-only wrk] [-load rate=15000/events-per-post=10]
//
// (`make bench-intake`.)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/test/loadgen"
	"github.com/attestd/attestd/test/stack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchintake:", err)
		os.Exit(1)
	}
}

type result struct {
	events        float64 // per second
	p50, p99, max time.Duration
	over10        string // share of POSTs answered after more than 10 ms (Go loads)
}

const registryHost = "127.0.0.1:5000" // named in the events; never contacted during the burst

func run() error {
	events := flag.Int("events", 20000, "events per run (a burst of pushes)")
	runs := flag.Int("runs", 3, "runs per mode and load (each is reported)")
	useWrk := flag.Bool("wrk", true, "also drive the daemon with wrk (Debian's package, installed when missing)")
	wrkDuration := flag.Duration("wrk-duration", 2*time.Second, "how long each wrk load runs")
	only := flag.String("only", "", "run only the loads whose name contains this")
	var extra []loadgen.Load
	flag.Func("load", "a further Go load, e.g. rate=15000/events-per-post=10 or senders=8/events-per-post=10 (repeatable; -only go/rate=15000 runs just it)", func(s string) error {
		l, err := loadgen.ParseLoad(s)
		if err == nil {
			extra = append(extra, l)
		}
		return err
	})
	flag.Parse()
	root, err := stack.RepoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "attestd-benchintake-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "attestd")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/attestd")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := build.Run(); err != nil {
		return fmt.Errorf("build attestd: %w", err)
	}
	secret := filepath.Join(dir, "hook-secret")
	if err := os.WriteFile(secret, []byte("Bearer bench-secret\n"), 0o600); err != nil {
		return err
	}
	var drivers []driver
	for _, l := range append([]loadgen.Load{{Rate: 20000, Per: 10}, {Rate: 20000, Per: 1}, {Rate: 10000, Per: 1}, {Senders: 8, Per: 10}, {Senders: 64, Per: 1}}, extra...) {
		drivers = append(drivers, goDriver(l, *events))
	}
	var ceilings []wrkLoad // the same loads against a receiver that stores nothing
	if *useWrk {
		for _, l := range []wrkLoad{{Threads: 1, Conns: 64, Per: 1}, {Threads: 1, Conns: 16, Per: 1}, {Threads: 1, Conns: 16, Per: 10}} {
			l.Duration = *wrkDuration
			drivers = append(drivers, wrkDriver(dir, l))
			ceilings = append(ceilings, l)
		}
	}
	if *only != "" {
		drivers = slices.DeleteFunc(drivers, func(d driver) bool { return !strings.Contains(d.name, *only) })
		ceilings = slices.DeleteFunc(ceilings, func(l wrkLoad) bool { return !strings.Contains(l.String(), *only) })
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stored\tload\tevents/s\tp50\tp99\tmax\t> 10 ms\t")
	ceiling, durable := map[string][]result{}, map[string][]result{}
	for _, l := range ceilings {
		for range *runs {
			res, err := runCeiling(dir, l)
			if err != nil {
				return fmt.Errorf("ceiling, %s: %w", l, err)
			}
			ceiling[l.String()] = append(ceiling[l.String()], res)
			fmt.Fprintf(tw, "none (nothing stored)\t%s\t%.0f\t%s\t%s\t%s\t\t\n", l, res.events, ms(res.p50), ms(res.p99), ms(res.max))
			tw.Flush()
		}
	}
	for k, d := range drivers {
		for r := range *runs {
			res, err := runOnce(bin, filepath.Join(dir, fmt.Sprintf("run-%d-%d", k, r)), secret, d)
			if err != nil {
				return fmt.Errorf("%s: %w", d.name, err)
			}
			durable[d.name] = append(durable[d.name], res)
			fmt.Fprintf(tw, "committed (durable)\t%s\t%.0f\t%s\t%s\t%s\t%s\t\n", d.name, res.events, ms(res.p50), ms(res.p99), ms(res.max), res.over10)
			tw.Flush()
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return printRatios(os.Stdout, ceilings, ceiling, durable)
}

// printRatios puts durable intake beside the ceiling for each wrk load that
// ran against both: medians over the runs, and their ratios.
func printRatios(w io.Writer, loads []wrkLoad, ceiling, durable map[string][]result) error {
	if len(loads) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\ndurable ÷ ceiling (medians over the runs):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "load\tevents/s\tceiling events/s\tthroughput ratio\tp99\tceiling p99\tp99 ratio\t")
	for _, l := range loads {
		c, d := ceiling[l.String()], durable[l.String()]
		if len(c) == 0 || len(d) == 0 {
			continue
		}
		ce, de := median(c, func(r result) float64 { return r.events }), median(d, func(r result) float64 { return r.events })
		cp, dp := median(c, func(r result) float64 { return float64(r.p99) }), median(d, func(r result) float64 { return float64(r.p99) })
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.2f\t%s\t%s\t%.1f×\t\n", l, de, ce, de/ce, ms(time.Duration(dp)), ms(time.Duration(cp)), dp/cp)
	}
	return tw.Flush()
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// A driver sends a load to the daemon and says how many events were
// acknowledged and at what rate and latencies (result's events, p50, p99,
// max). slack: events possibly stored beyond those counted (wrk stops
// mid-request: what it had in flight may have been acknowledged too).
type driver struct {
	name  string
	slack int
	send  func(s *sender) (events int, r result, err error)
}

func goDriver(l loadgen.Load, n int) driver {
	return driver{name: "go/" + l.String(), send: func(s *sender) (int, result, error) {
		start := time.Now()
		lat, err := s.send(l, n)
		if err != nil {
			return 0, result{}, err
		}
		elapsed := time.Since(start)
		slices.Sort(lat)
		slow := len(lat) - sort.Search(len(lat), func(i int) bool { return lat[i] > 10*time.Millisecond })
		return n, result{events: float64(n) / elapsed.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100], max: lat[len(lat)-1],
			over10: fmt.Sprintf("%.1f%%", 100*float64(slow)/float64(len(lat)))}, nil
	}}
}

func wrkDriver(dir string, l wrkLoad) driver {
	return driver{name: l.String(), slack: l.Conns * l.Per, send: func(s *sender) (int, result, error) {
		w, err := runWrk(context.Background(), dir, s.url, l)
		return w.requests * l.Per, w.result(l), err
	}}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// runOnce starts a daemon on a fresh data directory, sends d's load, checks
// that every acknowledged event is a job, stops it and checks the database.
func runOnce(bin, dataDir, secret string, d driver) (result, error) {
	var res result
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return res, err
	}
	cfg := filepath.Join(dataDir, "attestd.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`registries:
  - host: %[1]s
watch:
  - registry: %[1]s
    repositories: ["**"]
sources:
  - name: registry
    type: distribution
    registry: %[1]s
    auth: {type: header, header: Authorization, secret_file: %[2]s}
intake: {poll_interval: 0s}
workers: 1
jobs: {backoff: 1h}
log: {level: warn}
`, registryHost, secret)), 0o600); err != nil {
		return res, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.Create(filepath.Join(dataDir, "daemon.log"))
	if err != nil {
		return res, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "serve", "-c", cfg, "--data-dir", dataDir, "--listen", addr)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer cmd.Process.Kill()
	base := "http://" + addr
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}, Timeout: time.Minute}
	if err := waitHealthy(client, base); err != nil {
		return res, err
	}
	raw, err := loadgen.NewRawPoster(base+"/hooks/registry", "Bearer bench-secret", "application/vnd.docker.distribution.events.v1+json", http.StatusAccepted)
	if err != nil {
		return res, err
	}
	defer raw.Close()
	s := &sender{raw: raw, url: base + "/hooks/registry"}
	s.warmUp()
	n, res, err := d.send(s)
	if err != nil {
		return res, err
	}
	// Acknowledged means committed: the jobs are there already.
	want := n + warmEvents
	var st store.Stats
	if err := getJSON(client, base+"/api/v1/stats", &st); err != nil {
		return res, err
	}
	jobs := 0 // in any state: jobs start to run 3 s after their event
	for _, c := range st.Jobs {
		jobs += c
	}
	if jobs < want {
		return res, fmt.Errorf("%d events acknowledged, %d jobs", want, jobs)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return res, err
	}
	if err := cmd.Wait(); err != nil {
		return res, fmt.Errorf("daemon exit: %w (log: %s)", err, logf.Name())
	}
	if err := check(filepath.Join(dataDir, "attestd.db"), want, d.slack); err != nil {
		return res, err
	}
	return res, nil
}

// check opens the stopped daemon's database: every event is a record
// (and at most slack more).
func check(path string, want, slack int) error {
	db, err := store.Open(path, store.ReadOnly())
	if err != nil {
		return err
	}
	defer db.Close()
	recs, err := db.Images(context.Background(), registryHost+"/bench/")
	if err != nil {
		return err
	}
	if len(recs) < want || len(recs) > want+slack {
		return fmt.Errorf("%d images recorded, want %d (up to %d more)", len(recs), want, slack)
	}
	return nil
}

func waitHealthy(c *http.Client, base string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := c.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("attestd not healthy at %s after 30s", base)
}

func getJSON(c *http.Client, url string, v any) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// sender POSTs Distribution envelopes.
type sender struct {
	raw *loadgen.RawPoster
	url string
}

func (s *sender) post(b []byte) error {
	return s.raw.Post(b)
}

// warmEvents are sent before the measured load (64 concurrent POSTs of 4),
// so that it finds open connections and a warm daemon.
const warmEvents = 64 * 4

func (s *sender) warmUp() {
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.post(loadgen.DistributionBody(1<<30+i*4, 4, registryHost, false)) }()
	}
	wg.Wait()
}

// send sends n events with l and returns each POST's latency. Events are
// untagged pushes (see the package doc).
func (s *sender) send(l loadgen.Load, n int) ([]time.Duration, error) {
	posts := (n + l.Per - 1) / l.Per
	bodies := make([][]byte, posts) // built ahead: the sender's own work stays out of the figures
	for i := range posts {
		bodies[i] = loadgen.DistributionBody(i*l.Per, min(l.Per, n-i*l.Per), registryHost, false)
	}
	return loadgen.Run(l, posts, func(i int) error { return s.post(bodies[i]) })
}
