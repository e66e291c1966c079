package store

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// migrations[i] upgrades schema version i to i+1. Append only; never edit a
// released step. Version 0 is an empty file.
var migrations = []func(tx *bolt.Tx) error{
	// 0 → 1: the initial layout documented in doc.go.
	func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return nil
	},
	// 1 → 2: blobs, the content-addressed documents analysis produces.
	func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketBlobs)
		return err
	},
	// 2 → 3: audit, the hash-chained audit log.
	func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketAudit)
		return err
	},
}

// SchemaVersion is the layout this binary reads and writes.
func SchemaVersion() uint64 { return uint64(len(migrations)) }

func readSchema(tx *bolt.Tx) (uint64, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		if names := bucketNames(tx); len(names) > 0 {
			return 0, fmt.Errorf("%w: file has buckets %q but no schema version; not an attestd database", ErrCorrupt, names)
		}
		return 0, nil
	}
	v := meta.Get(keySchema)
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: schema version key is %d bytes, want 8", ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func bucketNames(tx *bolt.Tx) []string {
	var names []string
	_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
		names = append(names, string(name))
		return nil
	})
	return names
}

func (db *DB) checkSchema() error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		v, err := readSchema(tx)
		if err != nil {
			return fmt.Errorf("open store %s: %w", db.path, err)
		}
		if v > SchemaVersion() {
			return fmt.Errorf("open store %s: %w (file v%d, binary v%d): upgrade attestd", db.path, ErrSchemaTooNew, v, SchemaVersion())
		}
		if v < SchemaVersion() {
			return fmt.Errorf("open store %s: schema v%d needs migration to v%d: open it once read-write (attestd serve)", db.path, v, SchemaVersion())
		}
		return nil
	})
}

// migrate brings the file to SchemaVersion in one transaction: a crash mid-way
// leaves the old version intact.
func (db *DB) migrate() error {
	return db.bolt.Update(func(tx *bolt.Tx) error {
		v, err := readSchema(tx)
		if err != nil {
			return fmt.Errorf("open store %s: %w", db.path, err)
		}
		if v > SchemaVersion() {
			return fmt.Errorf("open store %s: %w (file v%d, binary v%d): upgrade attestd", db.path, ErrSchemaTooNew, v, SchemaVersion())
		}
		for ; v < SchemaVersion(); v++ {
			if err := migrations[v](tx); err != nil {
				return fmt.Errorf("migrate store %s from v%d: %w", db.path, v, err)
			}
			db.logger.Info("store migrated", "from", v, "to", v+1)
		}
		return tx.Bucket(bucketMeta).Put(keySchema, u64(v))
	})
}
