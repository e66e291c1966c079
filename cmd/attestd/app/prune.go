package app

import (
	"context"
	"log/slog"
	"time"

	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
)

// pruneInterval is how often the daemon applies the retention policy (and
// once at start).
const pruneInterval = time.Hour

// retention is the store's view of the retention policy.
func retention(cfg *configs.Config) store.Retention {
	r := cfg.Retention
	return store.Retention{Events: time.Duration(r.Events), Jobs: time.Duration(r.Jobs), Records: time.Duration(r.Records)}
}

// pruneLoop prunes at start and every interval until ctx ends. A failure is
// logged and retried at the next tick: what is not pruned yet only waits.
func pruneLoop(ctx context.Context, db *store.DB, r store.Retention, interval time.Duration, log *slog.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		st, err := db.Prune(ctx, time.Now(), r)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			log.Warn("prune failed; retried at the next interval", "err", err)
		case st != store.PruneStats{}:
			log.Info("pruned what the retention policy no longer keeps", "events", st.Events, "jobs", st.Jobs, "records", st.Records)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
