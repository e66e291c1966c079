package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/sbom/vuln"
	"github.com/attestd/attestd/store"
)

// rescanStates are the states whose digests are re-matched when the
// database changes: analysed (the findings feed the gate), signed, and on
// their way to (or in) production.
var rescanStates = []store.State{store.StateAnalysed, store.StateAttested, store.StateEvaluated, store.StatePromoted}

// rescanSummary is what one re-scan pass did.
type rescanSummary struct {
	DB       string // digest of the database matched against
	Subjects int    // digests / platforms re-matched
	Current  int    // already matched against this database
	New      int    // new findings in all
	Resolved int    // findings gone in all
}

// rescan re-matches the stored CycloneDX SBOM of every analysed or signed
// digest (each platform) whose findings came from another database than the installed
// one, and records the new counts and which findings are new in the store
// and the audit log. Each subject is its own transaction, so a pass that
// stops half way resumes where it stopped: a subject already matched
// against this database is skipped.
func rescan(ctx context.Context, db *store.DB, sc analyze.VulnScanner, in vuln.Installation, vm *vulnMetrics, log *slog.Logger) (rescanSummary, error) {
	digest, err := in.Digest()
	if err != nil {
		return rescanSummary{}, err
	}
	sum := rescanSummary{DB: digest}
	recs, err := db.Images(ctx, "")
	if err != nil {
		return sum, err
	}
	for _, rec := range recs {
		if !slices.Contains(rescanStates, rec.State) {
			continue
		}
		for _, f := range rec.Facts {
			if f.Vulns == nil {
				continue
			}
			if f.Vulns.DB == digest {
				sum.Current++
				continue
			}
			if err := rescanSubject(ctx, db, sc, rec, f, vm, log, &sum); err != nil {
				return sum, err
			}
		}
	}
	return sum, nil
}

func rescanSubject(ctx context.Context, db *store.DB, sc analyze.VulnScanner, rec store.Record, f store.Facts, vm *vulnMetrics, log *slog.Logger, sum *rescanSummary) error {
	var cdx *store.Artifact
	for i, a := range rec.Artifacts {
		if a.Kind == analyze.KindCycloneDX && a.Subject == f.Subject {
			cdx = &rec.Artifacts[i]
		}
	}
	if cdx == nil {
		return fmt.Errorf("rescan %s: no stored CycloneDX SBOM for %s", rec.Ref, f.Subject)
	}
	doc, err := db.Blob(ctx, cdx.Digest)
	if err != nil {
		return fmt.Errorf("rescan %s: %w", rec.Ref, err)
	}
	rep, err := sc.Scan(ctx, vuln.Input{SBOM: doc, Repository: rec.Registry + "/" + rec.Repository, Digest: f.Subject})
	if err != nil {
		return fmt.Errorf("rescan %s (%s): %w", rec.Ref, f.Subject, err)
	}
	counts := analyze.VulnCounts(rep)
	added, removed := diff(f.Vulns.Findings, counts.Findings)
	if _, err := db.RecordRescan(store.WithActor(ctx, "rescan"), rec.Ref, rec.Rev, f.Subject, counts, added, removed); err != nil {
		if errors.Is(err, store.ErrConflict) {
			log.Info("rescan: record changed meanwhile; the next pass re-matches it", "digest", rec.Ref)
			return nil
		}
		return err
	}
	sum.Subjects++
	sum.New += len(added)
	sum.Resolved += len(removed)
	vm.add(&vm.rescanNew, "new", len(added))
	if len(added) > 0 {
		log.Warn("new vulnerability findings in a signed image", "digest", rec.Ref, "subject", f.Subject,
			"new", added, "state", rec.State, "db", counts.DB)
	}
	return nil
}

// diff returns the elements only in b (added) and only in a (removed);
// both are sorted.
func diff(a, b []string) (added, removed []string) {
	for _, x := range b {
		if _, ok := slices.BinarySearch(a, x); !ok {
			added = append(added, x)
		}
	}
	for _, x := range a {
		if _, ok := slices.BinarySearch(b, x); !ok {
			removed = append(removed, x)
		}
	}
	return added, removed
}

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
			sum, err := rescan(ctx, db, sc, in, vm, log)
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
