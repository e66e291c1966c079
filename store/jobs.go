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

// Priority orders the queue: lower is claimed first.
type Priority uint8

const (
	// PriorityEvent is for pushes a registry told us about, and manual requests.
	PriorityEvent Priority = 0
	// PriorityBackfill is for what the reconciliation poller found.
	PriorityBackfill Priority = 1
)

// JobStatus is where a job is in the queue.
type JobStatus string

const (
	JobPending JobStatus = "pending"
	JobClaimed JobStatus = "claimed"
	JobDone    JobStatus = "done"
	// JobDead: attempts exhausted; the image record is failed; `attestd requeue` re-drives it.
	JobDead JobStatus = "dead"
)

// Job is one run of the pipeline for one image ref.
type Job struct {
	ID       uint64    `json:"id"`
	Ref      string    `json:"ref"`
	Priority Priority  `json:"priority"`
	Source   string    `json:"source,omitempty"`
	Status   JobStatus `json:"status"`
	Attempts int       `json:"attempts"`
	// Interrupted counts attempts in a row cut short because the process
	// died (released at the next start; reset when a failed attempt is
	// recorded, kept on a done job as its history). They do not count as
	// Attempts: a daemon killed while a job runs says nothing about the
	// job.
	Interrupted int `json:"interrupted,omitempty"`
	// Postponed counts the attempts that failed on something not the
	// job's (a dependency down, a full disk): Attempts - Postponed is
	// what max_attempts bounds, while backoff grows with Attempts.
	Postponed  int       `json:"postponed,omitempty"`
	LastError  string    `json:"lastError,omitempty"`
	NotBefore  time.Time `json:"notBefore,omitzero"`
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"leaseUntil,omitzero"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

// EnqueueRequest is one image queued by hand (attestd submit, the API).
type EnqueueRequest struct {
	Ref      string // host/repo@sha256:…
	Tag      string // "host/repo:tag" when the image was named by it
	Priority Priority
	Source   string // "webhook:distribution", "poller", "cli", …
	// EventKey, when set, dedupes redeliveries of the same event even before
	// the image is known (e.g. the webhook's event ID).
	EventKey string
}

// EnqueueResult says what Enqueue did.
type EnqueueResult struct {
	JobID     uint64
	Duplicate bool // the image (or event) was already known: no new job
}

func queueKey(p Priority, id uint64) []byte {
	k := make([]byte, 9)
	k[0] = byte(p)
	binary.BigEndian.PutUint64(k[1:], id)
	return k
}

// queueValue is a queue entry's value: when its job becomes claimable
// (unix nanoseconds; 0: now), so that Claim and NextReady read the queue
// alone instead of decoding every waiting job — after a burst of untagged
// pushes or failed attempts, most wait.
func queueValue(notBefore time.Time) []byte {
	var ns int64
	if !notBefore.IsZero() {
		ns = notBefore.UnixNano()
	}
	return binary.BigEndian.AppendUint64(nil, uint64(ns))
}

// queuedNotBefore reads a queue entry's time (entries written before
// queueValue existed carry none: the job says).
func queuedNotBefore(tx *bolt.Tx, k, v []byte) (time.Time, error) {
	if len(v) == 8 {
		if ns := int64(binary.BigEndian.Uint64(v)); ns != 0 {
			return time.Unix(0, ns).UTC(), nil
		}
		return time.Time{}, nil
	}
	j, err := getJob(tx, binary.BigEndian.Uint64(k[1:]))
	if err != nil {
		return time.Time{}, err
	}
	return j.NotBefore, nil
}

func getJob(tx *bolt.Tx, id uint64) (*Job, error) {
	v := tx.Bucket(bucketJobs).Get(u64(id))
	if v == nil {
		return nil, fmt.Errorf("job %d: %w", id, ErrNotFound)
	}
	var j Job
	if err := json.Unmarshal(v, &j); err != nil {
		return nil, fmt.Errorf("job %d: decode: %w", id, err)
	}
	return &j, nil
}

func putJob(tx *bolt.Tx, j *Job) error {
	v, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketJobs).Put(u64(j.ID), v)
}

