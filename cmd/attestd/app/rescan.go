package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
)

// rescanLoop re-scans whenever the installed database changes (checked
// every interval, and once at start). A missing or stale database is
// logged and retried at the next tick: there is nothing fresh to match.
func rescanLoop(ctx context.Context, cfg *configs.Config, db *store.DB, sc analyze.VulnScanner, vm *vulnMetrics, log *slog.Logger) error {
	interval := time.Duration(cfg.Analysis.Vulnerabilities.RescanInterval)
	in := vulnInstallation(cfg)
	last := ""
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := auditExceptions(ctx, db, cfg, time.Now()); err != nil && ctx.Err() == nil {
			log.Warn("audit of vulnerability exceptions failed", "err", err)
		}
		if digest, err := in.Digest(); err != nil {
			log.Warn("rescan: no usable vulnerability database", "err", err)
		} else if digest != last {
			sum, err := analyze.Rescan(ctx, db, sc, in, func(n int) { vm.add(&vm.rescanNew, "new", n) }, log)
			if err != nil && ctx.Err() == nil {
				log.Warn("rescan failed; retried at the next interval", "err", err)
			} else if err == nil {
				last = digest
				log.Info("rescan done", "db", sum.DB, "rescanned", sum.Subjects, "current", sum.Current, "new", sum.New, "resolved", sum.Resolved)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// auditExceptions records, once each, every configured vulnerability
// exception (exception.added) and every one that has expired
// (exception.expired), with owner, reason, ticket and scope.
func auditExceptions(ctx context.Context, db *store.DB, cfg *configs.Config, now time.Time) error {
	for _, e := range cfg.Analysis.Vulnerabilities.Exceptions {
		d := map[string]string{"vulnerability": e.Vulnerability, "package": e.Package, "repository": e.Repository, "digest": e.Digest,
			"owner": e.Owner, "reason": e.Reason, "ticket": e.Ticket, "expires": e.Expires.UTC().Format(time.RFC3339)}
		for k, v := range d {
			if v == "" {
				delete(d, k)
			}
		}
		key := exceptionKey(d)
		if _, err := db.AuditOnce(ctx, "exception.added/"+key, store.AuditEntry{Actor: "config", Action: store.AuditExceptionAdd, Details: d}); err != nil {
			return err
		}
		if !now.Before(e.Expires) {
			if _, err := db.AuditOnce(ctx, "exception.expired/"+key, store.AuditEntry{Actor: "attestd", Action: store.AuditExceptionExp, Details: d}); err != nil {
				return err
			}
		}
	}
	return nil
}

func exceptionKey(d map[string]string) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\x00", k, d[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}
