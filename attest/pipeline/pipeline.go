// Package pipeline is attestd's orchestrator: a pool of workers claims jobs
// from the durable queue and drives each image through the state machine
// (discovered → analysed → attested → evaluated → promoted | denied), one
// compare-and-set transition per finished stage. It sees the stages only
// through the one-method interfaces in stages.go and the store only through
// Queue, so neither cosign nor a registry client is imported here.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/attestd/attestd/store"
)

// Queue is what the pipeline needs from the store. bbolt implements it
// today; an etcd backend (leases for claims, transactions for transitions)
// must be able to drop in behind the same methods.
type Queue interface {
	Claim(ctx context.Context, owner string, lease time.Duration) (*store.Job, error)
	ClaimJob(ctx context.Context, id uint64, owner string, lease time.Duration) (*store.Job, error)
	Complete(ctx context.Context, id uint64, owner string) error
	Retry(ctx context.Context, id uint64, owner string, cause error, backoff time.Duration) error
	Postpone(ctx context.Context, id uint64, owner string, cause error, backoff time.Duration) error
	Bury(ctx context.Context, id uint64, owner string, cause error) error
	ReleaseClaims(ctx context.Context, expiredOnly bool) (int, error)
	NextReady(ctx context.Context) (time.Time, error)
	Image(ctx context.Context, ref string) (*store.Record, error)
	Transition(ctx context.Context, ref string, from, to store.State, fn func(*store.Record) error) (*store.Record, error)
}

// Defaults for Options left zero.
const (
	defaultWorkers     = 4
	defaultMaxAttempts = 5
	defaultBackoff     = 5 * time.Second
	defaultMaxBackoff  = 5 * time.Minute
	defaultJobTimeout  = 30 * time.Minute
	defaultGrace       = 8 * time.Second
	// idlePoll bounds how long an idle worker sleeps without a Wake.
	idlePoll = 2 * time.Second
	// bookkeepingTimeout bounds the store writes after a job ends, which run
	// even while shutting down.
	bookkeepingTimeout = 5 * time.Second
	// maxBookkeepTries bounds the writes of a job's outcome that fail for
	// another reason than a full disk (which is waited out).
	maxBookkeepTries = 5
)

// Options tune the pipeline. Zero values take the defaults above.
type Options struct {
	Workers int
	// AnalysisSlots bounds how many jobs analyse at once (CPU-bound), so
	// that Workers can be sized for the waiting the other stages do
	// (default: GOMAXPROCS).
	AnalysisSlots int
	MaxAttempts   int
	Backoff       time.Duration
	MaxBackoff    time.Duration
	JobTimeout    time.Duration
	// Grace is how long in-flight stages may run after shutdown begins.
	Grace  time.Duration
	Owner  string // claim owner; default host:pid
	Logger *slog.Logger
	// OnJobDone, if set, is called after a job's outcome is durable (tests, metrics).
	OnJobDone func(j *store.Job, err error)
	// OnStage, if set, is called after each call of a stage with its
	// result and how long it took (metrics): one hook for every stage.
	OnStage func(stage string, err error, took time.Duration)
	// Healthy, if set, is asked before each claim: while it returns an
	// error (the data directory's filesystem is full) workers claim
	// nothing, so no job spends its attempts on a host problem, and they
	// resume by themselves once it passes.
	Healthy func() error
}

// Pipeline runs jobs. Construct with New.
type Pipeline struct {
	q        Queue
	stages   Stages
	o        Options
	log      *slog.Logger
	wake     chan struct{}
	analysis chan struct{} // a token per analysis slot
}