// newJob queues a pending job for ref, claimable from notBefore (zero: now).
func newJob(tx *bolt.Tx, ref string, p Priority, source string, now, notBefore time.Time) (*Job, error) {
	jobs := tx.Bucket(bucketJobs)
	jobs.FillPercent = 0.9 // keys are a sequence: appends (etcd does the same for its revisions)
	id, err := jobs.NextSequence()
	if err != nil {
		return nil, err
	}
	j := &Job{ID: id, Ref: ref, Priority: p, Source: source, Status: JobPending, CreatedAt: now, UpdatedAt: now, NotBefore: notBefore}
	if err := putJob(tx, j); err != nil {
		return nil, err
	}
	tx.Bucket(bucketQueue).FillPercent = 0.9 // within a priority, keys are the job sequence: appends
	if err := putQueued(tx, j); err != nil {
		return nil, err
	}
	return j, tx.Bucket(bucketByRef).Put([]byte(ref), u64(id))
}

// putQueued puts j in the queue (again), with when it becomes claimable.
func putQueued(tx *bolt.Tx, j *Job) error {
	return tx.Bucket(bucketQueue).Put(queueKey(j.Priority, j.ID), queueValue(j.NotBefore))
}

// Enqueue records one image and queues a job for it: an Intake of one item,
// through the same writer and transaction as webhook deliveries. Dedupe is
// by (registry, repository, digest), i.e. by ref: an image that is already
// known gets no second job, however many times (or by which intake) it is
// reported. It returns only after the write is durable.
func (db *DB) Enqueue(ctx context.Context, req EnqueueRequest) (EnqueueResult, error) {
	res, err := db.Intake(ctx, []IntakeItem{{Ref: req.Ref, Tag: req.Tag, Priority: req.Priority, Source: req.Source, EventKey: req.EventKey}})
	if err != nil {
		return EnqueueResult{}, fmt.Errorf("enqueue %s: %w", req.Ref, err)
	}
	return EnqueueResult{JobID: res[0].JobID, Duplicate: res[0].Duplicate}, nil
}

// Claim hands the next ready job to owner for lease. Pending jobs are taken
// in (priority, ID) order, skipping those whose backoff has not elapsed. It
// returns ErrNoJob when none is ready.
func (db *DB) Claim(ctx context.Context, owner string, lease time.Duration) (*Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *Job
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		now := db.now().UTC()
		c := tx.Bucket(bucketQueue).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if nb, err := queuedNotBefore(tx, k, v); err != nil {
				return err
			} else if nb.After(now) {
				continue
			}
			j, err := getJob(tx, binary.BigEndian.Uint64(k[1:]))
			if err != nil {
				return err
			}
			if err := c.Delete(); err != nil {
				return err
			}
			j.Status, j.Owner, j.LeaseUntil = JobClaimed, owner, now.Add(lease)
			j.Attempts++
			j.UpdatedAt = now
			out = j
			return putJob(tx, j)
		}
		return ErrNoJob
	})
	if err != nil {
		if errors.Is(err, ErrNoJob) {
			return nil, ErrNoJob
		}
		return nil, fmt.Errorf("claim: %w", err)
	}
	return out, nil
}

// NextReady is the earliest time a pending job becomes claimable (zero when
// none is pending), so idle workers can sleep until then.
func (db *DB) NextReady(ctx context.Context) (time.Time, error) {
	var t time.Time
	err := db.bolt.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketQueue).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			nb, err := queuedNotBefore(tx, k, v)
			if err != nil {
				return err
			}
			if t.IsZero() || nb.Before(t) {
				t = nb
			}
		}
		return nil
	})
	return t, err
}

func (db *DB) updateClaimed(ctx context.Context, id uint64, owner string, fn func(tx *bolt.Tx, j *Job, now time.Time) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return db.bolt.Update(func(tx *bolt.Tx) error {
		j, err := getJob(tx, id)
		if err != nil {
			return err
		}
		if j.Status != JobClaimed || j.Owner != owner {
			return fmt.Errorf("job %d (%s, owner %q): %w %q", id, j.Status, j.Owner, ErrNotOwner, owner)
		}
		now := db.now().UTC()
		j.UpdatedAt = now
		if err := fn(tx, j, now); err != nil {
			return err
		}
		return putJob(tx, j)
	})
}

// Complete marks a claimed job done.
func (db *DB) Complete(ctx context.Context, id uint64, owner string) error {
	err := db.updateClaimed(ctx, id, owner, func(_ *bolt.Tx, j *Job, _ time.Time) error {
		j.Status, j.Owner, j.LeaseUntil, j.LastError = JobDone, "", time.Time{}, ""
		return nil
	})
	if err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	return nil
}

