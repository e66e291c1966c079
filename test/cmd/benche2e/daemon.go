package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/test/stack"
)

// Bounds of the daemon's lifecycle and of each call to its API.
const (
	daemonReadyTimeout = 60 * time.Second
	daemonStopTimeout  = 15 * time.Second
	apiTimeout         = 10 * time.Second
	relayTimeout       = 10 * time.Second
	// pollPerImage is how often the harness asks the daemon about one
	// image: a loopback GET, small next to a stage.
	pollPerImage = 50 * time.Millisecond
	pollFleet    = 250 * time.Millisecond
)

// relay receives the registry's notifications and passes them on to the
// daemon being measured, unchanged (body and headers), answering what it
// answers. The registry's notification URL is fixed when the stack starts,
// while each measurement starts a fresh daemon on a new port; and with no
// daemon up (CLI runs, restarts) the relay acknowledges and drops, so the
// registry never queues retries that would delay a later delivery.
type relay struct {
	mu     sync.Mutex
	target string // the daemon's hook URL; "" drops
}

func (r *relay) set(target string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target = target
}

func (r *relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 4<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	target := r.target
	r.mu.Unlock()
	if target == "" {
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), relayTimeout)
	defer cancel()
	fwd, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fwd.Header = req.Header.Clone()
	resp, err := http.DefaultClient.Do(fwd)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// daemon is one `attestd serve` process with its own data directory.
type daemon struct {
	name    string
	base    string // http://127.0.0.1:PORT
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	client  *http.Client
	token   string // the API's, from <data_dir>/api.token once ready
}

// daemonConfig is the daemon's configuration: attestd's defaults plus what
// this stack needs — the registry and its webhook, keyless signing against
// the local Sigstore, the vulnerability database the harness installed, and
// the gate promoting staging/* to prod/*. The reconciliation poller is off:
// each measurement starts on an empty data directory, and a poller would
// backfill every image of the runs before it.
func (b *bench) daemonConfig(addr, dataDir string) string {
	workers := ""
	if b.workers > 0 {
		workers = fmt.Sprintf("workers: %d\n", b.workers)
	}
	if b.cpuProfile != "" {
		workers += "api: {pprof: true}\n"
	}
	reg := b.stk.RegistryHost
	return fmt.Sprintf(`listen: %s
data_dir: %s
%slog: {level: info, format: json}
registries:
  - host: %s
watch:
  - registry: %s
    repositories: ["staging/*"]
sources:
  - name: registry
    type: distribution
    registry: %s
    auth: {type: header, header: Authorization, secret_file: %s}
intake:
  poll_interval: 0s
signing:
  signing_config: %s
  trusted_root: %s
  token_file: %s
analysis:
  vulnerabilities:
    db_dir: %s
gate:
  policy: %s
  signed_timestamps: 1
  promotion:
    - from: "%s/staging/*"
      to: "%s/prod/{name}"
      tags: semver
`, addr, dataDir, workers, reg, reg, reg, b.secretFile, b.stk.SigningConfig, b.stk.TrustedRoot, b.tokenFile,
		b.vulnDB, b.policy, reg, reg)
}

// policy promotes every fixture: the bench measures the pipeline, not
// compliance, so no hardening check is required (Debian minbase runs as
// root with a shell) and every finding is tolerated; every attestation
// attestd makes is still required and verified.
const policy = `version: 1
name: bench-e2e
mode: enforce
signers:
  - issuer: %s
    subject: %s
require: [signature, spdx, cyclonedx, provenance, hardening, vuln]
provenance:
  builder_ids: [https://attestd.dev/builder/observer-only]
vulnerabilities:
  max_severity: critical
tags:
  allow: ['v\d+\.\d+\.\d+']
`

