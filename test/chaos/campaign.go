package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/test/fixture"
	"github.com/attestd/attestd/test/stack"
)

// Options size a campaign. Short() is what `make test` runs; Full() is
// `make chaos`.
type Options struct {
	Root string    // the attestd checkout (go build ./cmd/attestd runs there)
	Dir  string    // work directory: stack, data, logs
	Log  io.Writer // progress lines

	Images      int           // images pushed in the kill phase
	Burst       int           // images per burst
	Kills       int           // SIGKILLs during the kill phase
	FaultImages int           // images pushed per fault step
	FaultWindow time.Duration // random faults per component
	Outage      time.Duration // each component down
	DiskHold    time.Duration // how long the disk stays full
	ManyFiles   int           // files in the "million tiny files" layer
	BombBytes   int64         // expanded size of the decompression bomb
	IndexFanout int           // children of the hostile index
	Referrers   int           // junk referrers on one image
	DiskBytes   int64         // size of the data directory's filesystem
	RSSCeiling  int64         // peak RSS the daemon must stay under
	Seed        uint64
}

// Short is the version `make test` runs (a few minutes on 2 cores).
func Short() Options {
	return Options{Images: 20, Burst: 5, Kills: 6, FaultImages: 2, FaultWindow: 6 * time.Second, Outage: 8 * time.Second,
		DiskHold: 8 * time.Second, ManyFiles: 100_000, BombBytes: 3 << 30, IndexFanout: 300, Referrers: 1100,
		DiskBytes: 1 << 30, RSSCeiling: 1536 << 20}
}

// Full is `make chaos`.
func Full() Options {
	return Options{Images: 200, Burst: 20, Kills: 50, FaultImages: 5, FaultWindow: 20 * time.Second, Outage: 30 * time.Second,
		DiskHold: 30 * time.Second, ManyFiles: 1_000_000, BombBytes: 16 << 30, IndexFanout: 10_000, Referrers: 10_000,
		DiskBytes: 2 << 30, RSSCeiling: 1536 << 20}
}

// identity is the campaign's signing identity (its OIDC issuer signs it).
const identity = "chaos@attestd.test"

// pushed is one image the campaign pushed and what must become of it.
type pushed struct {
	ref     string // host/repo@digest as the daemon names it (the proxy's host)
	repo    string // staging/chaos-N
	tag     string
	digest  string
	allow   bool // the policy allows it: it must be promoted
	hostile string
	at      time.Time
	phase   string
}

// Campaign is one run.
type Campaign struct {
	o   Options
	stk *stack.Stack
	rly *relay
	srv *http.Server
	d   *daemon

	prox      map[string]*Proxy // registry, fulcio, tsa, rekor
	regHost   string            // the daemon's name for the registry: the proxy
	bases     map[string]v1.Image
	tokenFile string
	mount     string // tmpfs mounted for the data directory, "" if none

	mu     sync.Mutex
	images []*pushed
	next   int
	events []string // timeline
	rep    Report
	rnd    *rand.Rand
}

func (c *Campaign) logf(format string, args ...any) {
	line := fmt.Sprintf("[chaos %s] %s", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	c.mu.Lock()
	c.events = append(c.events, line)
	c.mu.Unlock()
	fmt.Fprintln(c.o.Log, line)
}

// Run runs the whole campaign and returns its report; the error is
// non-nil when the campaign could not run (the invariants are in the
// report).
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	c := &Campaign{o: o, prox: map[string]*Proxy{}, rnd: rand.New(rand.NewPCG(o.Seed, 7))}
	c.rep.Seed = o.Seed
	start := time.Now()
	defer c.close()
	if err := c.setup(ctx); err != nil {
		return nil, err
	}
	for _, ph := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"kill -9", c.killPhase},
		{"faults", c.faultPhase},
		{"disk full", c.diskPhase},
		{"hostile images", c.hostilePhase},
	} {
		c.logf("== phase: %s", ph.name)
		t := time.Now()
		if err := ph.fn(ctx); err != nil {
			return &c.rep, fmt.Errorf("phase %s: %w\n%s", ph.name, err, tail(c.d.logPath, 30))
		}
		c.rep.Phases = append(c.rep.Phases, phaseTime{ph.name, time.Since(t)})
	}
	if err := c.finish(ctx); err != nil {
		return &c.rep, err
	}
	c.rep.Wall = time.Since(start)
	return &c.rep, nil
}

