package stack

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
)

// Readiness and shutdown bounds for the child processes.
const (
	readyTimeout = 60 * time.Second
	stopTimeout  = 10 * time.Second
	// tsaMetricsPort is hard-coded in timestamp-authority v2.1.3: one TSA per
	// machine at a time, so stacks take a machine-wide lock while they run one.
	tsaMetricsPort = 2112
)

// Options configure Start.
type Options struct {
	// Dir holds configs, data and logs (a test's t.TempDir(), or .demo/).
	Dir string
	// Log receives progress lines (nil: discard).
	Log io.Writer
	// NotifyURL, when set, is where the registry POSTs its notifications.
	NotifyURL string
	// NotifyHeaders are sent with each notification (e.g. Authorization).
	NotifyHeaders map[string]string
}

// Stack is a running set of real components.
type Stack struct {
	Dir string

	Issuer       *Issuer
	IssuerURL    string
	RegistryHost string // 127.0.0.1:PORT (plain HTTP, as ggcr assumes for loopback)
	FulcioURL    string
	TSAURL       string // the timestamp endpoint (…/api/v1/timestamp)
	RekorURL     string

	// TrustedRoot and SigningConfig are the files cosign and sigstore-go read.
	TrustedRoot   string
	SigningConfig string
	// SigningConfigTSAOnly names Fulcio and the TSA but no Rekor log.
	SigningConfigTSAOnly string
	// FulcioChain and TSAChain are the CA's and the TSA's certificate
	// chains (PEM): what classic-format verification reads.
	FulcioChain, TSAChain string
	CosignBin             string
	CraneBin              string
	SyftBin               string
	GrypeBin              string

	procs   []*proc
	unlocks []func()
	log     io.Writer
}

type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

