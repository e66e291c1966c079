package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
)

func ref(n int) string {
	return fmt.Sprintf("registry.local/app/n%d@sha256:%064x", n, n)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func open(t *testing.T) (*DB, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	db, err := Open(filepath.Join(t.TempDir(), "attestd.db"), WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, c
}

func TestSplitRef(t *testing.T) {
	t.Parallel()
	hex := strings.Repeat("a", 64)
	for _, tc := range []struct {
		in                  string
		reg, repo, dig, err string
	}{
		{in: "127.0.0.1:5000/a/b@sha256:" + hex, reg: "127.0.0.1:5000", repo: "a/b", dig: "sha256:" + hex},
		{in: "r/x:tag", err: "want host/repo@sha256"},
		{in: "r@sha256:" + hex, err: "want host/repo@sha256"},
		{in: "r/x@sha256:abc", err: "64 hex"},
	} {
		reg, repo, dig, err := SplitRef(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("SplitRef(%q) err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || reg != tc.reg || repo != tc.repo || dig != tc.dig {
			t.Errorf("SplitRef(%q) = %q %q %q %v", tc.in, reg, repo, dig, err)
		}
	}
}

func TestEnqueueDedupe(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	first, err := db.Enqueue(ctx, EnqueueRequest{Ref: ref(1), Source: "webhook", EventKey: "ev-1"})
	if err != nil || first.Duplicate || first.JobID == 0 {
		t.Fatalf("first enqueue = %+v, %v", first, err)
	}
	// Same event redelivered; same image from the poller; both yield no job.
	for _, req := range []EnqueueRequest{
		{Ref: ref(1), Source: "webhook", EventKey: "ev-1"},
		{Ref: ref(1), Source: "poller", Priority: PriorityBackfill},
	} {
		res, err := db.Enqueue(ctx, req)
		if err != nil || !res.Duplicate {
			t.Fatalf("Enqueue(%+v) = %+v, %v; want duplicate", req, res, err)
		}
	}
	jobs, err := db.Jobs(ctx)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("jobs = %d, %v; want 1", len(jobs), err)
	}
	if _, err := db.Enqueue(ctx, EnqueueRequest{Ref: "not-a-ref"}); err == nil {
		t.Fatal("bad ref accepted")
	}
	if jobs, _ := db.Jobs(ctx); len(jobs) != 1 {
		t.Fatalf("bad ref changed the queue: %d jobs", len(jobs))
	}
}

// TestEnqueueIsIntake: Enqueue goes through the intake writer — the tag it
// was named by lands in the same transaction as the job, audited like a
// delivery.
func TestEnqueueIsIntake(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	res, err := db.Enqueue(ctx, EnqueueRequest{Ref: ref(1), Tag: "registry.local/app/n1:v1", Source: "cli"})
	if err != nil || res.Duplicate || res.JobID == 0 {
		t.Fatalf("enqueue = %+v, %v", res, err)
	}
	if hist, err := db.TagHistory(ctx, "registry.local/app/n1:v1"); err != nil || len(hist) != 1 || hist[0].Digest != fmt.Sprintf("sha256:%064x", 1) {
		t.Fatalf("tag history = %+v, %v", hist, err)
	}
	again, err := db.Enqueue(ctx, EnqueueRequest{Ref: ref(1), Source: "cli"})
	if err != nil || !again.Duplicate || again.JobID != res.JobID {
		t.Fatalf("enqueue of a known image = %+v, %v; want a duplicate naming job %d", again, err, res.JobID)
	}
	if seq, _, _ := db.AuditHead(ctx); seq != 2 {
		t.Fatalf("%d audit entries, want 2 (queued, known)", seq)
	}
	if _, err := db.Enqueue(ctx, EnqueueRequest{Ref: "not-a-ref"}); !errors.Is(err, ErrInvalidItem) {
		t.Fatalf("enqueue of a bad ref = %v, want ErrInvalidItem", err)
	}
}

func TestEnqueueConcurrentBatch(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := db.Enqueue(ctx, EnqueueRequest{Ref: ref(i % 50)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	st, err := db.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Jobs[JobPending] != 50 || st.Images[StateDiscovered] != 50 {
		t.Fatalf("stats = %+v, want 50 pending jobs and 50 discovered images", st)
	}
}

func TestClaimOrderAndBackoff(t *testing.T) {
	t.Parallel()
	db, c := open(t)
	ctx := context.Background()
	mustEnqueue(t, db, EnqueueRequest{Ref: ref(1), Priority: PriorityBackfill})
	mustEnqueue(t, db, EnqueueRequest{Ref: ref(2), Priority: PriorityEvent})
	mustEnqueue(t, db, EnqueueRequest{Ref: ref(3), Priority: PriorityBackfill})

	j, err := db.Claim(ctx, "w1", time.Minute)
	if err != nil || j.Ref != ref(2) {
		t.Fatalf("first claim = %+v, %v; want the event-priority job", j, err)
	}
	if err := db.Retry(ctx, j.ID, "w1", errors.New("registry 503"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		j, err := db.Claim(ctx, "w1", time.Minute)
		if errors.Is(err, ErrNoJob) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, j.Ref)
	}
	if diff := cmp.Diff([]string{ref(1), ref(3)}, got); diff != "" {
		t.Fatalf("claims during backoff (-want +got):\n%s", diff)
	}
	next, _ := db.NextReady(ctx)
	if want := c.now().Add(10 * time.Second); !next.Equal(want) {
		t.Fatalf("NextReady = %v, want %v", next, want)
	}
	c.add(11 * time.Second)
	j, err = db.Claim(ctx, "w1", time.Minute)
	if err != nil || j.Ref != ref(2) || j.Attempts != 2 || j.LastError != "registry 503" {
		t.Fatalf("claim after backoff = %+v, %v", j, err)
	}
}

func TestOwnership(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	mustEnqueue(t, db, EnqueueRequest{Ref: ref(1)})
	j, err := db.Claim(ctx, "w1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Complete(ctx, j.ID, "w2"); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("complete by other owner: %v, want ErrNotOwner", err)
	}
	if err := db.Complete(ctx, j.ID, "w1"); err != nil {
		t.Fatal(err)
	}
	if err := db.Complete(ctx, j.ID, "w1"); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("double complete: %v, want ErrNotOwner", err)
	}
}

func TestReleaseClaims(t *testing.T) {
	t.Parallel()
	db, c := open(t)
	ctx := context.Background()
	for i := range 3 {
		mustEnqueue(t, db, EnqueueRequest{Ref: ref(i)})
	}
	a, _ := db.Claim(ctx, "w1", time.Minute)
	b, _ := db.Claim(ctx, "w1", time.Hour)
	c.add(2 * time.Minute)
	if n, err := db.ReleaseClaims(ctx, true); err != nil || n != 1 {
		t.Fatalf("release expired = %d, %v; want 1", n, err)
	}
	if j, _ := db.Job(ctx, a.ID); j.Status != JobPending {
		t.Fatalf("expired job status %s", j.Status)
	}
	if n, err := db.ReleaseClaims(ctx, false); err != nil || n != 1 {
		t.Fatalf("release all = %d, %v; want 1", n, err)
	}
	// At start, the attempt the dead process was running is not charged.
	if j, _ := db.Job(ctx, b.ID); j.Status != JobPending || j.Attempts != 0 || j.Interrupted != 1 {
		t.Fatalf("released job = %+v, want attempts 0, interrupted 1", j)
	}
	// An expired lease is a hung attempt: it counts.
	if j, _ := db.Job(ctx, a.ID); j.Attempts != 1 || j.Interrupted != 0 {
		t.Fatalf("expired job = %+v, want attempts 1, interrupted 0", j)
	}
}

func TestTransitions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		setup    []State // transitions applied first, from discovered
		from, to State
		err      error
	}{
		{name: "forward", from: StateDiscovered, to: StateAnalysed},
		{name: "skip a state", from: StateDiscovered, to: StateAttested, err: ErrInvalidTransition},
		{name: "stale from", from: StateAnalysed, to: StateAttested, err: ErrConflict},
		{name: "annotate", from: StateDiscovered, to: StateDiscovered},
		{name: "fail", from: StateDiscovered, to: StateFailed},
		{name: "final stays", setup: []State{StateAnalysed, StateAttested, StateEvaluated, StateDenied}, from: StateDenied, to: StateFailed, err: ErrInvalidTransition},
		{name: "redrive to where it failed", setup: []State{StateAnalysed, StateFailed}, from: StateFailed, to: StateAnalysed},
		{name: "redrive elsewhere", setup: []State{StateAnalysed, StateFailed}, from: StateFailed, to: StateDiscovered, err: ErrInvalidTransition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db, _ := open(t)
			mustEnqueue(t, db, EnqueueRequest{Ref: ref(1)})
			cur := StateDiscovered
			for _, s := range tc.setup {
				if _, err := db.Transition(ctx, ref(1), cur, s, nil); err != nil {
					t.Fatal(err)
				}
				cur = s
			}
			before, _ := db.Image(ctx, ref(1))
			_, err := db.Transition(ctx, ref(1), tc.from, tc.to, func(r *Record) error {
				r.LastError = "touched"
				return nil
			})
			if !errors.Is(err, tc.err) {
				t.Fatalf("Transition(%s→%s) = %v, want %v", tc.from, tc.to, err, tc.err)
			}
			after, _ := db.Image(ctx, ref(1))
			if tc.err != nil {
				if diff := cmp.Diff(before, after); diff != "" {
					t.Fatalf("failed transition changed the record:\n%s", diff)
				}
				return
			}
			if after.State != tc.to || after.Rev != before.Rev+1 {
				t.Fatalf("after = %s rev %d, want %s rev %d", after.State, after.Rev, tc.to, before.Rev+1)
			}
		})
	}
}