func (c *Campaign) close() {
	if c.d != nil {
		c.d.stop()
	}
	for _, p := range c.prox {
		p.Close()
	}
	if c.srv != nil {
		_ = c.srv.Close()
	}
	if c.stk != nil {
		c.stk.Stop()
	}
	if c.mount != "" {
		_ = syscall.Unmount(c.mount, syscall.MNT_DETACH)
	}
}

func (c *Campaign) setup(ctx context.Context) error {
	if err := os.MkdirAll(c.o.Dir, 0o755); err != nil {
		return err
	}
	// The daemon's address is fixed for the whole run: the relay points at
	// it across restarts.
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	c.rly = newRelay("http://" + addr + "/hooks/registry")
	c.srv = &http.Server{Handler: c.rly, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = c.srv.Serve(ln) }()

	c.logf("starting the stack (Debian registry → relay → attestd, Fulcio, TSA, Rekor v2, OIDC issuer)")
	c.stk, err = stack.Start(ctx, stack.Options{Dir: filepath.Join(c.o.Dir, "stack"), Log: c.o.Log,
		NotifyURL: "http://" + ln.Addr().String() + "/hooks/registry", NotifyHeaders: map[string]string{"Authorization": "Bearer chaos"}})
	if err != nil {
		return err
	}
	for name, target := range map[string]string{
		"registry": "http://" + c.stk.RegistryHost, "fulcio": c.stk.FulcioURL,
		"tsa": strings.TrimSuffix(c.stk.TSAURL, "/api/v1/timestamp"), "rekor": c.stk.RekorURL,
	} {
		p, err := NewProxy(name, target, c.o.Seed+uint64(len(name)))
		if err != nil {
			return err
		}
		c.prox[name] = p
	}
	c.regHost = c.prox["registry"].Host

	// The signing config names the proxies; the trusted root is the
	// stack's (verification does not depend on where a service answered).
	sc, err := os.ReadFile(c.stk.SigningConfig)
	if err != nil {
		return err
	}
	s := string(sc)
	for name, from := range map[string]string{"fulcio": c.stk.FulcioURL, "tsa": strings.TrimSuffix(c.stk.TSAURL, "/api/v1/timestamp"), "rekor": c.stk.RekorURL} {
		if !strings.Contains(s, from) {
			return fmt.Errorf("signing config %s does not name %s at %s", c.stk.SigningConfig, name, from)
		}
		s = strings.ReplaceAll(s, from, c.prox[name].URL)
	}
	signingConfig := filepath.Join(c.o.Dir, "signing_config.json")
	if err := os.WriteFile(signingConfig, []byte(s), 0o644); err != nil {
		return err
	}

	bin := filepath.Join(c.o.Dir, "attestd")
	c.logf("building attestd")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./cmd/attestd")
	build.Dir, build.Stdout, build.Stderr = c.o.Root, c.o.Log, c.o.Log
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := build.Run(); err != nil {
		return fmt.Errorf("build attestd: %w", err)
	}

	dataDir := filepath.Join(c.o.Dir, "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		opts := fmt.Sprintf("size=%d,mode=0700", c.o.DiskBytes)
		if err := syscall.Mount("tmpfs", dataDir, "tmpfs", 0, opts); err != nil {
			c.logf("data directory stays on the host disk (tmpfs mount failed: %v): the disk-full phase is skipped", err)
		} else {
			c.mount = dataDir
		}
	} else {
		c.logf("not root: the data directory stays on the host disk and the disk-full phase is skipped")
	}

	tok, err := c.stk.Issuer.Token(identity, 6*time.Hour)
	if err != nil {
		return err
	}
	c.tokenFile = filepath.Join(c.o.Dir, "oidc-token")
	secret, policyFile := filepath.Join(c.o.Dir, "hook-secret"), filepath.Join(c.o.Dir, "policy.yaml")
	vulnDB := filepath.Join(c.o.Dir, "vulndb")
	cfgFile := filepath.Join(c.o.Dir, "attestd.yaml")
	for path, data := range map[string]string{
		c.tokenFile: tok,
		secret:      "Bearer chaos\n",
		policyFile:  fmt.Sprintf(policy, c.stk.IssuerURL, identity),
		cfgFile:     c.config(addr, dataDir, secret, signingConfig, vulnDB, policyFile),
	} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			return err
		}
	}
	if err := fixture.VulnDB(ctx, bin, c.o.Root, c.o.Dir, cfgFile); err != nil {
		return err
	}
	c.d = &daemon{bin: bin, cfg: cfgFile, addr: addr, dataDir: dataDir, logPath: filepath.Join(c.o.Dir, "attestd.log"),
		client: &http.Client{Timeout: 15 * time.Second}}
	c.d.token = func() string {
		t, _ := stack.APIToken(filepath.Join(dataDir, "api.token"))
		return t
	}

	c.bases = map[string]v1.Image{}
	for _, arch := range []string{"amd64", "arm64"} {
		b, err := baseImage(arch)
		if err != nil {
			return err
		}
		// Pushed once where nothing watches: later pushes mount its layer.
		if _, err := pushImage(ctx, c.stk.RegistryHost+"/chaos-base/"+arch+":latest", b); err != nil {
			return err
		}
		c.bases[arch] = b
	}
	c.logf("starting attestd (data directory %s, tmpfs: %v)", dataDir, c.mount != "")
	return c.d.start(ctx)
}

