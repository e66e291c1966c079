package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// PutBlob stores data under its sha256 digest and returns "sha256:<hex>".
// Storing the same bytes twice is a no-op. Blobs are written before the
// Record that references them (see doc.go), so they may outlive a crash
// unreferenced but are never missing.
func (db *DB) PutBlob(ctx context.Context, data []byte) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	err := db.bolt.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		if b.Get([]byte(digest)) != nil {
			return nil
		}
		return b.Put([]byte(digest), data)
	})
	if err != nil {
		return "", fmt.Errorf("store blob %s: %w", digest, err)
	}
	return digest, nil
}

// Blob returns the bytes stored under digest, checked against it.
func (db *DB) Blob(ctx context.Context, digest string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []byte
	err := db.bolt.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBlobs).Get([]byte(digest))
		if v == nil {
			return fmt.Errorf("blob %s: %w", digest, ErrNotFound)
		}
		out = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(out)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != digest {
		return nil, fmt.Errorf("blob %s: %w: content hashes to %s", digest, ErrCorrupt, got)
	}
	return out, nil
}