// New builds a pipeline. A Resolver is required: every job starts by
// checking its digest against the registry.
func New(q Queue, stages Stages, o Options) (*Pipeline, error) {
	if q == nil {
		return nil, errors.New("pipeline: nil queue")
	}
	if stages.Resolver == nil {
		return nil, errors.New("pipeline: a Resolver is required")
	}
	if o.Workers <= 0 {
		o.Workers = defaultWorkers
	}
	if o.AnalysisSlots <= 0 {
		o.AnalysisSlots = runtime.GOMAXPROCS(0)
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = defaultMaxAttempts
	}
	if o.Backoff <= 0 {
		o.Backoff = defaultBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = defaultMaxBackoff
	}
	if o.JobTimeout <= 0 {
		o.JobTimeout = defaultJobTimeout
	}
	if o.Grace <= 0 {
		o.Grace = defaultGrace
	}
	if o.Owner == "" {
		h, _ := os.Hostname()
		o.Owner = h + ":" + strconv.Itoa(os.Getpid())
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Pipeline{q: q, stages: stages, o: o, log: o.Logger, wake: make(chan struct{}, 1), analysis: make(chan struct{}, o.AnalysisSlots)}, nil
}

// Wake tells an idle worker that a job was enqueued. It never blocks.
func (p *Pipeline) Wake() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run resumes unfinished jobs (claims left by a previous process go back to
// the queue), then runs the workers until ctx ends. On shutdown it stops
// claiming, gives in-flight jobs Options.Grace to finish, and returns once
// every worker has stopped.
func (p *Pipeline) Run(ctx context.Context) error {
	n, err := p.q.ReleaseClaims(ctx, false)
	if ctx.Err() != nil {
		// Stopped before the workers started (a SIGTERM while the daemon
		// was still warming up): a clean stop, with nothing to drain.
		return nil
	}
	if err != nil {
		return fmt.Errorf("pipeline: resume: %w", err)
	}
	if n > 0 {
		p.log.InfoContext(ctx, "resumed interrupted jobs", "count", n)
	}
	// Jobs run under work, which outlives ctx by Grace so stages can reach a
	// checkpoint; then it is cancelled and their attempt is retried later.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(p.o.Grace, cancelWork)
		go func() { <-work.Done(); t.Stop() }()
	})
	defer stop()

	var wg sync.WaitGroup
	for i := range p.o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.worker(ctx, work, i)
		}()
	}
	wg.Wait()
	return nil
}

func (p *Pipeline) worker(ctx, work context.Context, n int) {
	owner := p.o.Owner + "/" + strconv.Itoa(n)
	paused := false
	for ctx.Err() == nil {
		if p.o.Healthy != nil {
			if err := p.o.Healthy(); err != nil {
				if !paused && n == 0 {
					p.log.ErrorContext(ctx, "workers paused: claiming no job until the host recovers", "err", err)
				}
				paused = true
				p.sleep(ctx, idlePoll)
				continue
			}
			if paused && n == 0 {
				p.log.InfoContext(ctx, "workers resumed")
			}
			paused = false
		}
		j, err := p.q.Claim(ctx, owner, p.o.JobTimeout+p.o.Grace)
		switch {
		case errors.Is(err, store.ErrNoJob):
			p.idle(ctx)
			continue
		case err != nil:
			if ctx.Err() == nil {
				p.log.ErrorContext(ctx, "claim failed", "err", err)
				p.sleep(ctx, idlePoll)
			}
			continue
		}
		p.runJob(work, j, owner)
	}
}

func (p *Pipeline) idle(ctx context.Context) {
	d := idlePoll
	if t, err := p.q.NextReady(ctx); err == nil && !t.IsZero() {
		d = min(max(time.Until(t), 10*time.Millisecond), idlePoll)
	}
	select {
	case <-ctx.Done():
	case <-p.wake:
	case <-time.After(d):
	}
}

func (p *Pipeline) sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Process runs one claimed-or-pending job in the foreground (attestd process)
// and returns the stage error, if any, after recording the outcome.
func (p *Pipeline) Process(ctx context.Context, jobID uint64) error {
	owner := p.o.Owner + "/fg"
	j, err := p.q.ClaimJob(ctx, jobID, owner, p.o.JobTimeout+p.o.Grace)
	if err != nil {
		return err
	}
	return p.runJob(ctx, j, owner)
}

// runJob runs j and records its outcome durably: done, retried with backoff,
// or buried.
func (p *Pipeline) runJob(ctx context.Context, j *store.Job, owner string) error {
	log := p.log.With("job", j.ID, "digest", j.Ref)
	err := p.advance(ctx, j, log)

	var record func(context.Context) error
	switch {
	case err == nil:
		record = func(bctx context.Context) error { return p.q.Complete(bctx, j.ID, owner) }
		log.InfoContext(ctx, "job done", "attempt", j.Attempts)
	case ctx.Err() != nil && !IsPermanent(err):
		// Shutdown cut the attempt short: back in the queue, no penalty wait.
		cause := fmt.Errorf("interrupted by shutdown: %w", err)
		record = func(bctx context.Context) error { return p.q.Retry(bctx, j.ID, owner, cause, 0) }
		log.InfoContext(ctx, "job interrupted, requeued", "err", err)
	case Transient(err) && !IsPermanent(err):
		// A full disk, a dependency down: not the job's fault, never
		// buried for it; retried with backoff until it is back.
		b := p.backoff(j.Attempts)
		record = func(bctx context.Context) error { return p.q.Postpone(bctx, j.ID, owner, err, b) }
		log.WarnContext(ctx, "job failed on an unavailable dependency, will retry", "attempt", j.Attempts, "backoff", b, "err", err)
	case IsPermanent(err) || j.Attempts-j.Postponed >= p.o.MaxAttempts:
		record = func(bctx context.Context) error { return p.q.Bury(bctx, j.ID, owner, err) }
		log.ErrorContext(ctx, "job failed for good", "attempt", j.Attempts, "err", err)
	default:
		b := p.backoff(j.Attempts)
		record = func(bctx context.Context) error { return p.q.Retry(bctx, j.ID, owner, err, b) }
		log.WarnContext(ctx, "job failed, will retry", "attempt", j.Attempts, "backoff", b, "err", err)
	}
	if berr := p.bookkeep(ctx, record, log); berr != nil && err == nil {
		err = berr
	}
	if p.o.OnJobDone != nil {
		p.o.OnJobDone(j, err)
	}
	return err
}

