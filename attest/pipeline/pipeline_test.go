package pipeline

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/attestd/attestd/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ref(n int) string { return fmt.Sprintf("r.local/app@sha256:%064x", n) }

// stage is a hand-written fake for every stage interface: it records calls
// and returns err (or blocks until release when block is set).
type stage struct {
	mu      sync.Mutex
	calls   []string
	err     error
	allow   bool
	block   chan struct{}
	started chan string
	// promotedBy is the job the promote stage was handed.
	promotedBy uint64
}

func (s *stage) hit(ctx context.Context, what string) error {
	s.mu.Lock()
	s.calls = append(s.calls, what)
	s.mu.Unlock()
	if s.started != nil {
		s.started <- what
	}
	if s.block != nil {
		select {
		case <-s.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.err
}

func (s *stage) Resolve(ctx context.Context, r string) (*Target, error) {
	if err := s.hit(ctx, "resolve"); err != nil {
		return nil, err
	}
	return &Target{Ref: r, MediaType: "application/vnd.oci.image.manifest.v1+json"}, nil
}
func (s *stage) Analyze(ctx context.Context, t *Target) (*Analysis, error) {
	if err := s.hit(ctx, "analyse"); err != nil {
		return nil, err
	}
	return &Analysis{Artifacts: []store.Artifact{{Subject: "sha256:" + strings.Repeat("a", 64), Kind: "spdx"}}}, nil
}
func (s *stage) Sign(ctx context.Context, _ *Target) error { return s.hit(ctx, "sign") }
func (s *stage) Evaluate(ctx context.Context, _ *Target) (Decision, error) {
	return Decision{Allow: s.allow, Reasons: []string{"test"}}, s.hit(ctx, "evaluate")
}
func (s *stage) Promote(ctx context.Context, t *Target) error {
	s.mu.Lock()
	s.promotedBy = t.Job
	s.mu.Unlock()
	return s.hit(ctx, "promote")
}

func (s *stage) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

var (
	_ Resolver  = (*stage)(nil)
	_ Analyzer  = (*stage)(nil)
	_ Signer    = (*stage)(nil)
	_ Evaluator = (*stage)(nil)
	_ Promoter  = (*stage)(nil)
)

func openDB(t *testing.T) *store.DB {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func enqueue(t *testing.T, db *store.DB, refs ...string) []uint64 {
	t.Helper()
	var ids []uint64
	for _, r := range refs {
		res, err := db.Enqueue(context.Background(), store.EnqueueRequest{Ref: r, Source: "test"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.JobID)
	}
	return ids
}

func TestProcessStates(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		stages   func(s *stage) Stages
		allow    bool
		state    store.State
		calls    []string
		statuses map[string]store.StageStatus
	}{
		{
			name:   "only resolve built",
			stages: func(s *stage) Stages { return Stages{Resolver: s} },
			state:  store.StateDiscovered, calls: []string{"resolve"},
			statuses: map[string]store.StageStatus{StageResolve: store.StagePassed, StageAnalyse: store.StageSkipped},
		},
		{
			name:   "all built, allowed",
			stages: func(s *stage) Stages { return Stages{s, s, s, s, s} }, allow: true,
			state: store.StatePromoted, calls: []string{"resolve", "analyse", "sign", "evaluate", "promote"},
			statuses: map[string]store.StageStatus{StageResolve: "passed", StageAnalyse: "passed", StageSign: "passed", StageEvaluate: "passed", StagePromote: "passed"},
		},
		{
			name:   "denied never promotes",
			stages: func(s *stage) Stages { return Stages{s, s, s, s, s} }, allow: false,
			state: store.StateDenied, calls: []string{"resolve", "analyse", "sign", "evaluate"},
			statuses: map[string]store.StageStatus{StageResolve: "passed", StageAnalyse: "passed", StageSign: "passed", StageEvaluate: "passed", StagePromote: "skipped"},
		},
		{
			name:   "allowed but no promoter stops at evaluated",
			stages: func(s *stage) Stages { return Stages{Resolver: s, Analyzer: s, Signer: s, Evaluator: s} }, allow: true,
			state: store.StateEvaluated, calls: []string{"resolve", "analyse", "sign", "evaluate"},
			statuses: map[string]store.StageStatus{StageResolve: "passed", StageAnalyse: "passed", StageSign: "passed", StageEvaluate: "passed", StagePromote: "skipped"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := openDB(t)
			s := &stage{allow: tc.allow}
			var mu sync.Mutex
			var observed []string
			p, err := New(db, tc.stages(s), Options{OnStage: func(stage string, err error, _ time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				observed = append(observed, stage)
			}})
			if err != nil {
				t.Fatal(err)
			}
			ids := enqueue(t, db, ref(1))
			if err := p.Process(context.Background(), ids[0]); err != nil {
				t.Fatal(err)
			}
			rec, _ := db.Image(context.Background(), ref(1))
			if rec.State != tc.state {
				t.Errorf("state = %s, want %s", rec.State, tc.state)
			}
			if diff := cmp.Diff(tc.calls, s.got()); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			// The one hook observes exactly the stage calls made.
			mu.Lock()
			if diff := cmp.Diff(tc.calls, observed); diff != "" {
				t.Errorf("OnStage (-want +got):\n%s", diff)
			}
			mu.Unlock()
			got := map[string]store.StageStatus{}
			for k, v := range rec.Stages {
				got[k] = v.Status
			}
			if diff := cmp.Diff(tc.statuses, got); diff != "" {
				t.Errorf("stage results (-want +got):\n%s", diff)
			}
			j, _ := db.Job(context.Background(), ids[0])
			if j.Status != store.JobDone {
				t.Errorf("job status %s", j.Status)
			}
			// The promote stage knows its job (it audits a promotion
			// once per job).
			if slices.Contains(tc.calls, "promote") && s.promotedBy != ids[0] {
				t.Errorf("promote was handed job %d, want %d", s.promotedBy, ids[0])
			}
		})
	}
}

func TestRetryThenBury(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	s := &stage{err: errors.New("registry 503")}
	p, _ := New(db, Stages{Resolver: s}, Options{MaxAttempts: 2, Backoff: time.Millisecond})
	ids := enqueue(t, db, ref(1))
	ctx := context.Background()
	if err := p.Process(ctx, ids[0]); err == nil {
		t.Fatal("want error")
	}
	j, _ := db.Job(ctx, ids[0])
	if j.Status != store.JobPending || j.Attempts != 1 || j.LastError == "" {
		t.Fatalf("after attempt 1: %+v", j)
	}
	time.Sleep(5 * time.Millisecond)
	if err := p.Process(ctx, ids[0]); err == nil {
		t.Fatal("want error")
	}
	j, _ = db.Job(ctx, ids[0])
	rec, _ := db.Image(ctx, ref(1))
	if j.Status != store.JobDead || rec.State != store.StateFailed || rec.Stages[StageResolve].Status != store.StageFailed {
		t.Fatalf("after attempt 2: job %+v record %+v", j, rec)
	}
}

func TestPermanentBuriesAtOnce(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	s := &stage{err: Permanent(errors.New("manifest unknown"))}
	p, _ := New(db, Stages{Resolver: s}, Options{MaxAttempts: 5})
	ids := enqueue(t, db, ref(1))
	_ = p.Process(context.Background(), ids[0])
	j, _ := db.Job(context.Background(), ids[0])
	if j.Status != store.JobDead || j.Attempts != 1 {
		t.Fatalf("job = %+v", j)
	}
}

// A pipeline stopped before it ran (SIGTERM while the daemon warmed up)
// returns cleanly, touches no job, and leaves claims for the next start.
func TestRunStoppedBeforeStart(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	enqueue(t, db, ref(1))
	if _, err := db.Claim(context.Background(), "dead-process/0", time.Hour); err != nil {
		t.Fatal(err)
	}
	s := &stage{}
	p, _ := New(db, Stages{Resolver: s}, Options{Workers: 1})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Run(ctx); err != nil {
		t.Fatalf("Run after its context ended: %v, want nil", err)
	}
	if calls := s.got(); len(calls) != 0 {
		t.Errorf("stages ran: %v", calls)
	}
}

func TestRunDrainsAndResumes(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	ctx := context.Background()
	const n = 6
	var refs []string
	for i := range n {
		refs = append(refs, ref(i))
	}
	enqueue(t, db, refs...)
	// A claim left by a "crashed" process must be resumed.
	if _, err := db.Claim(ctx, "dead-process/0", time.Hour); err != nil {
		t.Fatal(err)
	}

	s := &stage{block: make(chan struct{}), started: make(chan string, n)}
	var done atomic.Int32
	p, _ := New(db, Stages{Resolver: s}, Options{Workers: 2, Grace: 50 * time.Millisecond,
		OnJobDone: func(*store.Job, error) { done.Add(1) }})
	runCtx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- p.Run(runCtx) }()
	<-s.started
	<-s.started
	stop() // both workers are blocked in a stage; grace expires, attempts requeued
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after shutdown")
	}
	st, _ := db.Stats(ctx)
	if st.Jobs[store.JobClaimed] != 0 || st.Jobs[store.JobPending] != n {
		t.Fatalf("after drain: %+v, want all %d pending and none claimed", st.Jobs, n)
	}

	// Restart with a stage that no longer blocks: every job completes once.
	close(s.block)
	s.started = nil
	var mu sync.Mutex
	seen := map[uint64]int{}
	p2, _ := New(db, Stages{Resolver: s}, Options{Workers: 2, OnJobDone: func(j *store.Job, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			seen[j.ID]++
		}
	}})
	runCtx, stop = context.WithCancel(ctx)
	go func() { errc <- p2.Run(runCtx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := db.Stats(ctx)
		if st.Jobs[store.JobDone] == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs not drained: %+v", st.Jobs)
		}
		p2.Wake()
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	<-errc
	for id, c := range seen {
		if c != 1 {
			t.Errorf("job %d completed %d times", id, c)
		}
	}
	if len(seen) != n {
		t.Errorf("%d jobs completed, want %d", len(seen), n)
	}
}

func TestBackoffDoublesToCap(t *testing.T) {
	t.Parallel()
	p, _ := New(openDB(t), Stages{Resolver: &stage{}}, Options{Backoff: time.Second, MaxBackoff: 5 * time.Second})
	var got []time.Duration
	for a := 1; a <= 5; a++ {
		got = append(got, p.backoff(a))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatal(diff)
	}
}

// slotStage analyses for a moment, counting analyses in flight, and blocks
// in Sign until released.
type slotStage struct {
	stage
	inFlight, most atomic.Int32
	signing        chan struct{}
	release        chan struct{}
}

func (s *slotStage) Analyze(ctx context.Context, t *Target) (*Analysis, error) {
	n := s.inFlight.Add(1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	time.Sleep(5 * time.Millisecond)
	s.inFlight.Add(-1)
	return s.stage.Analyze(ctx, t)
}

func (s *slotStage) Sign(ctx context.Context, _ *Target) error {
	s.signing <- struct{}{}
	select {
	case <-s.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestAnalysisSlots: analysis (CPU-bound) is bounded by AnalysisSlots,
// and a job waiting in a later stage holds no analysis slot: with one
// slot, four workers still bring four jobs to signing.
func TestAnalysisSlots(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	const n = 4
	var refs []string
	for i := range n {
		refs = append(refs, ref(100+i))
	}
	enqueue(t, db, refs...)
	s := &slotStage{signing: make(chan struct{}, n), release: make(chan struct{})}
	p, _ := New(db, Stages{Resolver: s, Analyzer: s, Signer: s}, Options{Workers: n, AnalysisSlots: 1})
	ctx, stop := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	for i := range n {
		select {
		case <-s.signing:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d jobs reached signing: a job waiting to sign holds the analysis slot", i, n)
		}
	}
	if m := s.most.Load(); m != 1 {
		t.Errorf("%d analyses ran at once, want at most 1", m)
	}
	close(s.release)
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// holdStage's first analysis holds its slot, ignoring ctx, until released;
// later ones return at once.
type holdStage struct {
	stage
	first   atomic.Bool
	holding chan struct{}
	release chan struct{}
}

func (s *holdStage) Analyze(ctx context.Context, t *Target) (*Analysis, error) {
	if s.first.CompareAndSwap(false, true) {
		close(s.holding)
		<-s.release
	}
	return s.stage.Analyze(ctx, t)
}

// TestSlotWaitIsNotTheJobsTime: a job waiting for an analysis slot behind
// a long analysis does not spend its own timeout waiting.
func TestSlotWaitIsNotTheJobsTime(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	const timeout = time.Second
	s := &holdStage{holding: make(chan struct{}), release: make(chan struct{})}
	var mu sync.Mutex
	outcome := map[string]error{}
	done := make(chan struct{}, 2)
	p, _ := New(db, Stages{Resolver: s, Analyzer: s}, Options{Workers: 2, AnalysisSlots: 1, JobTimeout: timeout,
		OnJobDone: func(j *store.Job, err error) {
			mu.Lock()
			outcome[j.Ref] = err
			mu.Unlock()
			done <- struct{}{}
		}})
	ctx, stop := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	enqueue(t, db, ref(200))
	<-s.holding // the first job has the slot
	enqueue(t, db, ref(201))
	p.Wake()
	time.Sleep(timeout + timeout/2) // the second waits longer than its timeout
	close(s.release)
	for range 2 {
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("jobs did not finish")
		}
	}
	stop()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := outcome[ref(201)]; err != nil {
		t.Errorf("the job that waited for the slot failed: %v", err)
	}
}
