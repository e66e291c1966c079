package app

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// metricsHandler serves Prometheus text exposition: intake counters by
// source, outcome and reason; jobs by status; images by state; the age of
// the oldest pending job.
func metricsHandler(db *store.DB, stats *watch.Stats, rc *registry.Client, vm *vulnMetrics, sm *stageMetrics) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := db.Stats(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var b strings.Builder
		b.WriteString("# HELP attestd_intake_events_total Webhook events by source, outcome (received, accepted, ignored, rejected, failed) and reason.\n# TYPE attestd_intake_events_total counter\n")
		cs := stats.Snapshot()
		sort.Slice(cs, func(i, j int) bool {
			return cs[i].Source+cs[i].Outcome+cs[i].Reason < cs[j].Source+cs[j].Outcome+cs[j].Reason
		})
		for _, c := range cs {
			fmt.Fprintf(&b, "attestd_intake_events_total{source=%q,outcome=%q,reason=%q} %d\n", c.Source, c.Outcome, c.Reason, c.Value)
		}
		b.WriteString("# HELP attestd_jobs Jobs by status.\n# TYPE attestd_jobs gauge\n")
		for _, k := range sortedKeys(st.Jobs) {
			fmt.Fprintf(&b, "attestd_jobs{status=%q} %d\n", k, st.Jobs[store.JobStatus(k)])
		}
		b.WriteString("# HELP attestd_images Image records by state.\n# TYPE attestd_images gauge\n")
		for _, k := range sortedKeys(st.Images) {
			fmt.Fprintf(&b, "attestd_images{state=%q} %d\n", k, st.Images[store.State(k)])
		}
		age := 0.0
		if !st.OldestPending.IsZero() {
			age = time.Since(st.OldestPending).Seconds()
		}
		fmt.Fprintf(&b, "# HELP attestd_queue_oldest_pending_seconds Age of the oldest pending job.\n# TYPE attestd_queue_oldest_pending_seconds gauge\nattestd_queue_oldest_pending_seconds %g\n", age)
		b.WriteString("# HELP attestd_decisions Images by the gate's last decision.\n# TYPE attestd_decisions gauge\n")
		for _, k := range sortedKeys(st.Decisions) {
			fmt.Fprintf(&b, "attestd_decisions{result=%q} %d\n", k, st.Decisions[k])
		}
		b.WriteString("# HELP attestd_registry_responses_total Registry responses by status code (error: no response), retries included.\n# TYPE attestd_registry_responses_total counter\n")
		codes := rc.Responses()
		keys := make([]string, 0, len(codes))
		for k := range codes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "attestd_registry_responses_total{code=%q} %d\n", k, codes[k])
		}
		sm.write(&b)
		vm.write(&b)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte(b.String()))
	})
}

func sortedKeys[K ~string](m map[K]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, string(k))
	}
	sort.Strings(out)
	return out
}