// Retry puts a claimed job back in the queue after a failed attempt, not
// before now+backoff, keeping its attempt count and the error.
func (db *DB) Retry(ctx context.Context, id uint64, owner string, cause error, backoff time.Duration) error {
	return db.requeueClaimed(ctx, "retry", id, owner, cause, backoff, false)
}

// Postpone is Retry for an attempt that failed on something not the job's
// (a dependency down, a full disk): it counts in Postponed, so it does not
// bring the job closer to being buried.
func (db *DB) Postpone(ctx context.Context, id uint64, owner string, cause error, backoff time.Duration) error {
	return db.requeueClaimed(ctx, "postpone", id, owner, cause, backoff, true)
}

func (db *DB) requeueClaimed(ctx context.Context, op string, id uint64, owner string, cause error, backoff time.Duration, postponed bool) error {
	err := db.updateClaimed(ctx, id, owner, func(tx *bolt.Tx, j *Job, now time.Time) error {
		j.Status, j.Owner, j.LeaseUntil, j.Interrupted = JobPending, "", time.Time{}, 0
		if postponed {
			j.Postponed++
		}
		j.LastError = cause.Error()
		j.NotBefore = now.Add(backoff)
		return putQueued(tx, j)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// Bury ends a claimed job whose attempts are exhausted (or whose error is
// permanent) and moves its image to failed, in one transaction.
func (db *DB) Bury(ctx context.Context, id uint64, owner string, cause error) error {
	err := db.updateClaimed(ctx, id, owner, func(tx *bolt.Tx, j *Job, now time.Time) error {
		j.Status, j.Owner, j.LeaseUntil = JobDead, "", time.Time{}
		j.LastError = cause.Error()
		r, err := getRecord(tx, j.Ref)
		if err != nil {
			return err
		}
		if !r.State.Final() {
			r.FailedFrom, r.State = r.State, StateFailed
		}
		r.LastError = cause.Error()
		r.Rev++
		r.UpdatedAt = now
		return putRecord(tx, r)
	})
	if err != nil {
		return fmt.Errorf("bury: %w", err)
	}
	return nil
}

// restartBackoff is how long a job interrupted n times in a row waits
// after a restart: the first time not at all, then 1 s doubling to 1 min.
func restartBackoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	return min(time.Second<<min(n-2, 6), time.Minute)
}

// ReleaseClaims returns claimed jobs to the queue: all of them when
// expiredOnly is false (at start: with bbolt's exclusive file lock, any claim
// found belongs to a process that died), else those whose lease ran out.
// At start the attempt that was cut short does not count: it moves from
// Attempts to Interrupted. An expired lease (a hung attempt) still counts.
func (db *DB) ReleaseClaims(ctx context.Context, expiredOnly bool) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		n = 0
		now := db.now().UTC()
		c := tx.Bucket(bucketJobs).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if !bytes.Contains(v, []byte(`"status":"claimed"`)) {
				continue // cheap filter; decode only candidates
			}
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("job %x: decode: %w", k, err)
			}
			if j.Status != JobClaimed || (expiredOnly && j.LeaseUntil.After(now)) {
				continue
			}
			j.Status, j.Owner, j.LeaseUntil, j.UpdatedAt = JobPending, "", time.Time{}, now
			if !expiredOnly {
				j.Attempts = max(j.Attempts-1, 0)
				j.Interrupted++
				j.LastError = fmt.Sprintf("interrupted: attestd stopped while running this job (%d in a row)", j.Interrupted)
				// A job the process keeps dying in (an image that kills it?)
				// waits longer each time, so the daemon gets on with the
				// rest between crashes; it is never buried for it, as the
				// jobs that ran beside it could not be told apart from it.
				j.NotBefore = now.Add(restartBackoff(j.Interrupted))
			}
			if err := putJob(tx, &j); err != nil {
				return err
			}
			if err := putQueued(tx, &j); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("release claims: %w", err)
	}
	return n, nil
}

