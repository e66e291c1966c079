package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// AuditEntry is one record of the hash-chained audit log. Hash is the
// sha256 of the entry's canonical JSON with Hash empty; Prev is the Hash of
// the entry before it (64 zeros for the first). Entries are appended in the
// same bbolt transaction as the state change they record, so the log and
// the state can never disagree.
type AuditEntry struct {
	Seq     uint64            `json:"seq"`
	Time    time.Time         `json:"time"`
	Actor   string            `json:"actor"`  // who: "pipeline", "webhook:<source>", "poller", "cli", "api"
	Action  string            `json:"action"` // what: see the Audit* constants
	Subject string            `json:"subject,omitempty"`
	Repo    string            `json:"repo,omitempty"`   // host/repo
	Digest  string            `json:"digest,omitempty"` // sha256:…
	Details map[string]string `json:"details,omitempty"`
	Prev    string            `json:"prev"`
	Hash    string            `json:"hash"`
}

// Audit actions written by the store.
const (
	AuditEventAccepted = "event.accepted"            // intake committed an event (queued, duplicate, or recorded only)
	AuditEventDeleted  = "event.deleted"             // a deletion was recorded
	AuditState         = "state"                     // a digest moved between states
	AuditStage         = "stage"                     // a stage result was recorded
	AuditDecision      = "decision"                  // the promotion gate decided
	AuditRequeue       = "requeue"                   // a digest was re-driven by hand
	AuditRescan        = "vulnerabilities.rescanned" // a stored SBOM was re-matched against a new database
	AuditPromotion     = "promotion"                 // a digest was copied to production and tagged
	AuditSignature     = "signature.written"         // a signature or attestation was attached, with its log entries and timestamps
	AuditExceptionAdd  = "exception.added"           // a vulnerability exception appeared in the configuration
	AuditExceptionExp  = "exception.expired"         // a vulnerability exception expired: its findings count again
	AuditOverride      = "override"                  // a promotion ran against the gate's decision, with a reason
)

// ZeroHash is the Prev of the first entry.
const ZeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

var keyAuditHead = []byte("audit_head") // in meta: 8-byte seq ‖ 32-byte hash of the last entry

