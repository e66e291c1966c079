// Package store is attestd's durable state: one bbolt file holding the
// per-digest state machine, the job queue, intake dedupe keys and tag history.
//
// # Buckets
//
// All values are JSON unless noted; all keys are bytes as described.
//
//	meta      "schema" → 8-byte big-endian schema version (see migrations.go).
//	          "journal" → 8-byte generation ‖ 8-byte offset: how much of an
//	          older version's intake journal was applied (legacyjournal.go).
//	images    image ref "host/repo@sha256:…" → Record. The per-digest state machine:
//	          discovered → analysed → attested → evaluated → promoted | denied,
//	          and any non-final state → failed. Every change is a compare-and-set
//	          on (State, Rev) inside one db.Update.
//	jobs      8-byte big-endian job ID (bucket sequence) → Job.
//	queue     1-byte priority ‖ 8-byte job ID → empty. Exactly the pending jobs;
//	          cursor order is the claim order, so webhook events (PriorityEvent)
//	          are claimed before poller backfill (PriorityBackfill).
//	byref     image ref → 8-byte job ID of the newest job for that ref. There is
//	          at most one pending or claimed job per ref. Prune removes the
//	          entry with the job it names (Retention.Jobs: done and dead only).
//	events    intake dedupe key (e.g. a webhook event ID) → RFC 3339 time first seen
//	          (always stamped; Prune stamps a value it cannot read with the
//	          time it finds it, and deletes keys older than Retention.Events).
//	tags      "host/repo:tag" ‖ 0x00 ‖ 8-byte big-endian UnixNano → digest.
//	          The history of what a tag pointed at, oldest first.
//	blobs     "sha256:<hex>" → raw bytes (not JSON) of a document attestd made
//	          (SBOMs, hardening, provenance). Content-addressed: written
//	          before the Record that names them, so a crash leaves at most an
//	          unreferenced blob, never a Record pointing at nothing. (schema v2)
//	audit     8-byte big-endian sequence → AuditEntry, hash-chained (each
//	          entry's Prev is the previous entry's Hash); meta "audit_head"
//	          holds the newest entry's sequence and hash. Entries are appended
//	          in the same transaction as the change they record. (schema v3)
//
// # Rules
//
// Reads and writes only happen inside View/Update/Batch closures and bytes are
// copied out before a transaction ends. Intake writes (Intake, Enqueue) go
// through one writer, the group commit, so that a burst of webhooks shares
// transactions and fsyncs. bbolt allows one process per file:
// Open always sets a lock timeout and reports ErrLocked instead of hanging.
package store