// Start installs what is missing and starts everything. On error it stops
// what it started; the logs stay in Dir/logs.
func Start(ctx context.Context, o Options) (s *Stack, err error) {
	if o.Dir == "" {
		return nil, errors.New("stack: Options.Dir is required")
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	for _, d := range []string{"logs", "run", "rekor", "registry", "home", "tuf"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	s = &Stack{Dir: o.Dir, log: o.Log}
	defer func() {
		if err != nil {
			s.Stop()
			err = fmt.Errorf("%w\n(logs in %s)", err, filepath.Join(o.Dir, "logs"))
		}
	}()

	bins := map[string]string{}
	for _, t := range AllTools() {
		p, err := Install(ctx, t, o.Log)
		if err != nil {
			return s, err
		}
		bins[t.Name] = p
	}
	s.CosignBin, s.CraneBin, s.SyftBin, s.GrypeBin = bins["cosign"], bins["crane"], bins["syft"], bins["grype"]
	regBin, err := DockerRegistry(ctx, o.Log)
	if err != nil {
		return s, err
	}
	start := time.Now()

	if s.Issuer, err = StartIssuer(); err != nil {
		return s, fmt.Errorf("oidc issuer: %w", err)
	}
	s.IssuerURL = s.Issuer.URL

	// TSA first: it exits when :2112 is taken, and Fulcio must not take it.
	unlock, err := LockFile(ctx, filepath.Join(os.TempDir(), "attestd-tsa-2112.lock"), 5*time.Minute)
	if err != nil {
		return s, fmt.Errorf("timestamp authority: another stack holds port %d (the TSA's hard-coded metrics port): %w", tsaMetricsPort, err)
	}
	s.unlocks = append(s.unlocks, unlock)
	if err := portFree(tsaMetricsPort); err != nil {
		return s, fmt.Errorf("timestamp authority needs port %d for its metrics and it is taken (%v): stop whatever listens there (another `make stack`?)", tsaMetricsPort, err)
	}
	tsaPort := freePort()
	if err := s.spawn(ctx, "tsa", bins["timestamp-server"], "serve", "--host", "127.0.0.1", "--port", itoa(tsaPort),
		"--timestamp-signer", "memory", "--disable-ntp-monitoring"); err != nil {
		return s, err
	}
	tsaBase := "http://127.0.0.1:" + itoa(tsaPort)
	s.TSAURL = tsaBase + "/api/v1/timestamp"

	fulcioPort := freePort()
	s.FulcioURL = "http://127.0.0.1:" + itoa(fulcioPort)
	fcfg, _ := json.Marshal(map[string]any{"OIDCIssuers": map[string]any{
		s.IssuerURL: map[string]string{"IssuerURL": s.IssuerURL, "ClientID": "sigstore", "Type": "email"},
	}})
	fcfgPath := filepath.Join(o.Dir, "run", "fulcio.json")
	if err := os.WriteFile(fcfgPath, fcfg, 0o644); err != nil {
		return s, err
	}
	if err := s.spawn(ctx, "fulcio", bins["fulcio"], "serve", "--ca", "ephemeralca", "--config-path", fcfgPath,
		"--ct-log-url", "", "--host", "127.0.0.1", "--port", itoa(fulcioPort),
		"--grpc-host", "127.0.0.1", "--grpc-port", itoa(freePort()), "--metrics-port", itoa(freePort()),
		"--legacy-unix-domain-socket", "@attestd-fulcio-"+strconv.Itoa(os.Getpid())+"-"+itoa(fulcioPort)); err != nil {
		return s, err
	}

	keyPath, pubPath, err := rekorKey(filepath.Join(o.Dir, "run"))
	if err != nil {
		return s, err
	}
	rekorPort := freePort()
	s.RekorURL = "http://127.0.0.1:" + itoa(rekorPort)
	if err := s.spawn(ctx, "rekor", bins["posix"], "serve", "--http-address=127.0.0.1", "--http-port="+itoa(rekorPort),
		"--grpc-address=127.0.0.1", "--grpc-port="+itoa(freePort()), "--http-metrics-port="+itoa(freePort()),
		// --hostname is the checkpoint origin: it must equal the host of the
		// Rekor URL in the trusted root.
		"--hostname=127.0.0.1", "--storage-dir="+filepath.Join(o.Dir, "rekor"), "--signer-filepath="+keyPath,
		"--checkpoint-interval=1s", "--max-request-body-size=33554432"); err != nil {
		return s, err
	}

	regPort := freePort()
	s.RegistryHost = "127.0.0.1:" + itoa(regPort)
	regCfg := filepath.Join(o.Dir, "run", "registry.yml")
	if err := os.WriteFile(regCfg, []byte(registryConfig(filepath.Join(o.Dir, "registry"), s.RegistryHost, o.NotifyURL, o.NotifyHeaders)), 0o644); err != nil {
		return s, err
	}
	if err := s.spawn(ctx, "registry", regBin, "serve", regCfg); err != nil {
		return s, err
	}

	for _, w := range []struct{ name, url string }{
		{"tsa", tsaBase + "/api/v1/timestamp/certchain"},
		{"fulcio", s.FulcioURL + "/api/v1/rootCert"},
		{"rekor", s.RekorURL + "/healthz"},
		{"registry", "http://" + s.RegistryHost + "/v2/"},
	} {
		if err := s.waitReady(ctx, w.name, w.url); err != nil {
			return s, err
		}
	}
	if err := s.writeTrust(ctx, tsaBase, pubPath); err != nil {
		return s, err
	}
	fmt.Fprintf(o.Log, "stack: up in %s (registry %s, fulcio %s, tsa %s, rekor %s, issuer %s)\n",
		time.Since(start).Round(time.Millisecond), s.RegistryHost, s.FulcioURL, s.TSAURL, s.RekorURL, s.IssuerURL)
	return s, nil
}

func registryConfig(storage, addr, notifyURL string, headers map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", storage, addr)
	if notifyURL != "" {
		fmt.Fprintf(&b, "notifications:\n  events:\n    includereferences: true\n  endpoints:\n  - name: attestd\n    url: %s\n    timeout: 2s\n    threshold: 5\n    backoff: 1s\n", notifyURL)
		if len(headers) > 0 {
			b.WriteString("    headers:\n")
			for k, v := range headers {
				fmt.Fprintf(&b, "      %s: [%q]\n", k, v)
			}
		}
	}
	return b.String()
}

// writeTrust fetches the CA and TSA chains and writes trusted_root.json and
// signing_config.json with the stock cosign CLI, then loads the root with
// sigstore-go to fail here rather than in a test.
func (s *Stack) writeTrust(ctx context.Context, tsaBase, rekorPub string) error {
	run := filepath.Join(s.Dir, "run")
	fulcioChain, tsaChain := filepath.Join(run, "fulcio-chain.pem"), filepath.Join(run, "tsa-chain.pem")
	s.FulcioChain, s.TSAChain = fulcioChain, tsaChain
	if err := download(ctx, s.FulcioURL+"/api/v1/rootCert", fulcioChain); err != nil {
		return err
	}
	if err := download(ctx, tsaBase+"/api/v1/timestamp/certchain", tsaChain); err != nil {
		return err
	}
	startTime := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s.TrustedRoot, s.SigningConfig = filepath.Join(run, "trusted_root.json"), filepath.Join(run, "signing_config.json")
	if _, err := s.Cosign(ctx, "trusted-root", "create",
		"--fulcio=url="+s.FulcioURL+",certificate-chain="+fulcioChain,
		"--tsa=url="+s.TSAURL+",certificate-chain="+tsaChain,
		// origin must equal rekor's --hostname (the checkpoint origin).
		"--rekor=url="+s.RekorURL+",public-key="+rekorPub+",start-time="+startTime+",origin=127.0.0.1",
		"--out", s.TrustedRoot); err != nil {
		return err
	}
	if _, err := s.Cosign(ctx, "signing-config", "create",
		"--fulcio=url="+s.FulcioURL+",api-version=1,start-time="+startTime+",operator=local",
		"--rekor=url="+s.RekorURL+",api-version=2,start-time="+startTime+",operator=local", "--rekor-config=ANY",
		"--tsa=url="+s.TSAURL+",api-version=1,start-time="+startTime+",operator=local", "--tsa-config=ANY",
		"--out", s.SigningConfig); err != nil {
		return err
	}
	// The same without Rekor: signatures carry only an RFC 3161 timestamp.
	s.SigningConfigTSAOnly = filepath.Join(run, "signing_config_tsa_only.json")
	if _, err := s.Cosign(ctx, "signing-config", "create",
		"--fulcio=url="+s.FulcioURL+",api-version=1,start-time="+startTime+",operator=local",
		"--tsa=url="+s.TSAURL+",api-version=1,start-time="+startTime+",operator=local", "--tsa-config=ANY",
		"--out", s.SigningConfigTSAOnly); err != nil {
		return err
	}
	tr, err := root.NewTrustedRootFromPath(s.TrustedRoot)
	if err != nil {
		return fmt.Errorf("trusted root written by cosign does not load: %w", err)
	}
	if len(tr.FulcioCertificateAuthorities()) != 1 || len(tr.TimestampingAuthorities()) != 1 || len(tr.RekorLogs()) != 1 {
		return fmt.Errorf("trusted root: want 1 CA, 1 TSA, 1 log; got %d, %d, %d",
			len(tr.FulcioCertificateAuthorities()), len(tr.TimestampingAuthorities()), len(tr.RekorLogs()))
	}
	return nil
}

// Syft runs the stock syft CLI hermetically: no update check, no local
// container daemons (sources are given explicitly), plain HTTP to the
// loopback registry.
func (s *Stack) Syft(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, s.SyftBin, args...)
	cmd.Env = append(os.Environ(), "HOME="+filepath.Join(s.Dir, "home"), "XDG_CACHE_HOME="+filepath.Join(s.Dir, "home", ".cache"),
		"SYFT_CHECK_FOR_APP_UPDATE=false", "SYFT_REGISTRY_INSECURE_USE_HTTP=true")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("syft %s: %w\n%s", strings.Join(args, " "), err, tail(stderr.String(), 30))
	}
	return out, nil
}

