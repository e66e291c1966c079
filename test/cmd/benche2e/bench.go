package main

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"

	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/test/fixture"
	"github.com/attestd/attestd/test/stack"
)

// identity signs for both pipelines (our OIDC issuer's email claim).
const identity = "bench@attestd.local"

// Bounds of the waits that are not per command.
const (
	buildTimeout    = 15 * time.Minute // go build of cmd/attestd on a cold cache
	vulnDBTimeout   = 5 * time.Minute
	imageTimeout    = 5 * time.Minute // one image: push finished → promoted
	fleetBase       = 2 * time.Minute // a fleet: this plus fleetPerImage per image
	fleetPerImage   = 30 * time.Second
	verifyTimeout   = 2 * time.Minute
	shutdownTimeout = 5 * time.Second
	// rekorRounds is the least number of Rekor rounds the floor takes the
	// median of.
	rekorRounds = 5
	// pushers is how many pushes run at once when a fleet is pushed.
	pushers = 4
)

// bench is the stack, the relay and what every measurement shares.
type bench struct {
	root, dir string
	stk       *stack.Stack
	relay     *relay
	relaySrv  *http.Server
	reg       regLog
	bin       string // attestd
	version   string
	workers   int
	// cpuProfile: where the daemon's CPU profile of the attestd fleet goes
	// ("" for none), profileFor how much of the fleet it covers.
	cpuProfile string
	profileFor time.Duration
	token      string // the CLI's OIDC token
	tokenFile  string // the daemon's
	secretFile string // the webhook's Authorization header
	policy     string
	vulnDB     string
	closeOnce  sync.Once
}

func setup(ctx context.Context, root, dir string, workers int) (*bench, error) {
	b := &bench{root: root, dir: dir, workers: workers, relay: &relay{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b.relaySrv = &http.Server{Handler: b.relay, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = b.relaySrv.Serve(ln) }()

	logf("starting the stack (Debian registry → webhook relay, Fulcio, TSA, Rekor v2, OIDC issuer)")
	b.stk, err = stack.Start(ctx, stack.Options{Dir: filepath.Join(dir, "stack"), Log: os.Stderr,
		NotifyURL: "http://" + ln.Addr().String() + "/hooks/registry", NotifyHeaders: map[string]string{"Authorization": "Bearer bench-e2e"}})
	if err != nil {
		return b, err
	}
	b.reg = regLog{path: b.stk.LogPath("registry")}
	if b.token, err = b.stk.Issuer.Token(identity, 3*time.Hour); err != nil {
		return b, err
	}
	b.tokenFile, b.secretFile, b.policy = filepath.Join(dir, "oidc-token"), filepath.Join(dir, "hook-secret"), filepath.Join(dir, "policy.yaml")
	for path, data := range map[string]string{
		b.tokenFile:  b.token,
		b.secretFile: "Bearer bench-e2e\n",
		b.policy:     fmt.Sprintf(policy, b.stk.IssuerURL, identity),
	} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			return b, err
		}
	}

	b.bin = filepath.Join(dir, "attestd")
	logf("building attestd (go build ./cmd/attestd)")
	start := time.Now()
	bctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	build := exec.CommandContext(bctx, "go", "build", "-trimpath", "-o", b.bin, "./cmd/attestd")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := build.Run(); err != nil {
		return b, fmt.Errorf("build attestd: %w", err)
	}
	logf("built attestd in %s", time.Since(start).Round(time.Second))
	b.version = "dev"
	if v, err := exec.CommandContext(ctx, b.bin, "version").Output(); err == nil {
		b.version, _, _ = strings.Cut(strings.TrimSpace(string(v)), "\n")
	}
	if v, err := exec.CommandContext(ctx, "git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
		b.version += " (git " + strings.TrimSpace(string(v)) + ")"
	}
	return b, b.installVulnDB(ctx)
}

