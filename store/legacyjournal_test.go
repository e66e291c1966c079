package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// legacyFrameOf frames a record as an older version's journal did.
func legacyFrameOf(t *testing.T, items ...IntakeItem) []byte {
	t.Helper()
	payload, err := json.Marshal(legacyRecord{Time: time.Date(2026, 11, 24, 5, 0, 0, 0, time.UTC), Items: items})
	if err != nil {
		t.Fatal(err)
	}
	f := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	f = binary.BigEndian.AppendUint32(f, crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli)))
	return append(f, payload...)
}

func legacyFile(gen uint64, frames ...[]byte) []byte {
	b := append([]byte("ATDJRNL1"), binary.BigEndian.AppendUint64(nil, gen)...)
	for _, f := range frames {
		b = append(b, f...)
	}
	return b
}

// TestLegacyJournal: a journal an older version left beside the database is
// applied once at a read-write open and removed; one that cannot be read
// safely fails the open and is left alone.
func TestLegacyJournal(t *testing.T) {
	t.Parallel()
	item := func(n int, ev string) IntakeItem {
		return IntakeItem{Ref: ref(n), Source: "webhook:test", EventKey: ev, Tag: "registry.local/app/n1:v1"}
	}
	f1, f2 := legacyFrameOf(t, item(1, "e1"), item(2, "e2")), legacyFrameOf(t, item(3, "e3"))
	bad := append([]byte(nil), f1...)
	bad[len(bad)-2] ^= 0xff
	applied := func(gen uint64, off int) []byte {
		return binary.BigEndian.AppendUint64(u64(gen), uint64(off))
	}
	for _, tc := range []struct {
		name    string
		meta    []byte // meta "journal"; nil: none (the file never rotated)
		file    []byte
		jobs    int
		wantErr string
	}{
		{name: "killed mid-burst, torn tail", file: legacyFile(1, f1, f2, f2[:len(f2)-3]), jobs: 3},
		{name: "partly applied", meta: applied(1, 16+len(f1)), file: legacyFile(1, f1, f2), jobs: 1},
		{name: "stopped cleanly", meta: applied(3, 16+len(f1)+len(f2)), file: legacyFile(3, f1, f2)},
		{name: "emptied after applying", meta: applied(4, 16), file: legacyFile(3, f1)},
		{name: "empty", file: nil},
		{name: "damage before acknowledged records", file: legacyFile(1, bad, f2), wantErr: "fails its checksum"},
		{name: "newer than the database", meta: applied(1, 16), file: legacyFile(2, f1), wantErr: "restored from an older backup"},
		{name: "foreign", file: []byte("not a journal at all"), wantErr: "not an attestd intake journal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "attestd.db")
			db, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			if tc.meta != nil {
				if err := db.bolt.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyLegacyJournal, tc.meta) }); err != nil {
					t.Fatal(err)
				}
			}
			db.Close()
			if err := os.WriteFile(path+".journal", tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			db, err = Open(path)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "run that version once") {
					t.Fatalf("open = %v, want ErrCorrupt saying %q and what to do", err, tc.wantErr)
				}
				if _, err := os.Stat(path + ".journal"); err != nil {
					t.Fatalf("the journal that failed the open is gone: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			db.Close()
			if _, err := os.Stat(path + ".journal"); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("journal still there: %v", err)
			}
			// The file comes back (an unlink a crash lost): nothing is
			// applied twice.
			if err := os.WriteFile(path+".journal", tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			db, err = Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			st, _ := db.Stats(context.Background())
			seq, _, _ := db.AuditHead(context.Background())
			if st.Jobs[JobPending] != tc.jobs || seq != uint64(tc.jobs) {
				t.Fatalf("%d jobs, %d audit entries; want %d of each", st.Jobs[JobPending], seq, tc.jobs)
			}
		})
	}
}
