package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/test/stack"
)

// eventLog records what the registry's notifications delivered.
type eventLog struct {
	mu      sync.Mutex
	events  []regEvent
	auth    []string
	forward string // when set, deliveries are passed on to this URL and its answer returned
}

// forwardTo passes the registry's notifications on to url ("" stops).
func (l *eventLog) forwardTo(url string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forward = url
}

type regEvent struct {
	Action string `json:"action"`
	Target struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		Tag        string `json:"tag"`
	} `json:"target"`
}

func (l *eventLog) serve() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var env struct {
			Events []regEvent `json:"events"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &env); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		l.mu.Lock()
		l.events = append(l.events, env.Events...)
		l.auth = append(l.auth, r.Header.Get("Authorization")+" "+r.Header.Get("Content-Type"))
		fwd := l.forward
		l.mu.Unlock()
		if fwd == "" {
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, fwd, bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
}

func (l *eventLog) find(action, repo, digest string) (regEvent, string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, e := range l.events {
		if e.Action == action && e.Target.Repository == repo && e.Target.Digest == digest {
			return e, l.auth[min(i, len(l.auth)-1)], true
		}
	}
	return regEvent{}, "", false
}

// pushRandom pushes a small random image to the stack's registry.
func pushRandom(t *testing.T, repoTag string) name.Digest {
	t.Helper()
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	return push(t, repoTag, img)
}

func push(t *testing.T, repoTag string, img v1.Image) name.Digest {
	t.Helper()
	ref, err := name.ParseReference(stk.RegistryHost + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return ref.Context().Digest(d.String())
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// attestdBinary builds cmd/attestd once per test run.
func attestdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		// Under the run's dir, which runTests removes: binaries do not pile up in /tmp.
		dir := filepath.Join(runDir, "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "attestd")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/attestd/attestd/cmd/attestd").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// daemon is a running attestd process.
type daemon struct {
	cmd   *exec.Cmd
	addr  string
	log   *os.File
	done  chan error
	token string // from <data_dir>/api.token, which serve creates
}

func startProcess(t *testing.T, bin string, env []string, addr string, args ...string) *daemon {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "daemon-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, addr: addr, log: logf, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("daemon log:\n%s", b)
		}
	})
	d.waitHealthy(t)
	// The API's token: serve creates it under data_dir before it listens.
	if i := slices.Index(args, "--data-dir"); i >= 0 && i+1 < len(args) {
		tok, err := stack.APIToken(filepath.Join(args[i+1], "api.token"))
		if err != nil {
			t.Fatal(err)
		}
		d.token = tok
	}
	return d
}

// readAPIToken returns the first token of an API token file (one per line,
// # comments), as the CLI sends it.
// request calls the daemon's API with its token.
func (d *daemon) request(t *testing.T, method, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+d.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func (d *daemon) waitHealthy(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + d.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-d.done:
			d.done <- err
			b, _ := os.ReadFile(d.log.Name())
			t.Fatalf("daemon exited before it was healthy (%v):\n%s", err, b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("daemon not healthy after 30s")
}

func (d *daemon) signal(sig syscall.Signal) { _ = d.cmd.Process.Signal(sig) }

func (d *daemon) getJSON(t *testing.T, path string, v any) {
	t.Helper()
	resp := d.request(t, http.MethodGet, path)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func writeConfig(t *testing.T, workers int) string {
	t.Helper()
	return writeConfigExtra(t, workers, "")
}

// writeConfigExtra is writeConfig plus extra top-level YAML.
func writeConfigExtra(t *testing.T, workers int, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf(`registries:
  - host: %s
watch:
  - registry: %s
    repositories: ["**"]
workers: %d
intake:
  poll_interval: 0s
jobs:
  backoff: 100ms
  shutdown_grace: 2s
log:
  level: debug
`, stk.RegistryHost, stk.RegistryHost, workers) + extra
	p := filepath.Join(t.TempDir(), "attestd.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runBin runs a binary to completion and returns its exit code.
func runBin(t *testing.T, bin string, args ...string) int {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		t.Logf("%s %v: exit %d\n%s", filepath.Base(bin), args, ee.ExitCode(), out)
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// stop sends SIGTERM and waits for the daemon to exit.
func (d *daemon) stop() {
	d.signal(syscall.SIGTERM)
	err := <-d.done
	d.done <- err
}

// openStore opens a stopped daemon's store read-only, closed at test end.
func openStore(t *testing.T, dataDir string) *store.DB {
	t.Helper()
	db, err := store.Open(filepath.Join(dataDir, "attestd.db"), store.ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
