package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// syncRecorder records the directories synced, and fails those in fail.
type syncRecorder struct {
	mu     sync.Mutex
	synced []string
	fail   string
}

func (r *syncRecorder) sync(dir string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if dir == r.fail {
		return errors.New("injected fsync failure")
	}
	if err := SyncDir(dir); err != nil {
		return err
	}
	r.synced = append(r.synced, dir)
	return nil
}

func (r *syncRecorder) option() Option {
	return func(o *options) error { o.syncDir = r.sync; return nil }
}

func (r *syncRecorder) dirs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.synced)
}

func TestSyncDir(t *testing.T) {
	t.Parallel()
	if err := SyncDir(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "gone")
	if err := SyncDir(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("SyncDir(missing) = %v, want an error naming it", err)
	}
}

// TestOpenSyncsNewDatabase: creating the database (and its data
// directories) syncs each parent directory; reopening syncs nothing; a
// failed sync fails the open, saying so.
func TestOpenSyncsNewDatabase(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	path := filepath.Join(root, "a", "b", "attestd.db")
	rec := &syncRecorder{}
	db, err := Open(path, rec.option())
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	want := []string{filepath.Join(root, "a"), root, filepath.Join(root, "a", "b")}
	if got := rec.dirs(); !slices.Equal(got, want) {
		t.Errorf("synced %q, want %q (each new directory's parent, then the database's)", got, want)
	}
	rec2 := &syncRecorder{}
	db, err = Open(path, rec2.option())
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if got := rec2.dirs(); len(got) != 0 {
		t.Errorf("reopening synced %q, want nothing", got)
	}

	dir := t.TempDir()
	bad := &syncRecorder{fail: dir}
	if _, err := Open(filepath.Join(dir, "attestd.db"), bad.option()); err == nil || !strings.Contains(err.Error(), "not durable") {
		t.Fatalf("open with a failing directory sync: %v, want an error", err)
	}
}

// TestBackupFileIsDurable: the backup is renamed into place, complete,
// and its directory synced after the rename; a failed sync is reported,
// never a silent success.
func TestBackupFileIsDurable(t *testing.T) {
	t.Parallel()
	rec := &syncRecorder{}
	db, err := Open(filepath.Join(t.TempDir(), "attestd.db"), rec.option())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	for i := range 50 {
		mustEnqueue(t, db, EnqueueRequest{Ref: ref(i)})
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "backup.db")
	n, err := db.BackupFile(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.dirs(); got[len(got)-1] != dir {
		t.Errorf("synced %q, want the backup's directory last", got)
	}
	if fi, err := os.Stat(out); err != nil || fi.Size() != n {
		t.Fatalf("backup file %v (%v), want %d bytes", fi, err, n)
	}
	if des, _ := os.ReadDir(dir); len(des) != 1 {
		t.Errorf("backup dir holds %d entries, want only the backup (no temp file)", len(des))
	}
	b, err := Open(out, ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := b.Image(ctx, ref(i)); err != nil {
			t.Errorf("backup lacks record %d: %v", i, err)
		}
	}
	b.Close()

	rec.mu.Lock()
	rec.fail = dir
	rec.mu.Unlock()
	if _, err := db.BackupFile(ctx, filepath.Join(dir, "again.db")); err == nil || !strings.Contains(err.Error(), "not durable") {
		t.Fatalf("backup with a failing directory sync: %v, want an error", err)
	}
}