func TestTransitionFnErrorAborts(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	mustEnqueue(t, db, EnqueueRequest{Ref: ref(1)})
	boom := errors.New("boom")
	if _, err := db.Transition(ctx, ref(1), StateDiscovered, StateAnalysed, func(r *Record) error {
		r.MediaType = "x"
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	r, _ := db.Image(ctx, ref(1))
	if r.State != StateDiscovered || r.MediaType != "" {
		t.Fatalf("aborted transition leaked: %+v", r)
	}
}

func TestBuryAndRequeue(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	mustEnqueue(t, db, EnqueueRequest{Ref: ref(1)})
	if _, err := db.Requeue(ctx, ref(1), "cli"); !errors.Is(err, ErrConflict) {
		t.Fatalf("requeue of a pending job: %v, want ErrConflict", err)
	}
	j, _ := db.Claim(ctx, "w", time.Minute)
	if err := db.Bury(ctx, j.ID, "w", errors.New("manifest unknown")); err != nil {
		t.Fatal(err)
	}
	r, _ := db.Image(ctx, ref(1))
	if r.State != StateFailed || r.FailedFrom != StateDiscovered || r.LastError != "manifest unknown" {
		t.Fatalf("buried record = %+v", r)
	}
	nj, err := db.Requeue(ctx, ref(1), "cli")
	if err != nil || nj.Attempts != 0 || nj.ID == j.ID {
		t.Fatalf("requeue = %+v, %v", nj, err)
	}
	r, _ = db.Image(ctx, ref(1))
	if r.State != StateDiscovered || r.LastError != "" {
		t.Fatalf("requeued record = %+v", r)
	}
	if _, err := db.Requeue(ctx, ref(2), "cli"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("requeue unknown: %v", err)
	}
}

func TestTagHistory(t *testing.T) {
	t.Parallel()
	db, c := open(t)
	ctx := context.Background()
	d1, d2 := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64)
	for _, d := range []string{d1, d1, d2, d1} {
		if err := db.RecordTag(ctx, "r/app:latest", d); err != nil {
			t.Fatal(err)
		}
		c.add(time.Second)
	}
	if err := db.RecordTag(ctx, "r/app:latest2", d2); err != nil {
		t.Fatal(err)
	}
	h, err := db.TagHistory(ctx, "r/app:latest")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range h {
		got = append(got, e.Digest)
	}
	if diff := cmp.Diff([]string{d1, d2, d1}, got); diff != "" {
		t.Fatalf("history (-want +got):\n%s", diff)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	empty := filepath.Join(dir, "empty.db")
	os.WriteFile(empty, nil, 0o600)
	if _, err := Open(empty); !errors.Is(err, ErrCorrupt) {
		t.Errorf("empty file: %v, want ErrCorrupt", err)
	}
	if fi, _ := os.Stat(empty); fi.Size() != 0 {
		t.Errorf("empty file was written to")
	}

	garbage := filepath.Join(dir, "garbage.db")
	os.WriteFile(garbage, bytes.Repeat([]byte("not a bolt file "), 1024), 0o600)
	if _, err := Open(garbage); !errors.Is(err, ErrCorrupt) {
		t.Errorf("garbage file: %v, want ErrCorrupt", err)
	}

	locked := filepath.Join(dir, "locked.db")
	db, err := Open(locked)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Open(locked, WithLockTimeout(50*time.Millisecond)); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "attestd serve") {
		t.Errorf("locked file: %v, want ErrLocked naming the fix", err)
	}

	if _, err := Open(filepath.Join(dir, "missing.db"), ReadOnly()); !errors.Is(err, ErrNotFound) {
		t.Errorf("read-only missing: %v", err)
	}
}

func TestBackupRoundTrip(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	mustEnqueue(t, db, EnqueueRequest{Ref: ref(7)})
	out := filepath.Join(t.TempDir(), "backup.db")
	if _, err := db.BackupFile(ctx, out); err != nil {
		t.Fatal(err)
	}
	b, err := Open(out, ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Image(ctx, ref(7)); err != nil {
		t.Fatalf("backup lacks the record: %v", err)
	}
	if _, err := db.BackupFile(ctx, filepath.Join(t.TempDir(), "no", "such", "dir", "b.db")); err == nil {
		t.Fatal("backup into a missing dir succeeded")
	}
}

// TestIntakeIsInBackup: once Intake returns, a backup taken right after
// holds the event — its record, its job and its dedupe key — also while
// other deliveries are being committed: what intake acknowledges, `store
// backup` keeps.
func TestIntakeIsInBackup(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	dir := t.TempDir()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 4 {
				n := w*100 + i
				ev := fmt.Sprint("ev-", n)
				res, err := db.Intake(ctx, []IntakeItem{{Ref: ref(n), EventKey: ev, Source: "webhook:test"}})
				if err != nil {
					t.Error(err)
					return
				}
				path := filepath.Join(dir, ev+".db")
				if _, err := db.BackupFile(ctx, path); err != nil {
					t.Error(err)
					return
				}
				b, err := Open(path)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := b.Image(ctx, ref(n)); err != nil {
					t.Errorf("backup after intake of %s lacks the record: %v", ev, err)
				}
				if j, err := b.Job(ctx, res[0].JobID); err != nil || j.Ref != ref(n) || j.Status != JobPending {
					t.Errorf("backup after intake of %s: job %d = %+v, %v", ev, res[0].JobID, j, err)
				}
				// The dedupe key is there: the event ID alone (naming an
				// image the backup never saw) makes a redelivery.
				if again, err := b.Intake(ctx, []IntakeItem{{Ref: ref(n + 1000), EventKey: ev}}); err != nil || !again[0].Duplicate {
					t.Errorf("redelivery of %s to the backup = %+v, %v", ev, again, err)
				}
				b.Close()
			}
		})
	}
	wg.Wait()
}