// bookkeep records a job's outcome durably. A write that failed because
// the disk filled up between the stage and the write is repeated with
// backoff until it succeeds or the pipeline stops (other failures
// maxBookkeepTries times): the outcome is not dropped and the claim not
// left to expire. Stopped, the claim stays and ReleaseClaims at the
// next start re-drives the job. The writes use a context that survives
// shutdown, so an outcome is never lost between "stage finished" and "job
// recorded".
func (p *Pipeline) bookkeep(ctx context.Context, record func(context.Context) error, log *slog.Logger) error {
	d := time.Second
	for try := 1; ; try++ {
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookkeepingTimeout)
		err := record(bctx)
		cancel()
		if err == nil {
			if try > 1 {
				log.InfoContext(ctx, "job outcome recorded", "tries", try)
			}
			return nil
		}
		if try == 1 {
			log.ErrorContext(ctx, "recording job outcome failed, retrying", "err", err)
		}
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNotOwner) {
			return err // the claim is gone: another owner has the job
		}
		if !HostFull(err) && try >= maxBookkeepTries {
			// Not a full disk: something a retry does not mend. The
			// claim stays; ReleaseClaims at the next start re-drives it.
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(d):
		}
		d = min(2*d, 30*time.Second)
	}
}

// HostFull reports whether err comes from a full filesystem (ENOSPC,
// EDQUOT): a problem of the host, not of the job.
func HostFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// Transient reports whether err is a dependency's or the host's, not the
// job's: a full disk; a connection refused, reset or cut; or an error that
// says so with Temporary() (go-containerregistry's for 429 and 5xx after
// the registry client's own retries, attest/sign's ErrUnavailable, a
// stalled registry). Such a job is retried with backoff and never buried
// for it: an outage of an hour must not leave an hour of pushes failed.
// Timeouts are not transient: a job that always runs out of time is.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	if HostFull(err) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (p *Pipeline) backoff(attempt int) time.Duration {
	d := p.o.Backoff
	for i := 1; i < attempt && d < p.o.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, p.o.MaxBackoff)
}