// startDaemon starts a daemon on a fresh data directory, waits until
// /readyz answers 200 and points the relay at it.
func (b *bench) startDaemon(ctx context.Context, name string) (*daemon, error) {
	dataDir := filepath.Join(b.dir, "daemons", name)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dataDir, "attestd.yaml")
	if err := os.WriteFile(cfg, []byte(b.daemonConfig(addr, filepath.Join(dataDir, "data"))), 0o644); err != nil {
		return nil, err
	}
	d := &daemon{name: name, base: "http://" + addr, logPath: filepath.Join(dataDir, "attestd.log"), done: make(chan struct{}),
		client: &http.Client{Timeout: apiTimeout}}
	lf, err := os.Create(d.logPath)
	if err != nil {
		return nil, err
	}
	// Not CommandContext: stop() ends it with SIGTERM, as an operator would.
	d.cmd = exec.Command(b.bin, "serve", "-c", cfg)
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start attestd: %w", err)
	}
	go func() {
		d.err = d.cmd.Wait()
		lf.Close()
		close(d.done)
	}()
	deadline := time.Now().Add(daemonReadyTimeout)
	for {
		if code, _, err := d.get(ctx, "/readyz", nil); err == nil && code == http.StatusOK {
			break
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("attestd (%s) exited before it was ready (%v):\n%s", name, d.err, tailFile(d.logPath, 20))
		case <-ctx.Done():
			d.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("attestd (%s) not ready at %s/readyz after %s:\n%s", name, d.base, daemonReadyTimeout, tailFile(d.logPath, 20))
		}
	}
	// serve created its API token before it listened.
	if d.token, err = stack.APIToken(filepath.Join(dataDir, "data", "api.token")); err != nil {
		d.stop()
		return nil, err
	}
	b.relay.set(d.base + "/hooks/registry")
	return d, nil
}

// readAPIToken returns the first token of an API token file (one per line,
// # comments), as attestd's CLI sends it.
// stop points the relay away and ends the daemon: SIGTERM, SIGKILL after
// daemonStopTimeout.
func (b *bench) stopDaemon(d *daemon) {
	b.relay.set("")
	d.stop()
}

func (d *daemon) stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(daemonStopTimeout):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

func (d *daemon) get(ctx context.Context, path string, q url.Values) (int, []byte, error) {
	u := d.base + path
	if q != nil {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	if d.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// cpuProfile writes the daemon's CPU profile over the next d (pprof is on
// when the bench was asked for a profile) to path.
func (d *daemon) cpuProfile(ctx context.Context, dur time.Duration, path string) error {
	ctx, cancel := context.WithTimeout(ctx, dur+apiTimeout)
	defer cancel()
	u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", d.base, int(dur.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if d.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /debug/pprof/profile: %d %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	return os.WriteFile(path, body, 0o644)
}

// record is GET /api/v1/image; nil while the daemon does not know ref yet.
func (d *daemon) record(ctx context.Context, ref string) (*store.Record, error) {
	code, body, err := d.get(ctx, "/api/v1/image", url.Values{"ref": {ref}})
	if err != nil {
		return nil, fmt.Errorf("GET /api/v1/image: %w", err)
	}
	if code == http.StatusNotFound {
		return nil, nil
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /api/v1/image?ref=%s: %d %s", ref, code, bytes.TrimSpace(body))
	}
	var rec store.Record
	if err := json.Unmarshal(body, &rec); err != nil {
		return nil, fmt.Errorf("GET /api/v1/image: %w", err)
	}
	return &rec, nil
}

// records is GET /api/v1/images?prefix=.
func (d *daemon) records(ctx context.Context, prefix string) ([]store.Record, error) {
	code, body, err := d.get(ctx, "/api/v1/images", url.Values{"prefix": {prefix}})
	if err != nil {
		return nil, fmt.Errorf("GET /api/v1/images: %w", err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /api/v1/images?prefix=%s: %d %s", prefix, code, bytes.TrimSpace(body))
	}
	var recs []store.Record
	if err := json.Unmarshal(body, &recs); err != nil {
		return nil, fmt.Errorf("GET /api/v1/images: %w", err)
	}
	return recs, nil
}

// errNotPromoted is a final state other than promoted.
var errNotPromoted = errors.New("not promoted")

// waitPromoted polls the daemon until ref's record is in a final state and
// returns it; an error unless that state is promoted.
func (d *daemon) waitPromoted(ctx context.Context, ref string, timeout time.Duration) (*store.Record, error) {
	deadline := time.Now().Add(timeout)
	last := "unknown to the daemon (no webhook delivery yet?)"
	for {
		rec, err := d.record(ctx, ref)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			last = string(rec.State)
			if rec.State.Final() {
				if rec.State != store.StatePromoted {
					return rec, fmt.Errorf("%s: %w: %s", ref, errNotPromoted, describe(rec))
				}
				return rec, nil
			}
		}
		if time.Now().After(deadline) {
			return rec, fmt.Errorf("waited %s for attestd to promote %s; last state: %s\n%s", timeout, ref, last, tailFile(d.logPath, 15))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pollPerImage):
		}
	}
}

// idleTimeout bounds the wait for the daemon's queue to empty once the
// image it measures is promoted.
const idleTimeout = 30 * time.Second

// waitIdle polls GET /api/v1/stats until no job is pending or claimed: the
// image's job has ended, with whatever it does after the promotion.
func (d *daemon) waitIdle(ctx context.Context) error {
	deadline := time.Now().Add(idleTimeout)
	for {
		code, body, err := d.get(ctx, "/api/v1/stats", nil)
		if err != nil {
			return fmt.Errorf("GET /api/v1/stats: %w", err)
		}
		if code != http.StatusOK {
			return fmt.Errorf("GET /api/v1/stats: %d %s", code, bytes.TrimSpace(body))
		}
		var st store.Stats
		if err := json.Unmarshal(body, &st); err != nil {
			return fmt.Errorf("GET /api/v1/stats: %w", err)
		}
		busy := st.Jobs[store.JobPending] + st.Jobs[store.JobClaimed]
		if busy == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %s for attestd's queue to empty after the promotion: %d jobs pending or claimed", idleTimeout, busy)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollPerImage):
		}
	}
}

