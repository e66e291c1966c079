package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// RecordRescan replaces the vulnerability findings of one subject (the
// digest or one of its platforms) of ref after a re-match against a new
// database, without changing the record's state, and audits which findings
// are new and which are gone — in one transaction. It returns ErrConflict
// when the record's revision is no longer rev (it changed meanwhile; the
// caller re-reads and retries).
func (db *DB) RecordRescan(ctx context.Context, ref string, rev uint64, subject string, v *VulnCounts, added, removed []string) (*Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *Record
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		r, err := getRecord(tx, ref)
		if err != nil {
			return err
		}
		if r.Rev != rev {
			return fmt.Errorf("image %s: %w: revision is %d, expected %d", ref, ErrConflict, r.Rev, rev)
		}
		i := -1
		for j := range r.Facts {
			if r.Facts[j].Subject == subject {
				i = j
			}
		}
		if i < 0 {
			return fmt.Errorf("image %s: %w: no facts for %s", ref, ErrNotFound, subject)
		}
		r.Facts[i].Vulns = v
		r.Rev++
		r.UpdatedAt = db.now().UTC()
		e := AuditEntry{
			Time: r.UpdatedAt, Actor: actorFrom(ctx), Action: AuditRescan, Subject: r.Ref,
			Repo: r.Registry + "/" + r.Repository, Digest: r.Digest,
			Details: map[string]string{
				"subject": subject, "db": v.DB, "total": strconv.Itoa(len(v.Findings)),
				"new": strconv.Itoa(len(added)), "resolved": strconv.Itoa(len(removed)),
			},
		}
		if len(added) > 0 {
			e.Details["new.findings"] = strings.Join(added, "; ")
		}
		if err := appendAudit(tx, e); err != nil {
			return err
		}
		out = r
		return putRecord(tx, r)
	})
	return out, err
}
