package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Older versions could acknowledge intake from a journal beside the database
// (<db>.journal: magic, generation, records framed [u32 length][u32 CRC-32C]
// [JSON]), with the generation and offset applied in meta "journal". A
// read-write Open applies what such a version acknowledged and never applied
// (it was killed), then removes the file; the meta key stays, so a file that
// a lost unlink brings back counts as applied.
var legacyJournalMagic, keyLegacyJournal = []byte("ATDJRNL1"), []byte("journal")

type legacyRecord struct { // one journal record: a group of Intake calls
	Time  time.Time    `json:"t"`
	Items []IntakeItem `json:"items"`
	end   uint64       // file offset after it
}

func (db *DB) applyLegacyJournal() error {
	path := db.path + ".journal"
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err // names the file
	}
	corrupt := func(why string) error {
		return fmt.Errorf("intake journal %s (left by an older attestd): %w: %s; run that version once to apply it, or move the file away (its unapplied events are lost; the poller re-finds images still in the registry)", path, ErrCorrupt, why)
	}
	gen, off := uint64(1), uint64(16)
	_ = db.bolt.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyLegacyJournal); len(v) == 16 {
			gen, off = binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
		}
		return nil
	})
	var recs []legacyRecord
	switch {
	case len(data) < 16: // created, or being emptied: never held a record
	case !bytes.Equal(data[:8], legacyJournalMagic):
		return corrupt("not an attestd intake journal")
	case binary.BigEndian.Uint64(data[8:]) < gen: // emptied once all was applied
	case binary.BigEndian.Uint64(data[8:]) > gen || off > uint64(len(data)):
		return corrupt("newer than the database (restored from an older backup?)")
	default:
		p := data[off:]
		for r, n := legacyFrame(p); n > 0; r, n = legacyFrame(p) {
			r.end = off + uint64(n)
			off, recs, p = r.end, append(recs, r), p[n:]
		}
		for q := 1; q < len(p); q++ { // a torn tail (never acknowledged) unless a record follows
			if _, m := legacyFrame(p[q:]); m > 0 {
				return corrupt(fmt.Sprintf("the record at byte %d fails its checksum and others follow it", len(data)-len(p)))
			}
		}
	}
	for len(recs) > 0 {
		n, items := 0, 0
		for ; n < len(recs) && items < 4096; n++ { // bounded transactions
			items += len(recs[n].Items)
		}
		if err := db.bolt.Update(func(tx *bolt.Tx) error {
			for _, r := range recs[:n] {
				if _, err := intakeTx(tx, r.Items, r.Time.UTC()); err != nil {
					return err
				}
			}
			return tx.Bucket(bucketMeta).Put(keyLegacyJournal, binary.BigEndian.AppendUint64(u64(gen), recs[n-1].end))
		}); err != nil {
			return fmt.Errorf("intake journal %s (left by an older attestd): applying: %w", path, err)
		}
		db.logger.Info("applied intake journal records an older attestd left", "records", n)
		recs = recs[n:]
	}
	return os.Remove(path)
}

// legacyFrame decodes the record at the start of p and its length (0: none).
func legacyFrame(p []byte) (r legacyRecord, n int) {
	if len(p) < 8 {
		return r, 0
	}
	size := int(binary.BigEndian.Uint32(p))
	if size == 0 || size > len(p)-8 || crc32.Checksum(p[8:8+size], crc32.MakeTable(crc32.Castagnoli)) != binary.BigEndian.Uint32(p[4:]) || json.Unmarshal(p[8:8+size], &r) != nil {
		return legacyRecord{}, 0
	}
	return r, 8 + size
}
