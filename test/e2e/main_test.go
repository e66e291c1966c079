// Package e2e runs attestd against the real components: the Debian registry,
// Fulcio, the timestamp authority, Rekor v2, our OIDC issuer, and the stock
// cosign CLI as the independent verifier. One stack serves the package.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/cmd/attestd/app"
	"github.com/attestd/attestd/test/stack"
)

var (
	// runDir holds everything one test run writes; removed after a passing run.
	runDir string
	stk    *stack.Stack
	events = &eventLog{}
)

// daemonEnv makes the test binary act as the attestd daemon (see
// startDaemon): the real app.Run with one knob for tests, a delay in the
// resolve stage, so a SIGKILL lands while jobs are in flight.
const (
	daemonEnv      = "ATTESTD_E2E_DAEMON"
	daemonDelayEnv = "ATTESTD_E2E_STAGE_DELAY"
	daemonDoneEnv  = "ATTESTD_E2E_DONE_LOG"
)

func TestMain(m *testing.M) {
	if os.Getenv(daemonEnv) == "1" {
		os.Exit(runDaemon())
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "attestd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	runDir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	notify := events.serve()
	defer notify.Close()
	stk, err = stack.Start(ctx, stack.Options{Dir: dir, Log: os.Stderr, NotifyURL: notify.URL + "/events",
		NotifyHeaders: map[string]string{"Authorization": "Bearer e2e-secret"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: starting the stack:", err)
		return 1
	}
	if err := installVulnDB(ctx, dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: vulnerability database:", err)
		stk.Stop()
		return 1
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "e2e: failed; component logs kept in %s/logs\n%s", dir, stk.Logs())
	}
	stk.Stop()
	if code == 0 {
		os.RemoveAll(dir)
	} else {
		os.RemoveAll(filepath.Join(dir, "bin")) // keep the logs, not the binaries
	}
	return code
}

func runDaemon() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	delay, _ := time.ParseDuration(os.Getenv(daemonDelayEnv))
	var mu sync.Mutex
	var done *os.File
	if p := os.Getenv(daemonDoneEnv); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY|os.O_SYNC, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		done = f
	}
	return app.Run(ctx, os.Args[1:], os.Stdout, os.Stderr,
		app.WithStages(func(s pipeline.Stages) pipeline.Stages {
			if delay > 0 {
				s.Resolver = slowResolver{s.Resolver, delay}
			}
			return s
		}),
		app.WithJobDone(func(ref string, id uint64, err error) {
			if done == nil || err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(done, "%d %s\n", id, ref)
		}))
}

type slowResolver struct {
	pipeline.Resolver
	delay time.Duration
}

func (s slowResolver) Resolve(ctx context.Context, ref string) (*pipeline.Target, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Resolver.Resolve(ctx, ref)
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}