// Grype runs the stock grype CLI hermetically against the database
// installed under dbRoot (attestd's vulndb directory layout is grype's):
// no database update, no update check, no age check (the caller built the
// database), and its matching defaults.
func (s *Stack) Grype(ctx context.Context, dbRoot string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, s.GrypeBin, args...)
	cmd.Env = append(os.Environ(), "HOME="+filepath.Join(s.Dir, "home"), "XDG_CACHE_HOME="+filepath.Join(s.Dir, "home", ".cache"),
		"GRYPE_CHECK_FOR_APP_UPDATE=false", "GRYPE_DB_AUTO_UPDATE=false", "GRYPE_DB_VALIDATE_AGE=false",
		"GRYPE_DB_CACHE_DIR="+dbRoot)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("grype %s: %w\n%s", strings.Join(args, " "), err, tail(stderr.String(), 30))
	}
	return out, nil
}

// Cosign runs the stock cosign CLI hermetically (HOME and TUF_ROOT inside
// Dir: no ~/.sigstore, no public TUF CDN).
func (s *Stack) Cosign(ctx context.Context, args ...string) ([]byte, error) {
	return s.cosign(ctx, nil, args...)
}

// CosignClassic runs the stock cosign CLI for the classic (pre-bundle)
// format, which takes the Fulcio roots from $SIGSTORE_ROOT_FILE; see
// VerifyArgsClassic.
func (s *Stack) CosignClassic(ctx context.Context, args ...string) ([]byte, error) {
	return s.cosign(ctx, []string{"SIGSTORE_ROOT_FILE=" + s.FulcioChain}, args...)
}

func (s *Stack) cosign(ctx context.Context, env []string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, s.CosignBin, args...)
	cmd.Env = append(append(os.Environ(), "HOME="+filepath.Join(s.Dir, "home"), "TUF_ROOT="+filepath.Join(s.Dir, "tuf"), "COSIGN_YES=true"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("cosign %s: %w\n%s", strings.Join(redactArgs(args), " "), err, tail(string(out), 30))
	}
	return out, nil
}

