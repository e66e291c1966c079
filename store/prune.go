package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Retention says how long Prune keeps what it may delete, counted from when
// each thing was last touched; 0 keeps it forever. The audit log has no
// retention and Prune never touches it: it is hash-chained from its first
// entry and is the evidence of every decision. Tag history and blobs are
// kept too.
type Retention struct {
	// Events: intake dedupe keys (bucket events), from when the delivery
	// was first seen. A redelivery whose key is gone is no longer known as
	// a redelivery: it is then a duplicate by image ref (no second job; its
	// acceptance is audited as "known"), or — when its record was pruned
	// too — a new image.
	Events time.Duration
	// Jobs: done and dead jobs, from their last update. Pending and claimed
	// jobs are never pruned.
	Jobs time.Duration
	// Records: image records that ended denied or failed (never promoted),
	// from their last update, when no job for them is pending or claimed,
	// they are no platform child and no record names them as its index.
	// Their blobs stay (content-addressed: another record may share them).
	// A pruned image can no longer be requeued; pushed again, it is new.
	Records time.Duration
}

// PruneStats counts what Prune deleted.
type PruneStats struct {
	Events, Jobs, Records int
}

// Prune transactions visit at most pruneScan keys (pruneScanRecords image
// records, which are decoded) and delete at most pruneBatch, so intake never
// waits long behind one: bbolt has one writer.
const (
	pruneBatch       = 1000
	pruneScan        = 10000
	pruneScanRecords = 1000
)

// Prune deletes what r no longer keeps, as of now. It stops early when ctx
// ends, returning what it deleted so far. The file does not shrink: bbolt
// reuses the freed pages.
func (db *DB) Prune(ctx context.Context, now time.Time, r Retention) (PruneStats, error) {
	var st PruneStats
	if db.intake == nil {
		return st, errors.New("prune: store opened read-only")
	}
	var err error
	if r.Events > 0 {
		cut := now.Add(-r.Events)
		stamp := []byte(now.UTC().Format(time.RFC3339Nano))
		st.Events, err = db.sweep(ctx, bucketEvents, pruneScan, func(_ *bolt.Tx, _, v []byte) (bool, []byte, error) {
			seen, err := time.Parse(time.RFC3339Nano, string(v))
			if err != nil {
				return false, stamp, nil // no time: counted from now
			}
			return seen.Before(cut), nil, nil
		})
		if err != nil {
			return st, fmt.Errorf("prune events: %w", err)
		}
	}
	if r.Jobs > 0 {
		cut := now.Add(-r.Jobs)
		st.Jobs, err = db.sweep(ctx, bucketJobs, pruneScan, func(tx *bolt.Tx, k, v []byte) (bool, []byte, error) {
			if !bytes.Contains(v, []byte(`"status":"done"`)) && !bytes.Contains(v, []byte(`"status":"dead"`)) {
				return false, nil, nil // cheap filter; decode only candidates
			}
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return false, nil, fmt.Errorf("job %x: decode: %w", k, err)
			}
			if (j.Status != JobDone && j.Status != JobDead) || !j.UpdatedAt.Before(cut) {
				return false, nil, nil
			}
			// byref names the newest job of a ref: it must not name one
			// that is gone (requeue and folding read it).
			byref := tx.Bucket(bucketByRef)
			if bytes.Equal(byref.Get([]byte(j.Ref)), k) {
				return true, nil, byref.Delete([]byte(j.Ref))
			}
			return true, nil, nil
		})
		if err != nil {
			return st, fmt.Errorf("prune jobs: %w", err)
		}
	}
	if r.Records > 0 {
		cut := now.Add(-r.Records)
		// Indexes their platform children name. A child folded in after
		// this read is caught by the index's own Children below.
		parents := map[string]bool{}
		if err := db.bolt.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketImages).ForEach(func(_, v []byte) error {
				var p struct {
					Parent string `json:"parent"`
				}
				if bytes.Contains(v, []byte(`"parent":`)) && json.Unmarshal(v, &p) == nil && p.Parent != "" {
					parents[p.Parent] = true
				}
				return ctx.Err()
			})
		}); err != nil {
			return st, fmt.Errorf("prune records: %w", err)
		}
		st.Records, err = db.sweep(ctx, bucketImages, pruneScanRecords, func(tx *bolt.Tx, k, v []byte) (bool, []byte, error) {
			if (!bytes.Contains(v, []byte(`"state":"denied"`)) && !bytes.Contains(v, []byte(`"state":"failed"`))) || parents[string(k)] {
				return false, nil, nil
			}
			var rec Record
			if err := json.Unmarshal(v, &rec); err != nil {
				return false, nil, fmt.Errorf("image %s: decode: %w", k, err)
			}
			prunable, err := recordPrunable(tx, &rec, cut)
			return prunable, nil, err
		})
		if err != nil {
			return st, fmt.Errorf("prune records: %w", err)
		}
	}
	return st, nil
}

// recordPrunable: see Retention.Records.
func recordPrunable(tx *bolt.Tx, r *Record, cut time.Time) (bool, error) {
	if (r.State != StateDenied && r.State != StateFailed) || !r.UpdatedAt.Before(cut) || r.Parent != "" {
		return false, nil
	}
	if id := tx.Bucket(bucketByRef).Get([]byte(r.Ref)); id != nil {
		j, err := getJob(tx, binary.BigEndian.Uint64(id))
		if err != nil && !errors.Is(err, ErrNotFound) {
			return false, err
		}
		if j != nil && (j.Status == JobPending || j.Status == JobClaimed) {
			return false, nil
		}
	}
	for _, c := range r.Children {
		if child, err := getRecord(tx, r.Registry+"/"+r.Repository+"@"+c.Digest); err == nil && child.Parent == r.Ref {
			return false, nil
		}
	}
	return true, nil
}

// sweep visits bucket in key order in transactions of at most scan visits
// and pruneBatch changes, and returns how many keys it deleted. visit says
// whether to delete a key, or a value to put in its place (nil: neither);
// it may change other buckets in tx, not this one (its cursor is live:
// changes are made after the visits).
func (db *DB) sweep(ctx context.Context, bucket []byte, scan int, visit func(tx *bolt.Tx, k, v []byte) (bool, []byte, error)) (int, error) {
	type change struct{ k, v []byte } // v nil: delete
	var (
		after   []byte // the last key visited
		deleted int
	)
	for done := false; !done; {
		if err := ctx.Err(); err != nil {
			return deleted, err
		}
		var next []byte
		n := 0
		err := db.bolt.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			c := b.Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			var changes []change
			for seen := 0; ; k, v = c.Next() {
				if k == nil {
					done = true
					break
				}
				if seen == scan || len(changes) == pruneBatch {
					break
				}
				seen++
				next = k
				drop, put, err := visit(tx, k, v)
				if err != nil {
					return err
				}
				if drop || put != nil {
					changes = append(changes, change{clone(k), put})
				}
			}
			next = clone(next)
			n = 0
			for _, ch := range changes {
				if ch.v != nil {
					if err := b.Put(ch.k, ch.v); err != nil {
						return err
					}
					continue
				}
				if err := b.Delete(ch.k); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil {
			return deleted, err
		}
		deleted += n
		if next != nil {
			after = next
		}
	}
	return deleted, nil
}
