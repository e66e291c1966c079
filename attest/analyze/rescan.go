package analyze

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/attestd/attestd/sbom/vuln"
	"github.com/attestd/attestd/store"
)

// rescanStates are the states whose digests are re-matched when the
// database changes: analysed (the findings feed the gate), signed, and on
// their way to (or in) production.
var rescanStates = []store.State{store.StateAnalysed, store.StateAttested, store.StateEvaluated, store.StatePromoted}

// RescanSummary is what one re-scan pass did.
type RescanSummary struct {
	DB       string // digest of the database matched against
	Subjects int    // digests / platforms re-matched
	Current  int    // already matched against this database
	New      int    // new findings in all
	Resolved int    // findings gone in all
}

// RescanStore is what a rescan reads and records (*store.DB).
type RescanStore interface {
	Images(ctx context.Context, prefix string) ([]store.Record, error)
	Blob(ctx context.Context, digest string) ([]byte, error)
	RecordRescan(ctx context.Context, ref string, rev uint64, subject string, v *store.VulnCounts, added, removed []string) (*store.Record, error)
}

// Rescan re-matches the stored CycloneDX SBOM of every analysed or signed
// digest (each platform) whose findings came from another database than the installed
// one, and records the new counts and which findings are new in the store
// and the audit log. Each subject is its own transaction, so a pass that
// stops half way resumes where it stopped: a subject already matched
// against this database is skipped.
//
// onNew (nil: none) is told how many new findings each subject gained.
func Rescan(ctx context.Context, db RescanStore, sc VulnScanner, in vuln.Installation, onNew func(int), log *slog.Logger) (RescanSummary, error) {
	digest, err := in.Digest()
	if err != nil {
		return RescanSummary{}, err
	}
	sum := RescanSummary{DB: digest}
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
			if err := rescanSubject(ctx, db, sc, rec, f, onNew, log, &sum); err != nil {
				return sum, err
			}
		}
	}
	return sum, nil
}

func rescanSubject(ctx context.Context, db RescanStore, sc VulnScanner, rec store.Record, f store.Facts, onNew func(int), log *slog.Logger, sum *RescanSummary) error {
	var cdx *store.Artifact
	for i, a := range rec.Artifacts {
		if a.Kind == KindCycloneDX && a.Subject == f.Subject {
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
	counts := VulnCounts(rep)
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
	if onNew != nil {
		onNew(len(added))
	}
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
