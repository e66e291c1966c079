package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TagEvent is one observation of a tag pointing at a digest.
type TagEvent struct {
	At     time.Time `json:"at"`
	Digest string    `json:"digest"`
}

func tagKey(repoTag string, at time.Time) []byte {
	k := make([]byte, 0, len(repoTag)+9)
	k = append(k, repoTag...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(at.UnixNano()))
}

// RecordTag appends "host/repo:tag → digest" to the tag's history unless the
// tag already points there (the newest entry has the same digest). Batched.
func (db *DB) RecordTag(ctx context.Context, repoTag, digest string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := db.bolt.Batch(func(tx *bolt.Tx) error {
		return putTag(tx.Bucket(bucketTags), repoTag, digest, db.now().UTC())
	})
	if err != nil {
		return fmt.Errorf("record tag %s: %w", repoTag, err)
	}
	return nil
}

// putTag appends to a tag's history unless its newest entry already says
// digest ("" records a deletion).
func putTag(b *bolt.Bucket, repoTag, digest string, at time.Time) error {
	prefix := append([]byte(repoTag), 0)
	// Seek past this tag's entries, then step back to its newest.
	c := b.Cursor()
	var k, v []byte
	if k, _ = c.Seek(append(clone(prefix), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)); k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k != nil && bytes.HasPrefix(k, prefix) && string(v) == digest {
		return nil
	}
	return b.Put(tagKey(repoTag, at), []byte(digest))
}

// TagHistory lists what repoTag ("host/repo:tag") pointed at, oldest first.
func (db *DB) TagHistory(ctx context.Context, repoTag string) ([]TagEvent, error) {
	var out []TagEvent
	err := db.bolt.View(func(tx *bolt.Tx) error {
		prefix := append([]byte(repoTag), 0)
		c := tx.Bucket(bucketTags).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if len(k) != len(prefix)+8 {
				continue
			}
			ns := int64(binary.BigEndian.Uint64(k[len(prefix):]))
			out = append(out, TagEvent{At: time.Unix(0, ns).UTC(), Digest: string(v)})
		}
		return nil
	})
	return out, err
}

// TagsOf lists the tags of repo ("host/repo") whose newest entry points at
// digest, sorted. It scans the repository's tag histories, which stay small
// (one entry per move).
func (db *DB) TagsOf(ctx context.Context, repo, digest string) ([]string, error) {
	var out []string
	err := db.bolt.View(func(tx *bolt.Tx) error {
		prefix := []byte(repo + ":")
		c := tx.Bucket(bucketTags).Cursor()
		var cur string
		var newest []byte
		flush := func() {
			if cur != "" && string(newest) == digest {
				out = append(out, cur)
			}
		}
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if len(k) < len(prefix)+9 || k[len(k)-9] != 0 {
				continue
			}
			tag := string(k[len(prefix) : len(k)-9])
			if tag != cur {
				flush()
				cur = tag
			}
			newest = v
		}
		flush()
		return nil
	})
	return out, err
}
