// Command benche2e is `make bench-e2e`: the stock-CLI pipeline that attestd
// replaces against the real attestd daemon, side by side in one run on the
// project's own local stack (Debian docker-registry sending webhooks, Fulcio,
// TSA, Rekor v2 with a 1 s checkpoint, our OIDC issuer):
//
//   - per image (Debian minbase, static Go, node app; each run on a fresh
//     digest): the CLI pipeline (syft, cosign attest ×3, cosign sign, crane
//     copy of the image and of its referrers fallback tag, cosign verify on
//     the prod reference) against attestd (push → prod tag, cosign verify on
//     the prod reference), plus attestd's per-stage times (its /metrics
//     stage histogram) and the floor (every layer read once + one Rekor
//     round);
//   - fleet: N images on a shared Debian base pushed at once, the CLI
//     pipeline at P = 1, 2, 4 against attestd, in images/min;
//   - registry requests per image, from the registry's access log.
//
// Both clocks start when the image push has finished (push time is
// excluded from both), except attestd's fleet clock, which starts when the
// first of the N pushes finished (conservative: the rest of the pushing is
// on attestd's clock).
//
//	go run ./test/cmd/benche2e [-runs 3] [-fleet 20] [-cli-fleet N] [-parallel 1,2,4] [-workers 0] [-images debian,static-go,node] [-o bin/bench-e2e.txt] [-cpuprofile bin/fleet.pprof -profile-for 30s]
//
// The report goes to stdout and to -o; progress to stderr. Nothing here
// asserts on timing: the targets are printed next to the figures.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/attestd/attestd/test/fixture"
	"github.com/attestd/attestd/test/stack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benche2e:", err)
		os.Exit(1)
	}
}

// spec is one image measured on its own.
type spec struct {
	name  string
	build func(context.Context, fixture.Options) (v1.Image, error)
}

// specs are the images measured one by one, in report order.
var specs = []spec{
	{"debian", fixture.Debian},
	{"static-go", fixture.StaticGo},
	{"node", fixture.Node},
}

func run() error {
	runs := flag.Int("runs", 3, "runs per image and pipeline (medians are reported)")
	fleet := flag.Int("fleet", 20, "images in attestd's fleet on a shared Debian base (0: no fleet)")
	cliFleet := flag.Int("cli-fleet", 0, "images in each CLI fleet (0: as many as -fleet); a sequential pipeline's rate does not depend on N, and 200 images through it take half an hour")
	parallel := flag.String("parallel", "1,2,4", "CLI pipelines in parallel for the fleet, comma-separated")
	workers := flag.Int("workers", 0, "attestd workers (0: the daemon's default)")
	only := flag.String("images", "debian,static-go,node", "images measured one by one, comma-separated (empty: none)")
	out := flag.String("o", "bin/bench-e2e.txt", "also write the report here (relative to the repository root)")
	keep := flag.Bool("keep", false, "keep the work directory (logs of the stack and of each daemon) after a passing run")
	timeout := flag.Duration("timeout", 40*time.Minute, "give up after this long")
	cpuProfile := flag.String("cpuprofile", "", "write the daemon's CPU profile of the attestd fleet here, relative to the repository root (turns on api.pprof)")
	profileFor := flag.Duration("profile-for", 30*time.Second, "how much of the attestd fleet -cpuprofile covers, from its first push")
	flag.Parse()
	if *runs < 1 {
		return fmt.Errorf("-runs %d: want at least 1", *runs)
	}
	var ps []int
	for _, s := range strings.Split(*parallel, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || p < 1 {
			return fmt.Errorf("-parallel %q: want positive integers separated by commas", *parallel)
		}
		ps = append(ps, p)
	}
	var names []string
	if *only != "" {
		names = strings.Split(*only, ",")
	}
	var chosen []spec
	for _, n := range names {
		i := slices.IndexFunc(specs, func(s spec) bool { return s.name == n })
		if i < 0 {
			return fmt.Errorf("-images: unknown image %q (have debian, static-go, node)", n)
		}
		chosen = append(chosen, specs[i])
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	began := time.Now()

	root, err := stack.RepoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "attestd-benche2e-")
	if err != nil {
		return err
	}
	b, err := setup(ctx, root, dir, *workers)
	if b != nil {
		defer b.close()
	}
	if err != nil {
		return fmt.Errorf("%w (work directory kept: %s)", err, dir)
	}

	if *cpuProfile != "" && !filepath.IsAbs(*cpuProfile) {
		*cpuProfile = filepath.Join(root, *cpuProfile)
	}
	b.cpuProfile, b.profileFor = *cpuProfile, *profileFor
	if *cliFleet <= 0 {
		*cliFleet = *fleet
	}
	rep, err := b.measure(ctx, chosen, *runs, *fleet, *cliFleet, ps)
	if err != nil {
		return fmt.Errorf("%w\n(work directory kept: %s; the stack's logs in %s/stack/logs, each daemon's in %s/daemons)", err, dir, dir, dir)
	}
	rep.elapsed = time.Since(began)

	var buf bytes.Buffer
	rep.write(&buf)
	os.Stdout.Write(buf.Bytes())
	path := *out
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "benche2e: report written to %s\n", path)
	if *keep {
		fmt.Fprintf(os.Stderr, "benche2e: work directory kept: %s\n", dir)
	} else {
		b.close()
		os.RemoveAll(dir)
	}
	return nil
}

// started is when the process started (never changed): progress lines
// say how far into the run they are.
var started = time.Now()

// logf says what the harness is doing, on stderr.
func logf(format string, args ...any) {
	e := time.Since(started).Round(time.Second)
	fmt.Fprintf(os.Stderr, "benche2e [%02d:%02d]: "+format+"\n", append([]any{int(e.Minutes()), int(e.Seconds()) % 60}, args...)...)
}

func host() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s, %d CPUs, %s/%s, %s", h, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
