package app

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/store"
)

// intakeAuditor writes what intake ignored or rejected to the audit log:
// per source, outcome and reason, one entry per interval carrying how many
// deliveries there were — bounded however many arrive, so a flood of
// unauthenticated requests cannot flood the log. Accepted events are
// audited by the store in the transaction that commits them.
type intakeAuditor struct {
	db    *store.DB
	stats *watch.Stats
	log   *slog.Logger
	last  map[[3]string]int64
	since time.Time
}

func newIntakeAuditor(db *store.DB, stats *watch.Stats, log *slog.Logger) *intakeAuditor {
	return &intakeAuditor{db: db, stats: stats, log: log, last: map[[3]string]int64{}, since: time.Now().UTC()}
}

func (a *intakeAuditor) flush(ctx context.Context) error {
	now := time.Now().UTC()
	cs := a.stats.Snapshot()
	sort.Slice(cs, func(i, j int) bool {
		return cs[i].Source+cs[i].Outcome+cs[i].Reason < cs[j].Source+cs[j].Outcome+cs[j].Reason
	})
	for _, c := range cs {
		if c.Outcome != "ignored" && c.Outcome != "rejected" {
			continue
		}
		k := [3]string{c.Source, c.Outcome, c.Reason}
		n := c.Value - a.last[k]
		if n <= 0 {
			continue
		}
		actor := "webhook:" + c.Source
		if c.Source == "poller" {
			actor = "poller"
		}
		if err := a.db.Audit(ctx, store.AuditEntry{Actor: actor, Action: "event." + c.Outcome, Details: map[string]string{
			"source": c.Source, "reason": c.Reason, "count": fmt.Sprint(n),
			"since": a.since.Format(time.RFC3339), "until": now.Format(time.RFC3339),
		}}); err != nil {
			return err
		}
		a.last[k] = c.Value
	}
	a.since = now
	return nil
}

// run flushes every interval, and once more on shutdown.
func (a *intakeAuditor) run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			return a.flush(fctx)
		case <-t.C:
			// A failed write (a full disk) is not a reason to stop the
			// daemon: what was not written stays counted and goes into
			// the next flush.
			err := a.flush(ctx)
			switch {
			case err != nil && ctx.Err() == nil && !failing:
				a.log.Error("audit of ignored/rejected events not written; retried at the next interval", "err", err)
				failing = true
			case err == nil && failing:
				a.log.Info("audit of ignored/rejected events written again")
				failing = false
			}
		}
	}
}