// installVulnDB builds the offline vulnerability database from the Go
// vulnerability database records in the repository and imports it with
// attestd's own CLI, into a directory every daemon reads.
func (b *bench) installVulnDB(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, vulnDBTimeout)
	defer cancel()
	start := time.Now()
	b.vulnDB = filepath.Join(b.dir, "vulndb")
	cfg := filepath.Join(b.dir, "vulndb.yaml")
	if err := os.WriteFile(cfg, []byte(b.daemonConfig("127.0.0.1:0", filepath.Join(b.dir, "vulndb-data"))), 0o644); err != nil {
		return err
	}
	if err := fixture.VulnDB(ctx, b.bin, b.root, b.dir, cfg); err != nil {
		return err
	}
	logf("vulnerability database built and imported in %s", time.Since(start).Round(100*time.Millisecond))
	return nil
}

func (b *bench) close() {
	b.closeOnce.Do(func() {
		if b.stk != nil {
			b.stk.Stop()
		}
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		_ = b.relaySrv.Shutdown(ctx)
	})
}

// measure runs everything and returns the figures.
func (b *bench) measure(ctx context.Context, chosen []spec, runs, fleetN, cliFleetN int, ps []int) (*report, error) {
	rep := &report{runs: runs, workers: b.workers, version: b.version, fleetN: fleetN, cliFleetN: cliFleetN, host: host()}
	fo := fixture.Options{RepoRoot: b.root, Logf: func(f string, a ...any) { logf(f, a...) }}
	bases := map[string]v1.Image{}
	need := append([]spec(nil), chosen...)
	if fleetN > 0 && !slices.ContainsFunc(chosen, isDebian) {
		need = append(need, specs[slices.IndexFunc(specs, isDebian)])
	}
	for _, s := range need {
		start := time.Now()
		img, err := s.build(ctx, fo)
		if err != nil {
			return nil, fmt.Errorf("fixture %s: %w", s.name, err)
		}
		if bases[s.name], err = b.pushBase(ctx, s.name, img); err != nil {
			return nil, err
		}
		logf("fixture %s built and pushed to bench-base/%s in %s", s.name, s.name, time.Since(start).Round(100*time.Millisecond))
	}
	if n, err := b.reg.count(); err != nil || n == 0 {
		return nil, fmt.Errorf("the registry's access log %s has no request lines after the pushes (%d, %v): cannot count requests", b.reg.path, n, err)
	}

	for _, s := range chosen {
		rep.images = append(rep.images, &imageResult{name: s.name})
	}
	for r := range runs {
		for _, ir := range rep.images {
			base := bases[ir.name]
			c, err := b.cliOnce(ctx, ir.name, base, r)
			if err != nil {
				return nil, fmt.Errorf("CLI pipeline, %s, run %d: %w", ir.name, r+1, err)
			}
			ir.cli = append(ir.cli, c)
			a, err := b.attestdOnce(ctx, ir.name, base, r)
			if err != nil {
				return nil, fmt.Errorf("attestd, %s, run %d: %w", ir.name, r+1, err)
			}
			ir.att = append(ir.att, a)
			lr, err := readLayers(ctx, a.ref)
			if err != nil {
				return nil, err
			}
			ir.floor, ir.gz, ir.raw = append(ir.floor, lr.took), lr.gz, lr.raw
			logf("%s run %d/%d: CLI %s, attestd %s (promoted after %s), floor layers %s",
				ir.name, r+1, runs, secs(c.total), secs(a.total), secs(a.promoted), secs(lr.took))
		}
	}
	for range max(runs, rekorRounds) {
		// A random phase against the 1 s checkpoint: back to back, each
		// round would start just after a checkpoint, the worst case.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(mrand.Int64N(int64(time.Second)))):
		}
		d, err := rekorRound(ctx, b.stk.RekorURL)
		if err != nil {
			return nil, err
		}
		rep.rekor = append(rep.rekor, d)
	}
	logf("Rekor rounds: %v", rep.rekor)

	if fleetN > 0 {
		for _, p := range ps {
			f, err := b.cliFleet(ctx, bases["debian"], cliFleetN, p)
			if err != nil {
				return nil, fmt.Errorf("CLI fleet, P=%d: %w", p, err)
			}
			rep.fleet = append(rep.fleet, f)
		}
		f, err := b.attestdFleet(ctx, bases["debian"], fleetN)
		if err != nil {
			return nil, fmt.Errorf("attestd fleet: %w", err)
		}
		rep.fleet = append(rep.fleet, f)
	}
	return rep, nil
}