// config is the daemon's configuration: every dependency through its proxy,
// the poller on (webhooks are lossy), retries quick enough for a short run.
func (c *Campaign) config(addr, dataDir, secret, signingConfig, vulnDB, policyFile string) string {
	return fmt.Sprintf(`listen: %s
data_dir: %s
workers: 4
log: {level: info, format: json}
jobs:
  backoff: 1s
  max_backoff: 10s
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
  poll_interval: 20s
signing:
  signing_config: %s
  trusted_root: %s
  token_file: %s
analysis:
  layer_cache: 256MiB
  max_layer_bytes: 128MiB
  max_image_bytes: 256MiB
  max_compressed_layer_bytes: 128MiB
  max_compressed_image_bytes: 256MiB
  vulnerabilities:
    db_dir: %s
gate:
  policy: %s
  signed_timestamps: 1
  promotion:
    - from: "%s/staging/*"
      to: "%s/prod/{name}"
      tags: semver
`, addr, dataDir, c.regHost, c.regHost, c.regHost, secret, signingConfig, c.stk.TrustedRoot, c.tokenFile,
		vulnDB, policyFile, c.regHost, c.regHost)
}

// policy requires every attestation and a nonroot user: images whose
// config says root are denied.
const policy = `version: 1
name: chaos
mode: enforce
signers:
  - issuer: %s
    subject: %s
require: [signature, spdx, cyclonedx, provenance, hardening, vuln]
provenance:
  builder_ids: [https://attestd.dev/builder/observer-only]
vulnerabilities:
  max_severity: critical
hardening:
  required: [nonroot-user]
tags:
  allow: ['v\d+\.\d+\.\d+']
`

// push pushes one app image (multi-platform when multi) to
// staging/chaos-<n> and remembers what must become of it.
func (c *Campaign) push(ctx context.Context, phase string, allow, multi bool) (*pushed, error) {
	c.mu.Lock()
	n := c.next
	c.next++
	c.mu.Unlock()
	user := "65532"
	if !allow {
		user = ""
	}
	repo, tag := fmt.Sprintf("staging/chaos-%d", n), fmt.Sprintf("v1.0.%d", n)
	var t remote.Taggable
	var err error
	if multi {
		t, err = multiPlatform(c.bases, user)
	} else {
		t, err = appImage(c.bases["amd64"], user)
	}
	if err != nil {
		return nil, err
	}
	d, err := pushImage(ctx, c.stk.RegistryHost+"/"+repo+":"+tag, t)
	if err != nil {
		return nil, err
	}
	p := &pushed{ref: c.regHost + "/" + repo + "@" + d.DigestStr(), repo: repo, tag: tag, digest: d.DigestStr(), allow: allow, at: time.Now(), phase: phase}
	c.mu.Lock()
	c.images = append(c.images, p)
	c.mu.Unlock()
	return p, nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

var errTimeout = errors.New("timed out")
