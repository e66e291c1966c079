package app

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
)

// TestServePrunesAtStart: the daemon's prune loop applies the configured
// retention once at start (then hourly) and ends with its context.
func TestServePrunesAtStart(t *testing.T) {
	t.Parallel()
	old := time.Now().Add(-60 * 24 * time.Hour)
	db, err := store.Open(filepath.Join(t.TempDir(), "a.db"), store.WithClock(func() time.Time { return old }))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	ref := "127.0.0.1:5000/demo/app@sha256:" + "4444444444444444444444444444444444444444444444444444444444444444"
	if _, err := db.Enqueue(ctx, store.EnqueueRequest{Ref: ref, EventKey: "reg/e1"}); err != nil {
		t.Fatal(err)
	}
	j, err := db.Claim(ctx, "w", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Complete(ctx, j.ID, "w"); err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- pruneLoop(lctx, db, retention(configs.Default()), time.Hour, slog.New(slog.DiscardHandler))
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := db.Job(ctx, j.ID); errors.Is(err, store.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the month-old done job was not pruned at start")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("prune loop = %v", err)
	}
	if _, err := db.Image(ctx, ref); err != nil {
		t.Fatalf("the record went too (records are kept by default): %v", err)
	}
}