// advance drives ref as far as the wired stages allow, within the job
// timeout. Each finished stage is one compare-and-set transition that also
// records the stage result, so a crash repeats at most the stage that was
// running. A job that will analyse first waits for an analysis slot, and
// its timeout starts once it has one: waiting behind other jobs' analyses
// is not its own time.
func (p *Pipeline) advance(ctx context.Context, j *store.Job, log *slog.Logger) error {
	ref := j.Ref
	rec, err := p.q.Image(ctx, ref)
	if err != nil {
		return Permanent(fmt.Errorf("load record: %w", err))
	}
	if rec.State.Final() {
		return nil
	}
	held := false
	if rec.State == store.StateDiscovered && p.stages.Analyzer != nil {
		select {
		case p.analysis <- struct{}{}:
			held = true
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	release := func() {
		if held {
			<-p.analysis
			held = false
		}
	}
	defer release()
	ctx, cancel := context.WithTimeout(ctx, p.o.JobTimeout)
	defer cancel()
	start := time.Now()
	t, err := p.stages.Resolver.Resolve(ctx, ref)
	p.observe(StageResolve, start, err)
	if err != nil {
		return p.stageFailed(ctx, rec, StageResolve, err)
	}
	t.Job = j.ID
	rec, err = p.q.Transition(ctx, ref, rec.State, rec.State, func(r *store.Record) error {
		r.MediaType, r.Children = t.MediaType, t.Children
		if t.NotImage != "" {
			setStage(r, StageResolve, store.StageSkipped, "not an image: "+t.NotImage)
			return nil
		}
		setStage(r, StageResolve, store.StagePassed, "")
		return nil
	})
	if err != nil || t.NotImage != "" {
		if err == nil {
			log.InfoContext(ctx, "not an image; nothing to do", "why", t.NotImage)
		}
		return err
	}
	for !rec.State.Final() {
		name, run := p.next(rec)
		if run == nil {
			_, err := p.q.Transition(ctx, ref, rec.State, rec.State, func(r *store.Record) error {
				setStage(r, name, store.StageSkipped, notBuilt)
				return nil
			})
			log.InfoContext(ctx, "stage not configured; job ends here", "stage", name, "state", rec.State)
			return err
		}
		to, fn, err := run(ctx, rec, t)
		if name == StageAnalyse {
			release() // the analysis slot is for analysing only
		}
		if err != nil {
			return p.stageFailed(ctx, rec, name, err)
		}
		rec, err = p.q.Transition(ctx, ref, rec.State, to, func(r *store.Record) error {
			setStage(r, name, store.StagePassed, "")
			if fn != nil {
				fn(r) // may override the stage result (e.g. skipped: denied)
			}
			return nil
		})
		if err != nil {
			return err
		}
		log.InfoContext(ctx, "stage passed", "stage", name, "state", rec.State)
	}
	return nil
}

type runFunc func(ctx context.Context, rec *store.Record, t *Target) (store.State, func(*store.Record), error)

// next returns the stage that moves rec on, and nil when it is not built.
func (p *Pipeline) next(rec *store.Record) (string, runFunc) {
	s := p.stages
	switch rec.State {
	case store.StateDiscovered:
		if s.Analyzer == nil {
			return StageAnalyse, nil
		}
		return StageAnalyse, func(ctx context.Context, rec *store.Record, t *Target) (store.State, func(*store.Record), error) {
			t.Source, t.Pusher = rec.Source, rec.Pusher
			start := time.Now()
			an, err := s.Analyzer.Analyze(ctx, t)
			p.observe(StageAnalyse, start, err)
			if err != nil {
				return "", nil, err
			}
			// Fail closed: an analysis that produced nothing is not done.
			if an == nil || len(an.Artifacts) == 0 {
				return "", nil, errors.New("analysis produced no documents")
			}
			return store.StateAnalysed, func(r *store.Record) {
				r.Artifacts, r.Facts = an.Artifacts, an.Facts
			}, nil
		}
	case store.StateAnalysed:
		if s.Signer == nil {
			return StageSign, nil
		}
		return StageSign, func(ctx context.Context, rec *store.Record, t *Target) (store.State, func(*store.Record), error) {
			t.Source, t.Pusher, t.Artifacts = rec.Source, rec.Pusher, rec.Artifacts
			start := time.Now()
			err := s.Signer.Sign(ctx, t)
			p.observe(StageSign, start, err)
			return store.StateAttested, nil, err
		}
	case store.StateAttested:
		if s.Evaluator == nil {
			return StageEvaluate, nil
		}
		return StageEvaluate, func(ctx context.Context, _ *store.Record, t *Target) (store.State, func(*store.Record), error) {
			start := time.Now()
			d, err := s.Evaluator.Evaluate(ctx, t)
			p.observe(StageEvaluate, start, err)
			if err != nil {
				return "", nil, err
			}
			return store.StateEvaluated, func(r *store.Record) { r.Decision = &d }, nil
		}
	default: // evaluated
		// Fail closed: without a recorded allow there is no promotion.
		if rec.Decision == nil || !rec.Decision.Allow {
			return StagePromote, func(context.Context, *store.Record, *Target) (store.State, func(*store.Record), error) {
				return store.StateDenied, func(r *store.Record) {
					setStage(r, StagePromote, store.StageSkipped, "denied by policy")
				}, nil
			}
		}
		if s.Promoter == nil {
			return StagePromote, nil
		}
		return StagePromote, func(ctx context.Context, _ *store.Record, t *Target) (store.State, func(*store.Record), error) {
			start := time.Now()
			err := s.Promoter.Promote(ctx, t)
			p.observe(StagePromote, start, err)
			return store.StatePromoted, nil, err
		}
	}
}

// observe reports one stage call to Options.OnStage.
func (p *Pipeline) observe(stage string, start time.Time, err error) {
	if p.o.OnStage != nil {
		p.o.OnStage(stage, err, time.Since(start))
	}
}

func (p *Pipeline) stageFailed(ctx context.Context, rec *store.Record, name string, cause error) error {
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookkeepingTimeout)
	defer cancel()
	_, _ = p.q.Transition(bctx, rec.Ref, rec.State, rec.State, func(r *store.Record) error {
		setStage(r, name, store.StageFailed, cause.Error())
		return nil
	})
	return fmt.Errorf("%s: %w", name, cause)
}

func setStage(r *store.Record, name string, st store.StageStatus, detail string) {
	if r.Stages == nil {
		r.Stages = map[string]store.StageResult{}
	}
	r.Stages[name] = store.StageResult{Status: st, Detail: detail, At: time.Now().UTC()}
}