// isDebian: the fleet's shared base.
func isDebian(s spec) bool { return s.name == "debian" }

// cliSample is one CLI pipeline run on one image.
type cliSample struct {
	total time.Duration // push finished → cosign verify passed on the prod tag
	steps map[string]time.Duration
	reqs  requests
}

// cliOnce pushes a fresh image to cli-staging/<name> (no daemon runs, and
// none watches it) and runs the CLI pipeline on it, verify included.
func (b *bench) cliOnce(ctx context.Context, img string, base v1.Image, run int) (cliSample, error) {
	var s cliSample
	im, err := fresh(base)
	if err != nil {
		return s, err
	}
	tag := fmt.Sprintf("v1.0.%d", run)
	src, err := b.push(ctx, "cli-staging/"+img+":"+tag, im)
	if err != nil {
		return s, err
	}
	dst, err := name.NewTag(b.stk.RegistryHost + "/cli-prod/" + img + ":" + tag)
	if err != nil {
		return s, err
	}
	off0, err := b.reg.offset()
	if err != nil {
		return s, err
	}
	start := time.Now()
	if s.steps, err = b.cliPipeline(ctx, src, dst, true); err != nil {
		return s, err
	}
	s.total = time.Since(start)
	off1, err := b.reg.offset()
	if err != nil {
		return s, err
	}
	s.reqs, err = b.reg.requests(off0, off1)
	return s, err
}

// attSample is one attestd run on one image.
type attSample struct {
	ref      name.Digest   // the image pushed to staging
	total    time.Duration // push finished → cosign verify passed on the prod tag
	promoted time.Duration // push finished → the daemon says promoted
	intake   time.Duration // push finished → the daemon's record exists (webhook → job)
	verify   time.Duration
	stages   map[string]time.Duration // the daemon's stage histogram
	reqs     requests                 // registry access log, push finished → promoted
	counter  int                      // attestd_registry_responses_total over the same job
}

// attestdOnce starts a daemon on an empty data directory (no cache of any
// earlier run), pushes a fresh image to staging/<name> and times it from
// the end of the push until attestd has promoted it to prod/<name> and the
// stock cosign CLI verifies the prod tag.
func (b *bench) attestdOnce(ctx context.Context, img string, base v1.Image, run int) (attSample, error) {
	var s attSample
	d, err := b.startDaemon(ctx, fmt.Sprintf("%s-%d", img, run+1))
	if err != nil {
		return s, err
	}
	defer b.stopDaemon(d)
	m0, err := d.metrics(ctx)
	if err != nil {
		return s, err
	}
	im, err := fresh(base)
	if err != nil {
		return s, err
	}
	tag := fmt.Sprintf("v1.0.%d", run)
	ref, err := b.push(ctx, "staging/"+img+":"+tag, im)
	if err != nil {
		return s, err
	}
	pushed := time.Now()
	s.ref = ref
	off0, err := b.reg.offset()
	if err != nil {
		return s, err
	}
	rec, err := d.waitPromoted(ctx, ref.String(), imageTimeout)
	if err != nil {
		return s, err
	}
	s.promoted = time.Since(pushed)
	// Requests are counted until the job has ended, not just until the
	// state says promoted; the clock has stopped already.
	if err := d.waitIdle(ctx); err != nil {
		return s, err
	}
	off1, err := b.reg.offset()
	if err != nil {
		return s, err
	}
	prod, err := name.NewTag(b.stk.RegistryHost + "/prod/" + img + ":" + tag)
	if err != nil {
		return s, err
	}
	if s.verify, err = b.verifyProd(ctx, prod, ref.DigestStr()); err != nil {
		return s, err
	}
	s.total = s.promoted + s.verify
	s.intake = rec.CreatedAt.Sub(pushed)
	m1, err := d.metrics(ctx)
	if err != nil {
		return s, err
	}
	s.stages, _ = stageTimes(m0, m1)
	s.counter = registryResponses(m0, m1)
	s.reqs, err = b.reg.requests(off0, off1)
	return s, err
}

