package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/attestd/attestd/store"
)

// A full disk is the host's problem: the job is retried, never buried,
// however many attempts it took.
func TestFullDiskNeverBuries(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	s := &stage{err: fmt.Errorf("write cache/layers/partial-1: %w", syscall.ENOSPC)}
	p, _ := New(db, Stages{Resolver: s}, Options{MaxAttempts: 1, Backoff: time.Millisecond})
	ids := enqueue(t, db, ref(1))
	ctx := context.Background()
	for range 3 {
		_ = p.Process(ctx, ids[0])
		time.Sleep(3 * time.Millisecond)
	}
	j, _ := db.Job(ctx, ids[0])
	rec, _ := db.Image(ctx, ref(1))
	if j.Status != store.JobPending || rec.State.Final() || !strings.Contains(j.LastError, "no space left") {
		t.Fatalf("after 3 attempts on a full disk (max 1): job %+v, image %s", j, rec.State)
	}
}

// Attempts the process died in do not count and never bury a job: one
// the process keeps dying in waits longer after each restart (the jobs
// beside it are not told apart from it), and an outcome resets the count.
func TestInterruptedJobsBackOffNeverBuried(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	s := &stage{}
	p, _ := New(db, Stages{Resolver: s}, Options{MaxAttempts: 1})
	ids := enqueue(t, db, ref(1))
	ctx := context.Background()
	for i := range 25 {
		j, err := db.Claim(ctx, "dead", time.Hour)
		if i == 0 && err != nil {
			t.Fatal(err)
		}
		if err != nil { // backing off: what it waits for is the point
			j, _ = db.Job(ctx, ids[0])
			if i < 2 || !strings.Contains(j.LastError, "interrupted") || time.Until(j.NotBefore) <= 0 {
				t.Fatalf("after %d deaths: %+v (claim: %v)", i, j, err)
			}
			if j, err = db.ClaimJob(ctx, ids[0], "dead", time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		_ = j
		if _, err := db.ReleaseClaims(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	j, _ := db.Job(ctx, ids[0])
	if j.Attempts != 0 || j.Interrupted != 25 || j.Status != store.JobPending || time.Until(j.NotBefore) > time.Minute {
		t.Fatalf("after 25 deaths: %+v", j)
	}
	if err := p.Process(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	j, _ = db.Job(ctx, ids[0])
	rec, _ := db.Image(ctx, ref(1))
	if j.Status != store.JobDone || j.Attempts != 1 || rec.State.Final() {
		t.Fatalf("after a run: job %+v, image %s", j, rec.State)
	}
}

// While Healthy fails no job is claimed; once it passes the workers go on
// by themselves.
func TestUnhealthyHostPausesClaims(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	s := &stage{}
	var full atomic.Bool
	full.Store(true)
	p, _ := New(db, Stages{Resolver: s}, Options{Workers: 2, Healthy: func() error {
		if full.Load() {
			return errors.New("data_dir: filesystem full")
		}
		return nil
	}})
	ids := enqueue(t, db, ref(1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(300 * time.Millisecond)
	if j, _ := db.Job(ctx, ids[0]); j.Status != store.JobPending || j.Attempts != 0 {
		t.Fatalf("claimed while unhealthy: %+v", j)
	}
	full.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if j, _ := db.Job(ctx, ids[0]); j.Status == store.JobDone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not done 10s after the host recovered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
}

// flakyQueue fails the first n writes of a job's outcome, as a disk that
// filled up between the stage and the bookkeeping would.
type flakyQueue struct {
	Queue
	fails atomic.Int32
}

func (q *flakyQueue) Complete(ctx context.Context, id uint64, owner string) error {
	if q.fails.Add(-1) >= 0 {
		return fmt.Errorf("complete: %w", syscall.ENOSPC)
	}
	return q.Queue.Complete(ctx, id, owner)
}

// An outcome that could not be recorded is recorded once the store takes
// writes again: not dropped, and the claim not left to expire.
func TestOutcomeRecordedAfterWriteFailure(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	q := &flakyQueue{Queue: db}
	q.fails.Store(2)
	p, _ := New(q, Stages{Resolver: &stage{}}, Options{})
	ids := enqueue(t, db, ref(1))
	if err := p.Process(context.Background(), ids[0]); err != nil {
		t.Fatal(err)
	}
	if j, _ := db.Job(context.Background(), ids[0]); j.Status != store.JobDone {
		t.Fatalf("job %+v", j)
	}
}

func TestPermanentIf(t *testing.T) {
	t.Parallel()
	sentinel := errors.New("too many referrers")
	other := errors.New("503")
	if err := PermanentIf(fmt.Errorf("sign: %w", sentinel), sentinel, "delete them"); !IsPermanent(err) || !errors.Is(err, sentinel) || !strings.Contains(err.Error(), "(delete them)") {
		t.Errorf("matching error: %v (permanent %v)", err, IsPermanent(err))
	}
	if err := PermanentIf(other, sentinel, "x"); IsPermanent(err) || err != other {
		t.Errorf("other error changed: %v", err)
	}
	if PermanentIf(nil, sentinel, "x") != nil {
		t.Error("nil became an error")
	}
}

type temporary struct{}

func (temporary) Error() string   { return "registry 503 after retries" }
func (temporary) Temporary() bool { return true }

// A dependency down is not the job's failure: however long it lasts the
// job is retried, and only the job's own failures count toward
// max_attempts.
func TestTransientNeverBuries(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	s := &stage{}
	p, _ := New(db, Stages{Resolver: s}, Options{MaxAttempts: 2, Backoff: time.Millisecond, MaxBackoff: time.Millisecond})
	ids := enqueue(t, db, ref(1))
	ctx := context.Background()
	run := func(err error) *store.Job {
		t.Helper()
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		time.Sleep(3 * time.Millisecond)
		_ = p.Process(ctx, ids[0])
		j, _ := db.Job(ctx, ids[0])
		return j
	}
	for _, err := range []error{
		fmt.Errorf("dial: %w", syscall.ECONNREFUSED),
		fmt.Errorf("read: %w", syscall.ECONNRESET),
		fmt.Errorf("resolve: %w", temporary{}),
		fmt.Errorf("write: %w", syscall.ENOSPC),
	} {
		if j := run(err); j.Status != store.JobPending {
			t.Fatalf("after %v: %+v", err, j)
		}
	}
	if j := run(errors.New("manifest invalid")); j.Status != store.JobPending || j.Postponed != 4 {
		t.Fatalf("the job's first own failure (max 2): %+v", j)
	}
	if j := run(errors.New("manifest invalid")); j.Status != store.JobDead {
		t.Fatalf("the job's second own failure (max 2): %+v", j)
	}
	// A timeout is the job's: it counts.
	if Transient(fmt.Errorf("fetch: %w", context.DeadlineExceeded)) || Transient(nil) || Transient(errors.New("x")) {
		t.Error("timeouts, nil and plain errors are not transient")
	}
}
