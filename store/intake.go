package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// IntakeItem is one accepted registry event.
type IntakeItem struct {
	Ref      string // host/repo@sha256:…
	Tag      string // "host/repo:tag" when the event named one
	Priority Priority
	Source   string
	EventKey string // dedupe key of the delivery (e.g. source + event ID)
	// Deleted records a deletion: the tag history and the event are
	// recorded, nothing is queued.
	Deleted bool
}

// IntakeResult says what happened to one item.
type IntakeResult struct {
	JobID     uint64
	Duplicate bool
}

// Intake records a batch of accepted events in one db.Batch transaction:
// tag history, dedupe keys, new records and jobs. It returns only once they
// are durable, so a webhook may be acknowledged right after. Items are
// validated before anything is written: one bad ref fails the whole call.
func (db *DB) Intake(ctx context.Context, items []IntakeItem) ([]IntakeResult, error) {
	type parsed struct{ reg, repo, dgst string }
	ps := make([]parsed, len(items))
	for i, it := range items {
		reg, repo, dgst, err := SplitRef(it.Ref)
		if err != nil {
			return nil, fmt.Errorf("intake item %d: %w", i, err)
		}
		ps[i] = parsed{reg, repo, dgst}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]IntakeResult, len(items))
	err := db.bolt.Batch(func(tx *bolt.Tx) error {
		clear(out) // Batch may run fn more than once
		now := db.now().UTC()
		events, images, byref, tags := tx.Bucket(bucketEvents), tx.Bucket(bucketImages), tx.Bucket(bucketByRef), tx.Bucket(bucketTags)
		stamp := []byte(now.Format(time.RFC3339Nano))
		for i, it := range items {
			if it.EventKey != "" {
				if events.Get([]byte(it.EventKey)) != nil {
					out[i].Duplicate = true
					continue
				}
				if err := events.Put([]byte(it.EventKey), stamp); err != nil {
					return err
				}
			}
			if it.Tag != "" {
				d := ps[i].dgst
				if it.Deleted {
					d = "" // the tag no longer points anywhere
				}
				if err := putTag(tags, it.Tag, d, now.Add(time.Duration(i))); err != nil {
					return err
				}
			}
			if it.Deleted {
				continue
			}
			if images.Get([]byte(it.Ref)) != nil {
				out[i].Duplicate = true
				if id := byref.Get([]byte(it.Ref)); id != nil {
					out[i].JobID = binary.BigEndian.Uint64(id)
				}
				continue
			}
			r := &Record{Ref: it.Ref, Registry: ps[i].reg, Repository: ps[i].repo, Digest: ps[i].dgst,
				State: StateDiscovered, Source: it.Source, Rev: 1, CreatedAt: now, UpdatedAt: now}
			if err := putRecord(tx, r); err != nil {
				return err
			}
			j, err := newJob(tx, it.Ref, it.Priority, it.Source, now)
			if err != nil {
				return err
			}
			out[i].JobID = j.ID
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	return out, nil
}