// verifyProd checks that prod names digest, then times the stock cosign
// CLI verifying it (the tag check is the harness's, off the clock).
func (b *bench) verifyProd(ctx context.Context, prod name.Tag, digest string) (time.Duration, error) {
	vctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	desc, err := remote.Head(prod, remoteOpts(vctx)...)
	if err != nil {
		return 0, fmt.Errorf("prod tag %s: %w", prod, err)
	}
	if desc.Digest.String() != digest {
		return 0, fmt.Errorf("prod tag %s is %s, want %s", prod, desc.Digest, digest)
	}
	start := time.Now()
	if _, err := b.stk.Cosign(vctx, append(append([]string{"verify"}, b.stk.VerifyArgs(identity)...), prod.String())...); err != nil {
		return 0, fmt.Errorf("cosign verify %s: %w", prod, err)
	}
	return time.Since(start), nil
}

// fleetResult is one fleet measurement.
type fleetResult struct {
	label  string
	n      int
	wall   time.Duration
	push   time.Duration // pushing the N images (not on the clock, but see attestdFleet)
	reqs   requests      // attestd only
	stages map[string]time.Duration
	counts map[string]int
}

// cliFleet pushes n fresh images on base to cli-staging/fleet-p<P>-<i>,
// then runs the CLI pipeline (without cosign verify, as attestd's fleet
// clock stops at the prod tags) on all of them, p at a time. One image is
// verified with cosign after the clock stopped.
func (b *bench) cliFleet(ctx context.Context, base v1.Image, n, p int) (fleetResult, error) {
	f := fleetResult{label: fmt.Sprintf("CLI pipeline, P=%d", p), n: n}
	srcs, dsts := make([]name.Digest, n), make([]name.Tag, n)
	pstart := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pushers)
	for i := range n {
		g.Go(func() error {
			im, err := fresh(base)
			if err != nil {
				return err
			}
			repo := fmt.Sprintf("fleet-p%d-%03d", p, i)
			if srcs[i], err = b.push(gctx, "cli-staging/"+repo+":v1.0.0", im); err != nil {
				return err
			}
			dsts[i], err = name.NewTag(b.stk.RegistryHost + "/cli-prod/" + repo + ":v1.0.0")
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return f, err
	}
	f.push = time.Since(pstart)
	logf("fleet: CLI P=%d on %d images (pushed in %s)…", p, n, secs(f.push))
	start := time.Now()
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(p)
	for i := range n {
		g.Go(func() error {
			_, err := b.cliPipeline(gctx, srcs[i], dsts[i], false)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return f, err
	}
	f.wall = time.Since(start)
	logf("fleet: CLI P=%d: %d images in %s (%.1f images/min)", p, n, secs(f.wall), perMin(n, f.wall))
	_, err := b.verifyProd(ctx, dsts[n-1], srcs[n-1].DigestStr())
	return f, err
}

// attestdFleet starts a daemon on an empty data directory, pushes n fresh
// images on base to staging/fleet-<i> at once (pushers at a time), and
// waits until attestd has promoted every one. The clock starts when the
// first push finished — attestd may start then — so the rest of the pushing
// is on attestd's clock.
func (b *bench) attestdFleet(ctx context.Context, base v1.Image, n int) (fleetResult, error) {
	workers := "default workers"
	if b.workers > 0 {
		workers = fmt.Sprintf("%d workers", b.workers)
	}
	f := fleetResult{label: "attestd (" + workers + ")", n: n}
	d, err := b.startDaemon(ctx, "fleet")
	if err != nil {
		return f, err
	}
	defer b.stopDaemon(d)
	m0, err := d.metrics(ctx)
	if err != nil {
		return f, err
	}
	images := make([]v1.Image, n)
	for i := range images {
		if images[i], err = fresh(base); err != nil {
			return f, err
		}
	}
	off0, err := b.reg.offset()
	if err != nil {
		return f, err
	}
	refs := make([]name.Digest, n)
	var mu sync.Mutex
	var first time.Time
	pstart := time.Now()
	if b.cpuProfile != "" {
		profiled := make(chan error, 1)
		go func() { profiled <- d.cpuProfile(ctx, b.profileFor, b.cpuProfile) }()
		defer func() {
			if err := <-profiled; err != nil {
				logf("fleet: no CPU profile: %v", err)
			} else {
				logf("fleet: the daemon's CPU profile of the first %s is in %s (go tool pprof -top %s)", b.profileFor, b.cpuProfile, b.cpuProfile)
			}
		}()
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pushers)
	for i := range n {
		g.Go(func() error {
			ref, err := b.push(gctx, fmt.Sprintf("staging/fleet-%03d:v1.0.0", i), images[i])
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			if first.IsZero() {
				first = time.Now()
			}
			refs[i] = ref
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return f, err
	}
	f.push = time.Since(pstart)
	logf("fleet: attestd on %d images (pushed in %s)…", n, secs(f.push))
	want := map[string]bool{}
	for _, r := range refs {
		want[r.String()] = true
	}
	timeout := fleetBase + time.Duration(n)*fleetPerImage
	deadline := time.Now().Add(timeout)
	for {
		recs, err := d.records(ctx, b.stk.RegistryHost+"/staging/fleet-")
		if err != nil {
			return f, err
		}
		promoted := 0
		for _, r := range recs {
			if !want[r.Ref] {
				continue
			}
			if r.State == store.StatePromoted {
				promoted++
			} else if r.State.Final() {
				return f, fmt.Errorf("%s: %w: %s", r.Ref, errNotPromoted, describe(&r))
			}
		}
		if promoted == n {
			break
		}
		if time.Now().After(deadline) {
			return f, fmt.Errorf("waited %s for attestd to promote %d images: %d promoted\n%s", timeout, n, promoted, tailFile(d.logPath, 15))
		}
		select {
		case <-ctx.Done():
			return f, ctx.Err()
		case <-time.After(pollFleet):
		}
	}
	f.wall = time.Since(first)
	logf("fleet: attestd: %d images in %s (%.1f images/min)", n, secs(f.wall), perMin(n, f.wall))
	if err := d.waitIdle(ctx); err != nil {
		return f, err
	}
	off1, err := b.reg.offset()
	if err != nil {
		return f, err
	}
	if f.reqs, err = b.reg.requests(off0, off1); err != nil {
		return f, err
	}
	m1, err := d.metrics(ctx)
	if err != nil {
		return f, err
	}
	f.stages, f.counts = stageTimes(m0, m1)
	prod, err := name.NewTag(fmt.Sprintf("%s/prod/fleet-%03d:v1.0.0", b.stk.RegistryHost, n-1))
	if err != nil {
		return f, err
	}
	if _, err := b.verifyProd(ctx, prod, refs[n-1].DigestStr()); err != nil {
		return f, fmt.Errorf("the fleet's last image: %w", err)
	}
	return f, nil
}

func perMin(n int, d time.Duration) float64 { return float64(n) / d.Minutes() }

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