func TestSchemaTooNew(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "a.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	db.bolt.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, u64(SchemaVersion()+1)) })
	db.Close()
	if _, err := Open(path); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("open newer schema: %v", err)
	}
}

func mustEnqueue(t *testing.T, db *DB, req EnqueueRequest) {
	t.Helper()
	if _, err := db.Enqueue(context.Background(), req); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkEnqueueParallel(b *testing.B) {
	db, err := Open(filepath.Join(b.TempDir(), "a.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	var n sync.Mutex
	i := 0
	// Many concurrent webhook deliveries, as in a burst of pushes: db.Batch
	// coalesces them into shared fsyncs.
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n.Lock()
			i++
			k := i
			n.Unlock()
			if _, err := db.Enqueue(ctx, EnqueueRequest{Ref: ref(k)}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkClaimComplete(b *testing.B) {
	db, err := Open(filepath.Join(b.TempDir(), "a.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	for i := range b.N {
		if _, err := db.Enqueue(ctx, EnqueueRequest{Ref: ref(i)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		j, err := db.Claim(ctx, "w", time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		if err := db.Complete(ctx, j.ID, "w"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestIntakeBaselineRecordsFirstSighting(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	first := []IntakeItem{{Ref: ref(1), BaselineKey: "r/app"}, {Ref: ref(2), BaselineKey: "r/app"}, {Ref: ref(3)}}
	res, err := db.Intake(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if !res[0].RecordedOnly || !res[1].RecordedOnly || res[2].RecordedOnly || res[2].JobID == 0 {
		t.Fatalf("first sighting = %+v", res)
	}
	res, err = db.Intake(ctx, []IntakeItem{{Ref: ref(4), BaselineKey: "r/app"}, {Ref: ref(1), BaselineKey: "r/app"}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].RecordedOnly || res[0].JobID == 0 || !res[1].Duplicate {
		t.Fatalf("after the baseline = %+v", res)
	}
	r, _ := db.Image(ctx, ref(1))
	if r.Note == "" {
		t.Error("recorded-only image has no note")
	}
	if j, err := db.Requeue(ctx, ref(1), "cli"); err != nil || j.ID == 0 {
		t.Fatalf("requeue of a recorded-only image: %v", err)
	}
}

func TestIntakeFoldsChildren(t *testing.T) {
	t.Parallel()
	db, _ := open(t)
	ctx := context.Background()
	child := fmt.Sprintf("%064x", 7)
	childRef := "registry.local/app/n1@sha256:" + child
	if _, err := db.Intake(ctx, []IntakeItem{{Ref: childRef, NotBefore: time.Now().Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	// The index is already known (the poller saw its tag first): the
	// webhook's index event still folds the child.
	if _, err := db.Intake(ctx, []IntakeItem{{Ref: ref(1)}}); err != nil {
		t.Fatal(err)
	}
	res, err := db.Intake(ctx, []IntakeItem{{Ref: ref(1), Children: []string{"sha256:" + child}}})
	if err != nil || !res[0].Duplicate {
		t.Fatalf("%+v %v", res, err)
	}
	st, _ := db.Stats(ctx)
	if st.Jobs[JobPending] != 1 || st.Jobs[JobDone] != 1 {
		t.Fatalf("stats %+v: want the index pending and the child folded", st.Jobs)
	}
	r, _ := db.Image(ctx, childRef)
	if r.Parent != ref(1) {
		t.Fatalf("child parent = %q", r.Parent)
	}
}

func TestTagsOf(t *testing.T) {
	ctx := context.Background()
	db, err := Open(filepath.Join(t.TempDir(), "a.db")) // real clock: each move gets its own key
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a, b := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	for _, x := range []struct{ tag, d string }{
		{"r.example/app:v1", a}, {"r.example/app:latest", a}, {"r.example/app:latest", b},
		{"r.example/app:v1.0", a}, {"r.example/app-other:v1", a}, {"r.example/app:gone", a}, {"r.example/app:gone", ""},
	} {
		if err := db.RecordTag(ctx, x.tag, x.d); err != nil {
			t.Fatal(err)
		}
	}
	got, err := db.TagsOf(ctx, "r.example/app", a)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"v1", "v1.0"}; !slices.Equal(got, want) {
		t.Errorf("TagsOf = %v, want %v", got, want)
	}
}

func TestBlobs(t *testing.T) {
	ctx := context.Background()
	db, _ := open(t)
	d, err := db.PutBlob(ctx, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if d != "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" {
		t.Errorf("digest %s", d)
	}
	if _, err := db.PutBlob(ctx, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, err := db.Blob(ctx, d)
	if err != nil || string(got) != "hello" {
		t.Errorf("Blob = %q, %v", got, err)
	}
	if _, err := db.Blob(ctx, "sha256:"+strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing blob: %v, want ErrNotFound", err)
	}
}

// A v1 file (before blobs) migrates to the current schema on open.
func TestMigrateV1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bdb.Update(func(tx *bolt.Tx) error {
		if err := migrations[0](tx); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySchema, u64(1))
	}); err != nil {
		t.Fatal(err)
	}
	bdb.Close()
	if _, err := Open(path, ReadOnly()); err == nil || !strings.Contains(err.Error(), "needs migration") {
		t.Fatalf("read-only open of a v1 file: %v, want needs migration", err)
	}
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.PutBlob(context.Background(), []byte("x")); err != nil {
		t.Fatalf("blobs after migration: %v", err)
	}
}

// BenchmarkIntakeGroupCommit: 64 concurrent single-event Intake calls (a
// burst of webhook deliveries, without HTTP), as groupCommit batches them.
// Reports events/s and what each commit costs: bbolt pages written and the
// time spent writing them (pwrite + fdatasync).
func BenchmarkIntakeGroupCommit(b *testing.B) {
	db, err := Open(filepath.Join(b.TempDir(), "a.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	var next atomic.Int64
	s0 := db.bolt.Stats()
	b.SetParallelism(32) // × GOMAXPROCS 2 = 64 senders
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			_, err := db.Intake(ctx, []IntakeItem{{Ref: ref(int(i)), Tag: fmt.Sprintf("registry.local/app/n%d:v1", i),
				Source: "webhook:bench", EventKey: fmt.Sprintf("bench/%x", sha256.Sum256(fmt.Append(nil, i)))}})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	el := time.Since(start)
	s1 := db.bolt.Stats()
	d := s1.TxStats.Sub(&s0.TxStats)
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
	b.ReportMetric(float64(d.GetWrite())/float64(b.N), "page-writes/event")
	b.ReportMetric(float64(d.GetWriteTime().Microseconds())/float64(b.N), "write-µs/event")
}

// TestClaimReadsLegacyQueueEntries: queue entries written before they
// carried the job's not-before time (an empty value) are still honoured.
func TestClaimReadsLegacyQueueEntries(t *testing.T) {
	db, _ := open(t)
	ctx := context.Background()
	res, err := db.Enqueue(ctx, EnqueueRequest{Ref: ref(1)})
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour).UTC()
	set := func(notBefore time.Time) {
		t.Helper()
		if err := db.bolt.Update(func(tx *bolt.Tx) error {
			j, err := getJob(tx, res.JobID)
			if err != nil {
				return err
			}
			j.NotBefore = notBefore
			if err := putJob(tx, j); err != nil {
				return err
			}
			return tx.Bucket(bucketQueue).Put(queueKey(j.Priority, j.ID), nil)
		}); err != nil {
			t.Fatal(err)
		}
	}
	set(later)
	if next, err := db.NextReady(ctx); err != nil || !next.Equal(later) {
		t.Fatalf("next ready %v %v, want %v", next, err, later)
	}
	if _, err := db.Claim(ctx, "w", time.Minute); !errors.Is(err, ErrNoJob) {
		t.Fatalf("claimed a job not due for an hour: %v", err)
	}
	set(time.Time{})
	if j, err := db.Claim(ctx, "w", time.Minute); err != nil || j.ID != res.JobID {
		t.Fatalf("claim = %+v, %v", j, err)
	}
}

// AuditOnce appends under a key once; AuditMarked appends every time and
// marks the key, so a later AuditOnce under it appends nothing.
func TestAuditOnceAndMarked(t *testing.T) {
	db, _ := open(t)
	ctx := context.Background()
	e := AuditEntry{Actor: "pipeline", Action: AuditPromotion, Subject: "r/x@sha256:1"}
	count := func() int {
		n := 0
		_ = db.AuditEntries(ctx, 0, func(a AuditEntry, _ []byte) error {
			if a.Action == AuditPromotion {
				n++
			}
			return nil
		})
		return n
	}
	if added, err := db.AuditOnce(ctx, "k1", e); !added || err != nil {
		t.Fatalf("first AuditOnce: %v %v", added, err)
	}
	if added, _ := db.AuditOnce(ctx, "k1", e); added {
		t.Error("second AuditOnce under k1 appended")
	}
	for range 2 {
		if err := db.AuditMarked(ctx, "k2", e); err != nil {
			t.Fatal(err)
		}
	}
	if added, _ := db.AuditOnce(ctx, "k2", e); added {
		t.Error("AuditOnce after AuditMarked appended")
	}
	if n := count(); n != 3 {
		t.Errorf("%d entries, want 3 (one AuditOnce, two AuditMarked)", n)
	}
	if err := db.AuditMarked(ctx, "k1", e); err != nil || count() != 4 {
		t.Errorf("AuditMarked under a marked key: %v, %d entries", err, count())
	}
}