// Requeue re-drives ref: a new job at event priority, and a failed image goes
// back to the state it failed in. It refuses (ErrConflict) while a job for
// ref is still pending or claimed.
func (db *DB) Requeue(ctx context.Context, ref string, source string) (*Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *Job
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		r, err := getRecord(tx, ref)
		if err != nil {
			return err
		}
		if id := tx.Bucket(bucketByRef).Get([]byte(ref)); id != nil {
			j, err := getJob(tx, binary.BigEndian.Uint64(id))
			if err != nil {
				return err
			}
			if j.Status == JobPending || j.Status == JobClaimed {
				return fmt.Errorf("%w: job %d for %s is already %s", ErrConflict, j.ID, ref, j.Status)
			}
		}
		now := db.now().UTC()
		if r.State == StateFailed {
			r.State, r.FailedFrom, r.LastError = r.FailedFrom, "", ""
			r.Rev++
			r.UpdatedAt = now
			if err := putRecord(tx, r); err != nil {
				return err
			}
		}
		if out, err = newJob(tx, ref, PriorityEvent, source, now, time.Time{}); err != nil {
			return err
		}
		return appendAudit(tx, AuditEntry{Time: now, Actor: source, Action: AuditRequeue, Subject: ref,
			Repo: r.Registry + "/" + r.Repository, Digest: r.Digest, Details: map[string]string{"job": fmt.Sprint(out.ID), "state": string(r.State)}})
	})
	if err != nil {
		return nil, fmt.Errorf("requeue %s: %w", ref, err)
	}
	return out, nil
}

// Job returns one job.
func (db *DB) Job(ctx context.Context, id uint64) (*Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var j *Job
	err := db.bolt.View(func(tx *bolt.Tx) error {
		var err error
		j, err = getJob(tx, id)
		return err
	})
	return j, err
}

// Jobs returns every job, oldest first.
func (db *DB) Jobs(ctx context.Context) ([]Job, error) {
	var out []Job
	err := db.bolt.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("job %x: decode: %w", k, err)
			}
			out = append(out, j)
			return nil
		})
	})
	return out, err
}

// Stats counts jobs by status and images by state.
type Stats struct {
	Jobs   map[JobStatus]int `json:"jobs"`
	Images map[State]int     `json:"images"`
	// Decisions counts images by the gate's last decision: allow, deny.
	Decisions map[string]int `json:"decisions"`
	// OldestPending is when the oldest pending job was created (zero: none).
	OldestPending time.Time `json:"oldestPending,omitzero"`
}

// Stats returns queue and state counts.
func (db *DB) Stats(ctx context.Context) (Stats, error) {
	s := Stats{Jobs: map[JobStatus]int{}, Images: map[State]int{}, Decisions: map[string]int{}}
	err := db.bolt.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketJobs).ForEach(func(_, v []byte) error {
			var j struct {
				Status    JobStatus `json:"status"`
				CreatedAt time.Time `json:"createdAt"`
			}
			if err := json.Unmarshal(v, &j); err != nil {
				return err
			}
			s.Jobs[j.Status]++
			if j.Status == JobPending && (s.OldestPending.IsZero() || j.CreatedAt.Before(s.OldestPending)) {
				s.OldestPending = j.CreatedAt
			}
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketImages).ForEach(func(_, v []byte) error {
			var r struct {
				State    State `json:"state"`
				Decision *struct {
					Allow bool `json:"allow"`
				} `json:"decision"`
			}
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			s.Images[r.State]++
			if r.Decision != nil {
				k := "deny"
				if r.Decision.Allow {
					k = "allow"
				}
				s.Decisions[k]++
			}
			return ctx.Err()
		})
	})
	return s, err
}

// ClaimJob claims one specific pending job (attestd process runs a job in the
// foreground). ErrConflict when it is not pending.
func (db *DB) ClaimJob(ctx context.Context, id uint64, owner string, lease time.Duration) (*Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *Job
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		j, err := getJob(tx, id)
		if err != nil {
			return err
		}
		if j.Status != JobPending {
			return fmt.Errorf("%w: job %d is %s", ErrConflict, id, j.Status)
		}
		now := db.now().UTC()
		if err := tx.Bucket(bucketQueue).Delete(queueKey(j.Priority, j.ID)); err != nil {
			return err
		}
		j.Status, j.Owner, j.LeaseUntil = JobClaimed, owner, now.Add(lease)
		j.Attempts++
		j.NotBefore, j.UpdatedAt = time.Time{}, now
		out = j
		return putJob(tx, j)
	})
	if err != nil {
		return nil, fmt.Errorf("claim job: %w", err)
	}
	return out, nil
}
