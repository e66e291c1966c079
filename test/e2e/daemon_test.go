package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/attestd/attestd/cmd/attestd/app"
	"github.com/attestd/attestd/store"
)

// TestServeExampleConfig: the documented example config starts the daemon,
// /healthz answers 200, and SIGTERM ends it with exit 0 within 10 s.
func TestServeExampleConfig(t *testing.T) {
	root, err := filepath.Abs("../../configs/attestd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	d := startProcess(t, attestdBinary(t), nil, addr, "serve", "-c", root, "--data-dir", t.TempDir(), "--listen", addr)
	var st store.Stats
	d.getJSON(t, "/api/v1/stats", &st)

	hc := runBin(t, attestdBinary(t), "healthcheck", "--server", "http://"+addr)
	if hc != 0 {
		t.Fatalf("healthcheck exit %d against a healthy daemon", hc)
	}
	start := time.Now()
	d.signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
		t.Logf("stopped %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10s after SIGTERM")
	}
	if hc := runBin(t, attestdBinary(t), "healthcheck", "--server", "http://"+addr); hc != 1 {
		t.Fatalf("healthcheck exit %d against a stopped daemon, want 1", hc)
	}
}

// TestKillResume: N jobs are queued, the daemon is SIGKILLed while jobs are
// in flight, a new daemon resumes them, and every job completes exactly once.
func TestKillResume(t *testing.T) {
	const n = 12
	cfg := writeConfig(t, 3)
	dataDir := t.TempDir()
	doneLog := filepath.Join(t.TempDir(), "done.log")
	ctx := context.Background()

	db, err := store.Open(filepath.Join(dataDir, "attestd.db"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for i := range n {
		ref := pushRandom(t, fmt.Sprintf("crash/app%d:v1", i))
		if _, err := db.Enqueue(ctx, store.EnqueueRequest{Ref: ref.String(), Source: "e2e"}); err != nil {
			t.Fatal(err)
		}
		want[ref.String()] = true
	}
	db.Close()

	self, _ := os.Executable()
	addr := freeAddr(t)
	env := []string{daemonEnv + "=1", daemonDoneEnv + "=" + doneLog}
	args := []string{"serve", "-c", cfg, "--data-dir", dataDir, "--listen", addr}

	// First daemon: each resolve takes 1.5 s with 3 workers; kill it once a
	// few jobs are done and others are mid-stage.
	d1 := startProcess(t, self, append(env, daemonDelayEnv+"=1500ms"), addr, args...)
	deadline := time.Now().Add(60 * time.Second)
	for len(readLines(t, doneLog)) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("first daemon completed fewer than 3 jobs in 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(700 * time.Millisecond) // the next wave is mid-resolve
	var st store.Stats
	d1.getJSON(t, "/api/v1/stats", &st)
	d1.signal(syscall.SIGKILL)
	<-d1.done
	d1.done <- nil
	before := len(readLines(t, doneLog))
	if before >= n {
		t.Fatalf("all %d jobs finished before the kill; the test proves nothing", n)
	}
	t.Logf("killed with %d/%d done, claimed at last look: %d", before, n, st.Jobs[store.JobClaimed])

	// Second daemon: no delay; it must resume the rest.
	d2 := startProcess(t, self, env, addr, args...)
	deadline = time.Now().Add(60 * time.Second)
	for {
		st = store.Stats{}
		d2.getJSON(t, "/api/v1/stats", &st)
		if st.Jobs[store.JobDone] == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all jobs done after restart: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	d2.stop()

	seen := map[string]int{}
	for _, l := range readLines(t, doneLog) {
		_, ref, _ := strings.Cut(l, " ")
		seen[ref]++
	}
	for ref := range want {
		if seen[ref] != 1 {
			t.Errorf("%s completed %d times, want exactly 1", ref, seen[ref])
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct jobs completed, want %d", len(seen), n)
	}
	db = openStore(t, dataDir)
	jobs, _ := db.Jobs(ctx)
	resumed := 0
	for _, j := range jobs {
		if j.Status != store.JobDone {
			t.Errorf("job %d is %s", j.ID, j.Status)
		}
		// The attempt the kill cut short is not charged: it shows as
		// Interrupted, and the job still completed in one attempt.
		if j.Interrupted > 0 {
			resumed++
		}
		if j.Attempts != 1 {
			t.Errorf("job %d took %d attempts, want 1 (interrupted %d)", j.ID, j.Attempts, j.Interrupted)
		}
		rec, err := db.Image(ctx, j.Ref)
		if err != nil || rec.Stages["resolve"].Status != store.StagePassed || rec.State != store.StateAnalysed {
			t.Errorf("record %s = %+v, %v", j.Ref, rec, err)
		}
	}
	if resumed == 0 {
		t.Error("no job shows an interrupted attempt: the kill interrupted nothing")
	}
	t.Logf("%d jobs were interrupted by the kill and resumed", resumed)
}

// TestProcessCommand runs `attestd process` against the real registry: the
// resolve and analysis stages pass and every later stage is reported as
// skipped, with the record left in analysed.
func TestProcessCommand(t *testing.T) {
	ref := pushRandom(t, "process/app:v1")
	cfg := writeConfig(t, 1)
	dataDir := t.TempDir()
	var out, errOut bytes.Buffer
	code := app.Run(context.Background(), []string{"process", "-c", cfg, "--data-dir", dataDir, stk.RegistryHost + "/process/app:v1"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{ref.DigestStr(), "state:  analysed", "resolve   passed", "analyse   passed", "sign      skipped  not configured"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := app.Run(context.Background(), []string{"status", "-c", cfg, "--data-dir", dataDir, stk.RegistryHost + "/process/app"}, &out, &errOut); code != 0 {
		t.Fatalf("status exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), ref.DigestStr()) {
		t.Errorf("status lacks the digest:\n%s", out.String())
	}
	// A tag that does not exist: non-zero exit, nothing recorded.
	errOut.Reset()
	if code := app.Run(context.Background(), []string{"process", "-c", cfg, "--data-dir", dataDir, stk.RegistryHost + "/process/app:nope"}, &out, &errOut); code == 0 {
		t.Fatal("process of a missing tag succeeded")
	}
	if !strings.Contains(errOut.String(), "MANIFEST_UNKNOWN") && !strings.Contains(errOut.String(), "404") && !strings.Contains(errOut.String(), "not found") {
		t.Errorf("error does not say what was missing: %s", errOut.String())
	}
}
