package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// IntakeItem is one accepted registry event. Its JSON form (the Go field
// names) is what an older version's intake journal holds: rename no field
// (legacyjournal.go).
type IntakeItem struct {
	Ref      string // host/repo@sha256:…
	Tag      string // "host/repo:tag" when the event named one
	Priority Priority
	Source   string
	Pusher   string // who pushed, when the event said
	EventKey string // dedupe key of the delivery (e.g. source + event ID)
	// Deleted records a deletion: the tag history and the event are
	// recorded, nothing is queued.
	Deleted bool
	// NotBefore delays the job (untagged manifests wait for the index that
	// may list them).
	NotBefore time.Time
	// Children are the manifest digests an index lists: their own pending
	// jobs are folded into the index's (a platform child is analysed as part
	// of its index, not twice).
	Children []string
	// BaselineKey, when set (poller items under intake.existing: record),
	// names the repository whose first sighting is a baseline: while no
	// baseline is stored for it, new images are recorded without a job, and
	// the baseline is stored in the same transaction.
	BaselineKey string
}

// IntakeResult says what happened to one item.
type IntakeResult struct {
	JobID        uint64
	Duplicate    bool
	RecordedOnly bool // baseline: recorded without a job
}

// Intake records a batch of accepted events — tag history, dedupe keys, new
// records, jobs and their audit entries — in the group commit: one bbolt
// transaction for every Intake call waiting at that moment (see
// groupCommit). It returns only once that transaction is durable, so a
// webhook may be acknowledged right after, and its results are final: a
// queued item's job exists (JobID), a duplicate names its image's newest job
// (0 once Prune removed it), and a backup taken after it holds them. Items are validated before
// anything is written: one bad item fails the whole call.
func (db *DB) Intake(ctx context.Context, items []IntakeItem) ([]IntakeResult, error) {
	for i, it := range items {
		if _, _, _, err := SplitRef(it.Ref); err != nil {
			return nil, fmt.Errorf("%w %d: %w", ErrInvalidItem, i, err)
		}
		// A key bbolt would refuse is the sender's error, found here rather
		// than in the writer.
		for _, k := range []struct{ name, v string }{{"ref", it.Ref}, {"tag", it.Tag}, {"event key", it.EventKey}, {"baseline key", it.BaselineKey}} {
			if len(k.v) > maxIntakeKey {
				return nil, fmt.Errorf("%w %d: %s is %d bytes, more than %d", ErrInvalidItem, i, k.name, len(k.v), maxIntakeKey)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if db.intake == nil {
		return nil, errors.New("intake: store opened read-only")
	}
	req := &intakeReq{items: items, done: make(chan struct{})}
	select {
	case db.intake <- req:
	case <-db.closing:
		return nil, fmt.Errorf("intake: %w", errClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// Once handed over, the write happens whatever ctx does: wait for it so
	// the caller never acknowledges (or denies) something still in flight.
	<-req.done
	if req.err != nil {
		return nil, fmt.Errorf("intake: %w", req.err)
	}
	return req.out, nil
}

// maxIntakeKey bounds the strings intake uses as keys (bbolt's limit is
// 32 KiB; real refs, tags and event IDs are far shorter).
const maxIntakeKey = 4096

// intakeReq is one Intake call waiting for the group commit.
type intakeReq struct {
	items []IntakeItem
	out   []IntakeResult
	err   error
	done  chan struct{}
}

// maxGroup bounds how many Intake calls share one transaction.
const maxGroup = 512

// groupCommit is the single intake writer: it takes every call that is
// waiting, commits them in one transaction (one fsync), answers them, and
// repeats. Under load a batch grows to whatever arrived during the previous
// commit; idle, a call waits for one commit and no timer. A failing call is
// retried alone so it cannot fail the others (as bbolt's Batch does).
func (db *DB) groupCommit() {
	defer close(db.writerDone)
	for {
		var first *intakeReq
		select {
		case first = <-db.intake:
		case <-db.closing:
			return
		}
		group := []*intakeReq{first}
	drain:
		for len(group) < maxGroup {
			select {
			case r := <-db.intake:
				group = append(group, r)
			default:
				break drain
			}
		}
		err := db.bolt.Update(func(tx *bolt.Tx) error {
			now := db.now().UTC()
			for _, r := range group {
				out, err := intakeTx(tx, r.items, now)
				if err != nil {
					return err
				}
				r.out = out
			}
			return nil
		})
		if err != nil && len(group) > 1 {
			for _, r := range group {
				r.err = db.bolt.Update(func(tx *bolt.Tx) error {
					out, err := intakeTx(tx, r.items, db.now().UTC())
					r.out = out
					return err
				})
				close(r.done)
			}
			continue
		}
		for _, r := range group {
			r.err = err
			close(r.done)
		}
	}
}

// intakeTx records items in tx (see Intake).
func intakeTx(tx *bolt.Tx, items []IntakeItem, now time.Time) ([]IntakeResult, error) {
	type parsed struct{ reg, repo, dgst string }
	ps := make([]parsed, len(items))
	for i, it := range items {
		reg, repo, dgst, err := SplitRef(it.Ref)
		if err != nil {
			return nil, fmt.Errorf("intake item %d: %w", i, err)
		}
		ps[i] = parsed{reg, repo, dgst}
	}
	out := make([]IntakeResult, len(items))
	events, images, byref, tags := tx.Bucket(bucketEvents), tx.Bucket(bucketImages), tx.Bucket(bucketByRef), tx.Bucket(bucketTags)
	stamp := []byte(now.Format(time.RFC3339Nano))
	meta := tx.Bucket(bucketMeta)
	baselined := map[string]bool{}
	for _, it := range items {
		if it.BaselineKey != "" {
			if _, seen := baselined[it.BaselineKey]; !seen {
				baselined[it.BaselineKey] = meta.Get([]byte("baseline/"+it.BaselineKey)) != nil
			}
		}
	}
	redelivered := make([]bool, len(items))
	for i, it := range items {
		if it.EventKey != "" {
			if events.Get([]byte(it.EventKey)) != nil {
				out[i].Duplicate = true
				redelivered[i] = true
				continue
			}
			if err := events.Put([]byte(it.EventKey), stamp); err != nil {
				return nil, err
			}
		}
		if it.Tag != "" {
			d := ps[i].dgst
			if it.Deleted {
				d = "" // the tag no longer points anywhere
			}
			if err := putTag(tags, it.Tag, d, now.Add(time.Duration(i))); err != nil {
				return nil, err
			}
		}
		if it.Deleted {
			continue
		}
		// Even when the index itself is known already (the poller may
		// have seen its tag first), its children are covered by it.
		for _, c := range it.Children {
			if err := foldChild(tx, ps[i].reg+"/"+ps[i].repo+"@"+c, it.Ref, now); err != nil {
				return nil, err
			}
		}
		if images.Get([]byte(it.Ref)) != nil {
			out[i].Duplicate = true
			if id := byref.Get([]byte(it.Ref)); id != nil {
				out[i].JobID = binary.BigEndian.Uint64(id)
			}
			continue
		}
		r := &Record{Ref: it.Ref, Registry: ps[i].reg, Repository: ps[i].repo, Digest: ps[i].dgst,
			State: StateDiscovered, Source: it.Source, Pusher: it.Pusher, Rev: 1, CreatedAt: now, UpdatedAt: now}
		recordOnly := it.BaselineKey != "" && !baselined[it.BaselineKey]
		if recordOnly {
			r.Note = "recorded only: present when attestd first listed this repository (intake.existing: record); attestd requeue processes it"
		}
		if err := putRecord(tx, r); err != nil {
			return nil, err
		}
		if recordOnly {
			out[i].RecordedOnly = true
			continue
		}
		var notBefore time.Time
		if !it.NotBefore.IsZero() {
			notBefore = it.NotBefore.UTC()
		}
		j, err := newJob(tx, it.Ref, it.Priority, it.Source, now, notBefore)
		if err != nil {
			return nil, err
		}
		out[i].JobID = j.ID
	}
	for k, done := range baselined {
		if !done {
			if err := meta.Put([]byte("baseline/"+k), stamp); err != nil {
				return nil, err
			}
		}
	}
	// Every event that was not a redelivery is audited in this same
	// transaction: what came in, from whom, and what intake did with it.
	for i, it := range items {
		if redelivered[i] {
			continue
		}
		e := AuditEntry{Time: now, Actor: it.Source, Action: AuditEventAccepted, Subject: it.Ref,
			Repo: ps[i].reg + "/" + ps[i].repo, Digest: ps[i].dgst, Details: map[string]string{}}
		switch {
		case it.Deleted:
			e.Action = AuditEventDeleted
		case out[i].RecordedOnly:
			e.Details["result"] = "recorded-only"
		case out[i].Duplicate:
			e.Details["result"] = "known"
		default:
			e.Details["result"] = "queued"
		}
		if it.Tag != "" {
			e.Details["tag"] = it.Tag
		}
		if it.Pusher != "" {
			e.Details["pusher"] = it.Pusher
		}
		if it.EventKey != "" {
			e.Details["event"] = it.EventKey
		}
		if err := appendAudit(tx, e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// foldChild ends the pending job of a platform child whose index arrived:
// the index's job covers it. A child already being processed is left alone.
func foldChild(tx *bolt.Tx, child, index string, now time.Time) error {
	id := tx.Bucket(bucketByRef).Get([]byte(child))
	if id == nil {
		return nil
	}
	j, err := getJob(tx, binary.BigEndian.Uint64(id))
	if err != nil || j.Status != JobPending {
		return err
	}
	if err := tx.Bucket(bucketQueue).Delete(queueKey(j.Priority, j.ID)); err != nil {
		return err
	}
	j.Status, j.UpdatedAt, j.LastError = JobDone, now, "folded into index "+index
	if err := putJob(tx, j); err != nil {
		return err
	}
	r, err := getRecord(tx, child)
	if err != nil {
		return err
	}
	r.Parent = index
	r.Rev++
	r.UpdatedAt = now
	return putRecord(tx, r)
}