// hashEntry computes the entry's hash over its canonical JSON (Hash empty).
func hashEntry(e AuditEntry) (string, error) {
	e.Hash = ""
	e.Time = e.Time.UTC()
	b, err := json.Marshal(e) // struct field order and sorted map keys: canonical
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// HashEntry exposes the hash function for verifiers (store/audit).
func HashEntry(e AuditEntry) (string, error) { return hashEntry(e) }

// appendAudit chains e after the current head inside tx.
func appendAudit(tx *bolt.Tx, e AuditEntry) error {
	b := tx.Bucket(bucketAudit)
	b.FillPercent = 1 // append-only, sequential keys: full pages, half as many to write
	prev := ZeroHash
	if head := tx.Bucket(bucketMeta).Get(keyAuditHead); len(head) == 40 {
		prev = hex.EncodeToString(head[8:])
	}
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	e.Seq, e.Prev, e.Time = seq, prev, e.Time.UTC()
	if e.Hash, err = hashEntry(e); err != nil {
		return err
	}
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := b.Put(u64key(seq), v); err != nil {
		return err
	}
	sum, _ := hex.DecodeString(e.Hash)
	return tx.Bucket(bucketMeta).Put(keyAuditHead, append(u64key(seq), sum...))
}

func u64key(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// AuditHead returns the sequence number and hash the store recorded for the
// newest entry (0, ZeroHash when the log is empty).
func (db *DB) AuditHead(ctx context.Context) (uint64, string, error) {
	var seq uint64
	hash := ZeroHash
	err := db.bolt.View(func(tx *bolt.Tx) error {
		if head := tx.Bucket(bucketMeta).Get(keyAuditHead); len(head) == 40 {
			seq, hash = binary.BigEndian.Uint64(head[:8]), hex.EncodeToString(head[8:])
		}
		return nil
	})
	return seq, hash, err
}

// AuditEntries calls fn for each entry with Seq ≥ from, in order, inside one
// read transaction (a consistent snapshot; memory stays constant however
// long the log). raw is the stored bytes, for verifiers that re-hash them.
func (db *DB) AuditEntries(ctx context.Context, from uint64, fn func(e AuditEntry, raw []byte) error) error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		n := 0
		for k, v := c.Seek(u64key(from)); k != nil; k, v = c.Next() {
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			var e AuditEntry
			if len(k) != 8 {
				return fmt.Errorf("audit: key %x is not a sequence number", k)
			}
			if err := json.Unmarshal(v, &e); err != nil {
				// Hand the verifier what is there: a zero entry with the key's seq.
				e = AuditEntry{Seq: binary.BigEndian.Uint64(k)}
				if err := fn(e, v); err != nil {
					return err
				}
				continue
			}
			if err := fn(e, v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Audit appends an entry outside of any state change (e.g. config loaded,
// an override). It is durable when Audit returns.
func (db *DB) Audit(ctx context.Context, e AuditEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if e.Time.IsZero() {
		e.Time = db.now()
	}
	return db.bolt.Update(func(tx *bolt.Tx) error { return appendAudit(tx, e) })
}

// AuditOnce appends e unless an entry was appended under key before (a
// marker in the meta bucket, written in the same transaction): for events
// noticed repeatedly, such as an exception that has expired. It reports
// whether it appended.
func (db *DB) AuditOnce(ctx context.Context, key string, e AuditEntry) (bool, error) {
	return db.auditMarked(ctx, key, e, true)
}

// AuditMarked appends e and marks key as AuditOnce does, whether or not
// key was marked before: an event that must be logged every time it
// happens, which a later AuditOnce under key must not log again.
func (db *DB) AuditMarked(ctx context.Context, key string, e AuditEntry) error {
	_, err := db.auditMarked(ctx, key, e, false)
	return err
}

func (db *DB) auditMarked(ctx context.Context, key string, e AuditEntry, once bool) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if e.Time.IsZero() {
		e.Time = db.now()
	}
	marker := []byte("audit_once/" + key)
	added := false
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if once && meta.Get(marker) != nil {
			return nil
		}
		if err := appendAudit(tx, e); err != nil {
			return err
		}
		added = true
		return meta.Put(marker, []byte(e.Time.UTC().Format(time.RFC3339)))
	})
	return added, err
}

// auditTransition records what a Transition changed: the state move, each
// stage result that changed, and a new decision.
func auditTransition(tx *bolt.Tx, before, after *Record, actor string, now time.Time) error {
	base := AuditEntry{Time: now, Actor: actor, Subject: after.Ref, Repo: after.Registry + "/" + after.Repository, Digest: after.Digest}
	for _, name := range sortedKeys(after.Stages) {
		a := after.Stages[name]
		if b, ok := before.Stages[name]; ok && b.Status == a.Status && b.Detail == a.Detail {
			continue
		}
		e := base
		e.Action = AuditStage
		e.Details = map[string]string{"stage": name, "status": string(a.Status)}
		if a.Detail != "" {
			e.Details["detail"] = a.Detail
		}
		if err := appendAudit(tx, e); err != nil {
			return err
		}
	}
	if after.Decision != nil && (before.Decision == nil || before.Decision.Allow != after.Decision.Allow) {
		e := base
		e.Action = AuditDecision
		e.Details = map[string]string{"allow": fmt.Sprint(after.Decision.Allow)}
		if d := after.Decision; d.PolicyDigest != "" {
			e.Details["policy"], e.Details["mode"] = d.PolicyDigest, d.Mode
			if d.VSA != "" {
				e.Details["vsa"] = d.VSA
			}
			for i, w := range d.Warnings {
				e.Details[fmt.Sprintf("warning.%d", i)] = w
			}
		}
		for i, r := range after.Decision.Reasons {
			e.Details[fmt.Sprintf("reason.%d", i)] = r
		}
		if err := appendAudit(tx, e); err != nil {
			return err
		}
	}
	if before.State != after.State {
		e := base
		e.Action = AuditState
		e.Details = map[string]string{"from": string(before.State), "to": string(after.State)}
		if after.LastError != "" && after.State == StateFailed {
			e.Details["error"] = after.LastError
		}
		if err := appendAudit(tx, e); err != nil {
			return err
		}
	}
	return nil
}

type actorKey struct{}

// WithActor names who acts for the store writes made under ctx (recorded in
// the audit log); the default is "pipeline".
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "pipeline"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// AuditBulk appends n generated entries in one transaction (imports and
// benchmarks).
func (db *DB) AuditBulk(ctx context.Context, n int, gen func(i int) AuditEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := db.now()
	return db.bolt.Update(func(tx *bolt.Tx) error {
		for i := range n {
			e := gen(i)
			if e.Time.IsZero() {
				e.Time = now
			}
			if err := appendAudit(tx, e); err != nil {
				return err
			}
		}
		return nil
	})
}