// Crane runs the crane CLI.
func (s *Stack) Crane(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, s.CraneBin, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("crane %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 30))
	}
	return out, nil
}

// SignArgs and VerifyArgs are the cosign flags for this stack (new bundle
// format, signing config, trusted root; no SCTs since Fulcio runs without CT,
// and signed timestamps since Rekor v2 entries carry no integrated time).
func (s *Stack) SignArgs(token string) []string {
	return []string{"--yes", "--new-bundle-format", "--signing-config", s.SigningConfig, "--trusted-root", s.TrustedRoot, "--identity-token", token}
}

// VerifyArgsNoTlog verifies signatures made with SigningConfigTSAOnly (no
// transparency log entry; the signed timestamp proves the signing time).
func (s *Stack) VerifyArgsNoTlog(identity string) []string {
	return append(s.VerifyArgs(identity), "--insecure-ignore-tlog=true")
}

// VerifyArgsClassic verifies classic-format signatures and attestations
// (cosign's .sig/.att tags) made with SigningConfigTSAOnly: the Fulcio root
// from $SIGSTORE_ROOT_FILE (CosignClassic), the TSA chain by flag, no log.
func (s *Stack) VerifyArgsClassic(identity string) []string {
	return []string{"--timestamp-certificate-chain", s.TSAChain, "--use-signed-timestamps", "--insecure-ignore-tlog=true", "--insecure-ignore-sct",
		"--certificate-identity", identity, "--certificate-oidc-issuer", s.IssuerURL}
}

// VerifyArgs: see SignArgs.
func (s *Stack) VerifyArgs(identity string) []string {
	return []string{"--new-bundle-format", "--trusted-root", s.TrustedRoot, "--use-signed-timestamps", "--insecure-ignore-sct",
		"--certificate-identity", identity, "--certificate-oidc-issuer", s.IssuerURL}
}

func redactArgs(args []string) []string {
	out := append([]string(nil), args...)
	for i := range out {
		if i > 0 && out[i-1] == "--identity-token" {
			out[i] = "REDACTED"
		}
	}
	return out
}

// LogPath is the log file of the component name ("registry", "fulcio",
// "tsa", "rekor"), "" when the stack did not start it. The registry's holds
// its access log: one combined-log-format line per request, with the
// client's User-Agent (make bench-e2e counts requests from it).
func (s *Stack) LogPath(name string) string {
	for _, p := range s.procs {
		if p.name == name {
			return p.logPath
		}
	}
	return ""
}

// Logs returns the tail of every component's log (for a failing test).
func (s *Stack) Logs() string {
	var b strings.Builder
	for _, p := range s.procs {
		data, _ := os.ReadFile(p.logPath)
		fmt.Fprintf(&b, "==> %s (%s)\n%s\n", p.name, p.logPath, tail(string(data), 40))
	}
	return b.String()
}

// Stop terminates every child (SIGTERM, then SIGKILL after stopTimeout) by
// process group, and waits for them.
func (s *Stack) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	s.procs = nil
	if s.Issuer != nil {
		s.Issuer.Close()
	}
	for _, u := range s.unlocks {
		u()
	}
	s.unlocks = nil
}

func (s *Stack) spawn(ctx context.Context, name, bin string, args ...string) error {
	logPath := filepath.Join(s.Dir, "logs", name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	// Not CommandContext: the stack outlives the ctx that started it; Stop ends it.
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "HOME="+filepath.Join(s.Dir, "home"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	s.procs = append(s.procs, p)
	fmt.Fprintf(s.log, "stack: started %s (pid %d)\n", name, cmd.Process.Pid)
	return nil
}

func (s *Stack) waitReady(ctx context.Context, name, url string) error {
	var p *proc
	for _, q := range s.procs {
		if q.name == name {
			p = q
		}
	}
	deadline := time.Now().Add(readyTimeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			data, _ := os.ReadFile(p.logPath)
			return fmt.Errorf("%s exited before it was ready (%v):\n%s", name, p.err, tail(string(data), 20))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s after %s", name, url, readyTimeout)
		}
	}
}

func rekorKey(dir string) (keyPath, pubPath string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", "", err
	}
	keyPath, pubPath = filepath.Join(dir, "rekor.key"), filepath.Join(dir, "rekor.pub")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	return keyPath, pubPath, os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644)
}

func download(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// freePort asks the kernel for an unused loopback port. The port is free
// when we return; a child binds it moments later.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("no free loopback port: %v", err))
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func portFree(port int) error {
	ln, err := net.Listen("tcp", ":"+itoa(port))
	if err != nil {
		return err
	}
	return ln.Close()
}

func itoa(n int) string { return strconv.Itoa(n) }
