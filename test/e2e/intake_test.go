package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/store"
)

// TestRegistryWebhooks: the real Debian registry notifies attestd. Pushing by
// tag, by digest, an index with platform children, a second tag for a known
// digest, a pull, and a cosign signature yields exactly one job per image:
// children fold into their index, signatures and pulls are ignored.
func TestRegistryWebhooks(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "hook-secret")
	os.WriteFile(secret, []byte("Bearer e2e-secret\n"), 0o600)
	cfgPath := filepath.Join(dir, "attestd.yaml")
	cfg := fmt.Sprintf(`registries:
  - host: %[1]s
watch:
  - registry: %[1]s
    repositories: ["intake/**"]
sources:
  - name: registry
    type: distribution
    registry: %[1]s
    auth: {type: header, header: Authorization, secret_file: %[2]s}
intake: {poll_interval: 0s}
jobs: {backoff: 200ms}
log: {level: debug}
`, stk.RegistryHost, secret)
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	dataDir := t.TempDir()
	addr := freeAddr(t)
	d := startProcess(t, attestdBinary(t), nil, addr, "serve", "-c", cfgPath, "--data-dir", dataDir, "--listen", addr)
	events.forwardTo("http://" + addr + "/hooks/registry")
	defer events.forwardTo("")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := pushRandom(t, "intake/a:v1")
	img, _ := random.Image(256, 1)
	bd, _ := img.Digest()
	b, _ := name.NewDigest(stk.RegistryHost + "/intake/b@" + bd.String())
	if err := remote.Write(b, img, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	idx, _ := random.Index(128, 1, 2)
	ctag, _ := name.NewTag(stk.RegistryHost + "/intake/c:v1")
	if err := remote.WriteIndex(ctag, idx, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	cd, _ := idx.Digest()
	c := ctag.Context().Digest(cd.String())
	// Same digest under a second tag: recorded, not a second job.
	atag2, _ := name.NewTag(stk.RegistryHost + "/intake/a:v2")
	aimg, _ := remote.Image(a, remote.WithContext(ctx))
	if err := remote.Write(atag2, aimg, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	// A pull and a cosign signature.
	if _, err := remote.Image(a, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	tok, _ := stk.Issuer.Token("ci@example.test", 10*time.Minute)
	if _, err := stk.Cosign(ctx, append(append([]string{"sign"}, stk.SignArgs(tok)...), a.String())...); err != nil {
		t.Fatal(err)
	}
	// Outside the watch rules: ignored.
	pushRandom(t, "elsewhere/x:v1")

	want := map[string]bool{a.String(): true, b.String(): true, c.String(): true}
	var st store.Stats
	deadline := time.Now().Add(60 * time.Second)
	stableSince := time.Time{}
	for {
		st = store.Stats{} // decoding into a used map would keep stale keys
		d.getJSON(t, "/api/v1/stats", &st)
		idle := st.Jobs[store.JobPending] == 0 && st.Jobs[store.JobClaimed] == 0 && st.Jobs[store.JobDone] >= len(want)
		switch {
		case idle && stableSince.IsZero():
			stableSince = time.Now()
		case !idle:
			stableSince = time.Time{}
		}
		// Quiet for 5 s (longer than the untagged settle delay): every
		// notification has been delivered and processed.
		if !stableSince.IsZero() && time.Since(stableSince) > 5*time.Second {
			break
		}
		if time.Now().After(deadline) {
			d.stop()
			db, err := store.Open(filepath.Join(dataDir, "attestd.db"), store.ReadOnly())
			if err == nil {
				jobs, _ := db.Jobs(ctx)
				for _, j := range jobs {
					t.Logf("job %+v", j)
				}
				db.Close()
			}
			t.Fatalf("queue did not settle: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A delivery without the shared secret is rejected (401) — and audited.
	if resp, err := http.Post("http://"+addr+"/hooks/registry", "application/vnd.docker.distribution.events.v1+json", strings.NewReader(`{"events":[]}`)); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated delivery: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`outcome="ignored",reason="artifact"`, `outcome="ignored",reason="action"`, `outcome="ignored",reason="not_watched"`, `outcome="accepted"`} {
		if !strings.Contains(string(metrics), m) {
			t.Errorf("metrics lack %s:\n%s", m, metrics)
		}
	}
	d.stop()

	db := openStore(t, dataDir)
	// What intake ignored is in the audit log too (flushed at shutdown),
	// with the source and reason.
	ignored := map[string]bool{}
	_ = db.AuditEntries(ctx, 1, func(e store.AuditEntry, _ []byte) error {
		if (e.Action == "event.ignored" || e.Action == "event.rejected") && e.Actor == "webhook:registry" && e.Details["count"] != "" {
			ignored[e.Action+" "+e.Details["reason"]] = true
		}
		if e.Action == "config.loaded" && strings.HasPrefix(e.Details["digest"], "sha256:") {
			ignored["config.loaded"] = true
		}
		return nil
	})
	for _, r := range []string{"event.ignored artifact", "event.ignored action", "event.ignored not_watched", "config.loaded"} {
		if !ignored[r] {
			t.Errorf("no %s audit entry (have %v)", r, ignored)
		}
	}
	rejected := false
	for k := range ignored {
		rejected = rejected || strings.HasPrefix(k, "event.rejected ")
	}
	if !rejected {
		t.Errorf("no event.rejected audit entry (have %v)", ignored)
	}
	jobs, _ := db.Jobs(ctx)
	perRef := map[string]int{}
	folded := 0
	for _, j := range jobs {
		if strings.HasPrefix(j.LastError, "folded into index "+c.String()) {
			folded++
			continue
		}
		perRef[j.Ref]++
		if !want[j.Ref] {
			t.Errorf("unexpected job for %s (source %s)", j.Ref, j.Source)
		}
	}
	for ref := range want {
		if perRef[ref] != 1 {
			t.Errorf("%s has %d jobs, want exactly 1", ref, perRef[ref])
		}
	}
	if folded != 2 {
		t.Errorf("%d platform children folded into the index, want 2", folded)
	}
	hist, _ := db.TagHistory(ctx, stk.RegistryHost+"/intake/a:v2")
	if len(hist) != 1 || hist[0].Digest != a.DigestStr() {
		t.Errorf("tag history of a:v2 = %+v", hist)
	}
}

// TestPollerFindsMissedPushes: images pushed while attestd is down (no
// webhook can reach it) are found by the reconciliation poller at start.
func TestPollerFindsMissedPushes(t *testing.T) {
	want := map[string]bool{}
	for i := range 4 {
		want[pushRandom(t, fmt.Sprintf("missed/app%d:v1", i)).String()] = true
	}
	idx, _ := random.Index(64, 1, 2)
	itag, _ := name.NewTag(stk.RegistryHost + "/missed/multi:v1")
	if err := remote.WriteIndex(itag, idx, remote.WithContext(context.Background())); err != nil {
		t.Fatal(err)
	}
	id, _ := idx.Digest()
	want[itag.Context().Digest(id.String()).String()] = true

	cfgPath := filepath.Join(t.TempDir(), "attestd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("registries: [{host: %[1]q}]\nwatch: [{registry: %[1]q, repositories: [\"missed/*\"]}]\nintake: {poll_interval: 1s}\n", stk.RegistryHost)), 0o644)
	dataDir := t.TempDir()
	addr := freeAddr(t)
	d := startProcess(t, attestdBinary(t), nil, addr, "serve", "-c", cfgPath, "--data-dir", dataDir, "--listen", addr)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st store.Stats
		d.getJSON(t, "/api/v1/stats", &st)
		if st.Jobs[store.JobDone] >= len(want) && st.Jobs[store.JobPending] == 0 && st.Jobs[store.JobClaimed] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("poller did not find the missed pushes: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2500 * time.Millisecond) // two more polls: nothing new may appear
	d.stop()
	db := openStore(t, dataDir)
	jobs, _ := db.Jobs(context.Background())
	got := map[string]int{}
	for _, j := range jobs {
		got[j.Ref]++
		if j.Priority != store.PriorityBackfill || j.Source != "poller" {
			t.Errorf("job %d: priority %d source %q, want backfill from the poller", j.ID, j.Priority, j.Source)
		}
	}
	for ref := range want {
		if got[ref] != 1 {
			t.Errorf("%s: %d jobs, want 1", ref, got[ref])
		}
	}
	if len(got) != len(want) {
		t.Errorf("jobs for %v, want exactly %v", got, want)
	}
}

// TestPollerExistingRecord: with intake.existing: record, what a repository
// holds when attestd first lists it is recorded without a job; a push made
// after that is processed.
func TestPollerExistingRecord(t *testing.T) {
	repo := fmt.Sprintf("existing/r%d", time.Now().UnixNano())
	old1, old2 := pushRandom(t, repo+":v1"), pushRandom(t, repo+":v2")
	cfgPath := filepath.Join(t.TempDir(), "attestd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("registries: [{host: %[1]q}]\nwatch: [{registry: %[1]q, repositories: [%[2]q]}]\nintake: {poll_interval: 1s, existing: record}\n", stk.RegistryHost, repo)), 0o644)
	dataDir := t.TempDir()
	addr := freeAddr(t)
	d := startProcess(t, attestdBinary(t), nil, addr, "serve", "-c", cfgPath, "--data-dir", dataDir, "--listen", addr)
	waitImages := func(n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var st store.Stats
			d.getJSON(t, "/api/v1/stats", &st)
			total := 0
			for _, c := range st.Images {
				total += c
			}
			if total >= n && st.Jobs[store.JobPending] == 0 && st.Jobs[store.JobClaimed] == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("want %d images: %+v", n, st)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitImages(2)
	fresh := pushRandom(t, repo+":v3")
	waitImages(3)
	d.stop()
	db := openStore(t, dataDir)
	jobs, _ := db.Jobs(context.Background())
	if len(jobs) != 1 || jobs[0].Ref != fresh.String() {
		t.Fatalf("jobs = %+v, want exactly one for the new push %s", jobs, fresh)
	}
	for _, ref := range []string{old1.String(), old2.String()} {
		rec, err := db.Image(context.Background(), ref)
		if err != nil || rec.Note == "" {
			t.Errorf("pre-existing %s: %+v, %v; want recorded with a note", ref, rec, err)
		}
	}
}

// TestKillMidBurstKeepsEveryAcknowledgedEvent: attestd is SIGKILLed while
// senders are in the middle of a burst of webhook deliveries; after a
// restart every acknowledged event (committed before its 202) has its
// record and exactly one job.
func TestKillMidBurstKeepsEveryAcknowledgedEvent(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "hook-secret")
	os.WriteFile(secret, []byte("Bearer e2e-secret\n"), 0o600)
	cfgPath := filepath.Join(dir, "attestd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`registries:
  - host: %[1]s
watch:
  - registry: %[1]s
    repositories: ["burst/**"]
sources:
  - name: registry
    type: distribution
    registry: %[1]s
    auth: {type: header, header: Authorization, secret_file: %[2]s}
intake: {poll_interval: 0s}
workers: 1
jobs: {backoff: 1m}
`, stk.RegistryHost, secret)), 0o644)
	dataDir := t.TempDir()
	addr := freeAddr(t)
	args := []string{"serve", "-c", cfgPath, "--data-dir", dataDir, "--listen", addr}
	d1 := startProcess(t, attestdBinary(t), nil, addr, args...)

	const senders, perPost = 16, 5
	var (
		mu    sync.Mutex
		acked []string
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	client := &http.Client{Timeout: 10 * time.Second}
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := int(next.Add(1))
				var refs []string
				body := `{"events":[`
				for k := range perPost {
					dgst := fmt.Sprintf("sha256:%064x", n*perPost+k)
					refs = append(refs, stk.RegistryHost+"/burst/app@"+dgst)
					if k > 0 {
						body += ","
					}
					body += fmt.Sprintf(`{"id":"burst-%d-%d","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","repository":"burst/app"},"request":{"host":%q,"useragent":"docker/27"}}`, n, k, dgst, stk.RegistryHost)
				}
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/hooks/registry", strings.NewReader(body+"]}"))
				req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v1+json")
				req.Header.Set("Authorization", "Bearer e2e-secret")
				resp, err := client.Do(req)
				if err != nil {
					return // killed
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					t.Errorf("delivery %d: status %d", n, resp.StatusCode)
					return
				}
				mu.Lock()
				acked = append(acked, refs...)
				mu.Unlock()
			}
		}()
	}
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 3000 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	d1.signal(syscall.SIGKILL)
	<-d1.done
	d1.done <- nil
	wg.Wait()
	t.Logf("killed after %d acknowledged events", len(acked))

	d2 := startProcess(t, attestdBinary(t), nil, addr, args...)
	d2.stop()
	db := openStore(t, dataDir)
	ctx := context.Background()
	jobs, err := db.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	perRef := map[string]int{}
	for _, j := range jobs {
		perRef[j.Ref]++
	}
	missing := 0
	for _, ref := range acked {
		if _, err := db.Image(ctx, ref); err != nil || perRef[ref] != 1 {
			if missing++; missing <= 5 {
				t.Errorf("acknowledged %s: record err %v, %d jobs", ref, err, perRef[ref])
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged events lost or duplicated", missing, len(acked))
	}
	for ref, n := range perRef {
		if n != 1 {
			t.Errorf("%s has %d jobs", ref, n)
		}
	}
}
