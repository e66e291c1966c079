package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
)

const month = 30 * 24 * time.Hour

// drive claims ref's job and completes it (err nil) or buries it, then
// moves its record along states (from discovered).
func drive(t *testing.T, db *DB, ref string, bury error, states ...State) {
	t.Helper()
	ctx := context.Background()
	j, err := db.Claim(ctx, "w", time.Minute)
	if err != nil || j.Ref != ref {
		t.Fatalf("claim for %s: %+v %v", ref, j, err)
	}
	if bury != nil {
		err = db.Bury(ctx, j.ID, "w", bury)
	} else {
		err = db.Complete(ctx, j.ID, "w")
	}
	if err != nil {
		t.Fatal(err)
	}
	moveTo(t, db, ref, states...)
}

func moveTo(t *testing.T, db *DB, ref string, states ...State) {
	t.Helper()
	from := StateDiscovered
	for _, s := range states {
		if _, err := db.Transition(context.Background(), ref, from, s, nil); err != nil {
			t.Fatal(err)
		}
		from = s
	}
}

var toDenied = []State{StateAnalysed, StateAttested, StateEvaluated, StateDenied}

// TestPrune: what a month-old store loses to a 30-day retention, and what
// it keeps — the audit log, pending and claimed jobs, recent keys and
// records, promoted images, an index a child points at.
func TestPrune(t *testing.T) {
	t.Parallel()
	db, c := open(t)
	ctx := context.Background()
	intake := func(items ...IntakeItem) []IntakeResult {
		t.Helper()
		res, err := db.Intake(ctx, items)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// A month ago: one image at a time, so that each claim takes its own.
	intake(IntakeItem{Ref: ref(1), EventKey: "ev-1"})
	drive(t, db, ref(1), nil, toDenied...) // denied: pruned with its done job
	intake(IntakeItem{Ref: ref(2), EventKey: "ev-2"})
	drive(t, db, ref(2), errors.New("manifest unknown")) // failed: pruned with its dead job
	intake(IntakeItem{Ref: ref(3), EventKey: "ev-3"})
	drive(t, db, ref(3), nil, StateAnalysed, StateAttested, StateEvaluated, StatePromoted) // promoted: kept
	child := "registry.local/app/n6@sha256:" + fmt.Sprintf("%064x", 66)
	intake(IntakeItem{Ref: child, NotBefore: c.now().Add(time.Hour)})
	intake(IntakeItem{Ref: ref(6), Children: []string{"sha256:" + fmt.Sprintf("%064x", 66)}})
	drive(t, db, ref(6), nil, toDenied...) // a denied index its child names: kept
	intake(IntakeItem{Ref: ref(9)})
	drive(t, db, ref(9), nil) // its job is done now, its record denied next month
	intake(IntakeItem{Ref: ref(5)})
	if _, err := db.Claim(ctx, "w", time.Hour); err != nil { // claimed: kept
		t.Fatal(err)
	}
	intake(IntakeItem{Ref: ref(4)}) // pending: kept
	c.add(month + time.Hour)
	intake(IntakeItem{Ref: ref(8), EventKey: "ev-8"}) // recent
	moveTo(t, db, ref(9), toDenied...)
	seq, hash, _ := db.AuditHead(ctx)

	st, err := db.Prune(ctx, c.now(), Retention{Events: month, Jobs: month, Records: month})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(PruneStats{Events: 3, Jobs: 6, Records: 2}, st); diff != "" {
		t.Errorf("pruned (-want +got):\n%s", diff)
	}
	var images []string
	recs, _ := db.Images(ctx, "")
	for _, r := range recs {
		images = append(images, r.Ref)
	}
	if diff := cmp.Diff([]string{ref(3), ref(4), ref(5), ref(6), child, ref(8), ref(9)}, images); diff != "" {
		t.Errorf("records kept (-want +got):\n%s", diff)
	}
	var jobs []string
	js, _ := db.Jobs(ctx)
	for _, j := range js {
		jobs = append(jobs, j.Ref+" "+string(j.Status))
	}
	sort.Strings(jobs)
	if diff := cmp.Diff([]string{ref(4) + " pending", ref(5) + " claimed", ref(8) + " pending"}, jobs); diff != "" {
		t.Errorf("jobs kept (-want +got):\n%s", diff)
	}
	if s, h, _ := db.AuditHead(ctx); s != seq || h != hash {
		t.Errorf("audit head moved: %d %s → %d %s", seq, hash, s, h)
	}
	if again, err := db.Prune(ctx, c.now(), Retention{Events: month, Jobs: month, Records: month}); err != nil || again != (PruneStats{}) {
		t.Errorf("second prune = %+v, %v; want nothing left to prune", again, err)
	}

	// Redeliveries whose keys are gone: ev-3's image is known (a duplicate
	// by ref: no job; its old job is gone, so no job ID); ev-1's record was
	// pruned too, so it is a new image; ev-8 is still a redelivery.
	res := intake(IntakeItem{Ref: ref(3), EventKey: "ev-3"}, IntakeItem{Ref: ref(1), EventKey: "ev-1"}, IntakeItem{Ref: ref(8), EventKey: "ev-8"})
	if !res[0].Duplicate || res[0].JobID != 0 || res[1].Duplicate || res[1].JobID == 0 || !res[2].Duplicate {
		t.Errorf("redeliveries = %+v; want known by ref, new, redelivery", res)
	}
	var last AuditEntry
	_ = db.AuditEntries(ctx, seq+1, func(e AuditEntry, _ []byte) error {
		if e.Subject == ref(3) {
			last = e
		}
		return nil
	})
	if last.Details["result"] != "known" {
		t.Errorf("the redelivery after its key was pruned is audited as %+v, want result known", last)
	}
	// byref went with ref(3)'s job: requeue and folding work without it.
	if _, err := db.Requeue(ctx, ref(3), "cli"); err != nil {
		t.Errorf("requeue after its job was pruned: %v", err)
	}
	if _, err := db.Requeue(ctx, ref(2), "cli"); !errors.Is(err, ErrNotFound) {
		t.Errorf("requeue of a pruned record = %v, want ErrNotFound", err)
	}
}

// TestPruneKeepsByDefault: a zero Retention keeps everything.
func TestPruneKeepsByDefault(t *testing.T) {
	t.Parallel()
	db, c := open(t)
	ctx := context.Background()
	mustEnqueue(t, db, EnqueueRequest{Ref: ref(1), EventKey: "ev-1"})
	drive(t, db, ref(1), errors.New("gone"))
	c.add(10 * 12 * month)
	if st, err := db.Prune(ctx, c.now(), Retention{}); err != nil || st != (PruneStats{}) {
		t.Fatalf("prune = %+v, %v", st, err)
	}
	if st, _ := db.Stats(ctx); st.Jobs[JobDead] != 1 || st.Images[StateFailed] != 1 {
		t.Fatalf("stats after prune: %+v", st)
	}
}

// TestPruneInBatches: more keys than one transaction deletes are all
// pruned; a key whose value is no time is stamped, then pruned a retention
// later; a cancelled context stops it.
func TestPruneInBatches(t *testing.T) {
	t.Parallel()
	db, c := open(t)
	ctx := context.Background()
	const n = 2*pruneBatch + 500
	items := make([]IntakeItem, n)
	for i := range items {
		items[i] = IntakeItem{Ref: ref(i), Deleted: true, EventKey: fmt.Sprint("ev-", i)}
	}
	if _, err := db.Intake(ctx, items); err != nil {
		t.Fatal(err)
	}
	if err := db.bolt.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketEvents).Put([]byte("ev-unstamped"), nil) }); err != nil {
		t.Fatal(err)
	}
	c.add(2 * time.Hour)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := db.Prune(cancelled, c.now(), Retention{Events: time.Hour}); !errors.Is(err, context.Canceled) {
		t.Fatalf("prune with a cancelled context = %v", err)
	}
	if st, err := db.Prune(ctx, c.now(), Retention{Events: time.Hour}); err != nil || st.Events != n {
		t.Fatalf("prune = %+v, %v; want %d events", st, err, n)
	}
	c.add(2 * time.Hour)
	if st, err := db.Prune(ctx, c.now(), Retention{Events: time.Hour}); err != nil || st.Events != 1 {
		t.Fatalf("prune of the stamped key = %+v, %v; want 1", st, err)
	}
}

func TestPruneReadOnly(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "a.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	ro, err := Open(path, ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.Prune(context.Background(), time.Now(), Retention{Events: time.Hour}); err == nil {
		t.Fatal("prune of a read-only store succeeded")
	}
}