// describe says why a record ended where it did.
func describe(rec *store.Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state %s", rec.State)
	if rec.LastError != "" {
		fmt.Fprintf(&b, ", error: %s", rec.LastError)
	}
	if rec.Decision != nil && len(rec.Decision.Reasons) > 0 {
		fmt.Fprintf(&b, ", decision: %s", strings.Join(rec.Decision.Reasons, "; "))
	}
	stages := make([]string, 0, len(rec.Stages))
	for name, s := range rec.Stages {
		if s.Status != store.StagePassed {
			stages = append(stages, fmt.Sprintf("%s %s %s", name, s.Status, s.Detail))
		}
	}
	sort.Strings(stages)
	if len(stages) > 0 {
		fmt.Fprintf(&b, ", stages: %s", strings.Join(stages, "; "))
	}
	return b.String()
}

// metrics is the daemon's /metrics as sample name{labels} → value.
func (d *daemon) metrics(ctx context.Context) (map[string]float64, error) {
	code, body, err := d.get(ctx, "/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %d", code)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			m[l[:i]] = v
		}
	}
	return m, sc.Err()
}

var stageSample = regexp.MustCompile(`^attestd_stage_duration_seconds_(sum|count)\{stage="([^"]+)",result="([^"]+)"\}$`)

// stageTimes are the stage histogram's sums and counts between two scrapes,
// by stage ("sign", or "sign (error)" for failed calls).
func stageTimes(before, after map[string]float64) (sum map[string]time.Duration, count map[string]int) {
	sum, count = map[string]time.Duration{}, map[string]int{}
	for k, v := range after {
		m := stageSample.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		name := m[2]
		if m[3] != "ok" {
			name += " (" + m[3] + ")"
		}
		delta := v - before[k]
		if m[1] == "sum" {
			sum[name] = time.Duration(delta * float64(time.Second))
		} else {
			count[name] = int(delta)
		}
	}
	return sum, count
}

// registryResponses sums attestd_registry_responses_total between two
// scrapes: attestd's own count of registry responses, retries included.
func registryResponses(before, after map[string]float64) int {
	n := 0.0
	for k, v := range after {
		if strings.HasPrefix(k, "attestd_registry_responses_total{") {
			n += v - before[k]
		}
	}
	return int(n)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
