package app

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
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
