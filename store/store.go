package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// DefaultLockTimeout bounds how long Open waits for another process to release
// the file lock before it reports ErrLocked.
const DefaultLockTimeout = 2 * time.Second

// Defaults of bbolt's Batch (see WithBatch), which blobs and tags recorded
// outside intake go through; intake has its own group commit (Intake).
const (
	DefaultBatchDelay = 2 * time.Millisecond
	DefaultBatchSize  = 256
)

var (
	bucketMeta   = []byte("meta")
	bucketImages = []byte("images")
	bucketJobs   = []byte("jobs")
	bucketQueue  = []byte("queue")
	bucketByRef  = []byte("byref")
	bucketEvents = []byte("events")
	bucketTags   = []byte("tags")
	bucketBlobs  = []byte("blobs")
	bucketAudit  = []byte("audit")

	keySchema = []byte("schema")

	allBuckets = [][]byte{bucketMeta, bucketImages, bucketJobs, bucketQueue, bucketByRef, bucketEvents, bucketTags}
)

// DB is the attestd state store. It is safe for concurrent use.
type DB struct {
	bolt   *bolt.DB
	path   string
	now    func() time.Time
	logger *slog.Logger
	// syncDir fsyncs a directory (SyncDir; tests inject failures).
	syncDir func(dir string) error

	// The intake group-commit writer (read-write opens only).
	intake     chan *intakeReq
	closing    chan struct{}
	writerDone chan struct{}
	closeOnce  sync.Once
}

type options struct {
	batchDelay  time.Duration
	batchSize   int
	lockTimeout time.Duration
	now         func() time.Time
	logger      *slog.Logger
	readOnly    bool
	syncDir     func(dir string) error
}

// Option configures Open.
type Option func(*options) error

// WithLockTimeout sets how long Open waits for the file lock (must be > 0:
// bbolt would otherwise wait forever).
func WithLockTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("lock timeout must be positive, got %s", d)
		}
		o.lockTimeout = d
		return nil
	}
}

// WithBatch tunes how bbolt's Batch (PutBlob, RecordTag) coalesces writes:
// a batch commits after delay or once size calls are waiting, whichever
// comes first.
func WithBatch(delay time.Duration, size int) Option {
	return func(o *options) error {
		if delay <= 0 || size <= 0 {
			return fmt.Errorf("batch delay and size must be positive (got %s, %d)", delay, size)
		}
		o.batchDelay, o.batchSize = delay, size
		return nil
	}
}

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option {
	return func(o *options) error { o.now = now; return nil }
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error { o.logger = l; return nil }
}

// ReadOnly opens the file with a shared lock: several readers may coexist,
// but not with a writer (attestd serve).
func ReadOnly() Option {
	return func(o *options) error { o.readOnly = true; return nil }
}

// Open opens (or, when the file does not exist yet, creates) the database at
// path. It never replaces an existing file: an empty, truncated or foreign file
// is reported as ErrCorrupt, a file held by another process as ErrLocked.
func Open(path string, opts ...Option) (db *DB, err error) {
	o := options{lockTimeout: DefaultLockTimeout, now: time.Now, logger: slog.New(slog.DiscardHandler),
		batchDelay: DefaultBatchDelay, batchSize: DefaultBatchSize, syncDir: SyncDir}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	fi, statErr := os.Stat(path)
	switch {
	case statErr == nil && fi.IsDir():
		return nil, fmt.Errorf("open store %s: is a directory, expected a database file", path)
	case statErr == nil && fi.Size() == 0:
		// bbolt would silently initialise a zero-length file as a new database.
		return nil, fmt.Errorf("open store %s: %w: file is empty (truncated?); restore it from a backup (attestd store backup) or move it away to start fresh", path, ErrCorrupt)
	case errors.Is(statErr, os.ErrNotExist):
		if o.readOnly {
			return nil, fmt.Errorf("open store %s: %w: no database yet (run attestd serve or process first)", path, ErrNotFound)
		}
		if err := mkdirAllSynced(filepath.Dir(path), 0o700, o.syncDir); err != nil {
			return nil, fmt.Errorf("open store: create data dir: %w", err)
		}
	case statErr != nil:
		return nil, fmt.Errorf("open store %s: %w", path, statErr)
	}

	// bbolt panics on some kinds of damage instead of returning an error.
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("open store %s: %w: %v; restore it from a backup (attestd store backup)", path, ErrCorrupt, r)
		}
	}()
	b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: o.lockTimeout, ReadOnly: o.readOnly})
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("open store %s: %w: another process holds it (is attestd serve running? stop it, or use its HTTP API)", path, ErrLocked)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
			return nil, fmt.Errorf("open store %s: %w: %v; restore it from a backup (attestd store backup) or move it away to start fresh", path, ErrCorrupt, err)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// bbolt synced the new file's content; its name is durable only
		// once the directory is: without this a crash could lose the
		// database (and every job it acknowledged) whole.
		if err := o.syncDir(filepath.Dir(path)); err != nil {
			_ = b.Close()
			return nil, fmt.Errorf("open store %s: the new database's directory entry is not durable: %w; check the data directory's file system", path, err)
		}
	}
	b.MaxBatchDelay, b.MaxBatchSize = o.batchDelay, o.batchSize
	db = &DB{bolt: b, path: path, now: o.now, logger: o.logger, syncDir: o.syncDir}
	if o.readOnly {
		if err := db.checkSchema(); err != nil {
			_ = b.Close()
			return nil, err
		}
		return db, nil
	}
	if err := db.migrate(); err != nil {
		_ = b.Close()
		return nil, err
	}
	// Events an older version acknowledged from its intake journal and
	// never applied come first (legacyjournal.go).
	if err := db.applyLegacyJournal(); err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db.intake, db.closing, db.writerDone = make(chan *intakeReq), make(chan struct{}), make(chan struct{})
	go db.groupCommit()
	return db, nil
}

// Path is the database file.
func (db *DB) Path() string { return db.path }

// Close stops the intake writer (calls already handed to it complete) and
// releases the file lock.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		if db.closing != nil {
			close(db.closing)
			<-db.writerDone
		}
	})
	return db.bolt.Close()
}

// Backup writes a consistent snapshot of the live database to w.
func (db *DB) Backup(ctx context.Context, w io.Writer) (int64, error) {
	var n int64
	err := db.bolt.View(func(tx *bolt.Tx) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}

// BackupFile writes a snapshot to path atomically and durably: a temp file
// in the same directory, fsynced, then renamed, then the directory
// fsynced, so a failed backup never leaves a half-written file under the
// requested name, and a backup reported written survives a crash.
func (db *DB) BackupFile(ctx context.Context, path string) (int64, error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".attestd-backup-*")
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	n, err := db.Backup(ctx, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	if err := db.syncDir(dir); err != nil {
		return 0, fmt.Errorf("backup %s: written, but not durable yet: %w", path, err)
	}
	return n, nil
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
