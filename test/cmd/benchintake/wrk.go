package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/test/stack"
)

// wrkLoad is a closed-loop load driven by wrk (Debian's package, C and
// epoll): Conns connections on Threads threads, each POSTing a new
// Distribution envelope of Per events as soon as the last was answered,
// for Duration. wrk spends a fraction of the CPU per request that Go's
// net/http client does, so on a 2-core machine it leaves the daemon most
// of a core more than the Go loads: its figures are the daemon's, the Go
// loads' are the daemon's and their own.
type wrkLoad struct {
	Threads, Conns, Per int
	Duration            time.Duration
}

func (l wrkLoad) String() string {
	return fmt.Sprintf("wrk/t=%d/c=%d/events-per-post=%d", l.Threads, l.Conns, l.Per)
}

// wrkScript builds a unique envelope per request (event IDs and digests
// numbered per thread, so no event is a duplicate) and prints the summary
// on one line the caller parses.
const wrkScript = `
local nthreads = 0
function setup(thread)
  thread:set("base", nthreads * 100000000)
  nthreads = nthreads + 1
end
local counter = 0
local per = %[1]d
local host = %[2]q
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/vnd.docker.distribution.events.v1+json"
wrk.headers["Authorization"] = "Bearer bench-secret"
function request()
  local evs = {}
  for k = 1, per do
    counter = counter + 1
    local n = base + counter
    evs[k] = string.format('{"id":"wrk-%%d","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%%064x","repository":"bench/app"},"request":{"host":"%%s","useragent":"docker/27"}}', n, n, host)
  end
  return wrk.format(nil, nil, nil, '{"events":[' .. table.concat(evs, ",") .. ']}')
end
function done(summary, latency)
  local e = summary.errors
  io.write(string.format("WRK %%d %%d %%d %%d %%d %%d %%d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
`

// wrkRun is what wrk measured.
type wrkRun struct {
	requests               int
	elapsed                time.Duration
	p50, p99, max          time.Duration
	socketErrs, statusErrs int
}

// result is the run as a table row of l's events.
func (w wrkRun) result(l wrkLoad) result {
	if w.elapsed <= 0 {
		return result{}
	}
	return result{events: float64(w.requests*l.Per) / w.elapsed.Seconds(), p50: w.p50, p99: w.p99, max: w.max}
}

// runWrk drives url with l and returns what wrk measured. Every request
// must have been answered 2xx.
func runWrk(ctx context.Context, dir, url string, l wrkLoad) (wrkRun, error) {
	var res wrkRun
	exe, err := stack.AptBinary(ctx, os.Stderr, "wrk", "wrk")
	if err != nil {
		return res, err
	}
	script := filepath.Join(dir, "intake.lua")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(wrkScript, l.Per, registryHost)), 0o600); err != nil {
		return res, err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, exe, "-t", strconv.Itoa(l.Threads), "-c", strconv.Itoa(l.Conns),
		"-d", l.Duration.String(), "--timeout", "10s", "-s", script, url)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return res, fmt.Errorf("wrk: %w\n%s", err, out.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		rest, ok := strings.CutPrefix(line, "WRK ")
		if !ok {
			continue
		}
		var f [7]int64
		for i, s := range strings.Fields(rest) {
			if i < len(f) {
				f[i], err = strconv.ParseInt(s, 10, 64)
				if err != nil {
					return res, fmt.Errorf("wrk summary %q: %w", line, err)
				}
			}
		}
		us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
		res = wrkRun{requests: int(f[0]), elapsed: us(f[1]), socketErrs: int(f[2]), statusErrs: int(f[3]),
			p50: us(f[4]), p99: us(f[5]), max: us(f[6])}
		if res.socketErrs+res.statusErrs > 0 {
			return res, fmt.Errorf("wrk: %d socket errors, %d non-2xx answers\n%s", res.socketErrs, res.statusErrs, out.String())
		}
		return res, nil
	}
	return res, fmt.Errorf("wrk printed no summary:\n%s", out.String())
}

// nopSink acknowledges without storing anything.
type nopSink struct{}

func (nopSink) Accept(_ context.Context, evs []watch.Event) (watch.Accepted, error) {
	return watch.Accepted{Queued: len(evs)}, nil
}

// runCeiling drives attestd's own receiver (the same authentication,
// parsing and filter as the daemon's Distribution source) with a sink that
// stores nothing, served by this process, with wrk load l: what the
// machine answers before anything is made durable — the ceiling of the
// daemon's figures for the same load.
func runCeiling(dir string, l wrkLoad) (result, error) {
	var res result
	auth, err := watch.NewHeader("Authorization", "Bearer bench-secret")
	if err != nil {
		return res, err
	}
	filter := watch.Filter{Rules: []watch.Rule{{Registry: registryHost, Repositories: []string{"**"}}}}
	recv, err := watch.NewReceiver("registry", watch.Distribution{Registry: registryHost}, auth, filter, nopSink{}, watch.ReceiverOptions{})
	if err != nil {
		return res, err
	}
	mux := http.NewServeMux()
	mux.Handle("POST /hooks/registry", recv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	w, err := runWrk(context.Background(), dir, "http://"+ln.Addr().String()+"/hooks/registry", l)
	return w.result(l), err
}
