package app

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/attestd/attestd/attest/pipeline"
)

// stageBuckets are the upper bounds (seconds) of the stage duration
// histogram: resolve takes milliseconds, analysing a large image minutes.
var stageBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// stageMetrics is a Prometheus histogram of stage durations by stage and
// result (ok, error).
type stageMetrics struct {
	mu sync.Mutex
	h  map[[2]string]*histogram
}

type histogram struct {
	counts []int64 // per bucket, cumulative at exposition
	sum    float64
	n      int64
}

func (m *stageMetrics) observe(stage string, err error, d time.Duration) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		m.h = map[[2]string]*histogram{}
	}
	k := [2]string{stage, res}
	h := m.h[k]
	if h == nil {
		h = &histogram{counts: make([]int64, len(stageBuckets))}
		m.h[k] = h
	}
	s := d.Seconds()
	for i, b := range stageBuckets {
		if s <= b {
			h.counts[i]++
		}
	}
	h.sum += s
	h.n++
}

func (m *stageMetrics) write(b *strings.Builder) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b.WriteString("# HELP attestd_stage_duration_seconds Pipeline stage durations by stage and result (error includes signing failures: stage=\"sign\").\n# TYPE attestd_stage_duration_seconds histogram\n")
	keys := make([][2]string, 0, len(m.h))
	for k := range m.h {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	for _, k := range keys {
		h := m.h[k]
		for i, ub := range stageBuckets {
			fmt.Fprintf(b, "attestd_stage_duration_seconds_bucket{stage=%q,result=%q,le=\"%g\"} %d\n", k[0], k[1], ub, h.counts[i])
		}
		fmt.Fprintf(b, "attestd_stage_duration_seconds_bucket{stage=%q,result=%q,le=\"+Inf\"} %d\n", k[0], k[1], h.n)
		fmt.Fprintf(b, "attestd_stage_duration_seconds_sum{stage=%q,result=%q} %g\n", k[0], k[1], h.sum)
		fmt.Fprintf(b, "attestd_stage_duration_seconds_count{stage=%q,result=%q} %d\n", k[0], k[1], h.n)
	}
}

// instrument wraps every stage so its duration and result are observed.
func (m *stageMetrics) instrument(s pipeline.Stages) pipeline.Stages {
	if s.Resolver != nil {
		s.Resolver = timedResolver{s.Resolver, m}
	}
	if s.Analyzer != nil {
		s.Analyzer = timedAnalyzer{s.Analyzer, m}
	}
	if s.Signer != nil {
		s.Signer = timedSigner{s.Signer, m}
	}
	if s.Evaluator != nil {
		s.Evaluator = timedEvaluator{s.Evaluator, m}
	}
	if s.Promoter != nil {
		s.Promoter = timedPromoter{s.Promoter, m}
	}
	return s
}

// timed runs f and observes its duration and result under stage.
func timed[T any](m *stageMetrics, stage string, f func() (T, error)) (T, error) {
	start := time.Now()
	v, err := f()
	m.observe(stage, err, time.Since(start))
	return v, err
}

type timedResolver struct {
	pipeline.Resolver
	m *stageMetrics
}

func (t timedResolver) Resolve(ctx context.Context, ref string) (*pipeline.Target, error) {
	return timed(t.m, pipeline.StageResolve, func() (*pipeline.Target, error) { return t.Resolver.Resolve(ctx, ref) })
}

type timedAnalyzer struct {
	pipeline.Analyzer
	m *stageMetrics
}

func (t timedAnalyzer) Analyze(ctx context.Context, tg *pipeline.Target) (*pipeline.Analysis, error) {
	return timed(t.m, pipeline.StageAnalyse, func() (*pipeline.Analysis, error) { return t.Analyzer.Analyze(ctx, tg) })
}

type timedSigner struct {
	pipeline.Signer
	m *stageMetrics
}

func (t timedSigner) Sign(ctx context.Context, tg *pipeline.Target) error {
	_, err := timed(t.m, pipeline.StageSign, func() (struct{}, error) { return struct{}{}, t.Signer.Sign(ctx, tg) })
	return err
}

type timedEvaluator struct {
	pipeline.Evaluator
	m *stageMetrics
}

func (t timedEvaluator) Evaluate(ctx context.Context, tg *pipeline.Target) (pipeline.Decision, error) {
	return timed(t.m, pipeline.StageEvaluate, func() (pipeline.Decision, error) { return t.Evaluator.Evaluate(ctx, tg) })
}

type timedPromoter struct {
	pipeline.Promoter
	m *stageMetrics
}

func (t timedPromoter) Promote(ctx context.Context, tg *pipeline.Target) error {
	_, err := timed(t.m, pipeline.StagePromote, func() (struct{}, error) { return struct{}{}, t.Promoter.Promote(ctx, tg) })
	return err
}
